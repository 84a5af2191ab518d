"""The results grid: every result image as a tile, best first, its number drawn on it.

The numbers match the reactions 1️⃣…N️⃣ under the message, so a user picks by what they see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

GAP = 4
BACKGROUND = (24, 24, 27)


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows): as square as possible, wider rather than taller."""
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    return columns, rows


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: a fixed bitmap font
        return ImageFont.load_default()


def numbered_grid(images: Sequence[Image.Image], tile: int | None = None) -> Image.Image:
    """Tiles in rank order (left to right, top to bottom) with "1", "2", … in the corner."""
    if not images:
        raise ValueError("a grid needs at least one image")
    side = tile or max(max(image.size) for image in images)
    columns, rows = grid_shape(len(images))
    canvas = Image.new(
        "RGB", (columns * side + (columns + 1) * GAP, rows * side + (rows + 1) * GAP), BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    font = _font(max(12, side // 8))
    for index, image in enumerate(images):
        column, row = index % columns, index // columns
        left = GAP + column * (side + GAP)
        top = GAP + row * (side + GAP)
        fitted = image.convert("RGB")
        fitted.thumbnail((side, side))
        canvas.paste(fitted, (left + (side - fitted.width) // 2, top + (side - fitted.height) // 2))
        label = str(index + 1)
        box = draw.textbbox((0, 0), label, font=font)
        pad = max(3, side // 40)
        width, height = box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad
        # A dark badge with a light outline reads on any image.
        draw.rounded_rectangle(
            (left + pad, top + pad, left + pad + width, top + pad + height),
            radius=pad,
            fill=(0, 0, 0),
            outline=(255, 255, 255),
            width=max(1, pad // 2),
        )
        draw.text((left + 2 * pad - box[0], top + 2 * pad - box[1]), label, font=font,
                  fill=(255, 255, 255))
    return canvas
