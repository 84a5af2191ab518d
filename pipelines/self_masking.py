"""Self-masking (paper, appendix G.2): a mask for editing found by CLIP from a source phrase.

Instead of drawing a mask, the user names what to change ("the dog"). Crops of the original image
are scored against the phrase with CLIP:

1. one square crop is centred on every cell of the latent grid (the grid the edit acts on), a
   third of the image's shorter side wide, with the image edge-replicated so every crop is whole;
2. each crop's cosine similarity to the phrase is recorded at its cell, giving a similarity map
   on the latent grid;
3. the map is normalised to [0, 1] (min-max);
4. the paper's step 4 says this grey-scale map "is now our mask", so it is read as a **soft**
   mask: each latent cell's weight is its normalised similarity, and cells below the mean minus
   two standard deviations (population std) get 0.

A hard cut at mean - 2σ alone keeps almost everything (98-100 % of the image for a blob, a sharp
object or pure noise alike), so edits would not be localised. With the soft weights a cell CLIP
finds unrelated to the phrase barely moves and a similar one moves fully.

How the weight acts: the optimiser is Adam, which divides each element's gradient by its own
running RMS, so multiplying a cell's gradient by a constant would cancel out and the cell would
move as fast as any other. The weight therefore scales each cell's **step** (:func:`weighted_step`),
which is what weighting the gradient means for plain gradient descent (and equals optimising a
latent reparametrised as z0 + w·δ). A weight of 0 also zeroes the gradient, so a frozen cell's
Adam state stays empty.

What keeps the rest of the picture recognisable is the structure term the optimisation adds
alongside (see ``pipelines.vqgan_clip``): cutout embeddings of the edited image are pulled toward
the same cutouts of the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.clip_models import ClipBundle
from pipelines.cutouts import resize_square

CROP_FRACTION = 1 / 3
THRESHOLD_STDS = 2.0
BATCH = 32


@dataclass
class SelfMask:
    cell_similarity: torch.Tensor  # (rows, cols) cosine similarity of the crop centred on each cell
    normalised: torch.Tensor  # (rows, cols) min-max normalised similarity, in [0, 1]
    threshold: float  # normalised.mean() - 2 * normalised.std(unbiased=False)
    weights: torch.Tensor  # (rows, cols) the soft mask: normalised, 0 below the threshold
    image_size: tuple[int, int]  # (height, width) of the image the mask belongs to

    @property
    def frozen_share(self) -> float:
        """The share of cells that may not change at all."""
        return float((self.weights == 0).float().mean())

    def pixel_weights(self) -> torch.Tensor:
        """(H, W) in [0, 1]: each pixel shows its latent cell's weight (the mask as used)."""
        return F.interpolate(self.weights[None, None], size=self.image_size, mode="nearest")[0, 0]

    def image(self) -> Image.Image:
        """The mask as a grey-scale picture: white changes fully, black not at all."""
        grey = (self.pixel_weights() * 255).round().to(torch.uint8).numpy()
        return Image.fromarray(grey, mode="L")


def crop_centres(size: int, cells: int) -> list[int]:
    """Pixel centres of ``cells`` equal cells along a side of ``size`` pixels."""
    return [int((index + 0.5) * size / cells) for index in range(cells)]


def soft_mask_weights(
    similarity: torch.Tensor, threshold_stds: float = THRESHOLD_STDS
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(normalised, threshold, weights) of a similarity map, the rule of the module docstring."""
    similarity = similarity.float()
    spread = similarity.max() - similarity.min()
    if spread > 0:
        normalised = (similarity - similarity.min()) / spread
    else:
        # Every crop scored the same: CLIP cannot tell where the phrase is, so nothing is favoured.
        normalised = torch.ones_like(similarity)
    threshold = float(normalised.mean() - threshold_stds * normalised.std(unbiased=False))
    weights = torch.where(normalised >= threshold, normalised, torch.zeros_like(normalised))
    return normalised, threshold, weights


def mask_from_similarity(similarity: torch.Tensor, image_size: tuple[int, int]) -> SelfMask:
    """The soft self-mask of a (rows, cols) similarity map for an image of (height, width)."""
    normalised, threshold, weights = soft_mask_weights(similarity)
    return SelfMask(
        cell_similarity=similarity.float().cpu(),
        normalised=normalised.cpu(),
        threshold=threshold,
        weights=weights.cpu(),
        image_size=image_size,
    )


@torch.no_grad()
def crop_similarities(
    image: torch.Tensor,
    phrase_embedding: torch.Tensor,
    clip: ClipBundle,
    grid: tuple[int, int],
    crop_fraction: float = CROP_FRACTION,
) -> torch.Tensor:
    """(rows, cols): CLIP's cosine similarity to the phrase of the crop centred on each cell."""
    height, width = image.shape[-2:]
    rows, cols = grid
    side = max(1, round(min(height, width) * crop_fraction))
    pad = side // 2 + 1
    padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")
    boxes = [
        (cy - side // 2 + pad, cx - side // 2 + pad)
        for cy in crop_centres(height, rows)
        for cx in crop_centres(width, cols)
    ]
    target = F.normalize(phrase_embedding.float().view(1, -1), dim=-1)
    scores: list[torch.Tensor] = []
    for start in range(0, len(boxes), BATCH):
        crops = torch.cat(
            [padded[:, :, y : y + side, x : x + side] for y, x in boxes[start : start + BATCH]]
        )
        embeddings = F.normalize(clip.encode_image(resize_square(crops, clip.input_size)), dim=-1)
        scores.append(embeddings @ target.T)
    return torch.cat(scores).view(rows, cols).float()


def self_mask(
    image: torch.Tensor,
    phrase_embedding: torch.Tensor,
    clip: ClipBundle,
    grid: tuple[int, int],
    crop_fraction: float = CROP_FRACTION,
) -> SelfMask:
    """The soft self-mask of ``image`` (1, 3, H, W) in [0, 1] for a phrase's CLIP embedding (D,).

    ``grid`` is the (rows, columns) of crop centres, normally the latent grid.
    """
    similarity = crop_similarities(image, phrase_embedding, clip, grid, crop_fraction)
    return mask_from_similarity(similarity, (image.shape[-2], image.shape[-1]))


@torch.no_grad()
def weighted_step(before: torch.Tensor, after: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``before + weights · (after − before)``: each cell's optimiser step scaled by its weight.

    ``weights`` (1, 1, rows, cols) broadcasts over candidates and channels.
    """
    return before + weights * (after - before)
