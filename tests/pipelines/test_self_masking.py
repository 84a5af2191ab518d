"""Self-masking read as a soft mask (appendix G.2), the structure term beside it, and how the mask
reaches the user (the first preview, OUT.mask.png through the result's artifacts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import self_masking
from pipelines.clip_models import TINY_CLIP, ClipSpec, load_clip
from pipelines.interface import attached_mask
from pipelines.self_masking import (
    crop_similarities,
    mask_from_similarity,
    self_mask,
    soft_mask_weights,
    weighted_step,
)
from pipelines.vqgan import VQGAN, VqganConfig
from pipelines.vqgan_clip import ImagineRequest, VqganClipPipeline, VqganClipRun, structure_loss

CPU = torch.device("cpu")
TINY_LR = 0.005  # see tests/pipelines/test_vqgan_clip.py: the tiny codebook spans about ±1/64
SIDE = 80  # 20 x 20 latent cells with the tiny VQGAN's factor of 4
OBJECT = (slice(6, 14), slice(5, 15))  # 8 x 10 = 80 of 400 cells: 20 %


@pytest.fixture(scope="module")
def pipeline() -> VqganClipPipeline:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vqgan = VQGAN(VqganConfig.tiny())
    return VqganClipPipeline(vqgan, load_clip(ClipSpec(TINY_CLIP), CPU), {"preset": "test"})


def noise_image(side: int = SIDE, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")


def edit_request(**overrides: object) -> ImagineRequest:
    values: dict[str, object] = {
        "prompt": "a red apple on a table",
        "seed": 3,
        "steps": 3,
        "width": SIDE,
        "height": SIDE,
        "cutn": 4,
        "lr": TINY_LR,
        "preview_every": 1,
        "init_image": noise_image(),
        "mask_text": "the apple",
    }
    values.update(overrides)
    return ImagineRequest(**values)  # type: ignore[arg-type]


def object_map(rows: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity, is_object): an object on 20 % of the cells scoring high, the rest low, with
    the small cell-to-cell spread real CLIP scores have."""
    generator = torch.Generator().manual_seed(seed)
    is_object = torch.zeros(rows, cols, dtype=torch.bool)
    is_object[OBJECT] = True
    assert float(is_object.float().mean()) == pytest.approx(0.2)
    noise = torch.rand(rows, cols, generator=generator) * 0.03
    similarity = torch.where(is_object, 0.29 + noise, 0.19 + noise)
    return similarity, is_object


@pytest.fixture
def constructed_similarity(monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """Make every self-mask in this test come from the constructed map instead of CLIP."""
    similarity, is_object = object_map(SIDE // 4, SIDE // 4)
    monkeypatch.setattr(self_masking, "crop_similarities", lambda *args, **kwargs: similarity)
    return is_object


# --- the soft mask -----------------------------------------------------------------------------


def test_soft_weights_are_the_normalised_map_zeroed_below_mean_minus_two_sigma() -> None:
    similarity = torch.rand(12, 16, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.2
    similarity[0, 0] = -0.5  # an outlier far below the rest, so the cut has work to do
    normalised, threshold, weights = soft_mask_weights(similarity)
    expected = (similarity - similarity.min()) / (similarity.max() - similarity.min())
    torch.testing.assert_close(normalised, expected)
    assert threshold == pytest.approx(
        float(expected.mean() - 2 * expected.std(unbiased=False)), abs=1e-6
    )
    kept = expected >= threshold
    assert not kept.all()
    torch.testing.assert_close(weights, torch.where(kept, expected, torch.zeros_like(expected)))
    # Soft: weights take many values between 0 and 1, not just the two of a hard mask.
    assert len(torch.unique(weights)) > 100


def test_background_weight_is_at_most_a_quarter_of_the_objects() -> None:
    similarity, is_object = object_map(20, 20)
    _, _, weights = soft_mask_weights(similarity)
    background, subject = weights[~is_object].mean(), weights[is_object].mean()
    assert subject > 0.5
    assert background <= 0.25 * subject, (float(background), float(subject))


def test_a_flat_map_leaves_every_cell_free() -> None:
    # CLIP could not tell where the phrase is: nothing is favoured, nothing frozen.
    _, _, weights = soft_mask_weights(torch.full((4, 5), 0.3))
    assert torch.equal(weights, torch.ones(4, 5))


def test_weighted_step_scales_each_cells_step() -> None:
    before = torch.zeros(2, 3, 2, 2)
    after = torch.ones(2, 3, 2, 2)
    weights = torch.tensor([[0.0, 0.25], [0.5, 1.0]])[None, None]
    moved = weighted_step(before, after, weights)
    assert torch.equal(moved, weights.expand(2, 3, 2, 2))


def test_in_a_run_background_cells_move_at_most_a_quarter_as_far(
    pipeline: VqganClipPipeline, constructed_similarity: torch.Tensor
) -> None:
    is_object = constructed_similarity
    run = pipeline.start(edit_request(), seed=3)
    assert run.self_mask is not None
    z_before = run.z.detach().clone()
    for _ in range(3):
        run.step()
    moved = (run.z.detach() - z_before).abs().mean(dim=(0, 1))  # per latent cell
    background, subject = moved[~is_object].mean(), moved[is_object].mean()
    assert subject > 0
    assert background <= 0.25 * subject, (float(background), float(subject))
    # The cells the threshold froze did not move at all.
    frozen = run.self_mask.weights == 0
    assert frozen.any()
    assert torch.equal(moved[frozen], torch.zeros_like(moved[frozen]))


def test_without_a_mask_the_same_cells_move_alike(pipeline: VqganClipPipeline) -> None:
    # The control for the test above: the gap comes from the mask, not from the cells.
    _, is_object = object_map(SIDE // 4, SIDE // 4)
    run = pipeline.start(edit_request(mask_text=None), seed=3)
    z_before = run.z.detach().clone()
    for _ in range(3):
        run.step()
    moved = (run.z.detach() - z_before).abs().mean(dim=(0, 1))
    assert moved[~is_object].mean() > 0.5 * moved[is_object].mean()


def test_similarity_is_recorded_at_each_crops_cell(pipeline: VqganClipPipeline) -> None:
    clip = pipeline.clip
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    phrase = clip.encode_text(["a red apple"])[0]
    # One crop per pixel, so each cell is one pixel and can be checked by hand.
    similarity = crop_similarities(image, phrase, clip, grid=(24, 24))
    side = 8  # a third of 24
    padded = torch.nn.functional.pad(image, (side,) * 4, mode="replicate")
    for y, x in [(0, 0), (5, 17), (12, 12), (23, 6)]:
        top, left = y - side // 2 + side, x - side // 2 + side
        crop = padded[:, :, top : top + side, left : left + side]
        embedding = clip.encode_image(
            torch.nn.functional.interpolate(
                crop, size=(clip.input_size,) * 2, mode="bilinear", align_corners=False
            )
        )
        expected = torch.nn.functional.cosine_similarity(embedding, phrase[None]).item()
        assert similarity[y, x].item() == pytest.approx(expected, abs=1e-5), (y, x)


def test_the_self_mask_is_on_the_latent_grid_and_drawn_at_image_size(
    pipeline: VqganClipPipeline,
) -> None:
    clip = pipeline.clip
    image = torch.rand(1, 3, 48, 64)
    result = self_mask(image, clip.encode_text(["a red apple"])[0], clip, grid=(12, 16))
    assert result.weights.shape == (12, 16)
    assert result.cell_similarity.max() > result.cell_similarity.min()
    picture = result.image()
    assert picture.size == (64, 48) and picture.mode == "L"
    # Each 4 x 4 block of the picture shows its cell's weight.
    pixels = np.asarray(picture).astype(np.float32) / 255
    cells = pixels.reshape(12, 4, 16, 4)
    assert np.allclose(cells, result.weights.numpy()[:, None, :, None], atol=1 / 255)


def test_a_run_uses_the_soft_weights_and_says_so(
    pipeline: VqganClipPipeline, constructed_similarity: torch.Tensor
) -> None:
    run = pipeline.start(edit_request(), seed=3)
    assert run.self_mask is not None
    similarity, _ = object_map(SIDE // 4, SIDE // 4)
    expected = mask_from_similarity(similarity, (SIDE, SIDE)).weights
    torch.testing.assert_close(run.latent_mask[0, 0], expected)
    assert any("self-mask for 'the apple': mean weight" in note for note in run.notes)


# --- the structure term ------------------------------------------------------------------------


def _first_step_structure_part(pipeline: VqganClipPipeline, weight: float) -> float:
    request = edit_request(structure_weight=weight, z_reg_weight=0.0, init_weight=0.0)
    result = pipeline.start(request, seed=3).step()
    return result.total_losses[0] - result.prompt_losses[0]


def test_the_structure_term_enters_the_loss_with_its_weight(
    pipeline: VqganClipPipeline, constructed_similarity: torch.Tensor
) -> None:
    one = _first_step_structure_part(pipeline, 1.0)
    assert one > 1e-4  # the decoded start differs from the original, so the term is not zero
    assert _first_step_structure_part(pipeline, 3.0) == pytest.approx(3 * one, rel=1e-4)
    assert _first_step_structure_part(pipeline, 0.0) == pytest.approx(0.0, abs=1e-7)


def fixed_structure_distance(run: VqganClipRun) -> float:
    """Structure distance of candidate 0 to the original on cutouts from a fixed seed."""
    assert run.original is not None
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        views = run.cutouts(torch.cat([run.decode()[0:1], run.original]))
        return float(
            structure_loss(run.clip.encode_image(views[0]), run.clip.encode_image(views[1]))
        )


def test_the_structure_term_keeps_the_edit_close_to_the_original(
    pipeline: VqganClipPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flat map leaves every cell free, so only the structure term holds the picture.
    monkeypatch.setattr(
        self_masking, "crop_similarities", lambda *args, **kwargs: torch.full((20, 20), 0.3)
    )
    distances = {}
    for weight in (0.0, 50.0):
        run = pipeline.start(edit_request(structure_weight=weight, steps=10, cutn=8), seed=3)
        for _ in range(10):
            run.step()
        distances[weight] = fixed_structure_distance(run)
    assert distances[50.0] < distances[0.0], distances


# --- showing the mask --------------------------------------------------------------------------


def test_the_first_preview_carries_the_mask_once(
    pipeline: VqganClipPipeline, constructed_similarity: torch.Tensor
) -> None:
    previews: list[Image.Image | None] = []
    result = pipeline(
        edit_request(candidates=2), on_progress=lambda step, total, image: previews.append(image)
    )
    masks = [attached_mask(preview) for preview in previews]
    first = masks[0]
    assert first is not None and all(mask is None for mask in masks[1:])
    assert previews[0] is not None and first.size == previews[0].size  # tiled like the preview
    saved = result.artifacts["mask"]
    assert saved.size == (SIDE, SIDE) and saved.mode == "L"
    # White where the object is, dark elsewhere.
    pixels = np.asarray(saved).astype(np.float32) / 255
    is_object = np.kron(constructed_similarity.numpy(), np.ones((4, 4))).astype(bool)
    assert pixels[is_object].mean() > 4 * pixels[~is_object].mean()


def test_runs_without_a_self_mask_hand_no_mask(pipeline: VqganClipPipeline) -> None:
    previews: list[Image.Image | None] = []
    result = pipeline(
        edit_request(mask_text=None, init_image=None, steps=2),
        on_progress=lambda step, total, image: previews.append(image),
    )
    assert all(attached_mask(preview) is None for preview in previews)
    assert result.artifacts == {}
