"""Running one job's pipeline, wherever it runs: a local worker thread or a GPU worker process.

:func:`execute` prepares the request, runs the pipeline with the progress and cancellation hooks,
and turns every way it can end into a plain :class:`Executed` with a message fit for the user's
channel (details go to the log). It blocks; call it off the event loop. It imports no discord.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from bot.jobs import JobKind, JobRequest
from bot.pipeline_source import PipelineSource
from pipelines.downloads import ModelFileError
from pipelines.interface import Cancelled, InvalidRequest, RankedImage

log = logging.getLogger(__name__)

OOM_ADVICE = {
    JobKind.IMAGINE: "try a smaller size or fewer cutouts (cutn)",
    JobKind.EDIT: "try fewer candidates or a smaller image",
    JobKind.UPSCALE: "the server owner can lower [upscale] tile_size in config.toml",
}

ProgressHook = Callable[[int, int, "Image.Image | None"], None]


@dataclass
class Executed:
    status: str  # "done" | "failed" | "stopped" (cancel or shutdown: the caller knows which)
    images: list[RankedImage] = field(default_factory=list)
    error: str | None = None
    step: int | None = None
    total: int | None = None
    latest: Image.Image | None = None  # newest image when it stopped, if the pipeline had one
    seconds: float = 0.0


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing is best effort; the job has failed already
        log.debug("could not empty the CUDA cache", exc_info=True)


def execute(
    job_id: int,
    request: JobRequest,
    source: PipelineSource,
    on_progress: ProgressHook,
    should_stop: Callable[[], bool],
) -> Executed:
    """Prepare and run one job. Never raises for anything the pipeline does."""
    started = time.monotonic()
    if should_stop():
        return Executed("stopped", step=0)
    try:
        prepared = source.prepare(request)
        result = prepared.pipeline(prepared.request, on_progress, should_stop)
    except Cancelled as exc:
        return Executed("stopped", step=exc.step, total=exc.total, latest=exc.latest)
    except InvalidRequest as exc:
        log.info("job %d refused by the pipeline: %s", job_id, exc)
        return Executed("failed", error=str(exc))
    except ModelFileError as exc:
        # The message names the server's files and settings: for the owner's log, not the channel.
        log.error("job %d: the models could not be loaded: %s", job_id, exc)
        return Executed(
            "failed",
            error="the bot's models could not be loaded; the server owner can see why in the "
            "bot's log.",
        )
    except Exception as exc:
        if is_out_of_memory(exc):
            log.warning("job %d ran out of memory", job_id, exc_info=True)
            _free_accelerator_memory()
            return Executed("failed", error=f"ran out of memory; {OOM_ADVICE[request.kind]}.")
        log.exception("job %d failed in the pipeline", job_id)
        return Executed(
            "failed",
            error=f"something went wrong while making the image ({type(exc).__name__}); the "
            "details are in the bot's log.",
        )
    return Executed("done", images=list(result.images), seconds=time.monotonic() - started)
