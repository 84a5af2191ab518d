#!/usr/bin/env bash
# Run every pipeline benchmark on one device and keep their JSON lines.
#
#   scripts/gpu-check.sh OUT_DIR [DEVICE] [PRESET]      (defaults: cuda, random-full)
#
# Writes OUT_DIR/<bench>.json (one JSON line each: seconds, peak GPU memory, the candidate chunk
# "auto" chose and the same with candidate_batch = 1 where a bench has it, GPU name, torch and
# CUDA versions) and OUT_DIR/<bench>.log (its stderr). Real architectures with random weights:
# nothing is downloaded. The whole run is bounded by GPU_CHECK_SECONDS (default 470, under the
# 8 minutes promised); a bench that fails or runs out of time is reported and the others still run.
# The exit code is 0 only if every bench wrote its JSON line. With PRESET tiny the benches run at
# toy sizes: that is a smoke test of this script (tests/pipelines/test_gpu_check.py), not figures.
# GPU_CHECK_COMPILE=1 adds a pass of vqgan-clip and blended with --compile ([models] compile =
# true), written to OUT_DIR/<bench>-compile.json: the README asks for which GPUs and torch
# versions compile was checked on, and this is the run that answers it.
set -uo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: $0 OUT_DIR [DEVICE] [PRESET]   (defaults: cuda random-full)" >&2
    exit 2
fi
out_dir=$1
device=${2:-cuda}
preset=${3:-random-full}
budget=${GPU_CHECK_SECONDS:-470}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x $root/.venv/bin/python ]]; then python=$root/.venv/bin/python; else python=python3; fi
fi
mkdir -p "$out_dir" || { echo "error: cannot create $out_dir" >&2; exit 2; }
out_dir=$(cd "$out_dir" && pwd)
cd "$root" || exit 2
export HF_HUB_OFFLINE=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

started=$SECONDS
failed=0
runs=(vqgan-clip blended upscale)
if [[ ${GPU_CHECK_COMPILE:-0} == 1 ]]; then runs+=(vqgan-clip+compile blended+compile); fi
for run in "${runs[@]}"; do
    bench=${run%+compile}
    name=$bench
    extra=()
    if [[ $run == *+compile ]]; then name=$bench-compile extra=(--compile); fi
    # A bench that is not in this checkout yet is reported, and the others still run.
    source_file=pipelines/bench/${bench//-/_}.py
    if [[ ! -f $source_file ]]; then
        echo "$bench: no such benchmark in this checkout ($source_file); skipped" >&2
        failed=1
        continue
    fi
    args=(--preset "$preset" "${extra[@]}")
    if grep -q -- '"--device"' "$source_file"; then
        args+=(--device "$device")
    else
        echo "$bench: this bench has no --device option yet; it picks the device itself" >&2
    fi
    # The blended bench's plain reference loop is not needed here (and would double its time).
    [[ $bench == blended ]] && args+=(--no-reference)
    if [[ $preset == tiny ]]; then
        # tiny is a smoke test of this script (and its CI test): toy sizes, one short run each.
        case $bench in
            vqgan-clip) args+=(--size 64 --cutn 4 --steps 1 --no-reference --no-flops) ;;
            blended) args+=(--size 64 --steps 4 --candidates 2) ;;
            upscale) args+=(--size 32 --repeats 1) ;;
        esac
    fi
    left=$((budget - (SECONDS - started)))
    if ((left <= 0)); then
        echo "$name: no time left of the ${budget}s budget; skipped" >&2
        failed=1
        continue
    fi
    echo "$name: running (${left}s left): python -m pipelines.bench $bench ${args[*]}" >&2
    timeout "$left" "$python" -m pipelines.bench "$bench" "${args[@]}" \
        >"$out_dir/$name.out" 2>"$out_dir/$name.log"
    status=$?
    # Only the JSON line goes into BENCH.json; anything else a library printed goes to the log.
    grep '^{' "$out_dir/$name.out" >"$out_dir/$name.json"
    grep -v '^{' "$out_dir/$name.out" >>"$out_dir/$name.log"
    rm -f "$out_dir/$name.out"
    if ((status == 0)) && [[ -s $out_dir/$name.json ]]; then
        echo "$name: $(tail -c 300 "$out_dir/$name.json")" >&2
    else
        echo "$name: FAILED (exit $status); see $out_dir/$name.log" >&2
        failed=1
    fi
done
echo "all benches done in $((SECONDS - started))s; JSON lines in $out_dir" >&2
exit "$failed"
