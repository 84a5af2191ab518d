"""Self-masking (paper, appendix G.2): a mask for editing found by CLIP from a source phrase.

Instead of drawing a mask, the user names what to change ("the dog"). Crops of the original image
are scored against the phrase with CLIP:

1. one square crop is centred on every cell of the latent grid (the grid the edit acts on), a
   third of the image's shorter side wide, with the image edge-replicated so every crop is whole;
2. each crop's cosine similarity to the phrase is recorded at its centre, giving a similarity map
   on the latent grid, which is upsampled (bilinear) to the image's size;
3. the map is normalised to [0, 1] (min-max);
4. the threshold is two standard deviations below its mean (population std); pixels at or above
   it may change, pixels below it, the ones CLIP finds clearly unrelated to the phrase, are kept.

The rule is permissive by design: it only freezes what is clearly not the subject. What keeps the
rest of the picture recognisable is the structure term the optimisation adds alongside (see
``pipelines.vqgan_clip``): cutout embeddings of the edited image are pulled toward the same
cutouts of the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines.clip_models import ClipBundle
from pipelines.cutouts import resize_square

CROP_FRACTION = 1 / 3
THRESHOLD_STDS = 2.0
BATCH = 32


@dataclass
class SelfMask:
    similarity: torch.Tensor  # (H, W) cosine similarity of the crop centred at each pixel's cell
    normalised: torch.Tensor  # (H, W) min-max normalised similarity, in [0, 1]
    threshold: float  # normalised.mean() - 2 * normalised.std(unbiased=False)
    mask: torch.Tensor  # (H, W) bool: True where the edit may change the image


def crop_centres(size: int, cells: int) -> list[int]:
    """Pixel centres of ``cells`` equal cells along a side of ``size`` pixels."""
    return [int((index + 0.5) * size / cells) for index in range(cells)]


@torch.no_grad()
def self_mask(
    image: torch.Tensor,
    phrase_embedding: torch.Tensor,
    clip: ClipBundle,
    grid: tuple[int, int],
    crop_fraction: float = CROP_FRACTION,
) -> SelfMask:
    """The self-mask of ``image`` (1, 3, H, W) in [0, 1] for a phrase's CLIP embedding (D,).

    ``grid`` is the (rows, columns) of crop centres, normally the latent grid.
    """
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
    grid_map = torch.cat(scores).view(1, 1, rows, cols).float()
    similarity = F.interpolate(grid_map, size=(height, width), mode="bilinear", align_corners=False)
    similarity = similarity[0, 0]
    spread = similarity.max() - similarity.min()
    if spread > 0:
        normalised = (similarity - similarity.min()) / spread
    else:
        normalised = torch.zeros_like(similarity)
    threshold = float(normalised.mean() - THRESHOLD_STDS * normalised.std(unbiased=False))
    return SelfMask(
        similarity=similarity.cpu(),
        normalised=normalised.cpu(),
        threshold=threshold,
        mask=(normalised >= threshold).cpu(),
    )
