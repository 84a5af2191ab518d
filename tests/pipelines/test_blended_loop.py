"""Algorithm 1 instrumented inside its loop: blending, shrinking, seeds, previews, cancelling."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.blended import (
    SHRINK_KERNELS,
    BlendedLatentDiffusionPipeline,
    EditRequest,
    StepRecord,
    shrink_phase,
    shrinking_masks,
)
from pipelines.image_io import pil_to_tensor
from pipelines.interface import Cancelled
from tests.pipelines.blended_helpers import mask_array, mask_image, source_image, tiny_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> BlendedLatentDiffusionPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("models"))


@pytest.fixture
def unet_calls(pipeline: BlendedLatentDiffusionPipeline) -> Iterator[list[dict[str, Any]]]:
    """Every UNet call of the test: its input sample and timestep."""
    calls: list[dict[str, Any]] = []
    unet = pipeline.components.unet
    original = unet.forward

    def recording_forward(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append({"sample": sample.clone(), "timestep": int(timestep)})
        return original(sample, timestep, *args, **kwargs)

    unet.forward = recording_forward  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del unet.forward


@pytest.fixture
def records(pipeline: BlendedLatentDiffusionPipeline) -> Iterator[list[StepRecord]]:
    seen: list[StepRecord] = []
    pipeline.step_observer = seen.append
    try:
        yield seen
    finally:
        pipeline.step_observer = None


def request(**options: Any) -> EditRequest:
    defaults: dict[str, Any] = {"steps": 8, "candidates": 3, "seed": 11, "preview_every": 100}
    defaults.update(options)
    return EditRequest("a bowl of oranges", source_image(), mask_image(), **defaults)


def sd_alphas_cumprod() -> torch.Tensor:
    """SD 1.x's noise schedule written out from its definition, not taken from diffusers."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def latent_mask_of_test_mask(factor: int) -> torch.Tensor:
    """The mask on the latent grid: a cell is masked when any pixel under it is."""
    pixels = torch.from_numpy(mask_array().astype(np.float32))[None, None]
    return F.max_pool2d(pixels, kernel_size=factor, stride=factor)


def dilated(mask: torch.Tensor, size: int) -> torch.Tensor:
    return F.max_pool2d(mask, kernel_size=size, stride=1, padding=size // 2)


def test_outside_the_mask_the_latent_is_the_source_noised_to_its_own_step(
    pipeline: BlendedLatentDiffusionPipeline,
    unet_calls: list[dict[str, Any]],
    records: list[StepRecord],
) -> None:
    edit = request(steps=12, blend_start=0.25)
    pipeline(edit)
    components = pipeline.components
    with torch.no_grad():
        pixels = pil_to_tensor(source_image()) * 2 - 1
        posterior = components.vae.encode(pixels).latent_dist
        z_init = posterior.mean * components.vae.config.scaling_factor
    alphas = sd_alphas_cumprod()
    # Each candidate's noise, regenerated here from its seed rather than taken from the records:
    # the first draw noises the start latent, then one draw per step noises the background.
    seed = 11
    assert edit.seed == seed
    generators = [torch.Generator().manual_seed(seed + i) for i in range(edit.candidates)]

    def next_noise() -> torch.Tensor:
        return torch.stack([torch.randn(z_init.shape[1:], generator=g) for g in generators])

    skipped = int(12 * 0.25)
    assert len(records) == 12 - skipped == len(unet_calls)
    for record, call in zip(records, unet_calls, strict=True):
        assert record.timestep == call["timestep"]
    # Algorithm 1 starts from z_init noised to the first step kept after blend_start. DDIM's
    # "leading" spacing with SD's steps_offset of 1 puts step k of 12 at (11 - k) * 83 + 1.
    start = unet_calls[0]["timestep"]
    assert start == (12 - 1 - skipped) * (1000 // 12) + 1
    alpha = alphas[start].float()
    start_latent = alpha.sqrt() * z_init + (1 - alpha).sqrt() * next_noise()
    torch.testing.assert_close(
        unet_calls[0]["sample"][: edit.candidates], start_latent, rtol=1e-5, atol=1e-5
    )
    for index, record in enumerate(records):
        inside = record.mask.bool().expand_as(record.latents)
        outside = ~inside
        assert outside.any() and inside.any()
        if index + 1 < len(records):
            # The blended latent is what the next UNet call denoises, at the next timestep...
            following = unet_calls[index + 1]
            assert torch.equal(following["sample"][: edit.candidates], record.latents)
            assert record.latent_timestep == following["timestep"]
            assert record.background_noise is not None
            assert torch.equal(record.background_noise, next_noise())
            # ...and outside the mask it is the source noised exactly to that timestep.
            alpha = alphas[following["timestep"]].float()
            expected = alpha.sqrt() * z_init + (1 - alpha).sqrt() * record.background_noise
            torch.testing.assert_close(
                record.latents[outside], expected[outside], rtol=1e-5, atol=1e-5
            )
        else:
            # After the last step the latent is clean: the background is the source itself.
            assert record.latent_timestep is None
            torch.testing.assert_close(
                record.latents[outside], z_init.expand_as(record.latents)[outside]
            )
        # Inside the mask it is the denoised latent, which differs from the noised source.
        assert torch.equal(record.latents[inside], record.foreground[inside])
        assert not torch.allclose(record.foreground[inside], record.background[inside], atol=1e-3)


def test_shrinking_uses_four_nested_phases_with_the_stated_kernels() -> None:
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 7, 3:12] = 1  # a thin stroke, the case shrinking exists for
    masks = shrinking_masks(mask, 8, enabled=True)
    expected = [dilated(mask, 7), dilated(mask, 5), dilated(mask, 3), mask]
    assert SHRINK_KERNELS == (7, 5, 3)
    for step, used in enumerate(masks):
        assert torch.equal(used, expected[step // 2]), step
    for wider, narrower in itertools.pairwise(expected):
        assert torch.all(wider >= narrower) and not torch.equal(wider, narrower)
    assert torch.equal(masks[-1], mask)


@pytest.mark.parametrize("total", [1, 2, 3, 5, 38, 150])
def test_shrinking_phases_are_near_equal_and_end_on_the_mask(total: int) -> None:
    phases = [shrink_phase(step, total) for step in range(total)]
    assert phases == sorted(phases)
    assert phases[-1] == 3
    if total >= 4:
        counts = [phases.count(p) for p in range(4)]
        assert max(counts) - min(counts) <= 1


def test_shrinking_inside_the_pipeline_and_switching_it_off(
    pipeline: BlendedLatentDiffusionPipeline, records: list[StepRecord]
) -> None:
    pipeline(request(steps=8, blend_start=0.0))
    shrunk = [r.mask for r in records]
    records.clear()
    pipeline(request(steps=8, blend_start=0.0, shrink=False))
    plain = [r.mask for r in records]

    original = latent_mask_of_test_mask(pipeline.components.vae_scale_factor)
    phases = [dilated(original, 7), dilated(original, 5), dilated(original, 3), original]
    for step, used in enumerate(shrunk):
        assert torch.equal(used.float(), phases[step // 2]), step
    assert all(torch.equal(m.float(), original) for m in plain)
    assert not torch.equal(shrunk[0], plain[0])


def test_the_same_seed_gives_the_same_bytes_and_ranking(
    pipeline: BlendedLatentDiffusionPipeline,
) -> None:
    def run(seed: int) -> tuple[list[bytes], list[float], list[int]]:
        result = pipeline(request(seed=seed))
        encoded = []
        for ranked in result.images:
            buffer = io.BytesIO()
            ranked.image.save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        return encoded, [r.score for r in result.images], [r.seed for r in result.images]

    first, again, other = run(5), run(5), run(6)
    assert first == again
    assert first[0] != other[0]
    assert sorted(first[2]) == [5, 6, 7]


def test_a_missing_seed_is_picked_and_reported(pipeline: BlendedLatentDiffusionPipeline) -> None:
    result = pipeline(request(seed=None, candidates=2))
    seed = result.settings["seed"]
    assert isinstance(seed, int)
    assert {r.seed for r in result.images} == {seed, seed + 1}
    assert any(str(seed) in note for note in result.notes)


def test_previews_are_cheap_and_on_schedule(pipeline: BlendedLatentDiffusionPipeline) -> None:
    calls: list[tuple[int, int, Any]] = []
    vae = pipeline.components.vae
    decodes = []
    original = vae.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decodes.append(1)
        return original(*args, **kwargs)

    vae.decode = counting_decode  # type: ignore[method-assign]
    try:
        result = pipeline(
            request(steps=10, blend_start=0.25, preview_every=3, candidates=2),
            on_progress=lambda step, total, image: calls.append((step, total, image)),
        )
    finally:
        del vae.decode
    assert [(step, total) for step, total, _ in calls] == [(3, 8), (6, 8), (8, 8)]
    # Only the two results are decoded; previews come from the latent-to-RGB map.
    assert len(decodes) == 2
    assert all(image is not None for _, _, image in calls)
    assert calls[-1][2] is result.images[0].image


def test_cancelling_stops_within_one_step(
    pipeline: BlendedLatentDiffusionPipeline, unet_calls: list[dict[str, Any]]
) -> None:
    polls = 0

    def cancel_on_third_poll() -> bool:
        nonlocal polls
        polls += 1
        return polls >= 3

    with pytest.raises(Cancelled) as caught:
        pipeline(request(steps=10, preview_every=1), should_cancel=cancel_on_third_poll)
    assert len(unet_calls) == 2
    assert caught.value.step == 2
    assert caught.value.latest is not None


def cancel_at_poll(number: int) -> Any:
    polls = 0

    def should_cancel() -> bool:
        nonlocal polls
        polls += 1
        return polls >= number

    return should_cancel


def test_cancelling_lands_between_decodes_and_finetune_steps(
    pipeline: BlendedLatentDiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    vae = pipeline.components.vae
    decodes: list[int] = []
    original = vae.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decodes.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(vae, "decode", counting_decode)
    edit = request(steps=4, blend_start=0.0, candidates=2)
    # Four steps poll four times; the decode of candidate 2 polls sixth.
    with pytest.raises(Cancelled) as during_decode:
        pipeline(edit, should_cancel=cancel_at_poll(6))
    assert len(decodes) == 1
    assert during_decode.value.step == during_decode.value.total == 4

    finetune_steps: list[int] = []
    real_adam_step = torch.optim.Adam.step

    def counting_step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        finetune_steps.append(1)
        return real_adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    finetune = request(steps=4, blend_start=0.0, candidates=2, background="finetune")
    # 4 step polls, 2 decode polls, then one per fine-tuning step: stop at the third.
    with pytest.raises(Cancelled) as during_finetune:
        pipeline(finetune, should_cancel=cancel_at_poll(4 + 2 + 3))
    assert len(finetune_steps) == 2
    assert during_finetune.value.latest is not None
