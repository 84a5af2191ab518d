"""Blended Latent Diffusion mechanisms, each tested so that the test fails without it.

Tiny random models cannot show a bad picture, so each mechanism is checked against an
independent computation of what it should do: classifier-free guidance and the order of its
halves, the VAE scaling factor on decode, the foreground term of the decoder fine-tuning, one
scheduler per request, ``clip_sample`` forced off, the two ``start`` modes, and latent sides that
are not multiples of the UNet's downsampling factor.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from pipelines.blended import (
    BlendedLatentDiffusionPipeline,
    EditRequest,
    StepRecord,
    reconstruct_background,
)
from pipelines.diffusion_models import SD_SCHEDULER_CONFIG, sd15_unet, sd15_vae, tiny_vae
from pipelines.image_io import pil_to_tensor
from tests.pipelines.blended_helpers import mask_array, mask_image, source_image, tiny_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> BlendedLatentDiffusionPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("models"))


@pytest.fixture
def records(pipeline: BlendedLatentDiffusionPipeline) -> Iterator[list[StepRecord]]:
    seen: list[StepRecord] = []
    pipeline.step_observer = seen.append
    try:
        yield seen
    finally:
        pipeline.step_observer = None


@pytest.fixture
def unet_calls(pipeline: BlendedLatentDiffusionPipeline) -> Iterator[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []
    unet = pipeline.components.unet
    original = unet.forward

    def recording_forward(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(
            {
                "sample": sample.clone(),
                "timestep": timestep,
                "context": kwargs["encoder_hidden_states"].clone(),
            }
        )
        return original(sample, timestep, *args, **kwargs)

    unet.forward = recording_forward  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del unet.forward


@pytest.fixture
def scheduler_steps(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every DDIM step of the test: the noise prediction it was given and its config."""
    steps: list[dict[str, Any]] = []
    real_step = DDIMScheduler.step

    def recording_step(
        self: DDIMScheduler, model_output: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        steps.append(
            {"model_output": model_output.clone(), "scheduler": self, "config": dict(self.config)}
        )
        return real_step(self, model_output, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "step", recording_step)
    return steps


def request(**options: Any) -> EditRequest:
    defaults: dict[str, Any] = {"steps": 6, "candidates": 2, "seed": 21, "preview_every": 100}
    defaults.update(options)
    return EditRequest("a bowl of oranges", source_image(), mask_image(), **defaults)


def png_bytes(result: Any) -> list[bytes]:
    out = []
    for ranked in result.images:
        buffer = io.BytesIO()
        ranked.image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def embed(pipeline: BlendedLatentDiffusionPipeline, text: str) -> torch.Tensor:
    """The text encoder's hidden states for ``text``, computed here, not by the pipeline."""
    c = pipeline.components
    ids = c.tokenizer(
        [text], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return c.text_encoder(ids)[0]


# -- classifier-free guidance ------------------------------------------------------------------


def test_guidance_is_uncond_plus_scale_times_cond_minus_uncond_with_the_halves_in_order(
    pipeline: BlendedLatentDiffusionPipeline,
    unet_calls: list[dict[str, Any]],
    scheduler_steps: list[dict[str, Any]],
) -> None:
    guidance = 3.0
    pipeline(request(guidance=guidance, negative_prompt="blurry, grey", steps=4, blend_start=0.0))
    calls = list(unet_calls)  # the checks below call the UNet too
    assert len(calls) == len(scheduler_steps) == 4
    negative, positive = embed(pipeline, "blurry, grey"), embed(pipeline, "a bowl of oranges")
    assert not torch.allclose(negative, positive)
    unet = pipeline.components.unet
    for call, step in zip(calls, scheduler_steps, strict=True):
        half = call["sample"].shape[0] // 2
        # Each candidate's latent goes through the UNet twice: once per text.
        assert torch.equal(call["sample"][:half], call["sample"][half:])
        latent, timestep = call["sample"][:half], call["timestep"]
        with torch.no_grad():
            uncond = unet(
                latent, timestep, encoder_hidden_states=negative.expand(half, -1, -1)
            ).sample
            cond = unet(
                latent, timestep, encoder_hidden_states=positive.expand(half, -1, -1)
            ).sample
        assert not torch.allclose(uncond, cond, atol=1e-4)
        expected = uncond + guidance * (cond - uncond)
        torch.testing.assert_close(step["model_output"], expected, rtol=1e-4, atol=1e-5)


# -- the VAE scaling factor on decode ----------------------------------------------------------


def test_results_are_the_decode_of_the_latents_divided_by_the_scaling_factor(
    pipeline: BlendedLatentDiffusionPipeline, records: list[StepRecord]
) -> None:
    result = pipeline(request(candidates=2, steps=3))
    latents = records[-1].latents
    vae = pipeline.components.vae
    scaling = vae.config.scaling_factor
    assert scaling == pytest.approx(0.18215)
    with torch.no_grad():
        expected = ((vae.decode(latents / scaling).sample + 1) / 2).clamp(0, 1) * 255
        unscaled = ((vae.decode(latents).sample + 1) / 2).clamp(0, 1) * 255
    # Without the division the picture is far off: the test can tell the two apart.
    assert float((expected - unscaled).abs().mean()) > 5.0
    for ranked in result.images:
        got = torch.from_numpy(np.asarray(ranked.image, dtype=np.float32)).permute(2, 0, 1)
        index = ranked.seed - 21
        assert float((got - expected[index]).abs().max()) <= 0.5 + 1e-3


# -- the decoder fine-tuning's foreground term -------------------------------------------------


def test_finetuning_keeps_the_edit_inside_the_mask_through_its_foreground_term() -> None:
    """With the background weight at 0, only the foreground term ``mse(D(z)·m, x̂·m)`` is left:
    it must pull the decoder's output inside the mask toward the edited image ``x̂``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = tiny_vae().eval().requires_grad_(False)
        z = torch.randn(1, 4, 16, 16)
        edited = torch.rand(1, 3, 32, 32) * 2 - 1
        source = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    inside = mask.bool().expand(1, 3, 32, 32)
    with torch.no_grad():
        before = vae.decode(z).sample
    tuned = reconstruct_background(
        vae, z, edited, source, mask, steps=20, lr=1e-3, background_weight=0.0
    )
    error_before = float((before - edited)[inside].pow(2).mean())
    error_after = float((tuned - edited)[inside].pow(2).mean())
    assert error_after < 0.7 * error_before, (error_after, error_before)


# -- one scheduler per request -----------------------------------------------------------------


def test_two_interleaved_requests_give_what_they_give_in_sequence(
    pipeline: BlendedLatentDiffusionPipeline,
) -> None:
    first = request(steps=8, seed=3, preview_every=1, candidates=2)
    second = request(steps=5, seed=4, candidates=1, blend_start=0.0)
    alone_first, alone_second = png_bytes(pipeline(first)), png_bytes(pipeline(second))

    inner: list[Any] = []

    def run_second_midway(step: int, total: int, preview: Any) -> None:
        # The second request runs entirely between two steps of the first.
        if step == 2 and not inner:
            inner.append(pipeline(second))

    interleaved_first = png_bytes(pipeline(first, on_progress=run_second_midway))
    assert len(inner) == 1
    assert png_bytes(inner[0]) == alone_second
    assert interleaved_first == alone_first


# -- the scheduler's configuration -------------------------------------------------------------


def test_clip_sample_is_off_even_when_the_model_config_lacks_the_key(
    pipeline: BlendedLatentDiffusionPipeline, scheduler_steps: list[dict[str, Any]]
) -> None:
    config = {k: v for k, v in SD_SCHEDULER_CONFIG.items() if k != "clip_sample"}
    # What DDIM would do with this config on its own: clip x₀ to ±1 in latent space.
    assert DDIMScheduler.from_config(config).config.clip_sample is True
    lacking = BlendedLatentDiffusionPipeline(
        dataclasses.replace(pipeline.components, scheduler_config=config), pipeline.ranker
    )
    lacking(request(steps=4))
    assert scheduler_steps and all(s["config"]["clip_sample"] is False for s in scheduler_steps)
    # A fresh scheduler for each request, never a shared one.
    schedulers = {id(s["scheduler"]) for s in scheduler_steps}
    lacking(request(steps=4))
    assert not schedulers & {id(s["scheduler"]) for s in scheduler_steps[4:]}


def test_start_noise_puts_pure_noise_in_the_mask_and_noised_source_outside(
    pipeline: BlendedLatentDiffusionPipeline, unet_calls: list[dict[str, Any]]
) -> None:
    seed, candidates = 8, 2
    by_source = pipeline(request(start="noised-source", seed=seed, shrink=False, steps=4))
    from_source = unet_calls[0]["sample"][:candidates]
    unet_calls.clear()
    by_noise = pipeline(request(start="noise", seed=seed, shrink=False, steps=4))
    from_noise = unet_calls[0]["sample"][:candidates]
    assert by_noise.settings["start"] == "noise"
    assert by_source.settings["start"] == "noised-source"

    c = pipeline.components
    with torch.no_grad():
        z_init = c.vae.encode(pil_to_tensor(source_image()) * 2 - 1).latent_dist.mean
        z_init = z_init * c.vae.config.scaling_factor
    noise = torch.stack(
        [
            torch.randn(z_init.shape[1:], generator=torch.Generator().manual_seed(seed + i))
            for i in range(candidates)
        ]
    )
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha = torch.cumprod(1 - betas, dim=0)[int(unet_calls[0]["timestep"])].float()
    noised = alpha.sqrt() * z_init + (1 - alpha).sqrt() * noise
    factor = c.vae_scale_factor
    cells = torch.from_numpy(mask_array()[::factor, ::factor].copy())
    inside = cells.expand_as(noise)
    torch.testing.assert_close(from_source, noised, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_noise[inside], noise[inside], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_noise[~inside], noised[~inside], rtol=1e-5, atol=1e-5)
    assert png_bytes(by_noise) != png_bytes(by_source)


# -- latent sides that are not multiples of the UNet's factor -----------------------------------


@pytest.mark.parametrize(("height", "width"), [(13, 27), (9, 36), (7, 7)])
def test_the_tiny_unet_takes_latent_sides_off_its_factor(
    pipeline: BlendedLatentDiffusionPipeline, height: int, width: int
) -> None:
    c = pipeline.components
    assert height % c.unet_factor or width % c.unet_factor
    context = embed(pipeline, "a cat").expand(2, -1, -1)
    with torch.no_grad():
        out = c.unet(torch.randn(2, 4, height, width), 500, encoder_hidden_states=context).sample
    assert out.shape == (2, 4, height, width)


def test_the_sd15_unet_and_vae_take_latent_sides_off_the_unet_factor() -> None:
    """SD-1.5's exact architecture (random-full), run on the meta device: shapes only, no
    arithmetic. Meta tensors check every shape (a skip connection of the wrong size raises), so
    this is the same proof as a real forward, at no cost. 9×13 latent cells are 72×104 pixels,
    and the UNet downsamples by 8."""
    with torch.device("meta"):
        unet, vae = sd15_unet(), sd15_vae()
        sample = torch.empty(2, 4, 9, 13)
        out = unet(sample, torch.tensor(500), encoder_hidden_states=torch.empty(2, 77, 768))
        decoded = vae.decode(torch.empty(1, 4, 9, 13)).sample
        with pytest.raises(RuntimeError):  # meta does catch a size mismatch
            torch.cat([torch.empty(1, 2, 5, 5), torch.empty(1, 2, 4, 5)], dim=1)
    assert out.sample.shape == (2, 4, 9, 13)
    assert decoded.shape == (1, 3, 72, 104)


def test_a_unet_that_refuses_odd_sides_gets_padded_latents_cropped_back(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    refusing = tiny_pipeline(tmp_path_factory.mktemp("models"))
    unet = refusing.components.unet
    original = unet.forward
    shapes: list[tuple[int, ...]] = []

    def forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(sample.shape))
        if any(side % 2 for side in sample.shape[-2:]):
            raise RuntimeError("Sizes of tensors must match except in dimension 1")
        return original(sample, *args, **kwargs)

    unet.forward = forward  # type: ignore[method-assign]
    try:
        # 100×66 → working 100×66, latent 50×33: 33 is odd.
        image, mask = source_image(100, 66), mask_image(100, 66)
        result = refusing(
            EditRequest("a cat", image, mask, steps=3, candidates=1, seed=1, max_side=100)
        )
    finally:
        del unet.forward
    assert result.images[0].image.size == (100, 66)
    assert shapes[0][-2:] == (33, 50)  # tried as it is first
    assert all(shape[-2:] == (34, 50) for shape in shapes[1:])  # then padded, every step
    assert len(shapes) == 1 + 3
