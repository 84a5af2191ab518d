"""``python -m pipelines.bench blended``: seconds per Blended Latent Diffusion edit.

Prints one JSON line: seconds per edit, its split (encode, denoise, decode, ranking, finetune),
peak RSS, and two yardsticks for the same work (equal size, steps and batch):

- a plain reference loop written here after the official script's diffusers path (batched
  classifier-free guidance, per-step blending, one batched decode, no ranking), timed on the same
  models in the same process; ``ratio_to_reference`` is our time over its time;
- the compute floor: FLOPs of that work (counted by torch's FlopCounterMode on shape-only "meta"
  copies of the models) over the peak throughput measured on this machine's CPU (150–200
  GFLOP/s, FACTS.md); ``ratio_to_floor`` is our time over the floor at each end of that range.

Every timed configuration is preceded by a short warm-up edit at the timed size and candidate
count (two steps), so none pays one-off costs (allocation, cuDNN's algorithm search, compilation,
"auto"'s one-candidate measurement) inside the timed runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from pipelines.blended import BACKGROUND_MODES, BlendedLatentDiffusionPipeline, EditRequest
from pipelines.diffusion_models import DiffusionComponents
from pipelines.settings import ModelSettings

PROMPT = "a bowl of ripe oranges on a wooden table"
# Peak fp32 throughput measured here (FACTS.md): about 150 GFLOP/s for 3×3 convolutions and
# 200 GFLOP/s for matmuls. The floor uses both ends.
PEAK_GFLOPS = (150.0, 200.0)
# The CPU figures in docs/benchmarks.md were taken at 256² with 10 steps (a 50-step 512² edit
# takes over half an hour on 2 cores); on CUDA the bench runs an /edit at its defaults.
CPU_DEFAULTS = {"size": 256, "steps": 10}
GPU_DEFAULTS = {"size": 512, "steps": 50}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("blended", help="time one Blended Latent Diffusion edit")
    parser.add_argument("--preset", choices=("tiny", "random-full"), default="tiny")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument(
        "--size",
        type=int,
        help=f"image side in pixels (default: {CPU_DEFAULTS['size']} on a CPU, the /edit "
        f"default {GPU_DEFAULTS['size']} on CUDA)",
    )
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument(
        "--steps",
        type=int,
        help=f"DDIM steps (default: {CPU_DEFAULTS['steps']} on a CPU, the /edit default "
        f"{GPU_DEFAULTS['steps']} on CUDA)",
    )
    parser.add_argument("--blend-start", type=float, default=0.25)
    parser.add_argument("--background", choices=BACKGROUND_MODES, default="none")
    parser.add_argument("--repeats", type=int, default=1, help="timed edits (median reported)")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the reference loop (halves the time)"
    )
    parser.add_argument(
        "--no-batch-1",
        action="store_true",
        help="skip the second run with candidate_batch = 1",
    )
    parser.add_argument(
        "--candidate-batch", default="auto", help='"auto" or N ([models] candidate_batch)'
    )
    parser.add_argument(
        "--channels-last",
        choices=("auto", "true", "false"),
        default="auto",
        help="[models] channels_last",
    )
    parser.add_argument("--compile", action="store_true", help="[models] compile = true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)
    return parser


def bench_inputs(size: int) -> tuple[Image.Image, Image.Image]:
    """A structured image and a centred square mask covering a quarter of it."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    rgb = np.stack([xs, ys, 0.5 + 0.5 * np.sin(12 * xs) * np.cos(9 * ys)], axis=-1)
    image = Image.fromarray((rgb * 255).astype(np.uint8), "RGB")
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return image, Image.fromarray(mask, "L")


@torch.no_grad()
def reference_edit(
    c: DiffusionComponents,
    image: Image.Image,
    mask: Image.Image,
    prompt: str,
    candidates: int,
    steps: int,
    blend_start: float,
    guidance: float,
    seed: int,
) -> list[Image.Image]:
    """What the official script's diffusers loop does, written plainly: the yardstick."""
    generator = torch.Generator().manual_seed(seed)
    device, dtype = c.device, c.dtype

    def embed(texts: list[str]) -> torch.Tensor:
        ids = c.tokenizer(
            texts,
            padding="max_length",
            max_length=c.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return c.text_encoder(ids.to(device))[0]

    text = torch.cat([embed([""] * candidates), embed([prompt] * candidates)])
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    pixels = (pixels[None] * 2 - 1).to(device, dtype)
    source = c.vae.encode(pixels).latent_dist.sample(generator=None) * c.latent_scaling
    height, width = source.shape[-2:]
    small = mask.convert("L").resize((width, height), Image.Resampling.NEAREST)
    latent_mask = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255 > 0.5)
    latent_mask = latent_mask[None, None].to(device, dtype)

    scheduler = DDIMScheduler.from_config(c.scheduler_config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps[int(steps * blend_start) :]
    noise = torch.randn((candidates, *source.shape[1:]), generator=generator).to(device, dtype)
    latents = scheduler.add_noise(source, noise, timesteps[:1])
    for t in timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_pred = c.unet(model_input, t, encoder_hidden_states=text).sample
        uncond, cond = noise_pred.chunk(2)
        noise_pred = uncond + guidance * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
        blend_noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
        noised_source = scheduler.add_noise(source, blend_noise, t.reshape(1))
        latents = latents * latent_mask + noised_source * (1 - latent_mask)
    decoded = c.vae.decode(latents / c.latent_scaling).sample
    decoded = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return [Image.fromarray((d * 255).round().astype(np.uint8)) for d in decoded]


def reference_gflop(c: DiffusionComponents, size: int, candidates: int, denoising: int) -> float:
    """FLOPs of the reference work: one encode, the UNet steps, one decode per candidate."""
    flops = stage_gflop(c, size, candidates)
    return denoising * flops["unet_step"] + candidates * flops["decode"] + flops["encode"]


def stage_gflop(c: DiffusionComponents, size: int, candidates: int) -> dict[str, float]:
    """GFLOP of one UNet step (batch 2 × candidates), one decode and one encode at ``size``²,
    counted by FlopCounterMode on shape-only "meta" copies of the models (no arithmetic)."""
    unet = _meta_copy(c.unet)
    vae = _meta_copy(c.vae)
    latent = size // c.vae_scale_factor
    hidden = c.text_encoder.config.hidden_size
    with torch.device("meta"):
        sample = torch.empty(2 * candidates, 4, latent, latent)
        context = torch.empty(2 * candidates, c.tokenizer.model_max_length, hidden)
        image = torch.empty(1, 3, size, size)
        one_latent = torch.empty(1, 4, latent, latent)
        timestep = torch.tensor(500)
    counts = {}
    for name, call in (
        ("unet_step", lambda: unet(sample, timestep, encoder_hidden_states=context)),
        ("decode", lambda: vae.decode(one_latent)),
        ("encode", lambda: vae.encode(image)),
    ):
        with FlopCounterMode(display=False) as counter:
            call()
        counts[name] = counter.get_total_flops() / 1e9
    return counts


def _meta_copy(module: torch.nn.Module) -> Any:
    """The same architecture with shape-only weights, built from the module's config."""
    with torch.device("meta"):
        return type(module).from_config(module.config).float()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _timed_edits(
    pipeline: BlendedLatentDiffusionPipeline, request: EditRequest, repeats: int
) -> dict[str, Any]:
    """Median seconds per edit and per denoising step, the split, peak GPU memory, chunk."""
    device = pipeline.components.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds: list[float] = []
    splits: list[dict[str, float]] = []
    denoising = 0
    for _ in range(repeats):
        start = time.perf_counter()
        result = pipeline(request)
        if cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
        splits.append(dict(pipeline.last_timings))
        denoising = int(result.settings["denoising_steps_run"])
    peak: float | None = None
    if cuda:
        # "auto" measured its cost (resetting this counter) in the warm-up, not in these runs.
        peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    split = {
        stage: round(statistics.median(s.get(stage, 0.0) for s in splits), 3)
        for stage in ("encode", "denoise", "decode", "ranking", "finetune")
    }
    return {
        "seconds_per_edit": round(statistics.median(seconds), 3),
        "runs_s": [round(x, 3) for x in seconds],
        "seconds_per_step": round(split["denoise"] / max(denoising, 1), 4),
        "split": split,
        "peak_gpu_memory_mb": peak,
        "decode_chunk": pipeline.decode_chunks.chosen,
        "rank_chunk": pipeline.rank_chunks.chosen,
    }


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        batch = args.candidate_batch
        settings = ModelSettings(
            preset=args.preset,
            device=args.device,
            dtype=args.dtype,
            candidate_batch=int(batch) if batch.isdigit() else batch,
            channels_last={"true": True, "false": False}.get(args.channels_last, "auto"),
            compile=args.compile,
        )
        pipeline = BlendedLatentDiffusionPipeline.from_settings(settings)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    c = pipeline.components
    cuda = c.device.type == "cuda"
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    size = args.size or defaults["size"]
    steps = args.steps or defaults["steps"]
    image, mask = bench_inputs(size)
    request = EditRequest(
        PROMPT,
        image,
        mask,
        candidates=args.candidates,
        steps=steps,
        blend_start=args.blend_start,
        seed=args.seed,
        background=args.background,
        max_side=max(size, 64),
        preview_every=steps + 1,
    )
    request.validate()
    # Warm up at the timed size and candidate count: first-use costs (cuDNN's algorithm search,
    # allocator growth, compilation) and "auto"'s one-candidate measurement land here, not in
    # the timed runs, and batch-1 runs after it get no head start.
    warm = dataclasses.replace(request, steps=2, preview_every=3)
    pipeline(warm)

    ours = _timed_edits(pipeline, request, args.repeats)
    denoising = steps - int(steps * args.blend_start)
    stages = stage_gflop(c, size, args.candidates)
    gflop = denoising * stages["unet_step"] + args.candidates * stages["decode"] + stages["encode"]
    report: dict[str, Any] = {
        "bench": "blended",
        "preset": args.preset,
        "size": size,
        "candidates": args.candidates,
        "steps": steps,
        "denoising_steps": denoising,
        "background": args.background,
        "device": str(c.device),
        "dtype": str(c.dtype).removeprefix("torch."),
        "vae_dtype": str(c.vae.dtype).removeprefix("torch."),
        "channels_last": list(c.channels_last),
        "compiled": list(c.compiled),
        "threads": torch.get_num_threads(),
        "candidate_batch": settings.candidate_batch,
        **ours,
        "reference_gflop": round(gflop, 1),
        "gflop_per_step": round(stages["unet_step"], 1),
    }
    if not cuda:
        # The floor uses this CPU's measured peaks; a GPU's are in docs/benchmarks.md.
        floor = [gflop / peak for peak in PEAK_GFLOPS]
        report["floor_seconds"] = [round(f, 3) for f in floor]
        report["ratio_to_floor"] = [round(ours["seconds_per_edit"] / f, 3) for f in floor]
    if not args.no_batch_1:
        one_at_a_time = BlendedLatentDiffusionPipeline(c, pipeline.ranker, candidate_batch=1)
        one_at_a_time(warm)  # its own warm-up: batch-1 shapes are new to cuDNN too
        report["candidate_batch_1"] = _timed_edits(one_at_a_time, request, args.repeats)
    if not args.no_reference:
        reference_edit(c, image, mask, PROMPT, args.candidates, 2, args.blend_start, 7.5, 0)
        reference_seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            reference_edit(
                c,
                image,
                mask,
                PROMPT,
                args.candidates,
                steps,
                args.blend_start,
                request.guidance,
                args.seed,
            )
            reference_seconds.append(time.perf_counter() - start)
        reference = statistics.median(reference_seconds)
        report["reference_seconds"] = round(reference, 3)
        report["ratio_to_reference"] = round(ours["seconds_per_edit"] / reference, 3)
    report["peak_rss_mb"] = _peak_rss_mb()
    report["gpu"] = torch.cuda.get_device_name(c.device) if cuda else None
    report["torch"] = torch.__version__
    report["cuda"] = torch.version.cuda
    print(json.dumps(report))
    return 0
