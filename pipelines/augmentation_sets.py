"""The named strengths of VQGAN-CLIP's cutout augmentations (``[imagine] augmentations``).

Kept free of torch and kornia so the bot can check config.toml without loading them;
:mod:`pipelines.cutouts` builds the kornia augmentations from these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentationSet:
    """Strengths of the augmentations applied to every cutout (``[imagine] augmentations``).

    Probabilities are per cutout. A probability of 0 (``flip_p``, ``erasing_p``) or a
    ``sharpness`` of 0 leaves that augmentation out. Random erasing blanks one rectangle of
    ``erasing_scale`` of the area, the same one on every cutout of a step. Colour jitter uses
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
    erasing_p: float = 0.0
    erasing_scale: tuple[float, float] = (0.1, 0.4)
    erasing_ratio: tuple[float, float] = (0.3, 1 / 0.3)


AUGMENTATION_SETS: dict[str, AugmentationSet] = {
    # Crowson's VQGAN+CLIP notebook, the paper's own code: mild geometry (affine 30°,
    # perspective 0.2) and almost no colour change (hue and saturation 0.01). The notebook adds
    # noise of a std drawn uniformly from [0, 0.1] to every cutout (mean variance 0.01/3);
    # kornia's noise has one std, so here half the cutouts get std 0.1 (mean variance 0.005),
    # about 1.5x the notebook's mean noise energy and none on the other half.
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
    # nerdyrodent/VQGAN-CLIP generate.py's default augments, "Af Pe Ji Er", at the strengths of
    # its first kornia MakeCutouts: affine 15° (border padding), perspective 0.7, colour jitter
    # 0.1 on hue (±36°) and saturation, and random erasing of 10-40 % of the cutout, all p 0.7,
    # and no flip. Strong distortion and colour change trade faithfulness to the prompt's
    # colours for variety. Its noise is the notebook's, approximated as above. Close to
    # faraday's only set before the sets became a choice (that one had a flip, no erasing).
    "nerdyrodent": AugmentationSet(
        source="nerdyrodent/VQGAN-CLIP generate.py (augments Af Pe Ji Er)",
        flip_p=0.0,
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
        erasing_p=0.7,
    ),
}
# The paper's results were made with the notebook's set, and this project implements the paper.
DEFAULT_AUGMENTATIONS = "crowson"
