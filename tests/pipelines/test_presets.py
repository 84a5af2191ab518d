"""What each preset builds, that random presets repeat, and that models are built once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from pipelines import presets
from pipelines.clip_models import TINY_CLIP, ClipSpec
from pipelines.settings import ModelSettings
from pipelines.vqgan import VqganConfig

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    presets.clear_caches()
    yield
    presets.clear_caches()


def test_tiny_vqgan_is_the_tiny_architecture_frozen_and_in_eval_mode():
    model = presets.load_vqgan(ModelSettings(preset="tiny"), CPU)
    assert model.config == VqganConfig.tiny()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_tiny_vqgan_is_the_same_in_every_build_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = presets.load_vqgan(ModelSettings(preset="tiny"), CPU)
    assert torch.equal(torch.rand(3), expected_next)

    presets.clear_caches()
    torch.manual_seed(6)  # whatever the caller's RNG state, the weights do not depend on it
    second = presets.load_vqgan(ModelSettings(preset="tiny"), CPU)
    assert second is not first
    expected = first.state_dict()
    for key, tensor in second.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_models_are_built_once_per_process_and_shared_across_unrelated_settings():
    settings = ModelSettings(preset="tiny")
    vqgan = presets.load_vqgan(settings, CPU)
    # Knobs that do not change the tiny models must not cause a second copy.
    other = ModelSettings(preset="tiny", clip_model="RN50", trust_checkpoints=True)
    assert presets.load_vqgan(other, CPU) is vqgan
    guide = presets.load_guide_clip(settings, CPU)
    assert presets.load_guide_clip(other, CPU) is guide
    assert presets.load_ranker_clip(settings, CPU) is guide  # one tiny CLIP serves both


@pytest.mark.parametrize(
    ("preset", "guide", "ranker"),
    [
        ("tiny", ClipSpec(TINY_CLIP, ""), ClipSpec(TINY_CLIP, "")),
        ("random-full", ClipSpec("ViT-B-32", ""), ClipSpec("ViT-B-16", "")),
        ("default", ClipSpec("ViT-B-32", "openai"), ClipSpec("ViT-B-16", "openai")),
    ],
)
def test_clip_specs_per_preset(preset: str, guide: ClipSpec, ranker: ClipSpec):
    settings = ModelSettings(preset=preset)
    assert presets.guide_clip_spec(settings) == guide
    assert presets.ranker_clip_spec(settings) == ranker


def test_default_clip_specs_follow_the_config():
    settings = ModelSettings(
        clip_model="ViT-L-14",
        clip_pretrained="laion2b_s32b_b82k",
        ranker_clip_model="ViT-B-16",
        ranker_clip_pretrained="/models/ranker.safetensors",
    )
    assert presets.guide_clip_spec(settings) == ClipSpec("ViT-L-14", "laion2b_s32b_b82k")
    assert presets.ranker_clip_spec(settings) == ClipSpec("ViT-B-16", "/models/ranker.safetensors")


def test_vqgan_identity_names_the_weights():
    assert "tiny" in presets.vqgan_identity(ModelSettings(preset="tiny"))["vqgan"]
    default = presets.vqgan_identity(
        ModelSettings(vqgan_checkpoint="/m/last.ckpt", vqgan_checkpoint_sha256="ab" * 32)
    )
    assert default["vqgan_checkpoint"] == "/m/last.ckpt"
    assert default["vqgan_checkpoint_sha256"] == "ab" * 32


def test_random_full_vqgan_is_f16_16384_at_full_size():
    model = presets.load_vqgan(ModelSettings(preset="random-full"), CPU)
    assert model.config == VqganConfig.f16_16384()
    assert sum(p.numel() for p in model.parameters()) == 76_073_859
    assert model.codebook.shape == (16384, 256)
    assert presets.load_vqgan(ModelSettings(preset="random-full"), CPU) is model
