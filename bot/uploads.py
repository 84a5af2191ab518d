"""Making a file fit a channel's upload limit, and saying how it was changed to fit.

The limit is read at run time from Discord (it has been 8, 25 and 10 MiB over the years); what
fits is that limit less :data:`UPLOAD_HEADROOM`, because the multipart framing and the message's
JSON travel in the same request. Blocking: call these off the event loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

# Multipart overhead and the JSON payload ride in the same request as the files.
UPLOAD_HEADROOM = 64 * 1024
SMALLEST_SIDE = 64


def upload_budget(limit: int) -> int:
    """Bytes of files that fit in one message under an upload limit of ``limit`` bytes."""
    return max(1, limit - UPLOAD_HEADROOM)


def format_bytes(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    return f"{size / 1024:.0f} KiB"


@dataclass(frozen=True)
class FittedImage:
    data: bytes
    extension: str  # "png" or "jpg"
    size: tuple[int, int]  # the pixels sent
    quality: int | None  # the JPEG quality, when it is a JPEG
    note: str  # how it was changed to fit, for the message; "" when it went as it was


def jpeg_qualities(highest: int, lowest: int, step: int) -> list[int]:
    """``highest``, ``highest - step``, … down to ``lowest`` (always included)."""
    qualities = list(range(highest, lowest, -step))
    return [*qualities, lowest] if not qualities or qualities[-1] != lowest else qualities


def fit_image(png: bytes, limit: int, qualities: list[int]) -> FittedImage:
    """The PNG as it is if it fits; else a JPEG at the first of ``qualities`` that fits; else
    the lowest quality at half the size, then a quarter, … (never below 64 pixels a side)."""
    budget = upload_budget(limit)
    with Image.open(io.BytesIO(png)) as opened:
        size = opened.size
        if len(png) <= budget:
            return FittedImage(png, "png", size, None, "")
        image = opened.convert("RGB")
    reason = (
        f"the PNG ({format_bytes(len(png))}) is over this channel's "
        f"{format_bytes(limit)} upload limit"
    )
    for quality in qualities:
        data = _jpeg(image, quality)
        if len(data) <= budget:
            return FittedImage(
                data, "jpg", size, quality, f"Sent as a JPEG at quality {quality}: {reason}."
            )
    lowest = qualities[-1]
    while True:
        image = image.resize(
            (max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS
        )
        data = _jpeg(image, lowest)
        if len(data) <= budget or min(image.size) // 2 < SMALLEST_SIDE:
            return FittedImage(
                data,
                "jpg",
                image.size,
                lowest,
                f"Sent as a JPEG at quality {lowest}, scaled down to {image.width}×"
                f"{image.height}: {reason}, and even quality {lowest} at full size was.",
            )


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
