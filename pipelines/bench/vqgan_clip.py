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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipelines import cutouts as cutout_settings
from pipelines.clip_models import ClipBundle
from pipelines.settings import ModelSettings
from pipelines.straight_through import clamp_with_grad
from pipelines.vqgan import VQGAN
from pipelines.vqgan_clip import ImagineRequest, VqganClipPipeline, VqganClipRun

PROMPT = "a watercolour painting of a lighthouse on a cliff at dawn"
PEAK_GFLOPS = (150.0, 200.0)
PHASES = ("decode", "cutouts", "clip_forward", "backward", "update")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("vqgan-clip", help="time VQGAN-CLIP optimisation steps")
    parser.add_argument("--preset", choices=("tiny", "random-full"), default="tiny")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the plain reference loop"
    )
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


def time_steps(step: Callable[[PhaseClock], object], steps: int) -> dict[str, Any]:
    step(PhaseClock())  # warm-up
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
    factor = vqgan.downsample_factor
    rows, cols = request.height // factor, request.width // factor
    codebook = vqgan.codebook.detach()
    one_hot = F.one_hot(torch.randint(codebook.shape[0], (rows * cols,)), codebook.shape[0])
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
                x = torch.randint(0, side_x - size + 1, ())
                y = torch.randint(0, side_y - size + 1, ())
                crop = image[:, :, y : y + size, x : x + size]
                pieces.append(F.adaptive_avg_pool2d(crop, cut_size))
            batch = clamp_with_grad(augs(torch.cat(pieces)), 0, 1)
        with clock("clip_forward"):
            embeddings = F.normalize(clip.model.encode_image(clip.normalize(batch)).float(), dim=-1)
            distances = (embeddings[:, None] - text[None]).norm(dim=2).div(2).arcsin().pow(2).mul(2)
            loss = distances.mean() + request.z_reg_weight * z.pow(2).mean()
        with clock("backward"):
            loss.backward()
        with clock("update"):
            optimizer.step()
            with torch.no_grad():
                z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))

    return time_steps(step, steps)


# --- FLOPs and the run ---------------------------------------------------------------------------


def count_step_flops(run: VqganClipRun) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run.step()
    return int(counter.get_total_flops())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = ModelSettings(preset=args.preset, device="cpu")
    load_started = time.perf_counter()
    pipeline = VqganClipPipeline.from_settings(settings)
    load_seconds = time.perf_counter() - load_started
    request = ImagineRequest(
        PROMPT,
        seed=args.seed,
        steps=args.steps + 2,
        width=args.size,
        height=args.size,
        cutn=args.cutn,
        candidates=args.candidates,
    )
    ours = time_steps(pipeline.start(request, args.seed).step, args.steps)
    figures: dict[str, Any] = {
        "bench": "vqgan-clip",
        "preset": args.preset,
        "size": args.size,
        "cutn": args.cutn,
        "candidates": args.candidates,
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
        figures["floor_s_per_step"] = [round(f, 2) for f in floors]
        figures["ratio_to_floor"] = [round(ours["median_s_per_step"] / f, 2) for f in floors]
        unshared = ours["unshared_estimate_s_per_step"]
        figures["unshared_ratio_to_floor"] = [round(unshared / f, 2) for f in floors]
    if args.profile:
        profile_one_step(pipeline.start(request, args.seed))
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(figures))
    return 0


def profile_one_step(run: VqganClipRun) -> None:
    import sys

    run.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run.step()
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(table, file=sys.stderr)
