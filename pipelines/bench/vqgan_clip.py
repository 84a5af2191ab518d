"""``python -m pipelines.bench vqgan-clip``: seconds per VQGAN-CLIP optimisation step.

Prints one JSON line: the median seconds per step of the pipeline, its split (decode, cutouts,
CLIP forward, backward, update), peak RSS, and two yardsticks for the same work:

- a plain reference loop written here the straightforward way (the notebook's structure: one
  latent, a Python loop of crops, the five kornia augmentations in an ``nn.Sequential``, CLIP,
  spherical-distance loss, Adam), timed on the same models in the same process;
  ``ratio_to_reference`` is our time over its time;
- the compute floor: the FLOPs of one step (torch's FlopCounterMode) over the peak fp32
  throughput measured on this CPU (150–200 GFLOP/s, FACTS.md); ``ratio_to_floor`` is our time over
  the floor at each end of that range.

Each timed loop is preceded by one untimed warm-up step.

It also measures throughput at the /imagine defaults (4 candidates and 200 steps, at --size and
--cutn, 256² and 32 by default), once with ``candidate_batch = "auto"`` and once with 1, so the
gain of batching shows in one run: seconds per step and per job, peak GPU memory
(``torch.cuda.max_memory_allocated``; null on the CPU) and the chunk "auto" chose, with the
GPU's name and the torch and CUDA versions.
``--device cuda --preset random-full`` is the GPU benchmark; ``--device cpu --preset tiny`` is
what the tests run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipelines import cutouts as cutout_settings
from pipelines.cli_common import candidate_batch_argument
from pipelines.clip_models import ClipBundle
from pipelines.interface import InvalidRequest
from pipelines.settings import ModelSettings
from pipelines.straight_through import clamp_with_grad
from pipelines.vqgan import VQGAN
from pipelines.vqgan_clip import ImagineRequest, VqganClipPipeline, VqganClipRun

PROMPT = "a watercolour painting of a lighthouse on a cliff at dawn"
PEAK_GFLOPS = (150.0, 200.0)
PHASES = ("decode", "cutouts", "clip_forward", "backward", "update")
# The /imagine defaults of config.toml's [imagine] (candidates, steps) the throughput figures are
# measured at; size and cutn are --size and --cutn, whose defaults are [imagine]'s too.
DEFAULT_CANDIDATES, DEFAULT_JOB_STEPS = 4, 200


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("vqgan-clip", help="time VQGAN-CLIP optimisation steps")
    parser.add_argument("--preset", choices=("tiny", "random-full"), default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="[models] dtype (pipelines/precision.py)",
    )
    parser.add_argument(
        "--channels-last",
        choices=("auto", "true", "false"),
        default="auto",
        help="[models] channels_last for the VQGAN decoder",
    )
    parser.add_argument("--compile", action="store_true", help="[models] compile = true")
    parser.add_argument(
        "--candidate-batch",
        default="auto",
        help="[models] candidate_batch for the timed steps: auto or a number",
    )
    parser.add_argument(
        "--no-throughput",
        action="store_true",
        help="skip the auto-versus-one-at-a-time runs at the /imagine defaults",
    )
    parser.add_argument(
        "--throughput-steps", type=int, default=3, help="timed steps of each throughput run"
    )
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true", help="skip the plain reference loop")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile", action="store_true", help="also print torch's top operators of one step"
    )
    parser.set_defaults(run=run)
    return parser


class PhaseClock:
    """Sums wall time per named phase; the pipeline's step calls it around each phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


def summarise(
    step_seconds: list[float], cpu_seconds: list[float], clocks: list[PhaseClock]
) -> dict[str, Any]:
    return {
        "median_s_per_step": round(statistics.median(step_seconds), 3),
        "steps_s": [round(s, 3) for s in step_seconds],
        # CPU seconds of all this process's threads: unlike wall time, hardly inflated when other
        # processes share the cores. Divided by the thread count it estimates an unshared step.
        "median_cpu_s_per_step": round(statistics.median(cpu_seconds), 3),
        "unshared_estimate_s_per_step": round(
            statistics.median(cpu_seconds) / torch.get_num_threads(), 3
        ),
        "breakdown_s": {
            phase: round(statistics.median(c.seconds.get(phase, 0.0) for c in clocks), 3)
            for phase in PHASES
        },
    }


def time_steps(
    step: Callable[[PhaseClock], object], steps: int, warmups: int = 1
) -> dict[str, Any]:
    for _ in range(warmups):
        step(PhaseClock())
    times, cpu_times, clocks = [], [], []
    for _ in range(steps):
        clock = PhaseClock()
        started, cpu_started = time.perf_counter(), time.process_time()
        step(clock)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
        clocks.append(clock)
    return summarise(times, cpu_times, clocks)


# --- the plain reference loop ------------------------------------------------------------------


def reference_augmentations() -> nn.Module:
    """The same five kornia augmentations, chained the notebook's way (a plain Sequential)."""
    return nn.Sequential(*cutout_settings.build_augmentations().children())


def reference_loop(
    vqgan: VQGAN, clip: ClipBundle, request: ImagineRequest, steps: int
) -> dict[str, Any]:
    """The same step written plainly: what a first implementation of the notebook looks like."""
    torch.manual_seed(request.seed or 0)
    device = clip.device
    factor = vqgan.downsample_factor
    rows, cols = request.height // factor, request.width // factor
    codebook = vqgan.codebook.detach()
    indices = torch.randint(codebook.shape[0], (rows * cols,)).to(device)
    one_hot = F.one_hot(indices, codebook.shape[0])
    z = (one_hot.float() @ codebook).view(1, rows, cols, -1).permute(0, 3, 1, 2)
    z = z.clone().requires_grad_(True)
    z_min = codebook.min(dim=0).values.view(1, -1, 1, 1)
    z_max = codebook.max(dim=0).values.view(1, -1, 1, 1)
    optimizer = torch.optim.Adam([z], lr=request.lr, betas=(0.9, 0.999))
    augs = reference_augmentations()
    with torch.no_grad():
        text = F.normalize(clip.encode_text([PROMPT]), dim=-1)
    cut_size = clip.input_size

    def step(clock: PhaseClock) -> None:
        optimizer.zero_grad()
        with clock("decode"):
            z_q, _, _ = vqgan.quantize(z)
            image = clamp_with_grad(vqgan.decode(z_q).add(1).div(2), 0, 1)
        with clock("cutouts"):
            side_y, side_x = image.shape[2:]
            max_size = min(side_x, side_y)
            min_size = min(side_x, side_y, cut_size)
            pieces = []
            for _ in range(request.cutn):
                size = int(torch.rand([]) ** request.cut_pow * (max_size - min_size) + min_size)
                x = int(torch.randint(0, side_x - size + 1, ()))
                y = int(torch.randint(0, side_y - size + 1, ()))
                crop = image[:, :, y : y + size, x : x + size]
                pieces.append(F.adaptive_avg_pool2d(crop, cut_size))
            batch = clamp_with_grad(augs(torch.cat(pieces)), 0, 1)
        with clock("clip_forward"):
            embeddings = F.normalize(clip.model.encode_image(clip.normalize(batch)).float(), dim=-1)
            distances = (embeddings[:, None] - text[None]).norm(dim=2).div(2).arcsin().pow(2).mul(2)
            loss = distances.mean() + request.z_reg() * z.pow(2).mean()
        with clock("backward"):
            loss.backward()
        with clock("update"):
            optimizer.step()
            with torch.no_grad():
                z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))

    return time_steps(synchronised(device, step), steps)


# --- FLOPs and the run ---------------------------------------------------------------------------


def count_step_flops(run: VqganClipRun) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run.step()
    return int(counter.get_total_flops())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def channels_last_setting(text: str) -> bool | str:
    return "auto" if text == "auto" else text == "true"


def settings_for(args: argparse.Namespace, candidate_batch: int | str) -> ModelSettings:
    return ModelSettings(
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        candidate_batch=candidate_batch,
        channels_last=channels_last_setting(args.channels_last),
        compile=args.compile,
    )


def device_facts(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        # The same keys as the blended and upscale benches' JSON.
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def synchronised(device: torch.device, step: Callable[..., object]) -> Callable[..., object]:
    """``step`` followed by waiting for the GPU, so wall time covers the work queued."""
    if device.type != "cuda":
        return step

    def timed(*args: Any) -> object:
        result = step(*args)
        torch.cuda.synchronize(device)
        return result

    return timed


def warmups(run: VqganClipRun) -> int:
    """Untimed steps before timing: one, and one more when "auto" still has to measure (its
    first step runs one candidate at a time), so the timed steps all run the chosen chunk and
    its first-use costs (allocation, cuDNN's algorithm search, compilation) are paid already."""
    return 2 if run.candidate_batch is None else 1


def throughput(
    pipeline: VqganClipPipeline, args: argparse.Namespace, candidate_batch: int | str
) -> dict[str, Any]:
    """Seconds per step and per job at the /imagine defaults with one candidate_batch setting."""
    pipeline.candidate_batch = candidate_batch
    device = pipeline.device
    request = ImagineRequest(
        PROMPT,
        seed=args.seed,
        steps=DEFAULT_JOB_STEPS,
        width=args.size,
        height=args.size,
        cutn=args.cutn,
        candidates=DEFAULT_CANDIDATES,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    run = pipeline.start(request, args.seed)
    timed = time_steps(synchronised(device, run.step), args.throughput_steps, warmups(run))
    started = time.perf_counter()
    with torch.no_grad():
        run.scores(run.decode())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    finish = time.perf_counter() - started
    per_step = timed["median_s_per_step"]
    return {
        "candidate_batch_setting": candidate_batch,
        "candidate_batch_used": run.candidate_batch,
        "s_per_step": per_step,
        "steps_s": timed["steps_s"],
        # Estimated, not measured: the job's steps at the median step time, plus its final
        # decode and ranking (measured once).
        "s_per_job_estimated": round(per_step * DEFAULT_JOB_STEPS + finish, 2),
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if device.type == "cuda"
        else None,
    }


def throughput_figures(pipeline: VqganClipPipeline, args: argparse.Namespace) -> dict[str, Any]:
    configured = pipeline.candidate_batch
    try:
        auto = throughput(pipeline, args, "auto")
        if auto["candidate_batch_used"] == 1:
            # "auto" chose one at a time (always so on a CPU): the same work, not rerun.
            sequential = {**auto, "candidate_batch_setting": 1}
        else:
            sequential = throughput(pipeline, args, 1)
    finally:
        pipeline.candidate_batch = configured
    return {
        "candidates": DEFAULT_CANDIDATES,
        "cutn": args.cutn,
        "size": args.size,
        "job_steps": DEFAULT_JOB_STEPS,
        "auto": auto,
        "one_at_a_time": sequential,
        "speedup_auto_vs_one": round(sequential["s_per_step"] / auto["s_per_step"], 3),
    }


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        batch = candidate_batch_argument(args.candidate_batch)
        settings = settings_for(args, batch)
    except (InvalidRequest, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_started = time.perf_counter()
    pipeline = VqganClipPipeline.from_settings(settings)
    load_seconds = time.perf_counter() - load_started
    device = pipeline.device
    request = ImagineRequest(
        PROMPT,
        seed=args.seed,
        steps=args.steps + 2,
        width=args.size,
        height=args.size,
        cutn=args.cutn,
        candidates=args.candidates,
    )
    timed_run = pipeline.start(request, args.seed)
    ours = time_steps(synchronised(device, timed_run.step), args.steps, warmups(timed_run))
    figures: dict[str, Any] = {
        "bench": "vqgan-clip",
        "preset": args.preset,
        **device_facts(device),
        "dtype": args.dtype,
        "channels_last": pipeline.decoder.channels_last,
        "compile": pipeline.decoder.compiled,
        "size": args.size,
        "cutn": args.cutn,
        "candidates": args.candidates,
        "candidate_batch": batch,
        "threads": torch.get_num_threads(),
        "load_s": round(load_seconds, 2),
        **ours,
    }
    if not args.no_reference:
        reference = reference_loop(pipeline.vqgan, pipeline.clip, request, args.steps)
        figures["reference"] = reference
        figures["ratio_to_reference"] = round(
            ours["median_s_per_step"] / reference["median_s_per_step"], 3
        )
        figures["cpu_ratio_to_reference"] = round(
            ours["median_cpu_s_per_step"] / reference["median_cpu_s_per_step"], 3
        )
    if not args.no_flops:
        flops = count_step_flops(pipeline.start(request, args.seed))
        floors = [flops / (peak * 1e9) for peak in PEAK_GFLOPS]
        figures["gflop_per_step"] = round(flops / 1e9, 1)
        # The floor uses this CPU's measured peak; on a GPU compare gflop_per_step with its own.
        if device.type == "cpu":
            figures["floor_s_per_step"] = [round(f, 2) for f in floors]
            figures["ratio_to_floor"] = [round(ours["median_s_per_step"] / f, 2) for f in floors]
            unshared = ours["unshared_estimate_s_per_step"]
            figures["unshared_ratio_to_floor"] = [round(unshared / f, 2) for f in floors]
    if not args.no_throughput:
        figures["throughput"] = throughput_figures(pipeline, args)
    if args.profile:
        profile_one_step(pipeline.start(request, args.seed))
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(figures))
    return 0


def profile_one_step(run: VqganClipRun) -> None:
    run.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run.step()
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(table, file=sys.stderr)
