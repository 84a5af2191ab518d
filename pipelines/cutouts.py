"""Cutouts: the random, augmented views of the image that CLIP scores (paper, section 2.2).

CLIP sees a fixed, small input, so each step takes ``cutn`` random square crops of the image.
A crop's side is ``rand ** cut_pow`` of the way from the cut size (CLIP's input, or the image side
if smaller) to the image's shorter side, so ``cut_pow > 1`` favours small crops (detail) and
``cut_pow < 1`` large ones (composition). Crops are resized to CLIP's input (area averaging when
shrinking, bilinear when enlarging) and then augmented with kornia, with the paper's
augmentations at the strengths of a named set (:data:`AUGMENTATION_SETS`). Without them CLIP is
easily fooled by adversarial pixel patterns.

All randomness comes from torch's global CPU generator: kornia samples its parameters there, so
the caller makes runs repeatable by seeding (and restoring) that generator around each call.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.augmentation_sets import AUGMENTATION_SETS, DEFAULT_AUGMENTATIONS
from pipelines.straight_through import clamp_with_grad

__all__ = ["AUGMENTATION_SETS", "DEFAULT_AUGMENTATIONS", "MakeCutouts", "build_augmentations"]


def build_augmentations(name: str = DEFAULT_AUGMENTATIONS) -> K.AugmentationSequential:
    """(Flip,) (sharpness,) affine, perspective, colour jitter, (erasing,) gaussian noise."""
    a = AUGMENTATION_SETS[name]
    steps: list[nn.Module] = []
    if a.flip_p > 0:
        steps.append(K.RandomHorizontalFlip(p=a.flip_p))
    if a.sharpness > 0:
        steps.append(K.RandomSharpness(a.sharpness, p=a.sharpness_p))
    steps += [
        K.RandomAffine(
            degrees=a.affine_degrees,
            translate=(a.affine_translate, a.affine_translate),
            padding_mode="border",
            p=a.affine_p,
        ),
        K.RandomPerspective(distortion_scale=a.perspective_scale, p=a.perspective_p),
        K.ColorJiggle(saturation=a.jitter_saturation, hue=a.jitter_hue, p=a.jitter_p),
    ]
    if a.erasing_p > 0:
        steps.append(
            K.RandomErasing(
                scale=a.erasing_scale, ratio=a.erasing_ratio, same_on_batch=True, p=a.erasing_p
            )
        )
    steps.append(K.RandomGaussianNoise(mean=0.0, std=a.noise_std, p=a.noise_p))
    return K.AugmentationSequential(*steps)


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

    def __init__(
        self,
        cut_size: int,
        cutn: int,
        cut_pow: float = 1.0,
        augmentations: str = DEFAULT_AUGMENTATIONS,
    ) -> None:
        super().__init__()
        self.cut_size = cut_size
        self.cutn = cutn
        self.cut_pow = cut_pow
        self.augmentations = augmentations
        self.augment = build_augmentations(augmentations)

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
