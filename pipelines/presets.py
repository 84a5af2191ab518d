"""What each model preset means: the one place both pipelines ask which weights to use.

- ``tiny``: the real architectures at toy size with seeded random weights (tests, offline demos);
- ``random-full``: the real architectures at full size with seeded random weights (benchmarks);
- ``default``: the real checkpoints named in ``config.toml``.

The VQGAN is built once per process per (what it is, device) and shared across jobs; CLIP models
are shared the same way by :func:`pipelines.clip_models.load_clip`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from pipelines import clip_models
from pipelines.clip_models import RANDOM_WEIGHTS_SEED, TINY_CLIP, ClipBundle, ClipSpec, load_clip
from pipelines.settings import ModelSettings, sources_of
from pipelines.vqgan import VQGAN, VqganConfig
from pipelines.vqgan_loading import load_vqgan_from_settings

log = logging.getLogger(__name__)

_vqgan_cache: dict[tuple[Any, ...], VQGAN] = {}
_vqgan_lock = threading.Lock()


def _vqgan_key(settings: ModelSettings, device: torch.device) -> tuple[Any, ...]:
    """Only the settings that change which VQGAN is built, so unrelated knobs share one model."""
    if settings.preset == "default":
        return (
            "default",
            settings.vqgan_config,
            settings.vqgan_config_sha256,
            settings.vqgan_checkpoint,
            settings.vqgan_checkpoint_sha256,
            settings.trust_checkpoints,
            str(settings.cache_dir),
            str(device),
        )
    return (settings.preset, str(device))


def build_random_vqgan(config: VqganConfig, seed: int = RANDOM_WEIGHTS_SEED) -> VQGAN:
    """A VQGAN with repeatable random weights, leaving the caller's CPU RNG stream untouched."""
    # devices=[] forks only the CPU generator; the model is built on the CPU, so that is the only
    # generator initialisation draws from, and no CUDA context is created.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return VQGAN(config)


def load_vqgan(settings: ModelSettings, device: torch.device) -> VQGAN:
    """The preset's VQGAN on ``device``, frozen and in eval mode, built once per process."""
    key = _vqgan_key(settings, device)
    with _vqgan_lock:
        cached = _vqgan_cache.get(key)
        if cached is not None:
            return cached
        if settings.preset == "tiny":
            model = build_random_vqgan(VqganConfig.tiny())
        elif settings.preset == "random-full":
            model = build_random_vqgan(VqganConfig.f16_16384())
        elif settings.preset == "default":
            model = load_vqgan_from_settings(settings)
        else:  # ModelSettings validates the preset, so this is a programming error
            raise ValueError(f"unknown preset {settings.preset!r}")
        log.info("VQGAN for preset %s ready on %s", settings.preset, device)
        model = model.to(device).eval().requires_grad_(False)
        _vqgan_cache[key] = model
        return model


def guide_clip_spec(settings: ModelSettings) -> ClipSpec:
    """The CLIP that guides VQGAN-CLIP."""
    if settings.preset == "tiny":
        return ClipSpec(TINY_CLIP, "")
    if settings.preset == "random-full":
        return ClipSpec("ViT-B-32", "")
    return ClipSpec(settings.clip_model, settings.clip_pretrained)


def ranker_clip_spec(settings: ModelSettings) -> ClipSpec:
    """The CLIP that ranks Blended Latent Diffusion's candidates (the paper uses ViT-B/16).

    In ``tiny`` it is the same spec as the guide, so both pipelines share one model in a process.
    """
    if settings.preset == "tiny":
        return ClipSpec(TINY_CLIP, "")
    if settings.preset == "random-full":
        return ClipSpec("ViT-B-16", "")
    return ClipSpec(settings.ranker_clip_model, settings.ranker_clip_pretrained)


def load_guide_clip(settings: ModelSettings, device: torch.device) -> ClipBundle:
    return load_clip(guide_clip_spec(settings), device, cache_dir=settings.cache_dir)


def load_ranker_clip(settings: ModelSettings, device: torch.device) -> ClipBundle:
    return load_clip(ranker_clip_spec(settings), device, cache_dir=settings.cache_dir)


def vqgan_identity(settings: ModelSettings) -> dict[str, str]:
    """What a result's metadata should record about the VQGAN, without loading it."""
    if settings.preset == "tiny":
        return {"vqgan": "tiny (random weights)", "seed": str(RANDOM_WEIGHTS_SEED)}
    if settings.preset == "random-full":
        return {"vqgan": "f16-16384 (random weights)", "seed": str(RANDOM_WEIGHTS_SEED)}
    return {
        "vqgan_config": " | ".join(sources_of(settings.vqgan_config)),
        "vqgan_config_sha256": settings.vqgan_config_sha256,
        "vqgan_checkpoint": " | ".join(sources_of(settings.vqgan_checkpoint)),
        "vqgan_checkpoint_sha256": settings.vqgan_checkpoint_sha256,
    }


def clear_caches() -> None:
    """Forget every model built so far (tests use this to prove builds are repeatable)."""
    with _vqgan_lock:
        _vqgan_cache.clear()
    clip_models.clear_cache()
