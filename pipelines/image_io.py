"""Opening user images and masks safely, and moving between PIL and tensors.

Every failure is an :class:`InvalidRequest` whose message can be shown to a user as it is.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.interface import InvalidRequest

# Pillow's own guard (~89 Mpx) warns at that size and raises at twice it; we refuse at the warning.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def open_image(source: bytes | str | Path, *, what: str = "image") -> Image.Image:
    """Decode an image fully, refusing decompression bombs; returns it with EXIF rotation applied.

    Animated images come back as their first frame; callers that must refuse them check
    :func:`is_animated` on the raw bytes first.
    """
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc
        raise InvalidRequest(f"cannot read the {what} file {str(source)!r}: {reason}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(
            f"the {what} is too large to open safely (limit {MAX_PIXELS:,} pixels)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidRequest(f"the {what} is not an image Pillow can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(f"the {what} file is damaged or truncated ({exc})") from exc
    return ImageOps.exif_transpose(image) or image


def is_animated(image: Image.Image) -> bool:
    return bool(getattr(image, "is_animated", False)) and getattr(image, "n_frames", 1) > 1


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale scaled into an 8-bit ``L`` image; others unchanged.

    Pillow's ``convert`` clips these modes at 255 instead of scaling, which turns a 16-bit PNG
    (a common export from photo tools) almost entirely white.
    """
    if image.mode not in (*_SIXTEEN_BIT_MODES, "I", "F"):
        return image
    array = np.asarray(image, dtype=np.float64)
    top = float(array.max()) if array.size else 0.0
    if image.mode in _SIXTEEN_BIT_MODES:
        scale = 65535.0
    elif image.mode == "F" and top <= 1.0:
        scale = 1.0  # float images usually hold [0, 1]
    elif top <= 255.0:
        scale = 255.0
    elif image.mode == "I" and top <= 65535.0:
        scale = 65535.0  # a 16-bit file that Pillow opened as 32-bit
    else:
        scale = top
    eight_bit = np.clip(array / scale, 0.0, 1.0) * 255.0
    return Image.fromarray(eight_bit.round().astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, compositing any transparency over white so transparent areas do not turn black."""
    image = to_eight_bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def mask_from_image(image: Image.Image, threshold: float = 0.5) -> np.ndarray:
    """A boolean mask, > threshold: the alpha channel, or luminance where there is no transparency.

    Paint tools often save a black-and-white mask as RGBA with every pixel opaque; reading that
    alpha would select the whole image, so an alpha channel that is opaque everywhere defers to
    the painted brightness.
    """
    image = to_eight_bit(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32)
        if alpha.size and alpha.min() < 255:
            return alpha / 255.0 > threshold
    luminance = np.asarray(image.convert("L"), dtype=np.float32)
    return luminance / 255.0 > threshold


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]."""
    array = np.asarray(to_rgb(image), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(images: torch.Tensor) -> Image.Image:
    """The first image of a (N, 3, H, W) or (3, H, W) tensor in [0, 1]."""
    if images.dim() == 4:
        images = images[0]
    array = images.detach().float().clamp(0, 1).mul(255).round().byte()
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")
