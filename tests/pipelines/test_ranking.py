"""CLIP ranking of candidates on the masked region, and the cheap latent previews."""

from __future__ import annotations

import pytest
import torch

from pipelines.clip_models import TINY_CLIP, ClipBundle, ClipSpec, load_clip
from pipelines.latent_preview import SD1_LATENT_TO_RGB, latents_to_rgb, preview_grid
from pipelines.ranking import clip_similarities, masked_for_clip, order_best_first


@pytest.fixture(scope="module")
def clip() -> ClipBundle:
    return load_clip(ClipSpec(TINY_CLIP), torch.device("cpu"))


def test_order_is_by_descending_score_with_ties_in_candidate_order() -> None:
    assert order_best_first(torch.tensor([0.1, 0.3, 0.2, 0.3])) == [1, 3, 2, 0]


def test_only_the_masked_region_is_shown_to_clip() -> None:
    images = torch.rand(2, 3, 40, 40)
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 10:20, 10:20] = 1
    changed = images.clone()
    changed[..., 30:, 30:] = 1 - changed[..., 30:, 30:]  # outside the mask
    assert torch.equal(masked_for_clip(images, mask, 32), masked_for_clip(changed, mask, 32))
    assert masked_for_clip(images, mask, 32).shape == (2, 3, 32, 32)


def test_scores_depend_on_the_masked_pixels_and_the_prompt(clip: ClipBundle) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 48, generator=generator)
    images[2] = images[0]
    mask = torch.zeros(1, 1, 48, 48)
    mask[..., 8:40, 8:40] = 1
    outside_changed = images.clone()
    outside_changed[:, :, :4] = 0.5
    scores = clip_similarities(clip, images, mask, "a red apple")
    assert scores.shape == (3,)
    assert torch.all(scores.abs() <= 1 + 1e-6)
    assert scores[0] == scores[2] and scores[0] != scores[1]
    torch.testing.assert_close(
        clip_similarities(clip, outside_changed, mask, "a red apple"), scores
    )
    assert not torch.allclose(clip_similarities(clip, images, mask, "a blue car"), scores)


def test_latent_preview_maps_sd_latents_linearly_to_rgb() -> None:
    # Latents chosen so the map gives known colours: solve for them with the pseudo-inverse.
    target = torch.tensor([[0.8, -0.2, 0.4], [-0.6, 0.0, 0.6]])  # in the map's [-1, 1] range
    latent = target @ torch.linalg.pinv(SD1_LATENT_TO_RGB)
    latents = latent.T.reshape(1, 4, 1, 2).repeat(2, 1, 3, 1)
    rgb = latents_to_rgb(latents)
    assert rgb.shape == (2, 3, 3, 2)
    torch.testing.assert_close(rgb[0, :, 0, 0], (target[0] + 1) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(rgb[1, :, 2, 1], (target[1] + 1) / 2, atol=1e-5, rtol=0)


def test_preview_grid_tiles_every_candidate() -> None:
    image = preview_grid(torch.randn(3, 4, 8, 6), tile_side=32)
    # 2 columns × 2 rows of 8×6 latents enlarged 4×.
    assert image.size == (2 * 24, 2 * 32)
    assert image.mode == "RGB"
