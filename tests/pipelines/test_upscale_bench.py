"""The upscale benchmark runs on the CPU with the tiny preset and prints one JSON line."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.bench.__main__ import main


def test_prints_one_json_line_of_figures(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "upscale",
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--size",
            "24",
            "--tile",
            "16",
            "--repeats",
            "2",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert figures["bench"] == "upscale" and figures["device"] == "cpu"
    assert figures["input_size"] == [24, 24] and figures["output_size"] == [96, 96]
    assert figures["seconds_per_image"] > 0 and len(figures["runs_s"]) == 2
    assert min(figures["runs_s"]) <= figures["seconds_per_image"] <= max(figures["runs_s"])
    # No GPU here: memory and name are null, the versions are the running torch's.
    assert figures["peak_gpu_memory_mb"] is None and figures["gpu"] is None
    assert figures["torch"] == torch.__version__ and figures["cuda"] == torch.version.cuda
    assert figures["peak_rss_mb"] > 0


def test_a_device_that_is_not_there_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["upscale", "--device", "cuda", "--preset", "tiny", "--size", "16"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
