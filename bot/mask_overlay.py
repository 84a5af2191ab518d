"""The self-mask drawn over a preview, so a user sees which part of the picture an edit may
change. The pipeline hands the mask with its first preview (:func:`pipelines.interface.
attached_mask`); the publisher shows this overlay once, in place of that preview."""

from __future__ import annotations

from PIL import Image

from pipelines.interface import attached_mask

# How strongly a fully weighted cell is tinted: enough to see at a glance, little enough to
# still see the picture under it.
TINT_STRENGTH = 0.55
TINT = (255, 40, 40)


def mask_overlay(preview: Image.Image, mask: Image.Image) -> Image.Image:
    """``preview`` tinted red in proportion to ``mask`` (grey-scale; white = changes fully)."""
    base = preview.convert("RGB")
    weights = mask.convert("L")
    if weights.size != base.size:
        weights = weights.resize(base.size, Image.NEAREST)
    alpha = weights.point(lambda value: round(value * TINT_STRENGTH))
    return Image.composite(Image.new("RGB", base.size, TINT), base, alpha)


def shown_preview(preview: Image.Image) -> Image.Image:
    """What to post for a preview: the overlay when it carries a mask, else the preview."""
    mask = attached_mask(preview)
    return preview if mask is None else mask_overlay(preview, mask)
