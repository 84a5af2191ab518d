"""A deterministic CPU stand-in for the real pipelines, for tests and benchmarks (not for users).

It follows the pipeline calling convention exactly (progress hook, cancellation polled every step,
:class:`Cancelled` carrying the newest image, ranked results) and has the failure modes the
scheduler must survive: an ordinary exception, an out-of-memory error and an invalid request, each
at a chosen step. Its images depend only on the seed (and the init image, when given).

It burns CPU the way a real pipeline does: in torch matrix products, which release the GIL, so the
event loop keeps running while it works. ``work = "sleep"`` waits instead, for tests that only
need time to pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from bot.jobs import JobKind, JobRequest
from bot.pipeline_source import PreparedJob, decode_images
from pipelines.image_io import pil_to_tensor, tensor_to_pil
from pipelines.interface import (
    CancelCheck,
    Cancelled,
    InvalidRequest,
    PipelineResult,
    ProgressCallback,
    RankedImage,
    never_cancel,
    no_progress,
)
from pipelines.model_plan import ModelStep

FAILURES = ("error", "oom", "invalid")


@dataclass(frozen=True)
class StandInRequest:
    steps: int = 10
    seed: int = 0
    candidates: int = 1
    preview_every: int = 1
    # Failure injection: raise at the start of this step (1-based).
    fail: str | None = None
    fail_at_step: int = 1
    # Overrides the pipeline's configured time per step.
    step_seconds: float | None = None
    init_image: Image.Image | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InvalidRequest(f"steps must be at least 1, got {self.steps}")
        if self.fail is not None and self.fail not in FAILURES:
            raise InvalidRequest(f"fail must be one of {', '.join(FAILURES)}")


class StandInPipeline:
    def __init__(self, step_seconds: float = 0.05, image_size: int = 64, work: str = "cpu") -> None:
        self.step_seconds = step_seconds
        self.image_size = image_size
        self.work = work
        self.calls = 0
        self.thread_idents: list[int] = []

    def __call__(
        self,
        request: StandInRequest,
        on_progress: ProgressCallback = no_progress,
        should_cancel: CancelCheck = never_cancel,
    ) -> PipelineResult:
        import threading

        self.calls += 1
        self.thread_idents.append(threading.get_ident())
        generator = torch.Generator().manual_seed(request.seed)
        size = self.image_size
        if request.init_image is not None:
            start = pil_to_tensor(request.init_image.resize((size, size)))[0]
        else:
            start = torch.rand(3, size, size, generator=generator)
        target = torch.rand(3, size, size, generator=generator)
        state = start.clone()
        latest: Image.Image | None = None
        step_seconds = self.step_seconds if request.step_seconds is None else request.step_seconds
        for step in range(1, request.steps + 1):
            if should_cancel():
                raise Cancelled(step - 1, request.steps, latest)
            if request.fail is not None and step == request.fail_at_step:
                _fail(request.fail, step)
            self._spend(step_seconds)
            # Move a fixed fraction toward the target: deterministic, and visibly changing.
            state = state + (target - state) / (request.steps - step + 1)
            if step % request.preview_every == 0 or step == request.steps:
                latest = tensor_to_pil(state)
                on_progress(step, request.steps, latest)
        images = []
        for index in range(request.candidates):
            tint = torch.full((3, 1, 1), index / max(request.candidates, 1) * 0.2)
            image = tensor_to_pil((state + tint).clamp(0, 1))
            # Best first: scores strictly decrease with rank.
            images.append(RankedImage(image, index + 1, 1.0 - index * 0.1, request.seed + index))
        return PipelineResult(images, settings={"steps": request.steps, "seed": request.seed})

    def _spend(self, seconds: float) -> None:
        if seconds <= 0:
            return
        deadline = time.perf_counter() + seconds
        if self.work == "sleep":
            time.sleep(seconds)
            return
        # Matrix products release the GIL for their whole duration (~1-2 ms each here), as the
        # convolutions and attention of the real pipelines do.
        a = torch.rand(384, 384)
        while time.perf_counter() < deadline:
            a = torch.tanh(a @ a)


def _fail(mode: str, step: int) -> None:
    if mode == "oom":
        raise torch.OutOfMemoryError(
            f"CUDA out of memory at step {step}. Tried to allocate 2.00 GiB (stand-in)"
        )
    if mode == "invalid":
        raise InvalidRequest(f"the stand-in refused step {step} (invalid on purpose)")
    raise RuntimeError(f"stand-in failure at step {step}")


_FIELDS = {"steps", "seed", "candidates", "preview_every", "fail", "fail_at_step", "step_seconds"}


class StandInSource:
    """Serves :class:`StandInPipeline` for imagine and edit; ignores parameters it does not know.

    Real requests carry prompts, sizes and so on; the stand-in keeps only what it understands, so
    the same JobRequest the cogs build can run on it. Upscale jobs run the real upscaler on its
    ``tiny`` preset (a small random-weight RRDBNet on the CPU, well under a second for a result
    tile), so their files have the real sizes.
    """

    def __init__(self, pipeline: StandInPipeline | None = None) -> None:
        self.pipeline = pipeline or StandInPipeline()
        self.prepared_on: list[int] = []

    def model_steps(self, kinds: Iterable[JobKind] = tuple(JobKind)) -> list[ModelStep]:
        """No models."""
        return []

    def preload(self, kinds: Iterable[JobKind] = tuple(JobKind)) -> None:
        """Nothing to load."""

    def prepare(self, job: JobRequest) -> PreparedJob:
        import threading

        self.prepared_on.append(threading.get_ident())
        if job.kind is JobKind.UPSCALE:
            return _tiny_upscale(job)
        params: dict[str, Any] = {k: v for k, v in job.params.items() if k in _FIELDS}
        if job.kind is JobKind.EDIT:
            params.setdefault("candidates", 4)
        images = decode_images(job.images)
        init = images.get("init_image", images.get("image"))
        return PreparedJob(self.pipeline, StandInRequest(**params, init_image=init))


def _tiny_upscale(job: JobRequest) -> PreparedJob:
    from pipelines.registry import load_pipeline
    from pipelines.settings import ModelSettings
    from pipelines.upscale import UpscaleRequest

    pipeline = load_pipeline("upscale", ModelSettings(preset="tiny", device="cpu"))
    return PreparedJob(pipeline, UpscaleRequest(**job.params, **decode_images(job.images)))
