"""Where the worker gets its pipelines: the real ones through the registry, or a stand-in.

A source turns a stored :class:`JobRequest` into a ready call: the pipeline callable and the
pipeline's own request object. It is injected into the scheduler, so tests run the scheduler on
the deterministic stand-in while production uses :mod:`pipelines.registry`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.jobs import JobKind, JobRequest
from pipelines.image_io import open_image
from pipelines.interface import Pipeline
from pipelines.model_plan import ModelStep
from pipelines.settings import ModelSettings

# kind -> (module, request class). Imported lazily: these modules load torch-heavy code.
REQUEST_CLASSES: dict[JobKind, tuple[str, str]] = {
    JobKind.IMAGINE: ("pipelines.vqgan_clip", "ImagineRequest"),
    JobKind.EDIT: ("pipelines.blended", "EditRequest"),
    JobKind.UPSCALE: ("pipelines.upscale", "UpscaleRequest"),
}


@dataclass(frozen=True)
class PreparedJob:
    pipeline: Pipeline
    request: Any


class PipelineSource(Protocol):
    def model_steps(self, kinds: Iterable[JobKind]) -> list[ModelStep]:
        """The models to load before the first job, one step each (run them off the loop)."""

    def preload(self, kinds: Iterable[JobKind]) -> None:
        """Load models once, before the first job (blocking; call it off the event loop)."""

    def prepare(self, job: JobRequest) -> PreparedJob:
        """The pipeline and its request object (blocking; runs on the worker thread).

        Raises :class:`pipelines.interface.InvalidRequest` for input the pipeline refuses.
        """


def decode_images(images: dict[str, bytes | list[bytes]]) -> dict[str, Any]:
    """Open every input image with the shared safe opener; list fields stay lists."""
    decoded: dict[str, Any] = {}
    for name, value in images.items():
        what = name.replace("_", " ")
        if isinstance(value, list):
            decoded[name] = [open_image(data, what=what) for data in value]
        else:
            decoded[name] = open_image(value, what=what)
    return decoded


class RegistrySource:
    """The real pipelines, loaded once per process by :func:`pipelines.registry.load_pipeline`."""

    def __init__(self, settings: ModelSettings, *, private: bool = False) -> None:
        self.settings = settings
        # Models of its own rather than the process-wide shared ones: two worker threads on one
        # device must not drive one pipeline object at the same time.
        self.private = private
        self._own: dict[JobKind, Pipeline] = {}

    def model_steps(self, kinds: Iterable[JobKind] = tuple(JobKind)) -> list[ModelStep]:
        from pipelines.model_plan import model_steps

        if self.private:
            return []  # its own copies are built by preload(), not the shared caches the steps warm
        return model_steps(self.settings, [kind.value for kind in kinds])

    def preload(self, kinds: Iterable[JobKind] = tuple(JobKind)) -> None:
        for kind in kinds:
            self._pipeline(kind)

    def _pipeline(self, kind: JobKind) -> Pipeline:
        from pipelines.registry import build_pipeline, load_pipeline

        if not self.private:
            return load_pipeline(kind.value, self.settings)
        if kind not in self._own:
            self._own[kind] = build_pipeline(kind.value, self.settings)
        return self._own[kind]

    def prepare(self, job: JobRequest) -> PreparedJob:
        module_name, class_name = REQUEST_CLASSES[job.kind]
        request_class = getattr(importlib.import_module(module_name), class_name)
        request = request_class(**job.params, **decode_images(job.images))
        return PreparedJob(self._pipeline(job.kind), request)
