"""What the scheduler tells its listeners (the publisher, tests) about jobs, on the event loop.

Listeners are called synchronously on the loop and must not block; a listener that raises is
logged and ignored, so nothing a listener does can change a job's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from bot.jobs import JobKind, JobStatus
from bot.store import ResultRecord


@dataclass(frozen=True)
class JobInfo:
    """The facts about a job every event carries."""

    job_id: int
    kind: JobKind
    user_id: int
    channel_id: int
    params: dict = field(hash=False, compare=False)


@dataclass(frozen=True)
class JobQueued:
    job: JobInfo
    position: int  # 1 = next to run (or running)
    eta_seconds: float | None


@dataclass(frozen=True)
class QueueMoved:
    """Positions and ETAs of every waiting job after the queue changed, keyed by job id."""

    waiting: dict[int, tuple[int, float | None]]


@dataclass(frozen=True)
class JobStarted:
    job: JobInfo
    total_steps: int | None
    started_monotonic: float


@dataclass(frozen=True)
class JobProgress:
    """The newest progress of the running job; older snapshots were dropped, not queued."""

    job: JobInfo
    step: int
    total: int
    preview: Image.Image | None  # the newest preview so far (may come from an earlier step)
    preview_step: int | None  # which step ``preview`` shows, to tell whether it changed
    eta_seconds: float | None
    started_monotonic: float


@dataclass(frozen=True)
class JobFinished:
    job: JobInfo
    status: JobStatus  # DONE, FAILED or CANCELLED (re-queued jobs do not finish)
    error: str | None
    results: list[ResultRecord]
    last_preview: Image.Image | None  # for a cancelled job: where it got to
    step: int | None
    total: int | None
    started_monotonic: float | None
    # The image safety check flagged a result: the progress message drops its last preview.
    hide_preview: bool = False


@dataclass(frozen=True)
class JobRequeued:
    """The running job stopped for a shutdown; it will run again after the restart."""

    job: JobInfo


SchedulerEvent = JobQueued | QueueMoved | JobStarted | JobProgress | JobFinished | JobRequeued


class SchedulerListener(Protocol):
    def __call__(self, event: SchedulerEvent) -> None: ...
