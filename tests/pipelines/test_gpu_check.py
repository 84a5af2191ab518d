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


def test_gpu_check_compile_pass_runs_the_compiled_benches_into_their_own_files(
    tmp_path: Path,
) -> None:
    # A stand-in interpreter that prints the arguments it got as the bench's JSON line, so the
    # script's plumbing is checked without compiling anything (Inductor takes minutes on a CPU).
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\nprintf \'{"argv": "%s"}\\n\' "$*"\n')
    fake.chmod(0o755)
    out_dir = tmp_path / "figures"
    env = {**os.environ, "PYTHON": str(fake), "GPU_CHECK_COMPILE": "1"}
    completed = subprocess.run(
        [str(SCRIPT), str(out_dir), "cuda", "random-full"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    argv = {path.stem: json.loads(path.read_text())["argv"] for path in out_dir.glob("*.json")}
    assert set(argv) == {*BENCHES, "vqgan-clip-compile", "blended-compile"}
    for bench in ("vqgan-clip", "blended"):
        assert "--compile" in argv[f"{bench}-compile"].split()
        assert "--compile" not in argv[bench].split()
        assert f"-m pipelines.bench {bench} " in argv[f"{bench}-compile"]
        assert "--device cuda" in argv[f"{bench}-compile"]
    # Without the variable, no compile pass.
    env.pop("GPU_CHECK_COMPILE")
    plain_dir = tmp_path / "plain"
    subprocess.run([str(SCRIPT), str(plain_dir)], env=env, capture_output=True, timeout=60)
    assert {path.stem for path in plain_dir.glob("*.json")} == set(BENCHES)
