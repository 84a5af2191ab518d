"""The blended benchmark runs end to end on the tiny preset and prints one JSON line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipelines.bench import blended


def test_the_benchmark_prints_one_json_line_with_its_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the preset's tokenizer files go under ./data/models
    parser = argparse.ArgumentParser()
    blended.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["blended", "--preset", "tiny", "--size", "64", "--steps", "4", "--candidates", "2"]
    )
    assert args.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["denoising_steps"] == 3
    assert report["size"] == 64 and report["device"] == "cpu"
    assert set(report["split"]) == {"encode", "denoise", "decode", "ranking", "finetune"}
    split = report["split"]
    assert report["seconds_per_step"] * 3 == pytest.approx(split["denoise"], abs=2e-3)
    assert report["peak_gpu_memory_mb"] is None and report["gpu"] is None
    assert report["decode_chunk"] == 1 and report["rank_chunk"] == 1
    batch_1 = report["candidate_batch_1"]
    assert batch_1["seconds_per_edit"] > 0 and batch_1["decode_chunk"] == 1
    assert report["seconds_per_edit"] >= sum(report["split"].values()) * 0.9
    assert report["reference_seconds"] > 0 and report["ratio_to_reference"] > 0
    assert report["reference_gflop"] > 0 and len(report["floor_seconds"]) == 2
    assert report["peak_rss_mb"] > 0


def test_the_reference_loop_makes_one_image_per_candidate(tmp_path: Path) -> None:
    from pipelines.diffusion_models import load_diffusion
    from pipelines.settings import ModelSettings

    components = load_diffusion(ModelSettings(preset="tiny", device="cpu", cache_dir=tmp_path))
    image, mask = blended.bench_inputs(64)
    images = blended.reference_edit(components, image, mask, "a cat", 3, 4, 0.25, 7.5, 0)
    assert [i.size for i in images] == [(64, 64)] * 3
