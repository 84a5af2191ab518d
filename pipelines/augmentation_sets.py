"""The named strengths of VQGAN-CLIP's cutout augmentations (``[imagine] augmentations``).

Kept free of torch and kornia so the bot can check config.toml without loading them;
:mod:`pipelines.cutouts` builds the kornia augmentations from these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentationSet:
    """Strengths of the augmentations applied to every cutout (``[imagine] augmentations``).

    Probabilities are per cutout. ``sharpness`` 0 leaves sharpening out. Colour jitter uses
    kornia's ``ColorJiggle``: the references used kornia's old ``ColorJitter`` formulas, which
    kornia 0.9 kept under that name when ``ColorJitter`` switched to torchvision's.
    """

    source: str
    flip_p: float
    sharpness: float
    sharpness_p: float
    affine_degrees: float
    affine_translate: float
    affine_p: float
    perspective_scale: float
    perspective_p: float
    jitter_saturation: float
    jitter_hue: float
    jitter_p: float
    noise_std: float
    noise_p: float


AUGMENTATION_SETS: dict[str, AugmentationSet] = {
    # Crowson's VQGAN+CLIP notebook, the paper's own code: mild geometry (affine 30°,
    # perspective 0.2) and almost no colour change (hue and saturation 0.01). It adds noise of a
    # random strength in [0, 0.1] to each cutout; kornia's noise has one strength, so half the
    # cutouts get std 0.1, about the same mean noise energy.
    "crowson": AugmentationSet(
        source="Crowson's VQGAN+CLIP notebook (the paper's code)",
        flip_p=0.5,
        sharpness=0.3,
        sharpness_p=0.4,
        affine_degrees=30.0,
        affine_translate=0.1,
        affine_p=0.8,
        perspective_scale=0.2,
        perspective_p=0.4,
        jitter_saturation=0.01,
        jitter_hue=0.01,
        jitter_p=0.7,
        noise_std=0.1,
        noise_p=0.5,
    ),
    # nerdyrodent/VQGAN-CLIP generate.py's early default augments ("Af", "Pe", "Ji"): strong
    # perspective (0.7) and colour jitter (hue ±36°), which trade faithfulness to the prompt's
    # colours for variety; with the notebook's noise as above. It was faraday's only set
    # before the sets became a choice, so a server can keep the look it had.
    "nerdyrodent": AugmentationSet(
        source="nerdyrodent/VQGAN-CLIP generate.py",
        flip_p=0.5,
        sharpness=0.0,
        sharpness_p=0.0,
        affine_degrees=15.0,
        affine_translate=0.1,
        affine_p=0.7,
        perspective_scale=0.7,
        perspective_p=0.7,
        jitter_saturation=0.1,
        jitter_hue=0.1,
        jitter_p=0.7,
        noise_std=0.1,
        noise_p=0.5,
    ),
}
# The paper's results were made with the notebook's set, and this project implements the paper.
DEFAULT_AUGMENTATIONS = "crowson"
