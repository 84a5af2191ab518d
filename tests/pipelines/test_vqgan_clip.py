"""VQGAN-CLIP on tiny random models: the loss, masks, self-masking, seeds, hooks and limits."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.clip_models import TINY_CLIP, ClipSpec, load_clip
from pipelines.interface import Cancelled, InvalidRequest
from pipelines.settings import ModelSettings
from pipelines.vqgan import VQGAN, VqganConfig
from pipelines.vqgan_clip import (
    ImagineRequest,
    VqganClipPipeline,
    VqganClipRun,
    code_indices,
    default_size_for,
    encode_image_latent,
    prompt_loss,
    spherical_distance_sq,
)

CPU = torch.device("cpu")
# The tiny VQGAN's random codebook spans about ±1/64, so the paper's lr of 0.15 would throw every
# cell to a corner of that box in one step; a proportionate rate keeps the tiny runs meaningful.
TINY_LR = 0.005


@pytest.fixture(scope="module")
def pipeline() -> VqganClipPipeline:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vqgan = VQGAN(VqganConfig.tiny())
    return VqganClipPipeline(vqgan, load_clip(ClipSpec(TINY_CLIP), CPU), {"preset": "test"})


def tiny_request(**overrides: object) -> ImagineRequest:
    values: dict[str, object] = {
        "prompt": "a red apple on a table",
        "seed": 3,
        "steps": 4,
        "width": 64,
        "height": 64,
        "cutn": 4,
        "lr": TINY_LR,
        "preview_every": 2,
    }
    values.update(overrides)
    return ImagineRequest(**values)  # type: ignore[arg-type]


def noise_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fixed_cutout_loss(run: VqganClipRun) -> float:
    """The prompt loss of candidate 0 on cutouts drawn from a fixed seed, so two evaluations
    differ only because the image did."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        views = run.cutouts(run.decode()[0:1])
        return float(prompt_loss(run.clip.encode_image(views[0]), run.targets))


# --- the loss ----------------------------------------------------------------------------------


def test_loss_on_a_fixed_prompt_decreases_over_20_steps(pipeline: VqganClipPipeline) -> None:
    run = pipeline.start(tiny_request(steps=20, cutn=8), seed=3)
    before = fixed_cutout_loss(run)
    for _ in range(20):
        run.step()
    assert fixed_cutout_loss(run) < before


def test_a_negative_weight_pushes_the_image_away(pipeline: VqganClipPipeline) -> None:
    run = pipeline.start(tiny_request(prompt="a red apple on a table:-1", steps=20, cutn=8), 3)
    before = fixed_cutout_loss(run)  # = -distance, so pushing away lowers it too
    distance_before = -before
    for _ in range(20):
        run.step()
    assert -fixed_cutout_loss(run) > distance_before


def test_spherical_distance_matches_its_definition() -> None:
    a = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    angle = torch.arccos((a @ b.T).clamp(-1, 1))
    # 2·arcsin(‖a−b‖/2)² equals half the squared angle between unit vectors.
    torch.testing.assert_close(spherical_distance_sq(a, b), angle.pow(2) / 2, atol=1e-5, rtol=1e-4)
    assert spherical_distance_sq(a, a).diagonal().abs().max() < 1e-3


def test_a_stop_switches_the_gradient_off_once_met(pipeline: VqganClipPipeline) -> None:
    run = pipeline.start(tiny_request(), seed=3)
    embeddings = torch.randn(4, run.targets.embeddings.shape[1], requires_grad=True)
    prompt_loss(embeddings, run.targets).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    # A stop larger than any distance: every cutout is already "close enough".
    met = pipeline.start(tiny_request(prompt="a red apple on a table:1:5"), seed=3)
    embeddings.grad = None
    value = prompt_loss(embeddings, met.targets)
    value.backward()
    assert value.item() > 0
    assert embeddings.grad.abs().sum() == 0


def test_z_stays_within_the_codebooks_range(pipeline: VqganClipPipeline) -> None:
    run = pipeline.start(tiny_request(lr=0.5), seed=3)
    for _ in range(3):
        run.step()
    codebook = pipeline.vqgan.codebook
    low = codebook.min(dim=0).values.view(1, -1, 1, 1)
    high = codebook.max(dim=0).values.view(1, -1, 1, 1)
    z = run.z.detach()
    assert bool((z >= low).all() and (z <= high).all())
    # At this rate some cells do reach the bounds, so the clamp was exercised.
    assert bool(((z == low) | (z == high)).any())


# --- editing and masks -------------------------------------------------------------------------


def test_editing_starts_from_the_encoded_init_image(pipeline: VqganClipPipeline) -> None:
    image = noise_image()
    run = pipeline.start(tiny_request(init_image=image), seed=3)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    vqgan = pipeline.vqgan
    with torch.no_grad():
        quantised, _, _ = vqgan.quantize(vqgan.encode(pixels * 2 - 1))
    torch.testing.assert_close(run.z.detach(), quantised)
    torch.testing.assert_close(encode_image_latent(vqgan, pixels), quantised)


def test_a_16_bit_greyscale_init_image_is_scaled_not_clipped(pipeline: VqganClipPipeline) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    image = Image.open(io.BytesIO(png_bytes(Image.fromarray(ramp))))
    assert image.mode.startswith("I")
    mask = Image.fromarray((ramp >= 32768).astype(np.uint16) * 65535)
    run = pipeline.start(tiny_request(init_image=image, mask=mask), seed=3)
    assert run.original is not None
    # Pillow's own conversion clips at 255 of 65535, which would make this mean about 1.
    assert float(run.original.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(run.latent_mask.mean()) == pytest.approx(0.5)


def test_masked_editing_leaves_every_code_outside_the_mask_identical(
    pipeline: VqganClipPipeline,
) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # the left half may change
    request = tiny_request(init_image=noise_image(), mask=mask, lr=0.15, steps=6, candidates=2)
    run = pipeline.start(request, seed=3)
    z_before, codes_before = run.z.detach().clone(), run.codes().clone()
    for _ in range(request.steps):
        run.step()
    z_after, codes_after = run.z.detach(), run.codes()
    outside = run.latent_mask[0, 0] == 0
    assert outside.any() and (~outside).any()
    assert torch.equal(codes_after[:, outside], codes_before[:, outside])
    assert torch.equal(z_after[:, :, outside], z_before[:, :, outside])
    # Inside, the edit did change codes, so the mask is not simply freezing everything.
    assert not torch.equal(codes_after[:, ~outside], codes_before[:, ~outside])
    # The latent cells allowed to change are exactly those under the mask's left half.
    assert (~outside)[:, :8].all() and outside[:, 8:].all()


def test_a_mask_of_another_size_but_the_same_shape_is_resized(
    pipeline: VqganClipPipeline,
) -> None:
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (64, 0, 128, 128))  # right half
    run = pipeline.start(tiny_request(init_image=noise_image(), mask=mask), seed=3)
    latent = run.latent_mask[0, 0]
    assert latent.shape == (16, 16)
    assert latent[:, 8:].eq(1).all() and latent[:, :8].eq(0).all()


def test_a_stroke_thinner_than_the_scale_survives_shrinking_the_mask(
    pipeline: VqganClipPipeline,
) -> None:
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (129, 0, 130, 256))  # one pixel wide; nearest neighbour to 64 skips it
    run = pipeline.start(tiny_request(init_image=noise_image(), mask=mask), seed=3)
    latent = run.latent_mask[0, 0]
    # Pixel column 129 becomes image column 32, which lies in latent column 8 (cells of 4).
    assert latent[:, 8].eq(1).all()
    assert latent.sum() == latent.shape[0]


# --- seeds, candidates and ranking -------------------------------------------------------------


def test_the_same_seed_gives_the_same_bytes(pipeline: VqganClipPipeline) -> None:
    first = pipeline(tiny_request(seed=11, candidates=2))
    second = pipeline(tiny_request(seed=11, candidates=2))
    other = pipeline(tiny_request(seed=12, candidates=2))
    assert [png_bytes(r.image) for r in first.images] == [png_bytes(r.image) for r in second.images]
    assert png_bytes(first.images[0].image) != png_bytes(other.images[0].image)


def test_the_global_rng_is_left_as_it_was(pipeline: VqganClipPipeline) -> None:
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    pipeline(tiny_request(steps=2))
    assert torch.equal(torch.rand(3), expected)


def test_candidate_i_is_the_run_with_seed_plus_i(pipeline: VqganClipPipeline) -> None:
    batch = pipeline(tiny_request(seed=20, candidates=3))
    alone = pipeline(tiny_request(seed=22, candidates=1))
    by_seed = {r.seed: png_bytes(r.image) for r in batch.images}
    assert sorted(by_seed) == [20, 21, 22]
    assert by_seed[22] == png_bytes(alone.images[0].image)


def test_candidates_are_ranked_best_first(pipeline: VqganClipPipeline) -> None:
    result = pipeline(tiny_request(candidates=3))
    assert [r.rank for r in result.images] == [1, 2, 3]
    scores = [r.score for r in result.images]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == 3
    assert all(r.image.size == (64, 64) for r in result.images)
    assert result.settings["seed"] == 3 and result.settings["candidates"] == 3


def test_a_missing_seed_is_picked_and_reported(pipeline: VqganClipPipeline) -> None:
    result = pipeline(tiny_request(seed=None, steps=1))
    seed = result.settings["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert result.images[0].seed == seed
    again = pipeline(tiny_request(seed=seed, steps=1))
    assert png_bytes(again.images[0].image) == png_bytes(result.images[0].image)


def test_image_prompts_guide_alone_or_with_text(pipeline: VqganClipPipeline) -> None:
    image_only = pipeline.start(tiny_request(prompt="", image_prompts=[noise_image()]), 3)
    assert image_only.targets.labels == ["image prompt 1"]
    both = pipeline.start(tiny_request(image_prompts=[noise_image(32, 48)]), 3)
    assert both.targets.labels == ["a red apple on a table", "image prompt 1"]
    both.step()


# --- hooks -------------------------------------------------------------------------------------


def test_a_preview_arrives_at_the_set_cadence(pipeline: VqganClipPipeline) -> None:
    calls: list[tuple[int, int, tuple[int, int] | None]] = []
    pipeline(
        tiny_request(steps=7, preview_every=3, candidates=2),
        on_progress=lambda step, total, image: calls.append(
            (step, total, None if image is None else image.size)
        ),
    )
    # Steps 0, 3, 6 show the image after that many steps; the last call shows the results.
    assert [(s, t) for s, t, _ in calls] == [(0, 7), (3, 7), (6, 7), (7, 7)]
    assert all(size == (128, 64) for _, _, size in calls)  # two candidates side by side


def test_previews_cost_no_extra_decode(
    pipeline: VqganClipPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = count_decodes(pipeline, monkeypatch)
    pipeline(tiny_request(steps=4, preview_every=1), on_progress=lambda *_: None)
    # One decode per step, plus one of the final latent for the results.
    assert decodes() == 4 + 1


def count_decodes(
    pipeline: VqganClipPipeline, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], int]:
    calls = {"n": 0}
    original = pipeline.vqgan.decode

    def counting(z_q: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return original(z_q)

    monkeypatch.setattr(pipeline.vqgan, "decode", counting)
    return lambda: calls["n"]


def test_cancellation_stops_within_one_step(
    pipeline: VqganClipPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = count_decodes(pipeline, monkeypatch)
    polls = {"n": 0}

    def cancel_on_fourth_poll() -> bool:
        polls["n"] += 1
        return polls["n"] == 4

    with pytest.raises(Cancelled) as caught:
        pipeline(tiny_request(steps=50), should_cancel=cancel_on_fourth_poll)
    assert caught.value.step == 3 and caught.value.total == 50
    assert decodes() == 3  # no step ran after the check fired, and no final decode either
    assert caught.value.latest is not None and caught.value.latest.size == (64, 64)


def test_cancelled_before_any_step_has_no_image(pipeline: VqganClipPipeline) -> None:
    with pytest.raises(Cancelled) as caught:
        pipeline(tiny_request(), should_cancel=lambda: True)
    assert caught.value.step == 0 and caught.value.latest is None


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"steps": 0}, "steps must be between 1 and 2000"),
        ({"steps": 2001}, "steps must be between 1 and 2000"),
        ({"width": 72}, "multiple of 16"),
        ({"height": 48}, "height must be between 64 and 1024"),
        ({"width": 1024, "height": 1024}, "too large"),
        ({"cutn": 0}, "cutn must be between 1 and 128"),
        ({"cut_pow": 0.0}, "cut_pow must be above 0"),
        ({"lr": -1.0}, "lr must be above 0"),
        ({"candidates": 10}, "candidates must be between 1 and 9"),
        ({"seed": -1}, "seed must be between 0"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"init_weight": float("nan")}, "init_weight must be a number"),
        ({"prompt": "a || b"}, "prompt 2 of 3 is empty"),
        ({"prompt": ""}, "the prompt is empty"),
        ({"mask": Image.new("L", (64, 64), 255)}, "a mask needs an init image"),
        ({"mask_text": "the dog"}, "mask text needs an init image"),
        (
            {
                "init_image": Image.new("RGB", (64, 64)),
                "mask": Image.new("L", (64, 64), 255),
                "mask_text": "dog",
            },
            "not both",
        ),
        (
            {"init_image": Image.new("RGB", (64, 64)), "mask": Image.new("L", (64, 32), 255)},
            "the mask is 64x32 but the init image is 64x64",
        ),
        (
            {"init_image": Image.new("RGB", (64, 64)), "mask": Image.new("L", (64, 64), 0)},
            "the mask marks nothing",
        ),
        ({"image_prompts": [Image.new("RGB", (8, 8))] * 9}, "too many image prompts"),
    ],
)
def test_out_of_bounds_requests_are_refused_in_one_line(
    overrides: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        tiny_request(**overrides).validate()
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_pipeline_validates_before_it_works(pipeline: VqganClipPipeline) -> None:
    with pytest.raises(InvalidRequest, match="steps"):
        pipeline(tiny_request(steps=0))


def test_from_settings_builds_the_tiny_preset() -> None:
    built = VqganClipPipeline.from_settings(ModelSettings(preset="tiny"))
    result = built(tiny_request(steps=1))
    assert result.images[0].image.size == (64, 64)
    assert result.settings["models"]["preset"] == "tiny"
    assert result.settings["models"]["clip_model"] == TINY_CLIP


def test_code_indices_are_the_quantisers_choice(pipeline: VqganClipPipeline) -> None:
    codebook = pipeline.vqgan.codebook.detach()
    z = codebook[torch.tensor([5, 9, 1, 0])].T.reshape(1, -1, 2, 2)
    assert code_indices(pipeline.vqgan, z).flatten().tolist() == [5, 9, 1, 0]


@pytest.mark.parametrize(
    ("size", "expected"),
    [((640, 480), (288, 224)), ((256, 256), (256, 256)), ((4000, 100), (1024, 64))],
)
def test_default_size_keeps_the_init_images_shape(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    width, height = default_size_for(Image.new("RGB", size))
    assert (width, height) == expected
    tiny_request(width=width, height=height).validate()
