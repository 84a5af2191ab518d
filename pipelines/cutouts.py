"""Cutouts: the random, augmented views of the image that CLIP scores (paper, section 2.2).

CLIP sees a fixed, small input, so each step takes ``cutn`` random square crops of the image.
A crop's side is ``rand ** cut_pow`` of the way from the cut size (CLIP's input, or the image side
if smaller) to the image's shorter side, so ``cut_pow > 1`` favours small crops (detail) and
``cut_pow < 1`` large ones (composition). Crops are resized to CLIP's input (area averaging when
shrinking, bilinear when enlarging) and then augmented with kornia, with the paper's five
augmentations. Without them CLIP is easily fooled by adversarial pixel patterns.

All randomness comes from torch's global CPU generator: kornia samples its parameters there, so
the caller makes runs repeatable by seeding (and restoring) that generator around each call.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.straight_through import clamp_with_grad

# Strengths follow Crowson's notebook, the paper's code. ColorJiggle is kornia's old colour jitter
# that the notebook used; kornia 0.9's ColorJitter switched to torchvision's formulas.
FLIP_P = 0.5
AFFINE_DEGREES, AFFINE_TRANSLATE, AFFINE_P = 15.0, 0.1, 0.7
PERSPECTIVE_SCALE, PERSPECTIVE_P = 0.7, 0.7
JITTER_SATURATION, JITTER_HUE, JITTER_P = 0.1, 0.1, 0.7
# The notebook adds noise of a random strength in [0, 0.1] to every cutout; kornia's noise has
# one strength, so half the cutouts get std 0.1 (about the same mean noise energy).
NOISE_STD, NOISE_P = 0.1, 0.5


def build_augmentations() -> K.AugmentationSequential:
    """Random horizontal flip, affine, perspective, colour jitter and gaussian noise."""
    return K.AugmentationSequential(
        K.RandomHorizontalFlip(p=FLIP_P),
        K.RandomAffine(
            degrees=AFFINE_DEGREES,
            translate=(AFFINE_TRANSLATE, AFFINE_TRANSLATE),
            padding_mode="border",
            p=AFFINE_P,
        ),
        K.RandomPerspective(distortion_scale=PERSPECTIVE_SCALE, p=PERSPECTIVE_P),
        K.ColorJiggle(saturation=JITTER_SATURATION, hue=JITTER_HUE, p=JITTER_P),
        K.RandomGaussianNoise(mean=0.0, std=NOISE_STD, p=NOISE_P),
    )


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square images to ``size``: area averaging when shrinking, bilinear when enlarging."""
    if images.shape[-1] == size:
        return images
    if images.shape[-1] > size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class CropBox:
    x: int
    y: int
    side: int


class MakeCutouts(nn.Module):
    """``cutn`` random augmented square views of an image, each ``cut_size`` pixels wide."""

    def __init__(self, cut_size: int, cutn: int, cut_pow: float = 1.0) -> None:
        super().__init__()
        self.cut_size = cut_size
        self.cutn = cutn
        self.cut_pow = cut_pow
        self.augment = build_augmentations()

    def sample_boxes(self, height: int, width: int) -> list[CropBox]:
        max_side = min(height, width)
        min_side = min(height, width, self.cut_size)
        fractions = torch.rand(self.cutn).pow(self.cut_pow)
        boxes = []
        for fraction in fractions.tolist():
            side = int(fraction * (max_side - min_side) + min_side)
            x = int(torch.randint(0, width - side + 1, ()))
            y = int(torch.randint(0, height - side + 1, ()))
            boxes.append(CropBox(x, y, side))
        return boxes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Cutouts of ``images`` (S, 3, H, W) in [0, 1] -> (S, cutn, 3, cut_size, cut_size).

        All S images get the same crops and the same augmentations, so the structure term can
        compare cutout k of the current image with cutout k of the original.
        """
        height, width = images.shape[-2:]
        boxes = self.sample_boxes(height, width)
        crops = torch.stack(
            [
                resize_square(images[:, :, b.y : b.y + b.side, b.x : b.x + b.side], self.cut_size)
                for b in boxes
            ],
            dim=1,
        )
        first = self.augment(crops[0])
        views = [first]
        for other in crops[1:]:
            views.append(self.augment(other, params=self.augment._params))
        return clamp_with_grad(torch.stack(views), 0.0, 1.0)
