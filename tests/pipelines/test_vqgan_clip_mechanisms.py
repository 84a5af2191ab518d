"""Each VQGAN-CLIP mechanism, with a test that fails when the mechanism is taken out.

Guarded here: the augmentations being applied (and which named set), quantisation in the forward
pass, the clamp that passes its gradient through, CLIP's input normalisation, the z regulariser
and its decay, and the regularisers' defaults when editing. (The prompt loss, weights, image
prompts, soft self-mask and structure term are guarded in test_prompt_mechanisms.py and
test_self_masking.py.)
"""

from __future__ import annotations

import copy

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from pipelines.augmentation_sets import AUGMENTATION_SETS
from pipelines.clip_models import TINY_CLIP, ClipSpec, load_clip
from pipelines.cutouts import MakeCutouts, resize_square
from pipelines.interface import InvalidRequest
from pipelines.straight_through import clamp_with_grad
from pipelines.vqgan import VQGAN, VqganConfig
from pipelines.vqgan_clip import (
    DEFAULT_INIT_WEIGHT_EDITING,
    DEFAULT_Z_REG_WEIGHT,
    ImagineRequest,
    VqganClipPipeline,
    synthesize,
    z_regulariser_weight,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vqgan() -> VQGAN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VQGAN(VqganConfig.tiny()).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def pipeline(vqgan: VQGAN) -> VqganClipPipeline:
    return VqganClipPipeline(vqgan, load_clip(ClipSpec(TINY_CLIP), CPU), {"preset": "test"})


def request(**overrides: object) -> ImagineRequest:
    values: dict[str, object] = {
        "prompt": "a lighthouse at dawn",
        "seed": 2,
        "steps": 4,
        "width": 64,
        "height": 64,
        "cutn": 4,
        "lr": 0.005,
    }
    values.update(overrides)
    return ImagineRequest(**values)  # type: ignore[arg-type]


def photo() -> Image.Image:
    rng = np.random.default_rng(8)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")


def gradient_image() -> torch.Tensor:
    ramp = torch.linspace(0, 1, 96)
    return torch.stack(
        [ramp[None].expand(96, 96), ramp[:, None].expand(96, 96), 1 - ramp[None].expand(96, 96)]
    )[None]


# --- the augmentations --------------------------------------------------------------------------


def plain_crops(cutouts: MakeCutouts, image: torch.Tensor, seed: int) -> torch.Tensor:
    """The same crops MakeCutouts takes from ``seed``, resized but not augmented."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        boxes = cutouts.sample_boxes(*image.shape[-2:])
    return torch.cat(
        [resize_square(image[:, :, b.y : b.y + b.side, b.x : b.x + b.side], 32) for b in boxes]
    )


def test_cutouts_are_augmented_not_just_cropped() -> None:
    image = gradient_image()
    cutouts = MakeCutouts(32, 16, 1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        views = cutouts(image)[0]
    crops = plain_crops(cutouts, image, 7)
    changed = [(v - c).abs().mean().item() > 0.01 for v, c in zip(views, crops, strict=True)]
    # The crops are the ones the views were made from: some views differ little (every
    # augmentation is applied with a probability), most differ clearly.
    assert sum(changed) >= 12, changed


@pytest.mark.parametrize("name", sorted(AUGMENTATION_SETS))
def test_a_named_set_sets_the_kornia_strengths(name: str) -> None:
    chosen = AUGMENTATION_SETS[name]
    augment = MakeCutouts(32, 4, 1.0, name).augment
    by_type = {type(m).__name__: m for m in augment.children()}
    generators = {k: str(getattr(m, "_param_generator", "")) for k, m in by_type.items()}
    assert f"degrees={chosen.affine_degrees}" in generators["RandomAffine"]
    assert by_type["RandomAffine"].p == chosen.affine_p
    assert f"distortion_scale={chosen.perspective_scale}" in generators["RandomPerspective"]
    assert f"hue={chosen.jitter_hue}" in generators["ColorJiggle"]
    assert f"saturation={chosen.jitter_saturation}" in generators["ColorJiggle"]
    assert ("RandomSharpness" in by_type) == (chosen.sharpness > 0)
    assert ("RandomHorizontalFlip" in by_type) == (chosen.flip_p > 0)
    assert ("RandomErasing" in by_type) == (chosen.erasing_p > 0)
    if chosen.erasing_p > 0:
        assert by_type["RandomErasing"].p == chosen.erasing_p
        assert f"scale={chosen.erasing_scale}" in generators["RandomErasing"]


def test_the_two_sets_are_the_documented_references() -> None:
    crowson, nerdy = AUGMENTATION_SETS["crowson"], AUGMENTATION_SETS["nerdyrodent"]
    assert (crowson.affine_degrees, crowson.perspective_scale, crowson.jitter_hue) == (
        30,
        0.2,
        0.01,
    )
    assert (nerdy.affine_degrees, nerdy.perspective_scale, nerdy.jitter_hue) == (15, 0.7, 0.1)
    # nerdyrodent's default augments are Af Pe Ji Er: random erasing, and no flip.
    assert (nerdy.erasing_p, nerdy.erasing_scale, nerdy.flip_p) == (0.7, (0.1, 0.4), 0.0)
    assert crowson.erasing_p == 0.0


def test_the_nerdyrodent_set_erases_part_of_each_cutout() -> None:
    image = torch.full((1, 3, 64, 64), 0.6)
    cutouts = MakeCutouts(32, 8, 1.0, "nerdyrodent")
    erased = 0
    for seed in range(6):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = cutouts(image)[0]
        # A grey image stays grey under jitter and border-padded affine; only erasing (or a
        # perspective's zero padding at the rim) makes black, and erasing does so in the middle.
        erased += int((views[:, :, 8:24, 8:24] < 0.05).float().mean() > 0.05)
    assert erased >= 2, erased


def test_the_request_picks_the_runs_set_and_refuses_unknown_ones(
    pipeline: VqganClipPipeline,
) -> None:
    run = pipeline.start(request(augmentations="nerdyrodent"), 1)
    assert run.cutouts.augmentations == "nerdyrodent"
    [perspective] = [
        m for m in run.cutouts.augment.children() if type(m).__name__ == "RandomPerspective"
    ]
    assert "distortion_scale=0.7" in str(perspective._param_generator)
    assert pipeline.start(request(), 1).cutouts.augmentations == "crowson"
    with pytest.raises(InvalidRequest, match="augmentations must be one of crowson, nerdyrodent"):
        request(augmentations="strong").validate()


# --- synthesis: quantiser and clamp -------------------------------------------------------------


def off_codebook_latent(vqgan: VQGAN, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, vqgan.codebook.shape[1], 4, 4, generator=generator) * 0.02


def test_the_forward_pass_decodes_the_nearest_codes(vqgan: VQGAN) -> None:
    z = off_codebook_latent(vqgan)
    distances = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), vqgan.codebook)
    nearest = vqgan.codebook[distances.argmin(dim=1)].view(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = vqgan.decode(nearest).add(1).div(2).clamp(0, 1)
    unquantised = vqgan.decode(z).add(1).div(2).clamp(0, 1)
    got = synthesize(vqgan, z)
    # z + (z_q - z) rounds within an ulp of the code, hence the tolerance.
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - unquantised).abs().max() > 1e-3


def test_the_quantiser_passes_its_gradient_straight_to_z(vqgan: VQGAN) -> None:
    z = off_codebook_latent(vqgan).requires_grad_(True)
    synthesize(vqgan, z).mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def saturating(vqgan: VQGAN) -> VQGAN:
    """A copy whose decoder overshoots [-1, 1] for most pixels."""
    loud = copy.deepcopy(vqgan)
    with torch.no_grad():
        loud.decoder.conv_out.weight.mul_(400)
        loud.decoder.conv_out.bias.mul_(400)
    return loud


def test_the_clamp_passes_gradients_that_lead_back_into_range(vqgan: VQGAN) -> None:
    loud = saturating(vqgan)
    z = off_codebook_latent(vqgan, seed=1).requires_grad_(True)
    pixels = synthesize(loud, z)
    assert pixels.min() >= 0 and pixels.max() <= 1
    # (pixels - 0.5)² pulls every clamped pixel back toward the range, so all of them pass.
    (pixels - 0.5).pow(2).sum().backward()

    z_ref = z.detach().clone().requires_grad_(True)
    raw = loud.decode(loud.quantize_straight_through(z_ref)).add(1).div(2)
    saturated = ((raw < 0) | (raw > 1)).float().mean()
    assert saturated > 0.5  # the test is about clamped pixels, so most must be
    identity_forward = raw + (raw.clamp(0, 1) - raw).detach()
    (identity_forward - 0.5).pow(2).sum().backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-4, atol=1e-6)


def test_the_clamp_blocks_gradients_that_would_push_further_out() -> None:
    values = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    clamp_with_grad(values, 0.0, 1.0).sum().backward()
    # Descent lowers every value: fine inside and above the range, further out below it.
    assert values.grad.tolist() == [0.0, 1.0, 1.0]


# --- CLIP's input normalisation -----------------------------------------------------------------


def test_clip_sees_images_normalised_with_its_training_statistics() -> None:
    clip = load_clip(ClipSpec(TINY_CLIP), CPU)
    assert clip.mean.flatten().tolist() == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert clip.std.flatten().tolist() == pytest.approx(open_clip.OPENAI_DATASET_STD)
    images = resize_square(gradient_image(), clip.input_size)
    with torch.no_grad():
        got = clip.encode_image(images)
        normalised = clip.model.encode_image((images - clip.mean) / clip.std).float()
        raw = clip.model.encode_image(images).float()
    torch.testing.assert_close(got, normalised)
    assert (got - raw).abs().max() > 1e-3


# --- the z regulariser and its decay; the pull toward the initial latent -------------------------


def regulariser_terms(
    pipeline: VqganClipPipeline, req: ImagineRequest
) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """(total − prompt loss, z before the step, z_init) of each step of a one-candidate run."""
    run = pipeline.start(req, req.seed or 0)
    out = []
    for _ in range(req.steps):
        before = run.z.detach().clone()
        result = run.step()
        out.append((result.total_losses[0] - result.prompt_losses[0], before, run.z_init))
    return out


def test_generation_adds_alpha_mean_z_squared_decaying_linearly(
    pipeline: VqganClipPipeline,
) -> None:
    # A strong α so the term stands well above float32 rounding of a loss near 1.
    steps, weight = 4, 40.0
    terms = regulariser_terms(pipeline, request(steps=steps, z_reg_weight=weight))
    for step, (extra, z, _) in enumerate(terms):
        alpha = weight * (1 - step / steps)
        assert extra == pytest.approx(alpha * float(z.pow(2).mean()), rel=1e-3)
    assert request().z_reg() == DEFAULT_Z_REG_WEIGHT
    assert z_regulariser_weight(0.1, 0, 400) == pytest.approx(0.1)
    assert z_regulariser_weight(0.1, 399, 400) == pytest.approx(0.1 / 400)


def test_the_regulariser_shrinks_z(pipeline: VqganClipPipeline) -> None:
    def final_energy(weight: float) -> float:
        run = pipeline.start(request(z_reg_weight=weight, steps=6), 2)
        for _ in range(6):
            run.step()
        return float(run.z.detach().pow(2).mean())

    assert final_energy(50.0) < final_energy(0.0)


def test_editing_defaults_pull_toward_the_photo_not_toward_zero(
    pipeline: VqganClipPipeline,
) -> None:
    # A large step moves z far enough from z_init that the pull stands above float32 rounding.
    edit = request(init_image=photo(), steps=3, lr=0.05)
    assert edit.z_reg() == 0.0 and edit.init_pull() == DEFAULT_INIT_WEIGHT_EDITING
    terms = regulariser_terms(pipeline, edit)
    # Step 0 starts at z_init: no pull, and no α·mean(z²) although z² is far from zero.
    extra, z, z_init = terms[0]
    assert extra == pytest.approx(0.0, abs=1e-9) and float(z.pow(2).mean()) > 0
    for extra, z, z_init in terms[1:]:
        pull = DEFAULT_INIT_WEIGHT_EDITING * float((z - z_init).pow(2).mean())
        assert pull > 1e-5 and extra == pytest.approx(pull, rel=1e-2)


def test_explicit_weights_override_the_editing_defaults(pipeline: VqganClipPipeline) -> None:
    edit = request(init_image=photo(), steps=1, z_reg_weight=40.0, init_weight=0.0)
    [(extra, z, _)] = regulariser_terms(pipeline, edit)
    assert extra == pytest.approx(40.0 * float(z.pow(2).mean()), rel=1e-3)
    generate = request(steps=1, init_weight=0.3)
    assert generate.init_pull() == 0.3 and generate.z_reg() == DEFAULT_Z_REG_WEIGHT


def test_the_pull_keeps_an_edit_closer_to_the_photo(pipeline: VqganClipPipeline) -> None:
    def drift(init_weight: float) -> float:
        req = request(init_image=photo(), steps=6, lr=0.02, init_weight=init_weight)
        run = pipeline.start(req, 2)
        for _ in range(6):
            run.step()
        return float((run.z.detach() - run.z_init).pow(2).mean())

    assert drift(50.0) < drift(0.0)


def test_image_prompts_are_embedded_with_the_runs_augmentation_set(
    pipeline: VqganClipPipeline,
) -> None:
    def target(augmentations: str) -> torch.Tensor:
        req = request(prompt="", image_prompts=[photo()], augmentations=augmentations)
        return pipeline.start(req, 1).targets.embeddings

    assert torch.equal(target("crowson"), target("crowson"))
    assert not torch.allclose(target("crowson"), target("nerdyrodent"))
