"""Image prompts: an image whose look guides the optimisation like a weighted text prompt.

An image prompt's target is the mean CLIP embedding of augmented cutouts of the **whole** image,
drawn by the same :class:`~pipelines.cutouts.MakeCutouts` (random square crops, kornia's
augmentations) that the optimised image is scored with. So the target and the image being made
are seen the same way, and a wide picture's sides count as much as its centre: CLIP's own
preprocessing (one centre square) would drop them.

On the command line an image prompt is ``IMAGE[:weight[:stop]]``. The rule for paths that
contain colons: the argument is first taken as a path as it stands; only if no file exists
there are a trailing ``:weight`` or ``:weight:stop`` (plain numbers) taken off it. So
``a:b.png`` is the file ``a:b.png``, ``a:b.png:0.5`` is that file at weight 0.5, and a file
literally named ``cat.png:2`` is taken whole when it exists.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.clip_models import ClipBundle
from pipelines.cutouts import DEFAULT_AUGMENTATIONS, MakeCutouts
from pipelines.image_io import pil_to_tensor, to_rgb
from pipelines.interface import InvalidRequest
from pipelines.prompts import MAX_ABS_WEIGHT

# The target is computed once per run, so it can afford more cutouts than a step: with a small
# cutn a handful of random crops would make a noisy target that misses parts of the image.
MIN_CUTOUTS = 32
# CLIP sees crops resized to its input; a source a few times that size keeps every crop sharp
# while a phone photo does not become a 300 MB tensor.
SOURCE_SIDE_FACTOR = 4

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TRAILING_FIELDS = re.compile(rf"^(?P<path>.+?):(?P<weight>{_NUMBER})(?::(?P<stop>{_NUMBER}))?$")


@dataclass(frozen=True)
class ImagePromptArgument:
    """``IMAGE[:weight[:stop]]`` from the command line, split."""

    path: Path
    weight: float = 1.0
    stop: float | None = None


def parse_image_prompt_argument(text: str) -> ImagePromptArgument:
    """Split ``IMAGE[:weight[:stop]]``; see the module docstring for paths with colons."""
    if Path(text).exists():
        return ImagePromptArgument(Path(text))
    fields = _TRAILING_FIELDS.match(text)
    if fields is None:
        return ImagePromptArgument(Path(text))  # opening it will say it does not exist
    weight = float(fields.group("weight"))
    stop = None if fields.group("stop") is None else float(fields.group("stop"))
    where = f"--image-prompt {text!r}"
    if not math.isfinite(weight) or abs(weight) > MAX_ABS_WEIGHT:
        raise InvalidRequest(
            f"{where}: the weight must be between -{MAX_ABS_WEIGHT:g} and {MAX_ABS_WEIGHT:g}"
        )
    if stop is not None and not math.isfinite(stop):
        raise InvalidRequest(f"{where}: the stop must be a finite number")
    return ImagePromptArgument(Path(fields.group("path")), weight, stop)


def source_pixels(image: Image.Image, clip: ClipBundle) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], the whole image at most a few times CLIP's input per side."""
    small = to_rgb(image)
    limit = SOURCE_SIDE_FACTOR * clip.input_size
    small.thumbnail((limit, limit), Image.LANCZOS)
    return pil_to_tensor(small).to(clip.device)


@torch.no_grad()
def embed_image_prompt(
    clip: ClipBundle,
    image: Image.Image,
    cutn: int,
    cut_pow: float,
    seed: int,
    augmentations: str = DEFAULT_AUGMENTATIONS,
) -> torch.Tensor:
    """(D,) unit-norm: the mean embedding of augmented cutouts of the whole image.

    The cutouts come from their own seeded stream, so a run's target is repeatable and the
    caller's random state is left as it was.
    """
    count = max(cutn, MIN_CUTOUTS)
    # The run's own augmentation set, so the target is seen the way the image will be.
    cutouts = MakeCutouts(clip.input_size, count, cut_pow, augmentations)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = cutouts(source_pixels(image, clip))[0]
    embeddings = F.normalize(clip.encode_image(views).float(), dim=-1)
    return F.normalize(embeddings.mean(dim=0), dim=-1)
