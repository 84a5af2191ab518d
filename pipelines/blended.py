"""Blended Latent Diffusion: edit the masked region of an image to match a text prompt.

Omri Avrahami, Ohad Fried and Dani Lischinski, "Blended Latent Diffusion", ACM Transactions on
Graphics 42(4), 2023 (arXiv:2206.02779). This module follows the paper section by section:

- **Algorithm 1** (:meth:`BlendedLatentDiffusionPipeline._denoise`): encode the source into
  ``z_init``; noise it to the start step; at each step denoise the whole latent with the text
  (classifier-free guidance), noise ``z_init`` to the noise level of the denoised latent, and keep
  the denoised latent inside the latent-size mask and the noised source outside it; decode.
  The paper's listing noises the source to ``t`` while the denoised latent is at ``t-1`` (so does
  the official script); we noise it to the *same* timestep as the latent it is blended with, so
  both halves of the blended latent carry the same amount of noise. After the final step the
  background is the clean source.
- **Progressive mask shrinking** (section 4.3, :func:`shrinking_masks`): thin masks vanish on the
  coarse latent grid, so the first quarter of the steps uses the latent mask dilated by 7×7, then
  5×5, then 3×3, and the last quarter the mask itself.
- **Candidates and ranking** (section 4.4): a batch of candidates, each with its own seed, ranked
  by CLIP on the masked region (:mod:`pipelines.ranking`).
- **Background reconstruction** (section 4.2, :func:`reconstruct_background`): the VAE does not
  reproduce unmasked pixels exactly, so optionally a private copy of the decoder is fine-tuned
  per result so that it keeps the edit inside the mask and reproduces the input outside it.
  A cheaper alternative, ``paste``, copies the input pixels back outside the mask.

A scheduler is built per request from the model's scheduler config (DDIM by default, as in the
paper): schedulers keep per-run state and are not thread-safe; the models are shared read-only.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from PIL import Image
from torch import nn

from pipelines import image_io
from pipelines.candidate_chunks import CandidateChunks
from pipelines.clip_models import ClipBundle
from pipelines.diffusion_models import DiffusionComponents, load_diffusion
from pipelines.interface import (
    CancelCheck,
    Cancelled,
    InvalidRequest,
    PipelineResult,
    ProgressCallback,
    RankedImage,
    never_cancel,
    no_progress,
)
from pipelines.latent_preview import preview_grid
from pipelines.ranking import clip_similarities, order_best_first
from pipelines.settings import ModelSettings

log = logging.getLogger(__name__)

# Hard limits on a request. Server owners may set lower ones in config; these bound memory and
# time whatever the config says.
MAX_CANDIDATES = 8
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_SEED = 2**63 - 1 - MAX_CANDIDATES  # candidate i uses seed + i
MAX_PROMPT_CHARS = 1000
# A mask may be a slightly different size from its image (a re-export, an off-by-one crop) but
# not a different shape: that almost always means the wrong file.
MAX_ASPECT_MISMATCH = 0.01

BACKGROUND_MODES = ("none", "paste", "finetune")
SCHEDULERS: dict[str, type[DDIMScheduler]] = {"ddim": DDIMScheduler}
# Where the masked region starts at the first kept step. "noised-source": the source latent
# noised to that step (the paper's Algorithm 1), so the edit inherits the source's layout and
# colours; "noise": pure Gaussian noise (the official diffusers script), so the source does not
# steer what appears there. Outside the mask both start from the noised source.
START_MODES = ("noised-source", "noise")

# Section 4.3: the dilations used for the first three quarters of the steps, most dilated first;
# the last quarter uses the mask itself.
SHRINK_KERNELS = (7, 5, 3)
SHRINK_PHASES = len(SHRINK_KERNELS) + 1

# Section 4.2 (and the official code): Adam, lr 1e-4, 75 steps, background weight λ = 100.
FINETUNE_STEPS = 75
FINETUNE_LR = 1e-4
FINETUNE_BACKGROUND_WEIGHT = 100.0

# ``paste``: the edit fades into the input over this many pixels outside the mask.
PASTE_FEATHER_PIXELS = 4

# Text embeddings of recent prompts (the empty negative prompt above all) are kept per pipeline.
_TEXT_CACHE_SIZE = 16


@dataclass
class EditRequest:
    """One ``/edit``: what to change (``prompt``), where (``mask``), in which image."""

    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ("image", "mask")

    prompt: str
    image: Image.Image
    mask: Image.Image
    candidates: int = 4
    steps: int = 50
    # Fraction of the steps skipped: denoising starts from the source noised to this point.
    blend_start: float = 0.25
    guidance: float = 7.5
    seed: int | None = None
    background: str = "none"
    shrink: bool = True
    preview_every: int = 5
    max_side: int = 512
    negative_prompt: str = ""
    scheduler: str = "ddim"
    # What the masked region starts from (see START_MODES).
    start: str = "noised-source"

    def validate(self) -> None:
        """Raise :class:`InvalidRequest` with one line for the first problem found."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest("the prompt is empty: say what the masked region should become")
        if len(self.prompt) > MAX_PROMPT_CHARS or len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"prompts are limited to {MAX_PROMPT_CHARS} characters")
        _check_int("candidates", self.candidates, 1, MAX_CANDIDATES)
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("preview_every", self.preview_every, 1, MAX_STEPS)
        _check_int("max_side", self.max_side, MIN_SIDE, MAX_SIDE)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        _check_number("guidance", self.guidance, 0.0, MAX_GUIDANCE)
        _check_number("blend_start", self.blend_start, 0.0, 1.0)
        if self.blend_start >= 1.0:
            raise InvalidRequest(
                "blend_start must be below 1 (it is the fraction of steps skipped)"
            )
        if self.background not in BACKGROUND_MODES:
            raise InvalidRequest(
                f"background must be one of {', '.join(BACKGROUND_MODES)}, not {self.background!r}"
            )
        if self.start not in START_MODES:
            raise InvalidRequest(
                f"start must be one of {', '.join(START_MODES)}, not {self.start!r}"
            )
        if self.scheduler not in SCHEDULERS:
            raise InvalidRequest(
                f"scheduler must be one of {', '.join(SCHEDULERS)}, not {self.scheduler!r}"
            )
        for name in self.IMAGE_FIELDS:
            if not isinstance(getattr(self, name), Image.Image):
                raise InvalidRequest(f"the {name} is missing or is not an image")
        (iw, ih), (mw, mh) = self.image.size, self.mask.size
        if min(iw, ih, mw, mh) < 1:
            raise InvalidRequest("the image or the mask is empty (zero pixels)")
        if not _same_shape(iw, ih, mw, mh):
            raise InvalidRequest(
                f"the mask is {mw}×{mh} but the image is {iw}×{ih}: their shapes differ; "
                "the mask must have the image's aspect ratio"
            )
        if not image_io.mask_from_image(self.mask).any():
            raise InvalidRequest(
                "the mask selects nothing: paint the region to edit white (or opaque)"
            )

    def settings(self) -> dict[str, Any]:
        """The request's own settings, JSON-ready (images left out)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.IMAGE_FIELDS
        }


def _same_shape(iw: int, ih: int, mw: int, mh: int) -> bool:
    """Whether a ``mw``×``mh`` mask fits a ``iw``×``ih`` image: aspect ratios within 1%, or
    within the rounding of one side to whole pixels (a result of 512×13 is a 4000×100 picture
    scaled down, and continuing from it keeps the original mask)."""
    if abs((mw / mh) / (iw / ih) - 1.0) <= MAX_ASPECT_MISMATCH:
        return True
    return abs(iw - ih * mw / mh) <= 1.0 or abs(ih - iw * mh / mw) <= 1.0


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}, not {value!r}")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise InvalidRequest(f"{name} must be a number from {low:g} to {high:g}, not {value!r}")


# ---------------------------------------------------------------------------------------------
# Sizes and masks


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size results come back at: the input's, scaled down (never up) so the long side is at
    most ``max_side``, to the nearest pixel. The aspect ratio is the input's to within a pixel."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def working_size(width: int, height: int, max_side: int, cell: int) -> tuple[int, int]:
    """The size the model works at for an output of ``width``×``height``: each side rounded to
    the nearest whole latent cell (``cell`` pixels), at least one cell and at most ``max_side``
    rounded down to a cell, so the working area never exceeds ``max_side``².

    Rounding each side to a cell, not to the UNet's own downsampling factor (64 pixels for SD),
    moves the aspect ratio by at most half a cell per side; the result is resized back to the
    output size, so the user gets the input's shape."""
    ceiling = max(cell, max_side // cell * cell)

    def side(length: int) -> int:
        return min(ceiling, max(cell, round(length / cell) * cell))

    return side(width), side(height)


def pad_to_multiple(latents: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """``latents`` padded at the bottom and right (edge values repeated) so both sides are
    multiples of ``multiple``; with the original height and width, to crop back."""
    height, width = latents.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return latents, height, width
    return F.pad(latents, (0, pad_w, 0, pad_h), mode="replicate"), height, width


def resize_images(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(N, C, H, W) images resized to ``width``×``height`` (antialiased bicubic), unchanged when
    already that size."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(
        images, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )


def mask_to_grid(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A 0/1 mask (1, 1, H, W) resampled to (1, 1, height, width), where a cell is masked when any
    pixel it covers is: an edit region never shrinks away, however thin."""
    if mask.shape[-2:] == (height, width):
        return mask.clone()
    return F.adaptive_max_pool2d(mask, (height, width))


def dilate(mask: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Morphological dilation of a (1, 1, h, w) 0/1 mask with a ``kernel_size``² square of ones."""
    kernel = torch.ones(kernel_size, kernel_size, device=mask.device, dtype=mask.dtype)
    return kornia.morphology.dilation(mask, kernel)


def shrink_phase(step: int, total: int) -> int:
    """Phase (0 = most dilated … 3 = the mask itself) of denoising step ``step`` of ``total``.

    The steps split into four near-equal parts. Counting from the end guarantees that the last
    step always uses the mask itself; with fewer than four steps the most dilated phases drop out.
    """
    return SHRINK_PHASES - 1 - ((total - 1 - step) * SHRINK_PHASES) // total


def shrinking_masks(latent_mask: torch.Tensor, total: int, enabled: bool) -> list[torch.Tensor]:
    """The latent mask for each of ``total`` denoising steps (section 4.3)."""
    if not enabled:
        return [latent_mask] * total
    phases = [dilate(latent_mask, k) for k in SHRINK_KERNELS] + [latent_mask]
    return [phases[shrink_phase(step, total)] for step in range(total)]


def feathered_alpha(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """1 inside the mask, falling linearly to 0 over ``feather`` pixels outside it, exactly 0
    beyond (chessboard distance), so pixels past the feather are the input's, bit for bit."""
    rings = [mask] + [dilate(mask, 2 * k + 1) for k in range(1, feather + 1)]
    return torch.stack(rings).mean(dim=0)


def build_scheduler(name: str, config: dict[str, Any]) -> DDIMScheduler:
    """A fresh scheduler for one request (schedulers keep per-run state and are not thread-safe).

    ``clip_sample`` is forced off, as the official code does: the predicted x₀ lives in latent
    space, where ±1 is not a bound, and a config that lacks the key would otherwise get DDIM's
    default (on) and clip every step's x₀, washing edits out.
    """
    return SCHEDULERS[name].from_config(config, clip_sample=False)


# ---------------------------------------------------------------------------------------------
# Background reconstruction (section 4.2)


class _PrivateDecoder(nn.Module):
    """A detached fp32 copy of the VAE's latent-to-image path; the shared VAE is never touched."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        post_quant_conv = getattr(vae, "post_quant_conv", None)
        self.post_quant_conv = copy.deepcopy(post_quant_conv) if post_quant_conv else None
        self.decoder = copy.deepcopy(vae.decoder)
        # A compiled decoder (``[models] compile``) is copied without its compiled call (torch
        # drops it on deepcopy), so the fine-tuned copy runs eagerly on its own weights.
        self.float()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def reconstruct_background(
    vae: nn.Module,
    z: torch.Tensor,
    edited: torch.Tensor,
    source: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int = FINETUNE_STEPS,
    lr: float = FINETUNE_LR,
    background_weight: float = FINETUNE_BACKGROUND_WEIGHT,
    should_cancel: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Decode ``z`` with a decoder fine-tuned to keep ``edited`` inside the mask and reproduce
    ``source`` outside it.

    Minimises ``mse(D(z)·m, x̂·m) + λ·mse(D(z)·(1−m), x·(1−m))`` over the decoder's weights only,
    with Adam, in fp32. z: (1, C, h, w) unscaled latent; edited (x̂), source (x): (1, 3, H, W) in
    [-1, 1]; mask: (1, 1, H, W) 0/1. ``should_cancel(step)`` may raise to stop. Returns D(z) in
    [-1, 1] from the tuned copy, which is then dropped.
    """
    decoder = _PrivateDecoder(vae).to(z.device)
    decoder.requires_grad_(False)
    decoder.decoder.requires_grad_(True)
    decoder.train()
    optimizer = torch.optim.Adam(decoder.decoder.parameters(), lr=lr)
    # Fresh copies: the inputs may be inference-mode tensors, which autograd cannot save.
    z, edited, source, mask = (t.detach().float().clone() for t in (z, edited, source, mask))
    inside, outside = edited * mask, source * (1 - mask)
    with torch.enable_grad():
        for step in range(steps):
            if should_cancel is not None:
                should_cancel(step)
            decoded = decoder(z)
            loss = F.mse_loss(decoded * mask, inside) + background_weight * F.mse_loss(
                decoded * (1 - mask), outside
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    decoder.eval()
    with torch.no_grad():
        return decoder(z)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass(frozen=True)
class StepRecord:
    """What one denoising step did, for instrumentation (tests, debugging).

    ``latent_timestep`` is the noise level of the blended latent: the timestep of the next UNet
    call, or ``None`` after the last step, when it is clean. ``background`` is the source noised
    to it with ``background_noise`` (``None`` when clean).
    """

    index: int
    total: int
    timestep: int
    latent_timestep: int | None
    mask: torch.Tensor
    foreground: torch.Tensor
    background: torch.Tensor
    background_noise: torch.Tensor | None
    latents: torch.Tensor


@dataclass
class _Prepared:
    width: int  # the working size, whole latent cells
    height: int
    source: torch.Tensor  # (1, 3, H, W) in [0, 1], float32, CPU, at the working size
    pixel_mask: torch.Tensor  # (1, 1, H, W) 0/1 float32, CPU, at the working size
    latent_mask: torch.Tensor  # (1, 1, h, w) 0/1 float32, CPU
    out_width: int  # the size results come back at: the input's aspect ratio
    out_height: int
    out_source: torch.Tensor  # the source and the mask at the output size
    out_mask: torch.Tensor
    notes: list[str]


class BlendedLatentDiffusionPipeline:
    """``pipeline(request, on_progress, should_cancel) -> PipelineResult`` (pipelines.interface)."""

    def __init__(
        self,
        components: DiffusionComponents,
        ranker: ClipBundle,
        *,
        finetune_steps: int = FINETUNE_STEPS,
        finetune_lr: float = FINETUNE_LR,
        finetune_background_weight: float = FINETUNE_BACKGROUND_WEIGHT,
        paste_feather: int = PASTE_FEATHER_PIXELS,
        candidate_batch: int | str = "auto",
    ) -> None:
        self.components = components
        self.ranker = ranker
        # [models] candidate_batch: how many candidates the VAE decodes and CLIP ranks at once.
        self.decode_chunks = CandidateChunks(candidate_batch, components.device)
        self.rank_chunks = CandidateChunks(candidate_batch, ranker.device)
        self.finetune_steps = finetune_steps
        self.finetune_lr = finetune_lr
        self.finetune_background_weight = finetune_background_weight
        self.paste_feather = paste_feather
        # Called with a StepRecord after every denoising step when set; costs nothing otherwise.
        self.step_observer: Callable[[StepRecord], None] | None = None
        # Seconds spent per stage in the last call (read by the benchmark).
        self.last_timings: dict[str, float] = {}
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_lock = threading.Lock()
        # Set once the UNet has refused a latent size that is not a multiple of its
        # downsampling factor: from then on latents are padded (see predict_noise).
        self._pad_latents = False

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> BlendedLatentDiffusionPipeline:
        """Load (or reuse, per process) the preset's diffusion model and ranking CLIP."""
        from pipelines.presets import load_ranker_clip

        components = load_diffusion(settings)
        return cls(
            components,
            load_ranker_clip(settings, components.device),
            candidate_batch=settings.candidate_batch,
        )

    # -- the steps of one edit -----------------------------------------------------------------

    def prepare(self, request: EditRequest) -> _Prepared:
        """Scale the image to the working size and turn the mask into pixel and latent masks."""
        source_w, source_h = request.image.size
        cell = self.components.vae_scale_factor
        out_w, out_h = output_size(source_w, source_h, request.max_side)
        width, height = working_size(out_w, out_h, request.max_side, cell)
        image = image_io.to_rgb(request.image)

        def scaled(size: tuple[int, int]) -> Image.Image:
            return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)

        mask = torch.from_numpy(image_io.mask_from_image(request.mask).astype(np.float32))
        pixel_mask = mask_to_grid(mask[None, None], height, width)
        latent_mask = mask_to_grid(pixel_mask, height // cell, width // cell)
        if (out_w, out_h) == (source_w, source_h):
            scaling = f"size {out_w}×{out_h} (unscaled)"
        else:
            scaling = f"scaled {source_w}×{source_h} → {out_w}×{out_h}"
        if (width, height) != (out_w, out_h):
            scaling += f", worked at {width}×{height} (whole latent cells of {cell} pixels)"
        notes = [f"{scaling}; long side at most {request.max_side}"]
        return _Prepared(
            width=width,
            height=height,
            source=image_io.pil_to_tensor(scaled((width, height))),
            pixel_mask=pixel_mask,
            latent_mask=latent_mask,
            out_width=out_w,
            out_height=out_h,
            out_source=image_io.pil_to_tensor(scaled((out_w, out_h))),
            out_mask=mask_to_grid(mask[None, None], out_h, out_w),
            notes=notes,
        )

    def encode_prompts(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, bool]:
        """(uncond, cond) text embeddings, (2, L, D); and whether the prompt was truncated."""
        tokenizer = self.components.tokenizer
        truncated = len(tokenizer(prompt).input_ids) > tokenizer.model_max_length
        return torch.cat([self._embed(negative_prompt), self._embed(prompt)]), truncated

    def _embed(self, text: str) -> torch.Tensor:
        with self._text_lock:
            if text in self._text_cache:
                self._text_cache.move_to_end(text)
                return self._text_cache[text]
        c = self.components
        ids = c.tokenizer(
            [text],
            padding="max_length",
            max_length=c.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(c.device)
        embedding = c.text_encoder(ids)[0].to(c.dtype)
        with self._text_lock:
            self._text_cache[text] = embedding
            while len(self._text_cache) > _TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return embedding

    def encode_image(self, source: torch.Tensor) -> torch.Tensor:
        """z_init = E(x): the mean of the VAE posterior, scaled as the UNet expects.

        The VAE runs in its own dtype (float32 under ``force_upcast``), the latent in the UNet's.
        """
        c = self.components
        pixels = (source * 2 - 1).to(c.device, c.vae.dtype)
        return (c.vae.encode(pixels).latent_dist.mean * c.latent_scaling).to(c.dtype)

    def decode(
        self, latents: torch.Tensor, should_cancel: Callable[[], None] | None = None
    ) -> torch.Tensor:
        """D(z) for each latent, (N, 3, H, W) in [-1, 1], float32.

        In chunks of ``[models] candidate_batch`` candidates (one at a time on a CPU under
        "auto": a 512² decode needs several GB, and a batch measured no faster there), so a
        cancel can land between chunks (``should_cancel`` is called before each and may raise).
        """
        c = self.components

        def decode_chunk(start: int, stop: int) -> torch.Tensor:
            scaled = (latents[start:stop] / c.latent_scaling).to(c.vae.dtype)
            return c.vae.decode(scaled).sample.float()

        # Keyed by the latent's shape: a candidate's cost grows with the image size.
        return self.decode_chunks.run(
            len(latents), decode_chunk, should_cancel, key=tuple(latents.shape[1:])
        )

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's noise prediction for ``sample`` (N, C, h, w), at any latent size.

        diffusers' UNet takes latent sides that are not multiples of its downsampling factor. A
        model that refuses them (a shape mismatch at a skip connection) gets the latent padded
        to the next multiple and the prediction cropped back; it is remembered, so later steps
        go straight to the padded path.
        """
        unet = self.components.unet
        if not self._pad_latents:
            try:
                return unet(sample, timestep, encoder_hidden_states=context).sample
            except RuntimeError as exc:
                if isinstance(exc, torch.OutOfMemoryError) or not _ragged(
                    sample, self.components.unet_factor
                ):
                    raise
                log.warning(
                    "the UNet refused a %s×%s latent (%s); padding latents to multiples of %d",
                    sample.shape[-1],
                    sample.shape[-2],
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    self.components.unet_factor,
                )
                self._pad_latents = True
        padded, height, width = pad_to_multiple(sample, self.components.unet_factor)
        prediction = unet(padded, timestep, encoder_hidden_states=context).sample
        return prediction[..., :height, :width]

    def _denoise(
        self,
        request: EditRequest,
        seed: int,
        source_latent: torch.Tensor,
        latent_mask: torch.Tensor,
        text: torch.Tensor,
        on_progress: ProgressCallback,
        should_cancel: CancelCheck,
    ) -> tuple[torch.Tensor, int, Image.Image | None]:
        """Algorithm 1's loop: the final latents (N, C, h, w), the steps run, the last preview."""
        c = self.components
        count = request.candidates
        scheduler = build_scheduler(request.scheduler, c.scheduler_config)
        scheduler.set_timesteps(request.steps, device=c.device)
        # Skip the first ``blend_start`` of the schedule, as the official code does.
        timesteps = scheduler.timesteps[int(request.steps * request.blend_start) :]
        total = len(timesteps)
        masks = [
            m.to(c.device, c.dtype) for m in shrinking_masks(latent_mask, total, request.shrink)
        ]
        # Each candidate draws all its noise from its own generator (on the CPU, so a seed gives
        # the same noise on any device): candidate i of seed s is the single candidate of s + i.
        generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
        shape = tuple(source_latent.shape[1:])

        def candidate_noise() -> torch.Tensor:
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
            return noise.to(c.device, c.dtype)

        source = source_latent.expand(count, *shape)
        start_noise = candidate_noise()
        latents = scheduler.add_noise(source, start_noise, timesteps[:1])
        if request.start == "noise":
            pure = start_noise * scheduler.init_noise_sigma
            latents = torch.where(masks[0] > 0.5, pure, latents)
        # Unconditional then conditional, each repeated per candidate: one UNet call per step.
        context = text.repeat_interleave(count, dim=0)
        preview: Image.Image | None = None
        for index, t in enumerate(timesteps):
            if should_cancel():
                raise Cancelled(index, total, preview)
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise_uncond, noise_text = self.predict_noise(model_input, t, context).chunk(2)
            guided = noise_uncond + request.guidance * (noise_text - noise_uncond)
            step = scheduler.step(guided, t, latents)
            foreground = step.prev_sample
            mask = masks[index]
            if index + 1 < total:
                latent_timestep: int | None = int(timesteps[index + 1])
                background_noise: torch.Tensor | None = candidate_noise()
                background = scheduler.add_noise(
                    source, background_noise, timesteps[index + 1 : index + 2]
                )
            else:
                latent_timestep, background_noise, background = None, None, source
            latents = torch.where(mask > 0.5, foreground, background)
            if self.step_observer is not None:
                self.step_observer(
                    StepRecord(
                        index=index,
                        total=total,
                        timestep=int(t),
                        latent_timestep=latent_timestep,
                        mask=mask,
                        foreground=foreground,
                        background=background,
                        background_noise=background_noise,
                        latents=latents,
                    )
                )
            done = index + 1
            if done % request.preview_every == 0 and done < total:
                predicted = torch.where(mask > 0.5, step.pred_original_sample, source)
                preview = preview_grid(predicted)
                on_progress(done, total, preview)
        return latents, total, preview

    # -- the call ------------------------------------------------------------------------------

    def __call__(
        self,
        request: EditRequest,
        on_progress: ProgressCallback = no_progress,
        should_cancel: CancelCheck = never_cancel,
    ) -> PipelineResult:
        request.validate()
        c = self.components
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        prepared = self.prepare(request)
        notes = list(prepared.notes)
        if request.seed is None:
            notes.append(f"seed {seed} picked at random")
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock
            clock = now

        with torch.inference_mode():
            source_latent = self.encode_image(prepared.source)
            text, truncated = self.encode_prompts(request.prompt, request.negative_prompt)
            lap("encode")
            latents, total, preview = self._denoise(
                request,
                seed,
                source_latent,
                prepared.latent_mask,
                text,
                on_progress,
                should_cancel,
            )
            lap("denoise")

            def check_decode() -> None:
                if should_cancel():
                    raise Cancelled(total, total, preview)

            decoded = self.decode(latents, check_decode)
            lap("decode")
        if truncated:
            notes.append(f"the prompt was cut to {c.tokenizer.model_max_length} tokens")

        # Back to the input's aspect ratio; the paste and the ranking work on the output itself.
        results = resize_images((decoded + 1) / 2, prepared.out_width, prepared.out_height)
        out_source = prepared.out_source.to(decoded.device)
        out_mask = prepared.out_mask.to(decoded.device)
        if request.background == "paste":
            alpha = feathered_alpha(out_mask, self.paste_feather)
            results = out_source + alpha * (results - out_source)
        # Ranked on exactly the 8-bit images the user receives, so anyone can recompute a score.
        results = _quantize(results)
        scores = clip_similarities(self.ranker, results, out_mask, request.prompt, self.rank_chunks)
        order = order_best_first(scores)
        lap("ranking")

        if request.background == "finetune":
            best = order[0]

            def check(step: int) -> None:
                if should_cancel():
                    raise Cancelled(total, total, image_io.tensor_to_pil(results[best]))

            tuned = reconstruct_background(
                c.vae,
                latents[best : best + 1] / c.latent_scaling,
                decoded[best : best + 1],
                prepared.source.to(decoded.device) * 2 - 1,
                prepared.pixel_mask.to(decoded.device),
                steps=self.finetune_steps,
                lr=self.finetune_lr,
                background_weight=self.finetune_background_weight,
                should_cancel=check,
            )
            tuned = resize_images((tuned + 1) / 2, prepared.out_width, prepared.out_height)
            results = results.clone()
            results[best] = _quantize(tuned[0])
            notes.append(
                "background reconstructed for the top result only (paper section 4.2); "
                "its score was measured before reconstruction"
            )
            lap("finetune")
        self.last_timings = timings
        log.info("edit done: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))

        images = [
            RankedImage(
                image=image_io.tensor_to_pil(results[i]),
                rank=rank,
                score=float(scores[i]),
                seed=seed + i,
            )
            for rank, i in enumerate(order, start=1)
        ]
        on_progress(total, total, images[0].image)
        return PipelineResult(
            images=images,
            settings=self._settings_used(request, seed, prepared, total),
            notes=notes,
        )

    def _settings_used(
        self, request: EditRequest, seed: int, prepared: _Prepared, total: int
    ) -> dict[str, Any]:
        c = self.components
        settings = request.settings()
        settings.update(
            seed=seed,
            candidate_seeds=[seed + i for i in range(request.candidates)],
            denoising_steps_run=total,
            source_size=list(request.image.size),
            working_size=[prepared.width, prepared.height],
            output_size=[prepared.out_width, prepared.out_height],
            model=c.name,
            device=str(c.device),
            dtype=str(c.dtype).removeprefix("torch."),
            vae_dtype=str(c.vae.dtype).removeprefix("torch."),
            decode_chunk=self.decode_chunks.chosen,
            ranker=asdict(self.ranker.spec),
            shrink_kernels=list(SHRINK_KERNELS) if request.shrink else [],
        )
        if request.background == "paste":
            settings["paste_feather_pixels"] = self.paste_feather
        if request.background == "finetune":
            settings.update(
                finetune_steps=self.finetune_steps,
                finetune_lr=self.finetune_lr,
                finetune_background_weight=self.finetune_background_weight,
            )
        return settings


def _ragged(sample: torch.Tensor, multiple: int) -> bool:
    return any(side % multiple for side in sample.shape[-2:])


def _quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the 8-bit values a PNG will hold."""
    return images.clamp(0, 1).mul(255).round().div(255)
