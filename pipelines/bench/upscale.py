"""``python -m pipelines.bench upscale``: seconds per upscaled image, and the memory it took.

Prints one JSON line: median seconds per image of ``--size``² input (after one untimed warm-up
run), the tile size and overlap, peak GPU memory allocated (``null`` on the CPU), peak RSS, the
GPU's name (``null`` without one), and the torch and CUDA versions. ``--device cpu --preset tiny``
runs anywhere in seconds; ``--preset random-full`` is Real-ESRGAN x4plus's architecture (the
real work of the default model) and is meant for a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from typing import Any

import torch
from PIL import Image

from pipelines.settings import PRESETS, ModelSettings
from pipelines.upscale import UpscalePipeline, UpscaleRequest


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    defaults = UpscaleRequest.__dataclass_fields__
    parser = subparsers.add_parser("upscale", help="time upscaling one image")
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--tile", type=int, default=defaults["tile"].default)
    parser.add_argument("--overlap", type=int, default=defaults["overlap"].default)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.set_defaults(run=run)
    return parser


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = ModelSettings(preset=args.preset, device=args.device, dtype=args.dtype)
        pipeline = UpscalePipeline.from_settings(settings)
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (args.size, args.size, 3), generator=generator)
        request = UpscaleRequest(
            Image.fromarray(pixels.to(torch.uint8).numpy(), "RGB"),
            tile=args.tile,
            overlap=args.overlap,
            max_input_side=0,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    device = pipeline.device
    cuda = device.type == "cuda"
    pipeline(request)  # warm-up: kernels chosen, memory pools filled
    _synchronize(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(max(1, args.repeats)):
        started = time.perf_counter()
        result = pipeline(request)
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    figures: dict[str, Any] = {
        "bench": "upscale",
        "preset": args.preset,
        "device": str(device),
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        "input_size": [args.size, args.size],
        "output_size": list(result.images[0].image.size),
        "tile": args.tile,
        "overlap": args.overlap,
        "seconds_per_image": round(statistics.median(seconds), 4),
        "runs_s": [round(s, 4) for s in seconds],
        "peak_gpu_memory_mb": (
            round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None
        ),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(figures))
    return 0
