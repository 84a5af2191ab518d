"""VQGAN-CLIP: Crowson et al. 2022, "VQGAN-CLIP: Open Domain Image Generation and Editing with
Natural Language Guidance" (arXiv:2204.08583). Read it top to bottom beside the paper.

An image is a VQGAN latent ``z``. Each step decodes ``z`` to pixels, shows CLIP ``cutn`` augmented
cutouts of it, measures how far their embeddings are from the prompts' embeddings, and moves ``z``
with Adam to shrink that distance. Generation starts ``z`` from random codebook entries; editing
starts it from the encoded init image, optionally changing only a masked region.

The sections below follow the paper:

1. the request and its limits;
2. prompts become targets: text and image embeddings with weights (paper 2.3, prompt addition);
3. the latent and its synthesis: straight-through quantiser, decoder, clamp (paper 2.1);
4. the loss: squared spherical distance of cutouts to targets (paper 2.2, 2.3);
5. regularisation (paper 2.4) and, for editing, the pull toward the initial latent;
6. masks: a user mask or a self-mask from a phrase (appendix G.2), applied to the gradient;
7. the optimisation loop (Adam, z kept inside the codebook's range);
8. candidates and ranking, and the pipeline callable the bot and the command line use.

Candidates. ``/imagine`` shows several ranked results, so a run optimises ``candidates``
independent latents together: candidate ``i`` starts from seed ``seed + i`` and draws its cutouts
from its own random stream seeded the same way, and its loss involves only its own latent. The
candidates share one Adam optimiser over the stacked latents; Adam is elementwise, so this is the
same as optimising each alone (candidate ``i`` of seed ``s`` matches candidate 0 of seed
``s + i``). They are forwarded and backpropagated ``candidate_batch`` at a time: one at a time
keeps memory that of one image, more fill a GPU (see :mod:`pipelines.candidate_batching`); the
images are the same either way, to fp32 rounding.
At the end they are ranked by CLIP similarity of the final image to the weighted prompts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.candidate_batching import (
    MemoryProbe,
    auto_candidate_batch,
    fixed_candidate_batch,
    memory_probe_for,
)
from pipelines.clip_models import ClipBundle
from pipelines.cutouts import (
    AUGMENTATION_SETS,
    DEFAULT_AUGMENTATIONS,
    MakeCutouts,
    resize_square,
)
from pipelines.image_io import mask_from_image, pil_to_tensor, tensor_to_pil, to_rgb
from pipelines.image_prompts import embed_image_prompt
from pipelines.interface import (
    CancelCheck,
    Cancelled,
    InvalidRequest,
    PipelineResult,
    ProgressCallback,
    RankedImage,
    attach_mask,
    never_cancel,
    no_progress,
)
from pipelines.precision import (
    Precision,
    apply_determinism,
    apply_tf32,
    autocast,
    decide_precision,
)
from pipelines.prompts import (
    CLIP_CONTEXT_LENGTH,
    MAX_ABS_WEIGHT,
    SHOWN_SEPARATOR,
    Prompt,
    check_weights,
    describe_image_prompts,
    describe_prompts,
    image_prompt_label,
    parse_prompts,
    token_count,
)
from pipelines.self_masking import SelfMask, self_mask, weighted_step
from pipelines.settings import ModelSettings
from pipelines.speedups import FastModule, channels_last_enabled, layout_changed
from pipelines.straight_through import clamp_with_grad
from pipelines.vqgan import VQGAN

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# 1. The request and its limits
# ---------------------------------------------------------------------------------------------

MIN_STEPS, MAX_STEPS = 1, 2000
# Sizes are multiples of 16, the f16 VQGAN's downsampling factor (the tiny one's divides it).
SIZE_MULTIPLE = 16
MIN_SIDE, MAX_SIDE = 64, 1024
MAX_PIXELS = 512 * 512
MIN_CUTN, MAX_CUTN = 1, 128
MAX_CUT_POW = 10.0
MAX_LR = 10.0
MIN_CANDIDATES, MAX_CANDIDATES = 1, 9  # one keycap reaction (1-9) per candidate
MAX_IMAGE_PROMPTS = 8
MAX_SEED = 2**32 - 1
MAX_REGULARISER_WEIGHT = 100.0
# Regularisers when the request leaves them unset (None). Generating from scratch, the paper's
# α·mean(z²) sends low-information codes to zero; editing, that would drag the photo's codes to
# zero, so with an init image it is off and z is pulled toward the photo's latent instead, at the
# same strength the paper gives its own regulariser (Crowson's notebook offers the same pull,
# off by default there).
DEFAULT_Z_REG_WEIGHT = 0.1
DEFAULT_INIT_WEIGHT_EDITING = 0.1
# A mask may differ from the init image in size but not in shape (aspect ratio) beyond this.
MASK_ASPECT_TOLERANCE = 0.01


@dataclass
class ImagineRequest:
    """One VQGAN-CLIP job. Every field has a documented meaning in the README section.

    - ``prompt``: weighted prompts, ``text[:weight[:stop]]`` separated by ``|``
      (see :mod:`pipelines.prompts`). May be empty only when image prompts are given.
    - ``seed``: ``None`` picks one; the result reports it. Candidate ``i`` uses ``seed + i``.
    - ``init_image``: start from this image (editing) instead of random codes (generation). It is
      resized to ``width`` x ``height``.
    - ``mask``: with an init image, only where the mask is white (or opaque) may change. It must
      have the init image's aspect ratio and is resized with it (see :func:`user_mask_pixels`).
    - ``mask_text``: with an init image, a phrase naming what to change; the mask is found by
      CLIP (self-masking) and a structure term keeps the rest close to the original.
    - ``image_prompts``: images whose look guides like a text prompt: the target is the mean
      CLIP embedding of augmented cutouts of the whole image (:mod:`pipelines.image_prompts`).
    - ``image_prompt_weights`` / ``image_prompt_stops``: per image prompt, as a text prompt's
      ``:weight:stop``; empty means weight 1 and no stop for every one.
    - ``init_weight``: pull of ``z`` toward the starting latent, ``init_weight * mean((z - z0)²)``
      (Crowson's meaning; nerdyrodent's "init_weight" is ``z_reg_weight`` here). 0 = off.
      ``None``: ``DEFAULT_INIT_WEIGHT_EDITING`` with an init image, 0 without.
    - ``z_reg_weight``: α of the paper's section 2.4, ``α_t * mean(z²)`` with α decaying linearly
      from ``z_reg_weight`` at the first step toward 0 (``α / steps`` at the last).
      ``None``: ``DEFAULT_Z_REG_WEIGHT`` without an init image, 0 with one.
    - ``augmentations``: the named set of cutout augmentation strengths
      (:data:`pipelines.cutouts.AUGMENTATION_SETS`).
    - ``structure_weight``: weight of the self-masking structure term (only with ``mask_text``).
    - ``preview_every``: a preview reaches ``on_progress`` every this many steps.
    """

    prompt: str
    seed: int | None = None
    steps: int = 400
    width: int = 256
    height: int = 256
    cutn: int = 32
    cut_pow: float = 1.0
    lr: float = 0.15
    candidates: int = 1
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    mask_text: str | None = None
    image_prompts: list[Image.Image] = field(default_factory=list)
    image_prompt_weights: list[float] = field(default_factory=list)
    image_prompt_stops: list[float | None] = field(default_factory=list)
    init_weight: float | None = None
    z_reg_weight: float | None = None
    structure_weight: float = 0.5
    preview_every: int = 10
    augmentations: str = DEFAULT_AUGMENTATIONS

    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ("init_image", "mask", "image_prompts")

    def prompts(self) -> list[Prompt]:
        """The parsed text prompts (none when only image prompts guide)."""
        if not self.prompt.strip() and self.image_prompts:
            return []
        return parse_prompts(self.prompt)

    def z_reg(self) -> float:
        """α at the first step: as given, else the default for generating or editing."""
        if self.z_reg_weight is not None:
            return self.z_reg_weight
        return 0.0 if self.init_image is not None else DEFAULT_Z_REG_WEIGHT

    def init_pull(self) -> float:
        """Weight of the pull toward the starting latent: as given, else the default."""
        if self.init_weight is not None:
            return self.init_weight
        return DEFAULT_INIT_WEIGHT_EDITING if self.init_image is not None else 0.0

    def image_prompt_settings(self) -> tuple[list[float], list[float | None]]:
        """Each image prompt's weight and stop (1 and none unless given)."""
        count = len(self.image_prompts)
        weights = list(self.image_prompt_weights) or [1.0] * count
        stops = list(self.image_prompt_stops) or [None] * count
        return weights, stops

    def reading(self) -> str:
        """How the prompts were read, e.g. ``a red apple (1) · blurry (−1) · image prompt 1
        (0.5)``, for the user to check."""
        parts = [describe_prompts(self.prompts())] if self.prompts() else []
        parts += describe_image_prompts(*self.image_prompt_settings())
        return SHOWN_SEPARATOR.join(parts)

    def validate(self) -> None:
        """Raise InvalidRequest with one clear line for the first thing out of bounds."""
        prompts = self.prompts()
        self._validate_image_prompts(prompts)
        _check_int("steps", self.steps, MIN_STEPS, MAX_STEPS)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, MIN_SIDE, MAX_SIDE)
            if value % SIZE_MULTIPLE:
                nearest = max(MIN_SIDE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)
                raise InvalidRequest(
                    f"{name} must be a multiple of {SIZE_MULTIPLE} (the VQGAN's cell size); "
                    f"got {value}, try {nearest}"
                )
        if self.width * self.height > MAX_PIXELS:
            raise InvalidRequest(
                f"size {self.width}x{self.height} is too large: at most {MAX_PIXELS:,} pixels "
                f"(for example {int(math.sqrt(MAX_PIXELS))}x{int(math.sqrt(MAX_PIXELS))})"
            )
        _check_int("cutn", self.cutn, MIN_CUTN, MAX_CUTN)
        _check_float("cut_pow", self.cut_pow, 0.0, MAX_CUT_POW, open_low=True)
        _check_float("lr", self.lr, 0.0, MAX_LR, open_low=True)
        _check_int("candidates", self.candidates, MIN_CANDIDATES, MAX_CANDIDATES)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("preview_every", self.preview_every, 1, MAX_STEPS)
        for name in ("init_weight", "z_reg_weight", "structure_weight"):
            if getattr(self, name) is not None or name == "structure_weight":
                _check_float(name, getattr(self, name), 0.0, MAX_REGULARISER_WEIGHT)
        if self.augmentations not in AUGMENTATION_SETS:
            raise InvalidRequest(
                f"augmentations must be one of {', '.join(AUGMENTATION_SETS)}, "
                f"got {self.augmentations!r}"
            )
        self._validate_editing()

    def _validate_image_prompts(self, prompts: list[Prompt]) -> None:
        count = len(self.image_prompts)
        if count > MAX_IMAGE_PROMPTS:
            raise InvalidRequest(f"too many image prompts: {count}, at most {MAX_IMAGE_PROMPTS}")
        for name in ("image_prompt_weights", "image_prompt_stops"):
            given = len(getattr(self, name))
            if given not in (0, count):
                raise InvalidRequest(
                    f"{name} has {given} values for {count} image prompt(s): give one each"
                )
        weights, stops = self.image_prompt_settings()
        for index, (weight, stop) in enumerate(zip(weights, stops, strict=True), start=1):
            _check_float(f"image prompt {index}'s weight", weight, -MAX_ABS_WEIGHT, MAX_ABS_WEIGHT)
            if stop is not None:
                _check_float(f"image prompt {index}'s stop", stop, -MAX_ABS_WEIGHT, MAX_ABS_WEIGHT)
        check_weights(
            [(f"text prompt {i}", p.text, p.weight) for i, p in enumerate(prompts, start=1)]
            + [(image_prompt_label(i), "", w) for i, w in enumerate(weights, start=1)]
        )

    def _validate_editing(self) -> None:
        if self.mask is not None and self.mask_text:
            raise InvalidRequest("give either a mask image or mask text, not both")
        if self.mask is not None and self.init_image is None:
            raise InvalidRequest(
                "a mask needs an init image: the mask says which part of it to edit"
            )
        if self.mask_text is not None:
            if not self.mask_text.strip():
                raise InvalidRequest("the mask text is empty: name the part of the image to change")
            if self.init_image is None:
                raise InvalidRequest("mask text needs an init image: it names a part of that image")
            tokens = token_count(self.mask_text)
            if tokens > CLIP_CONTEXT_LENGTH:
                raise InvalidRequest(
                    f"the mask text is too long for CLIP: {tokens} tokens, the limit is "
                    f"{CLIP_CONTEXT_LENGTH} including start and end"
                )
        if self.mask is not None and self.init_image is not None:
            mask_w, mask_h = self.mask.size
            init_w, init_h = self.init_image.size
            if abs(mask_w / mask_h - init_w / init_h) > MASK_ASPECT_TOLERANCE * init_w / init_h:
                raise InvalidRequest(
                    f"the mask is {mask_w}x{mask_h} but the init image is {init_w}x{init_h}: "
                    "the mask must have the image's size or at least its shape (aspect ratio)"
                )
            if not mask_from_image(self.mask).any():
                raise InvalidRequest(
                    "the mask marks nothing to edit: paint the part to change white (or opaque)"
                )


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}")


def _check_float(name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a number, got {value!r}")
    if value > high or value < low or (open_low and value == low):
        bound = "above" if open_low else "at least"
        raise InvalidRequest(f"{name} must be {bound} {low:g} and at most {high:g}, got {value:g}")


def default_size_for(image: Image.Image, pixels: int = 256 * 256) -> tuple[int, int]:
    """A width and height of about ``pixels`` with the image's aspect ratio, within the limits."""
    aspect = image.width / image.height
    width = math.sqrt(pixels * aspect)
    height = width / aspect

    def snap(value: float) -> int:
        side = round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE
        return min(MAX_SIDE, max(MIN_SIDE, side))

    return snap(width), snap(height)


# ---------------------------------------------------------------------------------------------
# 2. Prompts become targets (paper 2.3: several prompts are added, each with its weight)
# ---------------------------------------------------------------------------------------------


@dataclass
class Targets:
    """Unit-norm embeddings (P, D) with weights (P,) and stops (P,; NaN = no stop)."""

    embeddings: torch.Tensor
    weights: torch.Tensor
    stops: torch.Tensor
    labels: list[str]


def clip_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """What CLIP's own preprocessing shows of an image: the centre square, resized."""
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return resize_square(images[:, :, top : top + side, left : left + side], size)


@torch.no_grad()
def encode_targets(
    clip: ClipBundle,
    prompts: list[Prompt],
    image_prompts: list[Image.Image],
    image_weights: list[float] | None = None,
    image_stops: list[float | None] | None = None,
    *,
    cutn: int = 32,
    cut_pow: float = 1.0,
    seed: int = 0,
    augmentations: str = DEFAULT_AUGMENTATIONS,
) -> Targets:
    """Text prompts embed their text; image prompts the mean of augmented cutouts of the whole
    image (see :mod:`pipelines.image_prompts`), with the run's cutout settings and seed."""
    embeddings, weights, stops, labels = [], [], [], []
    if prompts:
        embeddings.append(clip.encode_text([p.text for p in prompts]))
        weights += [p.weight for p in prompts]
        stops += [math.nan if p.stop is None else p.stop for p in prompts]
        labels += [p.text for p in prompts]
    count = len(image_prompts)
    image_weights = image_weights or [1.0] * count
    image_stops = image_stops or [None] * count
    for index, image in enumerate(image_prompts, start=1):
        embedding = embed_image_prompt(clip, image, cutn, cut_pow, seed + index, augmentations)
        embeddings.append(embedding[None])
        weights.append(image_weights[index - 1])
        stop = image_stops[index - 1]
        stops.append(math.nan if stop is None else stop)
        labels.append(image_prompt_label(index))
    return Targets(
        embeddings=F.normalize(torch.cat(embeddings).float(), dim=-1),
        weights=torch.tensor(weights, device=clip.device),
        stops=torch.tensor(stops, device=clip.device),
        labels=labels,
    )


# ---------------------------------------------------------------------------------------------
# 3. The latent and its synthesis (paper 2.1)
# ---------------------------------------------------------------------------------------------


def random_codebook_latent(
    vqgan: VQGAN, rows: int, cols: int, seed: int, device: torch.device
) -> torch.Tensor:
    """(1, C, rows, cols): every cell a codebook entry drawn uniformly (generation)."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(vqgan.codebook.shape[0], (rows * cols,), generator=generator)
    codes = vqgan.codebook.detach()[indices.to(vqgan.codebook.device)]
    return codes.view(1, rows, cols, -1).permute(0, 3, 1, 2).contiguous().to(device)


@torch.no_grad()
def encode_image_latent(vqgan: VQGAN, pixels: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w): the codebook entries of an image in [0, 1] (editing starts here).

    Exact codebook rows, not the quantiser's ``z + (z_q - z)``, which can sit an ulp outside the
    codebook's range and would then be moved by the clamp even where the mask forbids change.
    """
    z = vqgan.encode(pixels * 2 - 1)
    indices = code_indices(vqgan, z)
    codes = vqgan.codebook.detach()[indices.flatten()]
    return codes.view(1, z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2).contiguous()


def synthesize(
    vqgan: VQGAN,
    z: torch.Tensor,
    decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Pixels in [0, 1] from the continuous latent, differentiable with respect to ``z``.

    The quantiser replaces each cell by its nearest code in the forward pass and passes the
    gradient straight through to ``z``; the clamp passes its gradient through too. ``decoder``
    replaces ``vqgan.decode`` with a channels-last or compiled path to the same function.
    """
    decoded = (decoder or vqgan.decode)(vqgan.quantize_straight_through(z))
    return clamp_with_grad(decoded.add(1).div(2), 0.0, 1.0)


def code_indices(vqgan: VQGAN, z: torch.Tensor) -> torch.Tensor:
    """(N, h, w) codebook indices the quantiser picks for ``z``."""
    with torch.no_grad():
        _, _, (_, _, indices) = vqgan.quantize(z)
    return indices.view(z.shape[0], z.shape[2], z.shape[3])


# ---------------------------------------------------------------------------------------------
# 4. The loss: squared spherical distance, weighted and summed over prompts (paper 2.2, 2.3)
# ---------------------------------------------------------------------------------------------


def spherical_distance_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise ``2·arcsin(‖a−b‖/2)²`` of unit vectors a (M, D) and b (P, D) -> (M, P).

    This is half the squared great-circle distance: 0 for equal, π²/2 for opposite vectors.
    """
    chord = (a[:, None, :] - b[None, :, :]).norm(dim=-1)
    return chord.div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def prompt_loss(cutout_embeddings: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Σ_p weight_p · mean over cutouts of distance², a scalar.

    Negative weights push away. A stop switches a prompt's gradient off where it is met: a pulled
    prompt stops pulling a cutout once closer than ``stop``, a pushed one stops pushing once
    farther than ``stop``; the loss value itself is unchanged.
    """
    distances = spherical_distance_sq(F.normalize(cutout_embeddings, dim=-1), targets.embeddings)
    sign = targets.weights.sign()
    active = targets.stops.isnan() | (sign * (distances - targets.stops) > 0)
    distances = torch.where(active, distances, distances.detach())
    return (distances.mean(dim=0) * targets.weights).sum()


def structure_loss(current: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Mean distance² between cutout k of the edited image and cutout k of the original."""
    a = F.normalize(current, dim=-1)
    b = F.normalize(original, dim=-1)
    chord = (a - b).norm(dim=-1)
    return chord.div(2).clamp(max=1.0).arcsin().pow(2).mul(2).mean()


# ---------------------------------------------------------------------------------------------
# 5. Regularisation (paper 2.4) and the pull toward the initial latent
# ---------------------------------------------------------------------------------------------


def z_regulariser_weight(alpha: float, step: int, steps: int) -> float:
    """α decays linearly from ``alpha`` at step 0 to ``alpha / steps`` at the last step."""
    return alpha * (1.0 - step / steps)


# ---------------------------------------------------------------------------------------------
# 6. Masks: which latent cells may change
# ---------------------------------------------------------------------------------------------


def pixel_mask_to_latent(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(H, W) bool -> (1, 1, H/f, W/f) float: a cell may change if any of its pixels may."""
    return F.max_pool2d(mask.float()[None, None], kernel_size=factor)


def user_mask_pixels(mask: Image.Image, width: int, height: int) -> torch.Tensor:
    """The user's mask (white/opaque = edit) at the image's size, (H, W) bool.

    Shrinking marks a pixel if any mask pixel it covers is marked: nearest neighbour would drop a
    stroke thinner than the scale factor, and the edit would then silently change nothing.
    Enlarging is nearest neighbour, which keeps every marked pixel.
    """
    marked = torch.from_numpy(mask_from_image(mask).copy())
    if mask.size == (width, height):
        return marked
    pixels = marked.float()[None, None]
    if mask.width >= width and mask.height >= height:
        resized = F.adaptive_max_pool2d(pixels, (height, width))
    else:
        resized = F.interpolate(pixels, size=(height, width), mode="nearest")
    return resized[0, 0] > 0


# ---------------------------------------------------------------------------------------------
# 7. The optimisation loop
# ---------------------------------------------------------------------------------------------

PhaseTimer = Callable[[str], contextlib.AbstractContextManager[Any]]


def _no_timing(name: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


class RngStream:
    """A private stream of torch's global CPU generator, for code (kornia) that has no generator
    argument. While active it replaces the global state; afterwards the caller's is restored."""

    def __init__(self, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._state = torch.get_rng_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = torch.get_rng_state()
        torch.set_rng_state(self._state)
        try:
            yield
        finally:
            self._state = torch.get_rng_state()
            torch.set_rng_state(outer)

    def snapshot(self) -> torch.Tensor:
        return self._state.clone()

    def restore(self, state: torch.Tensor) -> None:
        self._state = state.clone()


@dataclass
class Throughput:
    """How a run's work is laid out on the device. None of it changes a result.

    - ``candidate_batch``: ``[models] candidate_batch`` ("auto" or a whole number), see
      :mod:`pipelines.candidate_batching`;
    - ``decoder``: what turns quantised latents into pixels (``VQGAN.decode`` unless the
      pipeline made a channels-last or compiled path);
    - ``memory``: the device's memory figures for "auto" (None on the CPU).
    """

    candidate_batch: int | str = 1
    decoder: Callable[[torch.Tensor], torch.Tensor] | None = None
    memory: MemoryProbe | None = None


@dataclass
class StepResult:
    step: int  # 0-based index of the step just taken; images show z before it
    images: torch.Tensor  # (N, 3, H, W) in [0, 1], detached
    prompt_losses: list[float]  # per candidate
    total_losses: list[float]


class VqganClipRun:
    """The state of one optimisation: the latents, Adam, the targets and the masks."""

    def __init__(
        self,
        vqgan: VQGAN,
        clip: ClipBundle,
        request: ImagineRequest,
        seed: int,
        precision: Precision | None = None,
        throughput: Throughput | None = None,
    ) -> None:
        self.vqgan = vqgan
        self.clip = clip
        self.request = request
        self.seed = seed
        self.device = clip.device
        self.precision = precision or decide_precision("imagine", self.device.type)
        layout = throughput or Throughput()
        self.decoder = layout.decoder or vqgan.decode
        self.memory = layout.memory
        # "auto" halves its chunk on an out-of-memory error; a fixed number is never changed.
        self.auto_batch = layout.candidate_batch == "auto"
        # None: "auto" with a memory probe, decided by measuring the first step.
        self.candidate_batch = fixed_candidate_batch(layout.candidate_batch, request.candidates)
        if self.candidate_batch is None and self.memory is None:
            self.candidate_batch = 1
        self.steps_done = 0
        self.notes: list[str] = []
        factor = vqgan.downsample_factor
        rows, cols = request.height // factor, request.width // factor
        count = request.candidates

        self.targets = encode_targets(
            clip,
            request.prompts(),
            request.image_prompts,
            *request.image_prompt_settings(),
            cutn=request.cutn,
            cut_pow=request.cut_pow,
            seed=seed,
            augmentations=request.augmentations,
        )
        self.cutouts = MakeCutouts(
            clip.input_size, request.cutn, request.cut_pow, request.augmentations
        )
        self.streams = [RngStream(seed + i) for i in range(count)]

        self.original: torch.Tensor | None = None
        if request.init_image is not None:
            self.original = self._init_pixels(request.init_image)
            z0 = encode_image_latent(vqgan, self.original).repeat(count, 1, 1, 1)
        else:
            z0 = torch.cat(
                [
                    random_codebook_latent(vqgan, rows, cols, seed + i, self.device)
                    for i in range(count)
                ]
            )
        self.z_init = z0.detach().clone()
        self.z = z0.detach().clone().requires_grad_(True)
        codebook = vqgan.codebook.detach()
        self.z_min = codebook.min(dim=0).values.view(1, -1, 1, 1).to(self.device)
        self.z_max = codebook.max(dim=0).values.view(1, -1, 1, 1).to(self.device)
        self.optimizer = torch.optim.Adam([self.z], lr=request.lr, betas=(0.9, 0.999))

        self.self_mask: SelfMask | None = None
        self.latent_mask: torch.Tensor | None = None
        if request.mask is not None:
            pixels = user_mask_pixels(request.mask, request.width, request.height)
            self.latent_mask = pixel_mask_to_latent(pixels, factor).to(self.device)
        elif request.mask_text and self.original is not None:
            phrase = clip.encode_text([request.mask_text.strip()])[0]
            self.self_mask = self_mask(self.original, phrase, clip, (rows, cols))
            # Soft: each cell's weight in [0, 1] scales its step (pipelines.self_masking).
            self.latent_mask = self.self_mask.weights[None, None].to(self.device)
            self.notes.append(
                f"self-mask for {request.mask_text!r}: mean weight "
                f"{float(self.self_mask.weights.mean()):.2f}, "
                f"{self.self_mask.frozen_share:.0%} of the image kept as it is"
            )
        self.latest: torch.Tensor | None = None

    def _init_pixels(self, image: Image.Image) -> torch.Tensor:
        size = (self.request.width, self.request.height)
        rgb = to_rgb(image)
        if rgb.size != size:
            if abs(rgb.width / rgb.height - size[0] / size[1]) > 0.01:
                self.notes.append(
                    f"the init image ({rgb.width}x{rgb.height}) was stretched to "
                    f"{size[0]}x{size[1]}"
                )
            rgb = rgb.resize(size, Image.LANCZOS)
        return pil_to_tensor(rgb).to(self.device)

    def step(self, timer: PhaseTimer = _no_timing) -> StepResult:
        """One Adam step on every candidate's latent, ``candidate_batch`` candidates at a time.

        Under "auto", an out-of-memory error halves the chunk and the whole step is redone from
        the same random streams, so the job goes on with the result it would have had. A fixed
        chunk (or a single candidate) lets the error through: the job fails with it.
        """
        states = [stream.snapshot() for stream in self.streams]
        while True:
            chunk = self.candidate_batch or 1
            measuring = self.candidate_batch is None and self.memory is not None
            try:
                if measuring:
                    self.memory.start()
                images, prompt_losses, total_losses = self._forward_backward(chunk, timer)
            except torch.OutOfMemoryError:
                if chunk == 1 or not self.auto_batch:
                    raise
                for stream, state in zip(self.streams, states, strict=True):
                    stream.restore(state)
                if self.memory is not None:
                    self.memory.release()
                self.candidate_batch = chunk // 2
                log.warning(
                    "out of memory with %d candidates at once; redoing the step with %d",
                    chunk,
                    self.candidate_batch,
                )
                continue
            if measuring:
                per_candidate = self.memory.peak_bytes()
                self.candidate_batch = auto_candidate_batch(
                    self.memory.free_bytes(), per_candidate, len(self.streams)
                )
                log.info(
                    "one candidate needs %.0f MiB; running %d at once",
                    per_candidate / 2**20,
                    self.candidate_batch,
                )
            break
        with timer("update"):
            if self.latent_mask is not None:
                # Zero gradient means Adam's moments stay zero there, so those cells never move.
                self.z.grad.mul_(self.latent_mask)
            before = self.z.detach().clone() if self.self_mask is not None else None
            self.optimizer.step()
            with torch.no_grad():
                if before is not None:
                    self.z.copy_(weighted_step(before, self.z, self.latent_mask))
                self.z.copy_(torch.maximum(torch.minimum(self.z, self.z_max), self.z_min))
        result = StepResult(self.steps_done, torch.cat(images), prompt_losses, total_losses)
        self.latest = result.images
        self.steps_done += 1
        return result

    def _forward_backward(
        self, chunk: int, timer: PhaseTimer
    ) -> tuple[list[torch.Tensor], list[float], list[float]]:
        """Gradients of every candidate's loss into ``z.grad``, ``chunk`` candidates per pass.

        Candidate ``i``'s cutouts come from its own stream and its loss involves only its own
        latent, so the sum of a chunk's losses has exactly each candidate's gradient.
        """
        request = self.request
        alpha = z_regulariser_weight(request.z_reg(), self.steps_done, request.steps)
        init_weight = request.init_pull()
        self.optimizer.zero_grad(set_to_none=False)
        images: list[torch.Tensor] = []
        prompt_terms: list[torch.Tensor] = []
        total_terms: list[torch.Tensor] = []
        for first in range(0, len(self.streams), chunk):
            indices = range(first, min(first + chunk, len(self.streams)))
            z = self.z[indices.start : indices.stop]
            with timer("decode"):
                pixels = synthesize(self.vqgan, z, self.decoder)
            with timer("cutouts"):
                current, originals = [], []
                for offset, index in enumerate(indices):
                    image = pixels[offset : offset + 1]
                    with self.streams[index].active():
                        if self.self_mask is not None:
                            image = torch.cat([image, self.original])
                        views = self.cutouts(image)
                    current.append(views[0])
                    if self.self_mask is not None:
                        originals.append(views[1])
            with timer("clip_forward"), autocast(self.precision):
                embeddings = self.clip.encode_image(torch.cat(current))
                embeddings = embeddings.view(len(indices), -1, embeddings.shape[-1])
                if self.self_mask is not None:
                    with torch.no_grad():
                        original_embeddings = self.clip.encode_image(torch.cat(originals))
                    original_embeddings = original_embeddings.view_as(embeddings)
                losses = []
                for offset, index in enumerate(indices):
                    loss_prompts = prompt_loss(embeddings[offset], self.targets)
                    loss = loss_prompts
                    if self.self_mask is not None:
                        loss = loss + request.structure_weight * structure_loss(
                            embeddings[offset], original_embeddings[offset]
                        )
                    z_i = z[offset : offset + 1]
                    if alpha > 0:
                        loss = loss + alpha * z_i.pow(2).mean()
                    if init_weight > 0:
                        loss = loss + init_weight * F.mse_loss(z_i, self.z_init[index : index + 1])
                    losses.append(loss)
                    prompt_terms.append(loss_prompts.detach())
                    total_terms.append(loss.detach())
            with timer("backward"):
                torch.stack(losses).sum().backward()
            images.append(pixels.detach().float())
        # One read back from the device per step, not two per candidate (each is a GPU sync).
        prompt_losses, total_losses = torch.stack(
            [torch.stack(prompt_terms).float(), torch.stack(total_terms).float()]
        ).tolist()
        return images, prompt_losses, total_losses

    @torch.no_grad()
    def decode(self) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] of the current latents."""
        z = self.z.detach()
        chunk = self.candidate_batch or 1
        return torch.cat(
            [
                synthesize(self.vqgan, z[first : first + chunk], self.decoder).float()
                for first in range(0, z.shape[0], chunk)
            ]
        )

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> list[float]:
        """Weighted CLIP cosine similarity of each image to the targets, higher is better."""
        embeddings = self.clip.encode_image(clip_view(images, self.clip.input_size))
        similarity = F.normalize(embeddings, dim=-1) @ self.targets.embeddings.T
        weights = self.targets.weights
        return ((similarity * weights).sum(dim=1) / weights.abs().sum()).tolist()

    def codes(self) -> torch.Tensor:
        return code_indices(self.vqgan, self.z.detach())


# ---------------------------------------------------------------------------------------------
# 8. Candidates, ranking and the pipeline
# ---------------------------------------------------------------------------------------------


def tile(images: list[Image.Image]) -> Image.Image:
    """One image showing all, in a near-square grid, in order (for previews)."""
    if len(images) == 1:
        return images[0]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    sheet = Image.new("RGB", (cols * width, rows * height), (0, 0, 0))
    for index, image in enumerate(images):
        sheet.paste(image, ((index % cols) * width, (index // cols) * height))
    return sheet


def to_pils(images: torch.Tensor) -> list[Image.Image]:
    return [tensor_to_pil(image) for image in images]


class VqganClipPipeline:
    """The ``imagine`` pipeline: ``pipeline(request, on_progress, should_cancel)``."""

    def __init__(
        self,
        vqgan: VQGAN,
        clip: ClipBundle,
        model_info: dict[str, str] | None = None,
        precision: Precision | None = None,
        *,
        candidate_batch: int | str = 1,
        channels_last: bool | str = False,
        compile: bool = False,
    ) -> None:
        # Frozen weights: backward then computes no weight gradients, only the one for z.
        self.vqgan = vqgan.eval().requires_grad_(False)
        self.clip = clip
        self.device = clip.device
        self.model_info = dict(model_info or {})
        self.precision = precision or decide_precision("imagine", self.device.type)
        self.candidate_batch = candidate_batch
        # No CPU gain measured for the VQGAN decoder (docs/benchmarks.md), so "auto" is CUDA only.
        layout = channels_last_enabled(channels_last, self.device.type, cpu_gain=False)
        self.decoder = FastModule(
            vqgan.decode,
            [vqgan.post_quant_conv, vqgan.decoder],
            channels_last=layout,
            compile=compile,
        )

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> VqganClipPipeline:
        from pipelines import presets
        from pipelines.clip_models import load_clip
        from pipelines.devices import pick_device

        apply_determinism(settings.deterministic)
        device = pick_device(settings.device)
        precision = decide_precision("imagine", device.type, settings.dtype)
        if precision.note:
            log.warning("%s", precision.note)
        apply_tf32(precision)
        vqgan = presets.load_vqgan(settings, device)
        spec = presets.guide_clip_spec(settings)
        clip = load_clip(spec, device, cache_dir=settings.cache_dir)
        info = {
            "preset": settings.preset,
            "clip_model": spec.model,
            "clip_pretrained": spec.pretrained or "random weights",
            **presets.vqgan_identity(settings),
        }
        return cls(
            vqgan,
            clip,
            info,
            precision,
            candidate_batch=settings.candidate_batch,
            channels_last=settings.channels_last,
            compile=settings.compile,
        )

    def start(self, request: ImagineRequest, seed: int) -> VqganClipRun:
        """Validate and set up a run (tests and the benchmark drive its steps themselves)."""
        request.validate()
        factor = self.vqgan.downsample_factor
        if request.width % factor or request.height % factor:
            raise InvalidRequest(f"width and height must be multiples of {factor} for this VQGAN")
        throughput = Throughput(
            candidate_batch=self.candidate_batch,
            # The plain path calls vqgan.decode itself, at call time.
            decoder=self.decoder if layout_changed(self.decoder) else None,
            memory=memory_probe_for(self.device),
        )
        return VqganClipRun(self.vqgan, self.clip, request, seed, self.precision, throughput)

    def __call__(
        self,
        request: ImagineRequest,
        on_progress: ProgressCallback = no_progress,
        should_cancel: CancelCheck = never_cancel,
    ) -> PipelineResult:
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return self._run(self.start(request, seed), request, seed, on_progress, should_cancel)

    def _run(
        self,
        run: VqganClipRun,
        request: ImagineRequest,
        seed: int,
        on_progress: ProgressCallback,
        should_cancel: CancelCheck,
    ) -> PipelineResult:
        total = request.steps
        for step in range(total):
            if should_cancel():
                latest = None if run.latest is None else tile(to_pils(run.latest))
                raise Cancelled(step, total, latest)
            result = run.step()
            if step % request.preview_every == 0:
                preview = tile(to_pils(result.images))
                if step == 0 and run.self_mask is not None:
                    # Shown once, so the user sees which part the phrase picked.
                    attach_mask(preview, tile([run.self_mask.image()] * len(result.images)))
                on_progress(step, total, preview)
        final = run.decode()
        scores = run.scores(final)
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        pils = to_pils(final)
        ranked = [
            RankedImage(image=pils[i], rank=rank, score=scores[i], seed=seed + i)
            for rank, i in enumerate(order, start=1)
        ]
        on_progress(total, total, tile([r.image for r in ranked]))
        artifacts = {} if run.self_mask is None else {"mask": run.self_mask.image()}
        return PipelineResult(
            images=ranked,
            settings=self.describe(request, seed),
            notes=run.notes,
            artifacts=artifacts,
        )

    def describe(self, request: ImagineRequest, seed: int) -> dict[str, Any]:
        """Every setting a run used, JSON-serialisable, for OUT.json and the store."""
        return {
            "pipeline": "vqgan-clip",
            "prompt": request.prompt,
            "prompts": [
                {"text": p.text, "weight": p.weight, "stop": p.stop} for p in request.prompts()
            ],
            "seed": seed,
            "steps": request.steps,
            "width": request.width,
            "height": request.height,
            "cutn": request.cutn,
            "cut_pow": request.cut_pow,
            "lr": request.lr,
            "adam_betas": [0.9, 0.999],
            "candidates": request.candidates,
            "init_image": _image_summary(request.init_image),
            "mask": _image_summary(request.mask),
            "mask_text": request.mask_text,
            "image_prompts": [_image_summary(image) for image in request.image_prompts],
            "image_prompt_weights": request.image_prompt_settings()[0],
            "image_prompt_stops": request.image_prompt_settings()[1],
            "reading": request.reading(),
            "init_weight": request.init_pull(),
            "z_reg_weight": request.z_reg(),
            "augmentations": request.augmentations,
            "structure_weight": request.structure_weight,
            "preview_every": request.preview_every,
            "device": str(self.device),
            "precision": {
                "weights": str(self.precision.weights).removeprefix("torch."),
                "clip_autocast": None
                if self.precision.autocast is None
                else str(self.precision.autocast).removeprefix("torch."),
                "tf32": self.precision.allow_tf32,
            },
            "candidate_batch": self.candidate_batch,
            "channels_last": self.decoder.channels_last,
            "compile": self.decoder.compiled,
            "models": self.model_info,
        }


def _image_summary(image: Image.Image | None) -> dict[str, Any] | None:
    if image is None:
        return None
    return {"width": image.width, "height": image.height, "mode": image.mode}
