"""The vqgan-clip benchmark runs on tiny models and prints one JSON line of figures."""

from __future__ import annotations

import json

import pytest

from pipelines.bench.__main__ import main


def test_prints_one_json_line_with_the_breakdown(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["vqgan-clip", "--preset", "tiny", "--size", "64", "--cutn", "4", "--steps", "2"]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["bench"] == "vqgan-clip" and figures["cutn"] == 4
    assert len(figures["steps_s"]) == 2
    assert figures["median_s_per_step"] > 0
    assert set(figures["breakdown_s"]) >= {"decode", "cutouts", "clip_forward", "backward"}
    # The phases are parts of a step, so together they cannot exceed the slowest step.
    assert sum(figures["breakdown_s"].values()) <= max(figures["steps_s"]) * 1.05
    assert figures["reference"]["median_s_per_step"] > 0
    assert figures["ratio_to_reference"] > 0
    assert figures["gflop_per_step"] > 0
    assert figures["peak_rss_mb"] > 0
