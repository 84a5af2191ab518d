"""``scripts/gpu-check.sh DIR cpu tiny`` runs every benchmark and leaves one JSON line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gpu-check.sh"
BENCHES = ("vqgan-clip", "blended", "upscale")


def test_gpu_check_runs_every_bench_and_writes_json_lines(tmp_path: Path) -> None:
    out_dir = tmp_path / "figures"
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [str(SCRIPT), str(out_dir), "cpu", "tiny"],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = {}
    for bench in BENCHES:
        lines = (out_dir / f"{bench}.json").read_text().strip().splitlines()
        assert len(lines) == 1, (bench, lines)
        reports[bench] = json.loads(lines[0])
        assert reports[bench]["bench"] == bench
        assert reports[bench]["preset"] == "tiny"
    blended = reports["blended"]
    assert blended["device"] == "cpu"
    assert blended["seconds_per_edit"] > 0 and blended["seconds_per_step"] > 0
    assert blended["peak_gpu_memory_mb"] is None  # no GPU: null, not a made-up figure
    assert blended["decode_chunk"] == 1  # "auto" on a CPU is one at a time
    assert blended["candidate_batch"] == "auto"
    assert blended["candidate_batch_1"]["seconds_per_edit"] > 0
    assert blended["candidate_batch_1"]["decode_chunk"] == 1
    assert blended["gpu"] is None and blended["torch"] and "cuda" in blended
    assert blended["gflop_per_step"] > 0
    assert reports["upscale"]["peak_gpu_memory_mb"] is None


def test_gpu_check_without_arguments_is_a_usage_error(tmp_path: Path) -> None:
    completed = subprocess.run(
        [str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 2
    assert "usage:" in completed.stderr
