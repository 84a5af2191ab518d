"""One loaded pipeline per kind per process, built from ModelSettings on first use.

Each pipeline module exposes a class with ``from_settings(settings: ModelSettings)`` that loads
its models (shared through the per-process caches in the model modules) and returns a callable
following :mod:`pipelines.interface`.
"""

from __future__ import annotations

import threading

from pipelines.interface import Pipeline
from pipelines.settings import ModelSettings

KINDS = ("imagine", "edit", "upscale")

_loaded: dict[tuple[str, ModelSettings], Pipeline] = {}
_lock = threading.Lock()


def load_pipeline(kind: str, settings: ModelSettings) -> Pipeline:
    """The pipeline for ``kind`` ("imagine" = VQGAN-CLIP, "edit" = Blended Latent Diffusion,
    "upscale" = an ESRGAN-family upscaler through spandrel)."""
    if kind not in KINDS:
        raise ValueError(f"unknown pipeline kind {kind!r}; expected one of {', '.join(KINDS)}")
    with _lock:
        key = (kind, settings)
        if key not in _loaded:
            _loaded[key] = build_pipeline(kind, settings)
        return _loaded[key]


def build_pipeline(kind: str, settings: ModelSettings) -> Pipeline:
    """A new pipeline with models of its own (not cached): one per worker thread on a device."""
    if kind not in KINDS:
        raise ValueError(f"unknown pipeline kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "imagine":
        from pipelines.vqgan_clip import VqganClipPipeline

        return VqganClipPipeline.from_settings(settings)
    if kind == "edit":
        from pipelines.blended import BlendedLatentDiffusionPipeline

        return BlendedLatentDiffusionPipeline.from_settings(settings)
    from pipelines.upscale import UpscalePipeline

    return UpscalePipeline.from_settings(settings)
