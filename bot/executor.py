"""The contract between the scheduler and whatever runs jobs: local worker threads or GPU workers.

The scheduler keeps fairness, limits, ETAs, the store and the publisher; an executor only runs
what it is handed. It offers a number of free slots, launches one job per slot, cancels on request
and, after a restart, says what became of jobs that were running when the bot stopped.

A launched job is a :class:`Run`: an async iterator yielding the newest :class:`Progress` (older
snapshots are dropped, never queued, except one whose preview carries the self-mask, which is
shown once and so must reach the publisher) and then exactly one :class:`Outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from PIL import Image

from bot.jobs import JobKind
from bot.store import NewResult, QueuedJob
from pipelines.interface import attached_mask

StopReason = Literal["cancel", "shutdown"]


class ClusterRefused(RuntimeError):
    """This bot must not use its executor as configured (e.g. a second bot on one queue);
    ``str(exc)`` says why, in one line for the server owner."""


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    preview: Image.Image | None  # the newest preview so far (may come from an earlier step)
    preview_step: int | None
    # When the executor learnt of this update (time.monotonic), for latency figures.
    posted_monotonic: float = 0.0


@dataclass
class Outcome:
    # "done" | "failed" | "cancelled" | "stopped" (for a shutdown: run again later)
    # | "interrupted" (the worker died: counts one interruption)
    status: str
    results: list[NewResult] = field(default_factory=list)
    error: str | None = None
    preview: Image.Image | None = None
    preview_path: Path | None = None
    step: int | None = None
    total: int | None = None
    seconds: float = 0.0
    # Called once the scheduler has recorded the outcome in SQLite (a remote executor then drops
    # its copy of the results); never before, so a crash in between loses nothing.
    after_commit: Callable[[], Awaitable[None]] | None = None


class Run:
    """One launched job: newest progress, then one outcome. Thread-safe to post into.

    Posting never blocks and schedules at most one wake-up of the consumer at a time, so a
    producer faster than the loop cannot build a backlog.
    """

    def __init__(self, job_id: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.job_id = job_id
        self._loop = loop or asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._pending: Progress | None = None
        # A snapshot carrying the self-mask that a newer one would otherwise have replaced.
        self._held: Progress | None = None
        self._outcome: Outcome | None = None
        self._wake_scheduled = False
        # Newest progress posted, readable at any time (the queue view shows it).
        self.latest: Progress | None = None

    def post(self, progress: Progress) -> None:
        with self._lock:
            if self._outcome is not None:
                return
            waiting = self._pending
            if (waiting is not None and self._held is None
                    and waiting.preview is not progress.preview
                    and attached_mask(waiting.preview) is not None):
                self._held = waiting
            self._pending = progress
            self.latest = progress
        self._schedule_wake()

    def finish(self, outcome: Outcome) -> None:
        with self._lock:
            if self._outcome is not None:
                return  # a run ends once
            self._outcome = outcome
            self._pending = self._held = None  # older than the outcome
        self._schedule_wake()

    @property
    def finished(self) -> bool:
        return self._outcome is not None

    def _schedule_wake(self) -> None:
        with self._lock:
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        # A closed loop means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake_up)

    def _wake_up(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        self._wake.set()

    async def __aiter__(self) -> AsyncIterator[Progress | Outcome]:
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                held, self._held = self._held, None
                progress, self._pending = self._pending, None
                outcome = self._outcome
            if outcome is not None:
                yield outcome
                return
            for snapshot in (held, progress):
                if snapshot is not None:
                    yield snapshot


@dataclass(frozen=True)
class RunningRef:
    """A job the store says was running when the bot last stopped."""

    job: QueuedJob


@dataclass
class Recovered:
    """What an executor found out about a job that was running when the bot stopped.

    ``run`` is set when the job is still running somewhere (the scheduler re-attaches to it) or
    finished while the bot was down (the run yields its outcome at once). ``run = None`` means
    the executor knows nothing of it: it counts one interruption, as after any crash.
    """

    job_id: int
    run: Run | None


class Executor(Protocol):
    # Shown by /queue when no job can run (e.g. no GPU worker alive); None when all is well.
    def unavailable_reason(self) -> str | None: ...

    async def preload(self, kinds: Iterable[JobKind]) -> None:
        """Load models once before the first job, where they run (nothing for remote workers)."""

    async def connect(self, wake: Callable[[], None]) -> None:
        """Get ready to launch; call ``wake`` whenever slots may have freed or appeared."""

    def free_slots(self) -> int: ...

    def launch(self, job: QueuedJob) -> Run:
        """Start ``job`` in a free slot; the job is already marked running in the store."""

    async def cancel(self, job_id: int, reason: StopReason) -> bool:
        """Ask a launched job to stop at its next step. False if the executor does not have it."""

    async def recover(self, refs: list[RunningRef]) -> list[Recovered]: ...

    async def close(self) -> None:
        """Release threads and connections; launched runs have ended or been given up."""
