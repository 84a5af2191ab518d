"""What an edit returns: ranking, background modes, sizes, masks and refused requests."""

from __future__ import annotations

from typing import Any

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.blended import (
    FINETUNE_BACKGROUND_WEIGHT,
    FINETUNE_LR,
    FINETUNE_STEPS,
    PASTE_FEATHER_PIXELS,
    BlendedLatentDiffusionPipeline,
    EditRequest,
    output_size,
    working_size,
)
from pipelines.clip_models import TINY_CLIP
from pipelines.interface import InvalidRequest
from tests.pipelines.blended_helpers import (
    SIZE,
    mask_array,
    mask_image,
    source_image,
    tiny_pipeline,
)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> BlendedLatentDiffusionPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("models"))


def request(**options: Any) -> EditRequest:
    defaults: dict[str, Any] = {"steps": 6, "candidates": 4, "seed": 3, "preview_every": 100}
    defaults.update(options)
    prompt = defaults.pop("prompt", "a bowl of oranges")
    image = defaults.pop("image", source_image())
    mask = defaults.pop("mask", mask_image())
    return EditRequest(prompt, image, mask, **defaults)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- ranking -----------------------------------------------------------------------------------


def independent_clip_scores(
    model: torch.nn.Module, images: list[Image.Image], mask: np.ndarray, prompt: str
) -> list[float]:
    """Section 4.4 from scratch with open_clip: CLIP on image × mask, cosine to the prompt."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    batch = torch.stack(
        [torch.from_numpy(np.asarray(i, dtype=np.float32) / 255).permute(2, 0, 1) for i in images]
    )
    batch = batch * torch.from_numpy(mask.astype(np.float32))
    batch = F.interpolate(batch, (size, size), mode="bicubic", antialias=True).clamp(0, 1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image_features = model.encode_image((batch - mean) / std)
        text_features = model.encode_text(open_clip.get_tokenizer(TINY_CLIP)([prompt]))
    return F.cosine_similarity(image_features, text_features).tolist()


def test_candidates_come_back_ordered_by_their_clip_scores(
    pipeline: BlendedLatentDiffusionPipeline,
) -> None:
    edit = request(candidates=5)
    result = pipeline(edit)
    assert [r.rank for r in result.images] == [1, 2, 3, 4, 5]
    recomputed = independent_clip_scores(
        pipeline.ranker.model, [r.image for r in result.images], mask_array(), edit.prompt
    )
    np.testing.assert_allclose([r.score for r in result.images], recomputed, rtol=0, atol=1e-5)
    assert recomputed == sorted(recomputed, reverse=True)
    assert len(set(recomputed)) == 5  # the order is decided by the scores, not by ties
    assert sorted(r.seed for r in result.images) == [3, 4, 5, 6, 7]
    assert result.settings["ranker"] == {"model": TINY_CLIP, "pretrained": ""}


# -- background modes --------------------------------------------------------------------------


def chessboard_distance_to_mask(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    ys, xs = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    distance = np.full(mask.shape, np.inf)
    for r, c in zip(rows, cols, strict=True):
        distance = np.minimum(distance, np.maximum(abs(ys - r), abs(xs - c)))
    return distance


def test_paste_keeps_every_pixel_beyond_the_feather_exactly(
    pipeline: BlendedLatentDiffusionPipeline,
) -> None:
    source = pixels(source_image())
    distance = chessboard_distance_to_mask(mask_array())
    beyond = distance > PASTE_FEATHER_PIXELS
    within_feather = (distance > 0) & ~beyond
    plain = pipeline(request(background="none", candidates=2))
    pasted = pipeline(request(background="paste", candidates=2))
    assert pasted.settings["paste_feather_pixels"] == PASTE_FEATHER_PIXELS
    for without, ranked in zip(plain.images, pasted.images, strict=True):
        result = pixels(ranked.image)
        assert np.array_equal(result[beyond], source[beyond])
        # The decoder alone does not reproduce those pixels; paste is what makes them exact.
        assert not np.array_equal(pixels(without.image)[beyond], source[beyond])
        # Inside the mask the edit is kept; in the feather it fades between the two.
        assert np.array_equal(result[mask_array()], pixels(without.image)[mask_array()])
        assert not np.array_equal(result[within_feather], source[within_feather])


def test_finetune_lowers_background_error_and_leaves_the_shared_vae_alone(
    pipeline: BlendedLatentDiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    vae = pipeline.components.vae
    before = {name: tensor.clone() for name, tensor in vae.state_dict().items()}
    optimisers: list[dict[str, Any]] = []
    real_adam = torch.optim.Adam

    class RecordingAdam(real_adam):  # type: ignore[misc, valid-type]
        def __init__(self, params: Any, lr: float, **kwargs: Any) -> None:
            params = list(params)
            super().__init__(params, lr=lr, **kwargs)
            optimisers.append({"lr": lr, "params": params, "steps": 0})

        def step(self, *args: Any, **kwargs: Any) -> Any:
            optimisers[-1]["steps"] += 1
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    plain = pipeline(request(background="none"))
    tuned = pipeline(request(background="finetune"))

    # A random tiny decoder is far from the input, and 75 steps at lr 1e-4 (sized for a real,
    # nearly right decoder) move it a little; the next test shows the size of the effect.
    assert background_error(tuned.images[0].image) < background_error(plain.images[0].image)
    # Only the top-ranked result is reconstructed; the others are the plain decodes.
    for a, b in zip(plain.images[1:], tuned.images[1:], strict=True):
        assert np.array_equal(pixels(a.image), pixels(b.image))
    # The paper's settings, on a private copy of the decoder only.
    assert len(optimisers) == 1
    assert optimisers[0]["lr"] == FINETUNE_LR == 1e-4
    assert optimisers[0]["steps"] == FINETUNE_STEPS == 75
    decoder_ids = {id(p) for p in vae.decoder.parameters()}
    assert len(optimisers[0]["params"]) == len(list(vae.decoder.parameters()))
    assert not decoder_ids & {id(p) for p in optimisers[0]["params"]}
    assert all(p.dtype == torch.float32 for p in optimisers[0]["params"])
    assert FINETUNE_BACKGROUND_WEIGHT == 100.0
    assert tuned.settings["finetune_steps"] == 75
    assert tuned.settings["finetune_background_weight"] == 100.0
    after = vae.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(not p.requires_grad for p in vae.parameters())


def test_finetune_with_a_larger_step_rebuilds_much_of_the_background(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    eager = tiny_pipeline(tmp_path_factory.mktemp("models"), finetune_lr=1e-3)
    plain = eager(request(background="none"))
    tuned = eager(request(background="finetune"))
    assert tuned.settings["finetune_lr"] == 1e-3
    tuned_error = background_error(tuned.images[0].image)
    plain_error = background_error(plain.images[0].image)
    assert tuned_error < 0.6 * plain_error, (tuned_error, plain_error)


def background_error(image: Image.Image) -> float:
    outside = ~mask_array()
    return float(np.abs(pixels(image)[outside] - pixels(source_image())[outside]).mean())


# -- sizes and masks ---------------------------------------------------------------------------


def test_output_and_working_sizes_keep_the_aspect_ratio_in_whole_latent_cells() -> None:
    assert output_size(300, 200, 512) == (300, 200)  # never enlarged
    assert output_size(1920, 1080, 512) == (512, 288)
    assert output_size(1000, 1000, 512) == (512, 512)
    assert output_size(800, 1000, 512) == (410, 512)
    # The model works at the nearest whole latent cells (8 pixels for SD), not multiples of 64.
    assert working_size(300, 200, 512, 8) == (304, 200)
    assert working_size(512, 288, 512, 8) == (512, 288)
    assert working_size(410, 512, 512, 8) == (408, 512)
    assert working_size(512, 8, 512, 8) == (512, 8)
    assert working_size(512, 2, 512, 8) == (512, 8)  # at least one cell


@pytest.mark.parametrize(
    ("width", "height", "max_side"),
    [
        (300, 200, 512),
        (1920, 1080, 512),
        (1000, 1000, 512),
        (1000, 999, 512),
        (4000, 3000, 500),
        (333, 777, 100),
        (2048, 2047, 2048),
    ],
)
def test_the_working_area_never_exceeds_max_side_squared(
    width: int, height: int, max_side: int
) -> None:
    out_w, out_h = output_size(width, height, max_side)
    assert max(out_w, out_h) <= max_side
    assert abs((out_w / out_h) / (width / height) - 1) < 0.01
    for cell in (2, 8):
        work_w, work_h = working_size(out_w, out_h, max_side, cell)
        assert work_w % cell == 0 and work_h % cell == 0
        assert work_w * work_h <= max_side**2
        assert max(work_w, work_h) <= max_side
        # Half a cell per side at most: the working shape is the output's, near enough.
        assert abs(work_w - out_w) <= cell / 2 and abs(work_h - out_h) <= cell / 2


@pytest.mark.parametrize(("width", "height"), [(300, 200), (1920, 1080), (1000, 1000)])
def test_results_come_back_at_the_input_aspect_ratio(
    pipeline: BlendedLatentDiffusionPipeline, width: int, height: int
) -> None:
    max_side = 96
    image, mask = source_image(width, height), mask_image(width, height)
    result = pipeline(request(image=image, mask=mask, max_side=max_side, candidates=2, steps=2))
    out_w, out_h = result.images[0].image.size
    assert all(r.image.size == (out_w, out_h) for r in result.images)
    assert max(out_w, out_h) == max_side
    assert abs((out_w / out_h) / (width / height) - 1) < 0.01, (out_w, out_h)
    assert result.settings["output_size"] == [out_w, out_h]
    assert result.settings["source_size"] == [width, height]
    work_w, work_h = result.settings["working_size"]
    cell = pipeline.components.vae_scale_factor
    assert work_w % cell == 0 and work_h % cell == 0 and work_w * work_h <= max_side**2
    assert any(f"scaled {width}×{height} → {out_w}×{out_h}" in n for n in result.notes)


def test_paste_keeps_the_scaled_input_exactly_at_the_output_size(
    pipeline: BlendedLatentDiffusionPipeline,
) -> None:
    # 300×200 at max_side 75 is 75×50 out and 74×50 at work (the tiny model's 2-pixel cells,
    # at most 75 per side).
    image, mask = source_image(300, 200), mask_image(300, 200)
    result = pipeline(
        request(image=image, mask=mask, max_side=75, candidates=1, steps=2, background="paste")
    )
    assert result.settings["working_size"] == [74, 50]
    assert result.images[0].image.size == (75, 50)
    scaled = pixels(image.resize((75, 50), Image.Resampling.LANCZOS))
    mask_out = np.asarray(mask.resize((75, 50), Image.Resampling.BOX)) > 0
    far = chessboard_distance_to_mask(mask_out) > PASTE_FEATHER_PIXELS
    assert far.any()
    assert np.array_equal(pixels(result.images[0].image)[far], scaled[far])


def test_any_latent_cell_touching_the_mask_is_masked(
    pipeline: BlendedLatentDiffusionPipeline,
) -> None:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[9, 13] = 255  # one pixel
    mask[40:42, 50] = 255  # a two-pixel stroke crossing a cell border
    edit = request(mask=Image.fromarray(mask, "L"))
    prepared = pipeline.prepare(edit)
    factor = pipeline.components.vae_scale_factor
    cells = {tuple(int(i) for i in ix) for ix in torch.nonzero(prepared.latent_mask[0, 0])}
    assert cells == {(9 // factor, 13 // factor), (40 // factor, 50 // factor)} | {
        (41 // factor, 50 // factor)
    }
    assert int(prepared.pixel_mask.sum()) == 3


def test_alpha_masks_and_luminance_masks_select_the_same_region(
    pipeline: BlendedLatentDiffusionPipeline,
) -> None:
    alpha = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    alpha[..., 3] = mask_array().astype(np.uint8) * 255  # black, but opaque where masked
    from_alpha = pipeline.prepare(request(mask=Image.fromarray(alpha, "RGBA")))
    from_luminance = pipeline.prepare(request())
    assert torch.equal(from_alpha.pixel_mask, from_luminance.pixel_mask)
    assert torch.equal(from_alpha.latent_mask, from_luminance.latent_mask)


def test_a_full_mask_is_allowed(pipeline: BlendedLatentDiffusionPipeline) -> None:
    full = Image.new("L", (SIZE, SIZE), 255)
    result = pipeline(request(mask=full, candidates=1, steps=2, background="paste"))
    assert result.images[0].image.size == (SIZE, SIZE)


# -- refused requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"candidates": 0}, "candidates must be a whole number from 1 to 8"),
        ({"candidates": 9}, "candidates must be a whole number from 1 to 8"),
        ({"steps": 0}, "steps must be a whole number from 1 to 200"),
        ({"steps": 201}, "steps must be a whole number from 1 to 200"),
        ({"guidance": -0.5}, "guidance must be a number from 0 to 30"),
        ({"guidance": 30.5}, "guidance must be a number from 0 to 30"),
        ({"guidance": float("nan")}, "guidance must be a number from 0 to 30"),
        ({"blend_start": 1.0}, "blend_start must be below 1"),
        ({"blend_start": -0.1}, "blend_start must be a number from 0 to 1"),
        ({"background": "blur"}, "background must be one of none, paste, finetune"),
        ({"seed": -1}, "seed must be a whole number"),
        ({"prompt": "  "}, "the prompt is empty"),
        ({"mask": Image.new("L", (SIZE, SIZE), 0)}, "the mask selects nothing"),
        ({"mask": Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 0))}, "the mask selects nothing"),
        (
            {"mask": Image.new("L", (SIZE, SIZE // 2), 255)},
            "the mask is 64×32 but the image is 64×64",
        ),
    ],
)
def test_bad_requests_are_refused_with_one_clear_line(
    pipeline: BlendedLatentDiffusionPipeline, options: dict[str, Any], message: str
) -> None:
    edit = request(**options)
    with pytest.raises(InvalidRequest) as caught:
        edit.validate()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(InvalidRequest):
        pipeline(edit)


def test_a_mask_within_one_percent_of_the_aspect_is_accepted() -> None:
    request(mask=mask_image(SIZE, SIZE).resize((200, 199))).validate()
    with pytest.raises(InvalidRequest, match=r"200×196"):
        request(mask=mask_image(SIZE, SIZE).resize((200, 196))).validate()


def test_a_result_rounded_to_whole_pixels_still_fits_its_original_mask() -> None:
    # 4000×100 scaled to a long side of 512 is 512×13 (12.8 rounded): 1.5% off in aspect, but
    # only the rounding of one side. Continuing from such a result keeps the original mask.
    assert output_size(4000, 100, 512) == (512, 13)
    wide_mask = Image.new("L", (4000, 100), 255)
    request(image=source_image(512, 13), mask=wide_mask).validate()
    with pytest.raises(InvalidRequest, match=r"shapes differ"):
        request(image=source_image(512, 15), mask=wide_mask).validate()
