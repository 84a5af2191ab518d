"""The vqgan-clip benchmark runs on tiny models and prints one JSON line of figures."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.bench.__main__ import main


def test_prints_one_json_line_with_the_breakdown(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["vqgan-clip", "--preset", "tiny", "--size", "64", "--cutn", "4", "--steps", "2"])
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
    assert figures["device"] == "cpu" and figures["gpu"] is None
    assert figures["torch"] == torch.__version__
    assert "cuda" in figures
    batching = figures["throughput"]
    assert batching["candidates"] == 4 and batching["job_steps"] == 200
    # On a CPU "auto" is one candidate at a time, so both figures describe the same run.
    assert batching["auto"]["candidate_batch_used"] == 1
    assert batching["one_at_a_time"]["candidate_batch_setting"] == 1
    for figures_of in (batching["auto"], batching["one_at_a_time"]):
        assert figures_of["s_per_step"] > 0
        # By default three timed steps, after the warm-up: a median of two would be an average.
        assert len(figures_of["steps_s"]) == 3
        assert figures_of["s_per_job_estimated"] > 200 * figures_of["s_per_step"] * 0.99
        assert figures_of["peak_gpu_memory_mb"] is None


def test_a_fixed_candidate_batch_is_used_and_a_bad_one_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["vqgan-clip", "--preset", "tiny", "--size", "64", "--cutn", "2", "--steps", "1"]
    fast = ["--no-reference", "--no-flops", "--candidates", "2"]
    assert main([*common, *fast, "--candidate-batch", "2", "--no-throughput"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["candidate_batch"] == 2 and "throughput" not in figures
    assert main([*common, *fast, "--candidate-batch", "none"]) == 2
    assert "--candidate-batch must be auto or a whole number" in capsys.readouterr().err
