"""The image safety check: diffusers' ``StableDiffusionSafetyChecker`` on finished images.

The checker is a CLIP ViT-L/14 image tower with a projection and fixed concept embeddings
(``CompVis/stable-diffusion-safety-checker``): an image whose embedding is closer to a concept
than that concept's threshold is flagged. It is loaded like the other models: a hub id through
``from_pretrained`` into the cache folder (or a local folder), once per process.

- ``default``: the weights ``models.safety_checker`` names;
- ``tiny``: the same architecture at toy size with seeded random weights and thresholds no image
  reaches, so nothing is flagged; :meth:`SafetyChecker.force_flag` lowers the thresholds below any
  similarity so that everything is (tests use it to see the whole path work);
- ``random-full``: the real architecture with seeded random weights and the same thresholds.

Nothing here knows about Discord; what to do with a flagged image is the bot's business.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFilter

from pipelines.downloads import ModelFileError
from pipelines.settings import ModelSettings

log = logging.getLogger(__name__)

SAFETY_MODEL_ID = ModelSettings().safety_checker
WHAT = "models.safety_checker"
# Thresholds for the random presets: a cosine similarity is at most 1, so no image passes 2;
# every image passes -2.
_NEVER = 2.0
_ALWAYS = -2.0
# The tiny checker's input side; the real one reads it from its preprocessor_config.json.
TINY_IMAGE_SIZE = 32


class SafetyChecker:
    """Flags images; thread-safe (inference only, on frozen weights)."""

    def __init__(self, model: Any, processor: Any, device: torch.device, name: str) -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.device = device
        self.name = name
        self._dtype = next(model.parameters()).dtype
        self._lock = threading.Lock()  # force_flag swaps the thresholds under it
        self._thresholds: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def flags(self, images: Sequence[Image.Image]) -> list[bool]:
        """One flag per image: true when the checker finds an unsafe concept in it."""
        if not images:
            return []
        pixels = self.processor(
            images=[image.convert("RGB") for image in images], return_tensors="pt"
        ).pixel_values.to(self.device, self._dtype)
        with self._lock:
            # forward_onnx is diffusers' batched form of the check (forward loops in Python and
            # blacks the images out, which the bot does its own way).
            _, flagged = self.model.forward_onnx(pixels, torch.zeros(len(images), 1))
        return [bool(f) for f in flagged.tolist()]

    def force_flag(self, on: bool = True) -> None:
        """Tests only: flag every image (``on``) or none, through the real check's arithmetic."""
        if not self.name.startswith("random"):
            raise RuntimeError("force_flag is a test hook of the random-weight checkers only")
        value = _ALWAYS if on else _NEVER
        with self._lock:
            self.model.concept_embeds_weights.fill_(value)
            self.model.special_care_embeds_weights.fill_(value)


def blurred(image: Image.Image) -> Image.Image:
    """So heavily blurred that nothing but colour masses remain (a flagged result's stand-in)."""
    radius = max(image.size) / 10
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def tiny_checker_config() -> Any:
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        vision_config={
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=8,
    )


def full_checker_config() -> Any:
    """The released checker's shapes: CLIP ViT-L/14 at 224 px, projection 768."""
    from transformers import CLIPConfig

    return CLIPConfig(
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
        },
        projection_dim=768,
    )


def image_processor(size: int) -> Any:
    """CLIP's preprocessing at ``size`` (what the released preprocessor_config.json holds)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def build_random_checker(config: Any, seed: int = 0) -> Any:
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        model = StableDiffusionSafetyChecker(config)
        # The class starts its concept embeddings at ones (the released file fills them);
        # random ones make the similarities vary from image to image, as real ones do.
        model.concept_embeds.normal_()
        model.special_care_embeds.normal_()
    model.concept_embeds_weights.fill_(_NEVER)
    model.special_care_embeds_weights.fill_(_NEVER)
    return model


def _local_only(model: str) -> bool:
    from pipelines.diffusion_models import _local_only as diffusers_local_only

    return diffusers_local_only(model)


def load_pretrained_checker(model: str, cache_dir: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The checker and its image processor from a hub id or a folder in the released layout."""
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPImageProcessor

    local_only = _local_only(model)
    common: dict[str, Any] = {"cache_dir": str(cache_dir), "local_files_only": local_only}
    log.info("loading the safety checker %s (local files only: %s)", model, local_only)
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(model, dtype=dtype, **common)
        processor = CLIPImageProcessor.from_pretrained(model, **common)
    except OSError as exc:
        if Path(model).is_dir():
            problem = (
                f"{model} is not a complete safety checker folder (it needs config.json, "
                "preprocessor_config.json and the weights)"
            )
        elif local_only:
            problem = (
                f"{model!r} is neither a local folder nor in the download cache, and "
                "downloads are off (HF_HUB_OFFLINE is set); run `make models` where there "
                "is internet, or give a local folder"
            )
        else:
            problem = (
                f"{model!r} could not be downloaded from the Hugging Face hub (check the "
                "id and the connection, or give a local folder)"
            )
        raise ModelFileError(f"{WHAT}: {problem}") from exc
    return checker, processor


_cache: dict[tuple[str, str, str], SafetyChecker] = {}
_lock = threading.Lock()


def load_safety_checker(settings: ModelSettings) -> SafetyChecker:
    """The preset's checker, built or loaded once per process."""
    from pipelines.devices import pick_device
    from pipelines.diffusion_models import diffusion_dtype

    device = pick_device(settings.device)
    name = settings.safety_checker if settings.preset == "default" else settings.preset
    key = (settings.preset, name, str(device))
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        if settings.preset == "tiny":
            model, processor = (
                build_random_checker(tiny_checker_config()),
                image_processor(TINY_IMAGE_SIZE),
            )
            label = "random (tiny)"
        elif settings.preset == "random-full":
            model, processor = build_random_checker(full_checker_config()), image_processor(224)
            label = "random (full size)"
        else:
            dtype = diffusion_dtype(settings.dtype, device)
            model, processor = load_pretrained_checker(
                settings.safety_checker, settings.cache_dir, dtype
            )
            label = settings.safety_checker
        checker = SafetyChecker(model.to(device), processor, device, label)
        log.info("safety checker %s ready on %s", label, device)
        _cache[key] = checker
        return checker


def clear_cache() -> None:
    with _lock:
        _cache.clear()
