"""The ``upscale`` pipeline: an ESRGAN-family super-resolution model run tile by tile.

Models are loaded with spandrel, which recognises Real-ESRGAN / ESRGAN / SwinIR / … from the keys
of their released ``.pth`` files. Presets (see :mod:`pipelines.presets`):

- ``tiny``: a small RRDBNet (16 filters, 2 blocks, ×4) with seeded random weights;
- ``random-full``: Real-ESRGAN x4plus's architecture (64 filters, 23 blocks, ×4), random weights;
- ``default``: the file ``models.upscaler_model`` names (Real-ESRGAN x4plus), fetched on first use.

Tiling keeps memory bounded at any input size: the image is cut into ``tile`` × ``tile`` cores,
each run with ``overlap`` pixels of real context on every side that exists, and only the core's
part of the output is kept. Within a core the model then sees the same neighbourhood as it would
untiled, up to its receptive field, so tiles meet without visible seams. Only one padded tile is
on the device at a time; the assembled output is 8-bit on the CPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines.downloads import ModelFileError, fetch
from pipelines.image_io import pil_to_tensor, to_rgb
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
from pipelines.settings import ModelSettings

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_SEED = 0
# Real-ESRGAN x4plus (basicsr's RRDBNet): num_feat 64, num_block 23, num_grow_ch 32, scale 4.
FULL_FILTERS, FULL_BLOCKS = 64, 23
TINY_FILTERS, TINY_BLOCKS = 16, 2
MAX_SCALE = 8.0


@dataclass(frozen=True)
class UpscaleRequest:
    """One image to upscale.

    - ``scale``: the output's size over the input's; ``None`` is the model's own factor. Any
      other value resizes the model's output (Lanczos), as Real-ESRGAN's ``--outscale`` does.
    - ``tile`` / ``overlap``: input pixels per tile core and of context around it (``tile = 0``
      runs the whole image at once); the bot takes them from ``[upscale]`` in config.toml.
    - ``max_input_side``: longer sides are refused (``0``: no cap).
    - ``source_job_id`` / ``source_rank``: which result this is, recorded in the settings.
    """

    image: Image.Image
    scale: float | None = None
    tile: int = 256
    overlap: int = 16
    max_input_side: int = 1024
    source_job_id: int | None = None
    source_rank: int | None = None
    # Every scheduled job carries a seed; upscaling is deterministic and ignores it.
    seed: int | None = None
    # The bot's progress units (its ETAs count them): the tile count, see :func:`tile_count`.
    steps: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.scale is not None and not (0 < self.scale <= MAX_SCALE):
            raise InvalidRequest(f"scale must be above 0 and at most {MAX_SCALE:g}")
        if self.tile < 0 or (0 < self.tile < 16):
            raise InvalidRequest("tile must be 0 (no tiling) or at least 16 pixels")
        if self.overlap < 0:
            raise InvalidRequest("overlap must be 0 or more pixels")
        check_input_size(self.image.size, self.max_input_side)


def check_input_size(size: tuple[int, int], max_input_side: int) -> None:
    """Refuse an image over the cap, naming the cap and the image's size."""
    width, height = size
    if max_input_side and max(width, height) > max_input_side:
        raise InvalidRequest(
            f"the image is {width}×{height} pixels, over the upscaling cap of {max_input_side} "
            f"pixels a side ([upscale] max_input_side)"
        )


@dataclass(frozen=True)
class TileSpan:
    """One tile along one axis: the core [start, end) and the run span [lo, hi) around it."""

    start: int
    end: int
    lo: int
    hi: int


def tile_spans(length: int, tile: int, overlap: int) -> list[TileSpan]:
    if tile <= 0 or length <= tile:
        return [TileSpan(0, length, 0, length)]
    spans = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        spans.append(TileSpan(start, end, max(start - overlap, 0), min(end + overlap, length)))
    return spans


def tile_count(size: tuple[int, int], tile: int) -> int:
    """How many tiles an image of ``size`` (width, height) is cut into: the progress total."""
    width, height = size
    return len(tile_spans(width, tile, 0)) * len(tile_spans(height, tile, 0))


def upscale_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    on_tile: Callable[[int, int], None] | None = None,
    should_cancel: CancelCheck = never_cancel,
) -> torch.Tensor:
    """``model`` (N, 3, h, w) in [0, 1] → (N, 3, h·scale, w·scale), applied tile by tile.

    ``image`` is (1, 3, H, W) in [0, 1] on the CPU; the result is uint8 (1, 3, H·s, W·s) on the
    CPU. ``on_tile(done, total)`` follows each tile; ``should_cancel`` is polled before each and
    raises :class:`Cancelled` (with no image) when it fires.
    """
    _, channels, height, width = image.shape
    device = device or image.device
    rows, cols = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    total = len(rows) * len(cols)
    output = torch.empty((1, channels, height * scale, width * scale), dtype=torch.uint8)
    done = 0
    for row in rows:
        for col in cols:
            if should_cancel():
                raise Cancelled(done, total, None)
            piece = image[:, :, row.lo : row.hi, col.lo : col.hi].to(device, dtype)
            result = model(piece)
            # The core's part of the run span's output.
            top, left = (row.start - row.lo) * scale, (col.start - col.lo) * scale
            core = result[
                :,
                :,
                top : top + (row.end - row.start) * scale,
                left : left + (col.end - col.start) * scale,
            ]
            output[
                :, :, row.start * scale : row.end * scale, col.start * scale : col.end * scale
            ] = core.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
            del piece, result, core
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return output


# -- models -----------------------------------------------------------------------------------


def _random_esrgan(filters: int, blocks: int, seed: int = RANDOM_WEIGHTS_SEED) -> Any:
    """A randomly initialised RRDBNet (×4), through spandrel like a loaded file."""
    from spandrel import ModelLoader
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.random.default_generator.manual_seed(seed)
    state = ESRGAN(num_filters=filters, num_blocks=blocks, scale=4).state_dict()
    return ModelLoader().load_from_state_dict(state)


MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def check_upscaler_file(path: Path, where: str) -> None:
    """A download is kept only if spandrel recognises it as a single-image RGB model."""
    load_descriptor_from_file(path, where)


def load_descriptor_from_file(path: Path, where: str | None = None) -> Any:
    """An ``ImageModelDescriptor`` for the model file, or :class:`ModelFileError` saying why not.

    Named files go through ``spandrel.ModelLoader().load_from_file``, which picks the format by
    the extension and unpickles ``.pth`` files with a restricted unpickler (tensors and dicts
    only). A download still under its temporary name is read by its contents instead.
    """
    import pickle

    from spandrel import ModelLoader, UnsupportedModelError

    where = where or str(path)
    what = "models.upscaler_model"
    try:
        if path.suffix.lower() in MODEL_SUFFIXES:
            descriptor = ModelLoader().load_from_file(path)
        else:
            descriptor = ModelLoader().load_from_state_dict(_read_state_dict(path))
    except UnsupportedModelError:
        raise ModelFileError(
            f"{what}: {where} is not a model architecture spandrel knows (ESRGAN, Real-ESRGAN, "
            "SwinIR, ...)"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelFileError(f"{what}: {where} cannot be read as a model file ({reason})") from None
    return _single_image_model(descriptor, what, where)


def _read_state_dict(path: Path) -> dict:
    """A safetensors or torch file's state dict by its first bytes, loaded safely."""
    from safetensors.torch import load_file
    from spandrel import canonicalize_state_dict

    with path.open("rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("the file holds no state dict")
    return canonicalize_state_dict(state)


def _single_image_model(descriptor: Any, what: str, where: str) -> Any:
    from spandrel import ImageModelDescriptor

    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelFileError(f"{what}: {where} is an inpainting model, not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelFileError(
            f"{what}: {where} takes {descriptor.input_channels} and gives "
            f"{descriptor.output_channels} channels; an RGB model (3 and 3) is needed"
        )
    return descriptor


_cache: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()


def _key(settings: ModelSettings, device: torch.device) -> tuple[Any, ...]:
    if settings.preset == "default":
        return (
            "default",
            settings.upscaler_model,
            settings.upscaler_model_sha256,
            str(settings.cache_dir),
            str(device),
            settings.dtype,
        )
    return (settings.preset, str(device), settings.dtype)


def load_upscaler(settings: ModelSettings, device: torch.device) -> Any:
    """The preset's upscaler as a spandrel ``ImageModelDescriptor`` on ``device`` in its compute
    dtype (:func:`compute_dtype`), in eval mode, built once per process."""
    key = _key(settings, device)
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        # spandrel builds every model with a random initialisation before loading weights; fork
        # the CPU generator so that never shifts the caller's random stream (seeded jobs).
        with torch.random.fork_rng(devices=[]):
            if settings.preset == "tiny":
                descriptor = _random_esrgan(TINY_FILTERS, TINY_BLOCKS)
            elif settings.preset == "random-full":
                descriptor = _random_esrgan(FULL_FILTERS, FULL_BLOCKS)
            elif settings.preset == "default":
                path = fetch(
                    settings.upscaler_model,
                    settings.cache_dir,
                    what="models.upscaler_model",
                    sha256=settings.upscaler_model_sha256,
                    check=check_upscaler_file,
                )
                descriptor = load_descriptor_from_file(path)
            else:  # ModelSettings validates the preset
                raise ValueError(f"unknown preset {settings.preset!r}")
        descriptor = _single_image_model(descriptor, "models.upscaler_model", settings.preset)
        descriptor.to(device, compute_dtype(descriptor, settings.dtype, device)).eval()
        log.info(
            "upscaler %s ×%d for preset %s ready on %s",
            descriptor.architecture.name,
            descriptor.scale,
            settings.preset,
            device,
        )
        _cache[key] = descriptor
        return descriptor


def upscaler_identity(settings: ModelSettings) -> dict[str, str]:
    if settings.preset == "tiny":
        return {"upscaler": f"tiny RRDBNet {TINY_FILTERS}×{TINY_BLOCKS} (random weights)"}
    if settings.preset == "random-full":
        return {"upscaler": "Real-ESRGAN x4plus architecture (random weights)"}
    return {
        "upscaler_model": settings.upscaler_model,
        "upscaler_model_sha256": settings.upscaler_model_sha256,
    }


def clear_cache() -> None:
    with _lock:
        _cache.clear()


# -- the pipeline ------------------------------------------------------------------------------


_CUDA_DTYPES = {
    "auto": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def compute_dtype(descriptor: Any, preference: str, device: torch.device) -> torch.dtype:
    """``[models] dtype`` on CUDA (``auto`` is float16), unless spandrel marks the architecture
    as not supporting it; always float32 on the CPU, where float16 has no fast kernels and
    bfloat16 measured slower here (FACTS.md)."""
    if device.type != "cuda":
        return torch.float32
    dtype = _CUDA_DTYPES[preference]
    if dtype == torch.float16 and not descriptor.supports_half:
        return torch.float32
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        return torch.float32
    return dtype


class UpscalePipeline:
    """``pipeline(request, on_progress, should_cancel)``; progress counts tiles, no previews."""

    def __init__(
        self,
        descriptor: Any,
        device: torch.device,
        model_info: dict[str, str] | None = None,
    ) -> None:
        self.descriptor = descriptor
        self.device = device
        self.dtype = descriptor.dtype
        self.model_info = dict(model_info or {})

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> UpscalePipeline:
        from pipelines.devices import pick_device

        device = pick_device(settings.device)
        descriptor = load_upscaler(settings, device)
        info = {"preset": settings.preset, **upscaler_identity(settings)}
        return cls(descriptor, device, info)

    def __call__(
        self,
        request: UpscaleRequest,
        on_progress: ProgressCallback = no_progress,
        should_cancel: CancelCheck = never_cancel,
    ) -> PipelineResult:
        request.validate()
        image = to_rgb(request.image)
        pixels = pil_to_tensor(image)

        def on_tile(done: int, total: int) -> None:
            on_progress(done, total, None)

        upscaled = upscale_tiled(
            self.descriptor,
            pixels,
            self.scale,
            request.tile,
            request.overlap,
            device=self.device,
            dtype=self.dtype,
            on_tile=on_tile,
            should_cancel=should_cancel,
        )
        result = Image.fromarray(upscaled[0].permute(1, 2, 0).numpy(), "RGB")
        scale = float(self.scale) if request.scale is None else float(request.scale)
        if request.scale is not None and request.scale != self.scale:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            result = result.resize(size, Image.Resampling.LANCZOS)
        settings = {
            "input_size": list(image.size),
            "output_size": list(result.size),
            "scale": scale,
            "model_scale": self.scale,
            "architecture": self.descriptor.architecture.name,
            "tile": request.tile,
            "overlap": request.overlap,
            "source_job_id": request.source_job_id,
            "source_rank": request.source_rank,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            **self.model_info,
        }
        return PipelineResult([RankedImage(result, 1, 1.0, 0)], settings=settings)
