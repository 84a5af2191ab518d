"""Shared inputs for the Blended Latent Diffusion tests: tiny models, a 64² image and mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.blended import BlendedLatentDiffusionPipeline
from pipelines.clip_models import TINY_CLIP, ClipSpec, load_clip
from pipelines.diffusion_models import load_diffusion
from pipelines.settings import ModelSettings

SIZE = 64
# The edited square, in pixels: rows, then columns.
MASK_ROWS = slice(16, 40)
MASK_COLS = slice(20, 44)


def tiny_settings(cache_dir: Path) -> ModelSettings:
    return ModelSettings(preset="tiny", device="cpu", cache_dir=cache_dir)


def tiny_pipeline(cache_dir: Path, **options: object) -> BlendedLatentDiffusionPipeline:
    components = load_diffusion(tiny_settings(cache_dir))
    ranker = load_clip(ClipSpec(TINY_CLIP), torch.device("cpu"))
    return BlendedLatentDiffusionPipeline(components, ranker, **options)  # type: ignore[arg-type]


def source_image(width: int = SIZE, height: int = SIZE) -> Image.Image:
    """Smooth colour gradients with a dark disc: structured, so every stage has something to do."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    red = xs / max(width - 1, 1)
    green = ys / max(height - 1, 1)
    blue = 0.5 + 0.5 * np.sin(xs / 5.0) * np.cos(ys / 7.0)
    rgb = np.stack([red, green, blue], axis=-1)
    disc = (xs - width * 0.7) ** 2 + (ys - height * 0.3) ** 2 < (min(width, height) * 0.15) ** 2
    rgb[disc] *= 0.2
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")


def mask_array(width: int = SIZE, height: int = SIZE) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[MASK_ROWS, MASK_COLS] = True
    return mask


def mask_image(width: int = SIZE, height: int = SIZE) -> Image.Image:
    return Image.fromarray(mask_array(width, height).astype(np.uint8) * 255, "L")
