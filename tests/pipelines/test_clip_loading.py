"""CLIP weights saved to a file come back through open_clip unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from pipelines import clip_models
from pipelines.clip_models import TINY_CLIP, ClipBundle, ClipSpec, load_clip
from pipelines.downloads import ModelFileError

CPU = torch.device("cpu")
TEXTS = ["a castle on a hill", "an oil painting of a clock showing 12:30"]


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    clip_models.clear_cache()
    yield
    clip_models.clear_cache()


def trained_looking_tiny_clip() -> torch.nn.Module:
    """Weights unlike the seeded random ones, so a load that ignored the file would show."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(31337)
        model = open_clip.create_model(TINY_CLIP, pretrained=None)
    return model.eval().requires_grad_(False)  # frozen like load_clip, so the same kernels run


def embeddings(bundle: ClipBundle) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(
        2, 3, bundle.input_size, bundle.input_size, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        return bundle.encode_text(TEXTS), bundle.encode_image(images)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_saved_state_dict_reloads_to_equal_embeddings(tmp_path: Path, suffix: str):
    original = trained_looking_tiny_clip()
    path = tmp_path / f"tiny-clip{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path))
    else:
        torch.save(original.state_dict(), path)

    loaded = load_clip(ClipSpec(TINY_CLIP, str(path)), CPU)
    reference = ClipBundle(
        spec=loaded.spec,
        model=original,
        tokenizer=loaded.tokenizer,
        input_size=loaded.input_size,
        context_length=loaded.context_length,
        mean=loaded.mean,
        std=loaded.std,
        device=CPU,
    )
    text, image = embeddings(loaded)
    ref_text, ref_image = embeddings(reference)
    assert torch.equal(text, ref_text)
    assert torch.equal(image, ref_image)

    random_text, _ = embeddings(load_clip(ClipSpec(TINY_CLIP, ""), CPU))
    assert not torch.allclose(text, random_text)  # the file's weights were really used


def test_random_weights_repeat_and_leave_the_global_rng_alone():
    torch.manual_seed(11)
    expected_next = torch.rand(4)
    torch.manual_seed(11)
    first = load_clip(ClipSpec(TINY_CLIP, ""), CPU)
    assert torch.equal(torch.rand(4), expected_next)

    clip_models.clear_cache()
    second = load_clip(ClipSpec(TINY_CLIP, ""), CPU)
    assert second is not first
    pairs = zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        assert torch.equal(a, b), name


def test_models_are_cached_per_spec_and_frozen():
    first = load_clip(ClipSpec(TINY_CLIP, ""), CPU)
    assert load_clip(ClipSpec(TINY_CLIP, ""), CPU) is first
    assert not first.model.training
    assert not any(p.requires_grad for p in first.model.parameters())


def test_missing_weights_file_is_one_clear_line(tmp_path: Path):
    spec = ClipSpec(TINY_CLIP, str(tmp_path / "absent.pt"))
    with pytest.raises(ModelFileError, match="not a known tag or valid file path") as refused:
        load_clip(spec, CPU)
    assert "absent.pt" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_tag_that_cannot_be_downloaded_says_how_to_work_offline(tmp_path: Path):
    # HF_HUB_OFFLINE=1 (tests/conftest.py) makes the hub fail at once instead of timing out; an
    # empty cache folder keeps weights someone downloaded earlier out of the picture.
    with pytest.raises(ModelFileError, match="local file's path") as refused:
        load_clip(ClipSpec("ViT-B-32", "openai"), CPU, cache_dir=tmp_path)
    assert str(refused.value).startswith("CLIP ViT-B-32 (openai) could not be loaded")


@pytest.mark.parametrize(
    "content", [b"garbage", b"<html><body>Link does not exist</body></html>", b"PK\x03\x04"]
)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_damaged_weights_file_is_one_clear_line(tmp_path: Path, suffix: str, content: bytes):
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as refused:
        load_clip(ClipSpec(TINY_CLIP, str(path)), CPU)
    message = str(refused.value)
    assert message.startswith(f"CLIP {TINY_CLIP} ({path}) could not be loaded: ")
    assert "\n" not in message
