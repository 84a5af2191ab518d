"""CLIP through open_clip: real checkpoints by name and tag, or random weights for the presets.

Models are cached per process by (name, pretrained, device), so VQGAN-CLIP's guide and Blended
Latent Diffusion's ranker are one object when they name the same model.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from safetensors import SafetensorError
from torch import nn

from pipelines.downloads import ModelFileError

log = logging.getLogger(__name__)

TINY_CLIP = "faraday-tiny-clip"
# Seed of random-weight models (pretrained ""), so they are the same in every process.
RANDOM_WEIGHTS_SEED = 0
_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)


@dataclass(frozen=True)
class ClipSpec:
    """``pretrained``: an open_clip tag (``openai``), a local weights file, or ``""`` (random)."""

    model: str
    pretrained: str = ""


@dataclass
class ClipBundle:
    spec: ClipSpec
    model: nn.Module
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    input_size: int
    context_length: int
    mean: torch.Tensor  # (3, 1, 1), on the model's device
    std: torch.Tensor
    device: torch.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], shape (N, 3, H, W), normalised as CLIP was trained."""
        return (images - self.mean) / self.std

    def token_count(self, text: str) -> int:
        """Tokens the text needs, including start and end tokens, before any truncation."""
        return len(self.tokenizer.encode(text)) + 2

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text embeddings, (len(texts), D), float32."""
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens).float()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings of [0, 1] images already at ``input_size``; keeps gradients."""
        return self.model.encode_image(self.normalize(images)).float()


_cache: dict[tuple[ClipSpec, str], ClipBundle] = {}
_lock = threading.Lock()


# What open_clip raises for an unknown model or tag, a failed download, or a weights file that
# is damaged, not a state dict, or for another model.
_LOAD_ERRORS = (
    RuntimeError,
    ValueError,
    OSError,
    EOFError,
    pickle.UnpicklingError,
    SafetensorError,
)


def _clip_load_error(spec: ClipSpec, exc: Exception) -> ModelFileError:
    """open_clip's failure as one line that says which setting to fix."""
    detail = (str(exc).splitlines() or [type(exc).__name__])[0][:240]
    if isinstance(exc, (pickle.UnpicklingError, SafetensorError, EOFError)):
        # torch's weights-only refusal starts with a paragraph about PyTorch 2.6 defaults.
        detail = (
            "the weights file is damaged or is not a plain state dict (safe loading accepts "
            "only tensors)"
        )
    hint = ""
    if spec.pretrained and "download" in detail.lower():
        hint = (
            "; on a machine without internet, fetch the weights elsewhere and set the pretrained "
            "value to the local file's path"
        )
    weights = spec.pretrained or "random weights"
    return ModelFileError(f"CLIP {spec.model} ({weights}) could not be loaded: {detail}{hint}")


def load_clip(spec: ClipSpec, device: torch.device, cache_dir: Path | None = None) -> ClipBundle:
    """Load (once per process) the CLIP model the spec names, frozen and in eval mode."""
    key = (spec, str(device))
    with _lock:
        if key in _cache:
            return _cache[key]
        pretrained = spec.pretrained or None
        log.info("loading CLIP %s (%s) on %s", spec.model, pretrained or "random weights", device)
        with contextlib.ExitStack() as stack:
            if pretrained is None:
                # Random weights are seeded so that two processes (or a rebuild) get the same
                # model; only the CPU generator is forked because open_clip initialises on the CPU.
                stack.enter_context(torch.random.fork_rng(devices=[]))
                torch.random.default_generator.manual_seed(RANDOM_WEIGHTS_SEED)
            try:
                model = open_clip.create_model(
                    spec.model,
                    pretrained=pretrained,
                    device=device,
                    cache_dir=str(cache_dir) if cache_dir else None,
                )
            except _LOAD_ERRORS as exc:
                raise _clip_load_error(spec, exc) from exc
        model.eval().requires_grad_(False)
        visual = model.visual
        size = visual.image_size
        input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = torch.tensor(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        std = torch.tensor(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        tokenizer = open_clip.get_tokenizer(spec.model)
        bundle = ClipBundle(
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            input_size=input_size,
            context_length=int(getattr(model, "context_length", 77)),
            mean=mean.view(3, 1, 1).to(device),
            std=std.view(3, 1, 1).to(device),
            device=device,
        )
        _cache[key] = bundle
        return bundle


def clear_cache() -> None:
    """Forget every loaded model (tests use this to prove random builds are repeatable)."""
    with _lock:
        _cache.clear()
