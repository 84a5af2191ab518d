"""``python -m pipelines.bench blended``: seconds per Blended Latent Diffusion edit.

Prints one JSON line: seconds per edit, its split (encode, denoise, decode, ranking, finetune),
peak RSS, and two yardsticks for the same work (equal size, steps and batch):

- a plain reference loop written here after the official script's diffusers path (batched
  classifier-free guidance, per-step blending, one batched decode, no ranking), timed on the same
  models in the same process; ``ratio_to_reference`` is our time over its time;
- the compute floor: FLOPs of that work (counted by torch's FlopCounterMode on shape-only "meta"
  copies of the models) over the peak throughput measured on this machine's CPU (150–200
  GFLOP/s, FACTS.md); ``ratio_to_floor`` is our time over the floor at each end of that range.

Both runs are preceded by a tiny warm-up edit so neither pays one-off allocation costs.
"""

from __future__ import annotations

import argparse
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


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("blended", help="time one Blended Latent Diffusion edit")
    parser.add_argument("--preset", choices=("tiny", "random-full"), default="tiny")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--blend-start", type=float, default=0.25)
    parser.add_argument("--background", choices=BACKGROUND_MODES, default="none")
    parser.add_argument("--repeats", type=int, default=1, help="timed edits (median reported)")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the reference loop (halves the time)"
    )
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
    unet = _meta_copy(c.unet)
    vae = _meta_copy(c.vae)
    factor = c.vae_scale_factor
    latent = size // factor
    hidden = c.text_encoder.config.hidden_size
    with torch.device("meta"):
        sample = torch.empty(2 * candidates, 4, latent, latent)
        context = torch.empty(2 * candidates, c.tokenizer.model_max_length, hidden)
        image = torch.empty(1, 3, size, size)
        one_latent = torch.empty(1, 4, latent, latent)
        timestep = torch.tensor(500)
    with FlopCounterMode(display=False) as counter:
        unet(sample, timestep, encoder_hidden_states=context)
    unet_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        vae.decode(one_latent)
    decode_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        vae.encode(image)
    encode_flops = counter.get_total_flops()
    return (denoising * unet_flops + candidates * decode_flops + encode_flops) / 1e9


def _meta_copy(module: torch.nn.Module) -> Any:
    """The same architecture with shape-only weights, built from the module's config."""
    with torch.device("meta"):
        return type(module).from_config(module.config).float()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = ModelSettings(preset=args.preset)
    pipeline = BlendedLatentDiffusionPipeline.from_settings(settings)
    c = pipeline.components
    image, mask = bench_inputs(args.size)
    request = EditRequest(
        PROMPT,
        image,
        mask,
        candidates=args.candidates,
        steps=args.steps,
        blend_start=args.blend_start,
        seed=args.seed,
        background=args.background,
        max_side=max(args.size, 64),
        preview_every=args.steps + 1,
    )
    request.validate()
    warm_image, warm_mask = bench_inputs(64)
    warm = EditRequest(PROMPT, warm_image, warm_mask, candidates=1, steps=2, seed=0)
    pipeline(warm)

    seconds: list[float] = []
    splits: list[dict[str, float]] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        pipeline(request)
        seconds.append(time.perf_counter() - start)
        splits.append(dict(pipeline.last_timings))
    ours = statistics.median(seconds)
    split = {
        stage: round(statistics.median(s.get(stage, 0.0) for s in splits), 3)
        for stage in ("encode", "denoise", "decode", "ranking", "finetune")
    }
    denoising = args.steps - int(args.steps * args.blend_start)
    gflop = reference_gflop(c, args.size, args.candidates, denoising)
    floor = [gflop / peak for peak in PEAK_GFLOPS]
    report: dict[str, Any] = {
        "bench": "blended",
        "preset": args.preset,
        "size": args.size,
        "candidates": args.candidates,
        "steps": args.steps,
        "denoising_steps": denoising,
        "background": args.background,
        "device": str(c.device),
        "dtype": str(c.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "seconds_per_edit": round(ours, 3),
        "split": split,
        "reference_gflop": round(gflop, 1),
        "floor_seconds": [round(f, 3) for f in floor],
        "ratio_to_floor": [round(ours / f, 3) for f in floor],
    }
    if not args.no_reference:
        reference_edit(c, warm_image, warm_mask, PROMPT, 1, 2, 0.25, 7.5, 0)
        reference_seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            reference_edit(
                c,
                image,
                mask,
                PROMPT,
                args.candidates,
                args.steps,
                args.blend_start,
                request.guidance,
                args.seed,
            )
            reference_seconds.append(time.perf_counter() - start)
        reference = statistics.median(reference_seconds)
        report["reference_seconds"] = round(reference, 3)
        report["ratio_to_reference"] = round(ours / reference, 3)
    report["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(report))
    return 0
