"""Loading the diffusion model: the offline tokenizer, the presets, and the diffusers format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from pipelines import diffusion_models
from pipelines.blended import BlendedLatentDiffusionPipeline, EditRequest
from pipelines.clip_models import TINY_CLIP, ClipSpec, load_clip
from pipelines.diffusion_models import (
    clip_tokenizer_from_open_clip,
    load_diffusion,
    sd15_text_encoder,
    sd15_unet,
    sd15_vae,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from pipelines.settings import ModelSettings
from tests.pipelines.blended_helpers import mask_image, source_image

TEXTS = [
    "a photo of a cat",
    "Twelve o'clock: 12:30, naïve café — https://example.com/x?y=1 !!",
    # (Not full-width letters: open_clip's ftfy cleanup folds them, transformers' does not, with
    # SD's own tokenizer files too; that is the front end, not the vocabulary tested here.)
    "emoji 🐈, accents àéîõü, tabs\tand\nnewlines",
    "",
]


def test_the_tokenizer_built_from_open_clip_matches_open_clip(tmp_path: Path) -> None:
    tokenizer = clip_tokenizer_from_open_clip(tmp_path)
    reference = open_clip.get_tokenizer("ViT-B-16")
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 49408
    for text in TEXTS:
        ours = tokenizer(text, truncation=True, max_length=77).input_ids
        theirs = [int(i) for i in reference([text])[0] if i != 0]
        assert ours == theirs, text
    padded = tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt")
    assert padded.input_ids.shape == (1, 77)
    # Written once; a second build reads the same files.
    assert (tmp_path / "clip-bpe-tokenizer" / "vocab.json").is_file()
    assert (
        clip_tokenizer_from_open_clip(tmp_path)("a cat").input_ids == tokenizer("a cat").input_ids
    )


def test_random_full_has_the_shapes_of_stable_diffusion_1_5() -> None:
    # Built on the meta device: shapes without memory. The counts are SD 1.5's published ones.
    with torch.device("meta"):
        unet, vae, text_encoder = sd15_unet(), sd15_vae(), sd15_text_encoder()
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in text_encoder.parameters()) == 123_060_480
    assert vae.config.scaling_factor == 0.18215
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size == 768


def test_tiny_weights_are_the_same_in_every_build(tmp_path: Path) -> None:
    components = load_diffusion(ModelSettings(preset="tiny", device="cpu", cache_dir=tmp_path))
    assert load_diffusion(ModelSettings(preset="tiny", device="cpu", cache_dir=tmp_path)) is (
        components
    )
    state = torch.get_rng_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = tiny_unet()
    assert torch.equal(torch.get_rng_state(), state)
    for name, tensor in unet.state_dict().items():
        assert torch.equal(tensor, components.unet.state_dict()[name]), name
    assert components.unet_factor == 2 and components.vae_scale_factor == 2


def save_tiny_diffusers_folder(folder: Path, tokenizer_cache: Path) -> StableDiffusionPipeline:
    torch.manual_seed(123)  # different weights from the tiny preset's, so loading is what we test
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=clip_tokenizer_from_open_clip(tokenizer_cache),
        scheduler=DDIMScheduler(**diffusion_models.SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


def test_a_diffusers_folder_loads_back_through_the_default_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = save_tiny_diffusers_folder(tmp_path / "model", tmp_path / "tok")
    # The folder alone must make loading local: no help from an offline switch in the environment.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen: dict[str, dict[str, Any]] = {}
    for cls, method in (
        (UNet2DConditionModel, "from_pretrained"),
        (AutoencoderKL, "from_pretrained"),
        (CLIPTextModel, "from_pretrained"),
        (CLIPTokenizer, "from_pretrained"),
        (DDIMScheduler, "load_config"),
    ):
        original = getattr(cls, method).__func__

        def spying(
            klass: type, *args: Any, _original: Any = original, _name: str = cls.__name__, **kw: Any
        ) -> Any:
            seen[_name] = kw
            return _original(klass, *args, **kw)

        monkeypatch.setattr(cls, method, classmethod(spying))
    settings = ModelSettings(
        preset="default",
        device="cpu",
        diffusion_model=str(tmp_path / "model"),
        cache_dir=tmp_path / "cache",
    )
    components = load_diffusion(settings)

    assert len(seen) == 5
    assert all(kwargs["local_files_only"] is True for kwargs in seen.values())
    for weights in ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel"):
        assert seen[weights]["dtype"] == torch.float32
    for ours, theirs in (
        (components.unet, saved.unet),
        (components.vae, saved.vae),
        (components.text_encoder, saved.text_encoder),
    ):
        reference = theirs.state_dict()
        for name, tensor in ours.state_dict().items():
            assert torch.equal(tensor, reference[name]), name
    assert components.tokenizer("a red cat").input_ids == saved.tokenizer("a red cat").input_ids
    assert components.scheduler_config["beta_schedule"] == "scaled_linear"
    assert components.name == str(tmp_path / "model")

    pipeline = BlendedLatentDiffusionPipeline(
        components, load_clip(ClipSpec(TINY_CLIP), torch.device("cpu"))
    )
    result = pipeline(
        EditRequest("a red cat", source_image(), mask_image(), steps=2, candidates=1, seed=0)
    )
    assert result.images[0].image.size == (64, 64)
    assert result.settings["model"] == str(tmp_path / "model")


def test_a_model_id_is_fetched_only_from_the_cache_when_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    for value in ("1", "true", "YES"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert diffusion_models._local_only(model_id), value
    # huggingface_hub reads these as "online"; so must we, or downloads are refused for nothing.
    for value in ("0", "false", ""):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert not diffusion_models._local_only(model_id), value
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert not diffusion_models._local_only(model_id)
    assert diffusion_models._local_only(str(tmp_path))


def test_float16_is_used_on_cuda_only(tmp_path: Path) -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert diffusion_models.diffusion_dtype("auto", cuda) == torch.float16
    assert diffusion_models.diffusion_dtype("float16", cuda) == torch.float16
    assert diffusion_models.diffusion_dtype("auto", cpu) == torch.float32
    assert diffusion_models.diffusion_dtype("float16", cpu) == torch.float32
    assert diffusion_models.diffusion_dtype("bfloat16", cpu) == torch.bfloat16
    components = load_diffusion(
        ModelSettings(preset="tiny", device="cpu", dtype="float16", cache_dir=tmp_path)
    )
    assert components.dtype == torch.float32
    modules = (components.unet, components.vae, components.text_encoder)
    assert all(p.dtype == torch.float32 for m in modules for p in m.parameters())
