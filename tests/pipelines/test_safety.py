"""The image safety checker: loaded from a folder in the released layout (real key names and
shapes, tiny sizes), it flags exactly what its concept embeddings and thresholds say."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines import safety
from pipelines.downloads import ModelFileError
from pipelines.safety import (
    TINY_IMAGE_SIZE,
    build_random_checker,
    image_processor,
    load_safety_checker,
    tiny_checker_config,
)
from pipelines.settings import ModelSettings


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    safety.clear_cache()
    yield
    safety.clear_cache()


def images() -> list[Image.Image]:
    red = Image.new("RGB", (48, 40), (220, 20, 20))
    stripes = Image.new("RGB", (48, 40))
    stripes.putdata(
        [(255, 255, 255) if (x // 4) % 2 else (0, 0, 90) for y in range(40) for x in range(48)]
    )
    return [red, stripes]


def embedding_of(model: torch.nn.Module, image: Image.Image) -> torch.Tensor:
    pixels = image_processor(TINY_IMAGE_SIZE)(images=[image], return_tensors="pt").pixel_values
    with torch.no_grad():
        pooled = model.vision_model(pixels)[1]
        return model.visual_projection(pooled)[0]


def released_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as in CompVis' file (written with transformers 4): the vision tower nests twice."""
    return {
        ("vision_model." + key if key.startswith("vision_model.") else key): value.contiguous()
        for key, value in state.items()
    }


def write_released_layout(
    folder: Path, flag_like: Image.Image, weights: str = "model.safetensors"
) -> torch.nn.Module:
    """A checker whose first concept is ``flag_like``'s own embedding, threshold 0.99, in the
    released layout: config.json, preprocessor_config.json and the weights under the released
    key names, as safetensors or as the original pickled ``pytorch_model.bin``."""
    model = build_random_checker(tiny_checker_config(), seed=99)
    with torch.no_grad():
        model.concept_embeds[0] = embedding_of(model, flag_like)
        model.concept_embeds_weights[0] = 0.99
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    state = released_names(model.state_dict())
    if weights == "model.safetensors":
        save_file(state, str(folder / weights), metadata={"format": "pt"})
    else:
        torch.save(state, folder / weights)
    image_processor(TINY_IMAGE_SIZE).save_pretrained(folder)
    return model


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_checker_saved_in_the_released_layout_loads_and_flags_by_its_own_concepts(
    tmp_path: Path, weights: str
) -> None:
    red, stripes = images()
    folder = tmp_path / "stable-diffusion-safety-checker"
    written = write_released_layout(folder, flag_like=red, weights=weights)
    # The released file's names and layout: config.json (a CLIPConfig), the processor's config,
    # and weights keyed as diffusers' class keys them.
    assert json.loads((folder / "config.json").read_text())["architectures"] == [
        "StableDiffusionSafetyChecker"
    ]
    assert (folder / "preprocessor_config.json").is_file()
    if weights == "model.safetensors":
        with safe_open(str(folder / weights), framework="pt") as f:
            keys = set(f.keys())
    else:
        keys = set(torch.load(folder / weights, weights_only=True))
    assert {
        "concept_embeds",
        "concept_embeds_weights",
        "special_care_embeds",
        "special_care_embeds_weights",
        "visual_projection.weight",
        "vision_model.vision_model.embeddings.patch_embedding.weight",
    } <= keys

    settings = ModelSettings(
        preset="default", device="cpu", safety_checker=str(folder), cache_dir=tmp_path / "cache"
    )
    checker = load_safety_checker(settings)
    loaded = checker.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in written.state_dict().items())
    assert checker.flags([red, stripes]) == [True, False]
    assert load_safety_checker(settings) is checker  # once per process


def test_the_tiny_checker_flags_nothing_until_its_test_hook_says_so() -> None:
    checker = load_safety_checker(ModelSettings(preset="tiny", device="cpu"))
    assert checker.flags(images()) == [False, False]
    checker.force_flag(True)
    assert checker.flags(images()) == [True, True]
    checker.force_flag(False)
    assert checker.flags(images()) == [False, False]


def test_the_test_hook_is_refused_on_real_weights(tmp_path: Path) -> None:
    folder = tmp_path / "checker"
    write_released_layout(folder, flag_like=images()[0])
    checker = load_safety_checker(
        ModelSettings(preset="default", device="cpu", safety_checker=str(folder))
    )
    with pytest.raises(RuntimeError, match="test hook"):
        checker.force_flag(True)


@pytest.mark.parametrize("case", ["missing folder", "incomplete folder", "id not cached"])
def test_a_checker_that_cannot_be_loaded_is_one_line_naming_the_setting(
    tmp_path: Path, case: str
) -> None:
    if case == "missing folder":
        source, expected = str(tmp_path / "nowhere"), "is neither a local folder nor in the"
    elif case == "incomplete folder":
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "config.json").write_text("{}")
        source, expected = str(tmp_path / "half"), "is not a complete safety checker folder"
    else:
        source, expected = "CompVis/stable-diffusion-safety-checker", "run `make models`"
    settings = ModelSettings(
        preset="default", device="cpu", safety_checker=source, cache_dir=tmp_path / "cache"
    )
    with pytest.raises(ModelFileError) as refused:
        load_safety_checker(settings)
    message = str(refused.value)
    assert message.startswith("models.safety_checker: ") and expected in message
    assert "\n" not in message
