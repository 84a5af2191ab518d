"""The prompt side of VQGAN-CLIP, each mechanism guarded by a test that fails without it: the
squared spherical distance, the magnitude of weights, zero-sum weights in the loss and the
ranking, and image prompts embedded from augmented cutouts of the whole image."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.clip_models import TINY_CLIP, ClipSpec, load_clip
from pipelines.image_prompts import (
    ImagePromptArgument,
    embed_image_prompt,
    parse_image_prompt_argument,
)
from pipelines.interface import InvalidRequest
from pipelines.vqgan import VQGAN, VqganConfig
from pipelines.vqgan_clip import (
    ImagineRequest,
    Targets,
    VqganClipPipeline,
    VqganClipRun,
    clip_view,
    prompt_loss,
)

CPU = torch.device("cpu")
TINY_LR = 0.005  # see tests/pipelines/test_vqgan_clip.py


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


def noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(
        torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1
    )


def targets_of(embeddings: torch.Tensor, weights: list[float]) -> Targets:
    return Targets(
        embeddings=embeddings,
        weights=torch.tensor(weights),
        stops=torch.full((len(weights),), math.nan),
        labels=[f"p{i}" for i in range(len(weights))],
    )


# --- the squared spherical distance ------------------------------------------------------------


def test_the_prompt_loss_is_the_squared_spherical_distance_not_one_minus_cosine() -> None:
    cutouts, targets = unit(6, 32, seed=1), unit(2, 32, seed=2)
    loss = prompt_loss(cutouts, targets_of(targets, [1.0, 0.5]))
    # Half the squared great-circle angle, averaged over cutouts, weighted, summed over prompts.
    angle = torch.arccos((cutouts @ targets.T).clamp(-1, 1))
    expected = (angle.pow(2).div(2).mean(dim=0) * torch.tensor([1.0, 0.5])).sum()
    one_minus_cos = ((1 - cutouts @ targets.T).mean(dim=0) * torch.tensor([1.0, 0.5])).sum()
    # Random directions in 32-D sit near 90°, where the two differ by about a quarter.
    assert abs(float(expected - one_minus_cos)) > 0.1
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)


def test_the_distance_gradient_does_not_fade_near_the_target_like_one_minus_cosine() -> None:
    # Near the target, d(θ²/2)/dθ = θ while d(1−cos θ)/dθ = sin θ: the same to first order, but
    # at 2 radians θ is 2.2× sin θ. This is what makes far prompts pull harder.
    target = torch.tensor([[1.0, 0.0]])
    theta = torch.tensor(2.0, requires_grad=True)
    cutout = torch.stack([torch.cos(theta), torch.sin(theta)])[None]
    prompt_loss(cutout, targets_of(target, [1.0])).backward()
    assert theta.grad is not None
    assert float(theta.grad) == pytest.approx(2.0, rel=1e-3)


# --- the magnitude of weights ------------------------------------------------------------------


def test_the_gradient_scales_with_each_weights_magnitude() -> None:
    targets = unit(2, 16, seed=3)
    grads = []
    for weights in ([1.0, 0.0], [0.0, 1.0], [3.0, -0.5]):
        cutouts = unit(4, 16, seed=4).requires_grad_(True)
        prompt_loss(cutouts, targets_of(targets, weights)).backward()
        grads.append(cutouts.grad)
    torch.testing.assert_close(grads[2], 3.0 * grads[0] - 0.5 * grads[1])


def fixed_distances(run: VqganClipRun) -> torch.Tensor:
    """Mean distance² of candidate 0's cutouts (fixed seed) to each target."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        views = run.cutouts(run.decode()[0:1])[0]
        embeddings = F.normalize(run.clip.encode_image(views), dim=-1)
        angle = torch.arccos((embeddings @ run.targets.embeddings.T).clamp(-1, 1))
        return angle.pow(2).div(2).mean(dim=0)


def test_a_heavier_prompt_wins_over_a_lighter_one(pipeline: VqganClipPipeline) -> None:
    # Same seed, same two prompts; only the ratio of the weights differs. With weights reduced
    # to their signs the two runs would be identical.
    gaps = []
    for prompt in ("a red apple:4 | a blue car:1", "a red apple:1 | a blue car:4"):
        run = pipeline.start(tiny_request(prompt=prompt, steps=12, cutn=8), seed=5)
        for _ in range(12):
            run.step()
        apple, car = fixed_distances(run).tolist()
        gaps.append(apple - car)
    assert gaps[0] < gaps[1], gaps


def test_weights_that_sum_to_zero_run_and_rank_by_the_sum_of_magnitudes(
    pipeline: VqganClipPipeline,
) -> None:
    run = pipeline.start(tiny_request(prompt="a red apple | blurry:-1", steps=2), seed=3)
    run.step()
    images = run.decode()
    score = run.scores(images)[0]
    with torch.no_grad():
        embedding = F.normalize(
            run.clip.encode_image(clip_view(images, run.clip.input_size)), dim=-1
        )
        similarity = (embedding @ run.targets.embeddings.T)[0]
    assert math.isfinite(score)
    assert score == pytest.approx(float(similarity[0] - similarity[1]) / 2, abs=1e-5)


# --- image prompts -----------------------------------------------------------------------------


def test_a_wide_images_sides_change_its_embedding(pipeline: VqganClipPipeline) -> None:
    # Two 3:1 images, small enough to need no resizing, with the same centre square (and a
    # shared margin around it) but different outer sides. A centre crop would see the same
    # pixels in both, so only an embedding of the whole image can tell them apart.
    side = 40
    shared = noise(side, side + 16, seed=1)
    outer_left, outer_right = noise(side, side - 8, seed=2), noise(side, side - 8, seed=3)
    first = Image.fromarray(np.concatenate([outer_left, shared, outer_right], axis=1))
    second = Image.fromarray(np.concatenate([255 - outer_left, shared, 255 - outer_right], axis=1))
    assert first.size == (3 * side, side)
    clip = pipeline.clip
    assert max(first.size) <= 4 * clip.input_size  # no thumbnail resampling mixes the parts
    a = embed_image_prompt(clip, first, cutn=32, cut_pow=1.0, seed=7)
    b = embed_image_prompt(clip, second, cutn=32, cut_pow=1.0, seed=7)
    again = embed_image_prompt(clip, first, cutn=32, cut_pow=1.0, seed=7)
    assert torch.equal(a, again)  # repeatable for a seed
    assert a.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert float(1 - a @ b) > 1e-4, float(1 - a @ b)


def test_a_runs_image_target_is_the_cutout_embedding(pipeline: VqganClipPipeline) -> None:
    image = Image.fromarray(noise(48, 96, seed=4))
    run = pipeline.start(tiny_request(image_prompts=[image], cutn=4), seed=3)
    expected = embed_image_prompt(pipeline.clip, image, cutn=4, cut_pow=1.0, seed=3 + 1)
    torch.testing.assert_close(run.targets.embeddings[-1], expected)
    assert run.targets.labels[-1] == "image prompt 1"


def test_an_image_prompt_has_its_own_weight_and_stop(pipeline: VqganClipPipeline) -> None:
    images = [Image.fromarray(noise(64, 64, seed=5)), Image.fromarray(noise(32, 64, seed=6))]
    request = tiny_request(
        prompt="a red apple | blurry:-1",
        image_prompts=images,
        image_prompt_weights=[0.5, -2.0],
        image_prompt_stops=[None, 1.5],
    )
    run = pipeline.start(request, seed=3)
    assert run.targets.weights.tolist() == [1.0, -1.0, 0.5, -2.0]
    assert run.targets.stops[:3].isnan().all() and run.targets.stops[3].item() == 1.5
    assert request.reading() == (
        "a red apple (1) · blurry (\u22121) · image prompt 1 (0.5) · "
        "image prompt 2 (\u22122, stop 1.5)"
    )
    assert pipeline.describe(request, 3)["reading"] == request.reading()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"image_prompt_weights": [1.0, 2.0]}, "image_prompt_weights has 2 values"),
        ({"image_prompt_weights": [1e-7]}, "image prompt 1 has a weight that is too small"),
        ({"image_prompt_weights": [float("nan")]}, "image prompt 1's weight must be a number"),
        ({"image_prompt_stops": [1.0, 2.0]}, "image_prompt_stops has 2 values"),
        ({"prompt": "", "image_prompt_weights": [0.0]}, "every prompt weight is 0"),
        # An image prompt of weight 1 guides: the text's zero weight is the fault, not "all 0".
        (
            {"prompt": "a castle:0", "image_prompt_weights": [1.0]},
            "the prompt ('a castle') has a weight that is too small",
        ),
    ],
)
def test_bad_image_prompt_settings_are_refused(overrides: dict, fragment: str) -> None:
    request = tiny_request(image_prompts=[Image.new("RGB", (8, 8))], **overrides)
    with pytest.raises(InvalidRequest, match=re.escape(fragment)):
        request.validate()


def test_an_image_prompt_may_cancel_a_text_prompt(pipeline: VqganClipPipeline) -> None:
    request = tiny_request(
        prompt="a red apple",
        image_prompts=[Image.fromarray(noise(64, 64, seed=8))],
        image_prompt_weights=[-1.0],
    )
    request.validate()


# --- IMAGE[:weight[:stop]] on the command line -------------------------------------------------


def test_image_prompt_arguments_split_off_weight_and_stop(tmp_path: Path) -> None:
    plain = tmp_path / "cat.png"
    colon = tmp_path / "a:b.png"
    odd = tmp_path / "odd.png:2"
    for path in (plain, colon, odd):
        path.write_bytes(b"")
    assert parse_image_prompt_argument(str(plain)) == ImagePromptArgument(plain)
    assert parse_image_prompt_argument(f"{plain}:0.5") == ImagePromptArgument(plain, 0.5)
    assert parse_image_prompt_argument(f"{plain}:-1:2") == ImagePromptArgument(plain, -1.0, 2.0)
    # A path with a colon in its name: taken whole when it exists, weights still come off.
    assert parse_image_prompt_argument(str(colon)) == ImagePromptArgument(colon)
    assert parse_image_prompt_argument(f"{colon}:3") == ImagePromptArgument(colon, 3.0)
    # An existing file wins over reading its tail as a weight.
    assert parse_image_prompt_argument(str(odd)) == ImagePromptArgument(odd)
    # Not a number after the colon: all of it is the path (which then is reported missing).
    missing = tmp_path / "cat.png:big"
    assert parse_image_prompt_argument(str(missing)) == ImagePromptArgument(missing)


def test_an_image_prompt_weight_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="weight must be between"):
        parse_image_prompt_argument(f"{tmp_path / 'cat.png'}:1e9")
