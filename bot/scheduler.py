"""The job scheduler: fair queueing on the event loop, execution handed to an executor.

Everything public here is called on the event loop and never blocks it: the store is async and
the pipelines run wherever the executor runs them (:class:`bot.local_executor.LocalExecutor`'s
worker threads by default, GPU worker processes through PostgreSQL with
:class:`bot.cluster.executor.PostgresExecutor`). Fairness, limits, ETAs, the store and the
publisher all stay here, whichever executor runs the jobs. Jobs are persisted before
:meth:`Scheduler.submit` returns, so "queued" is a promise the bot keeps across a crash.

Positions count the jobs still to run up to and including this one: running jobs come first (a
single running job is position 1), and a waiting job's position is one more than the number of
jobs ahead of it (the running ones included). ETAs are seconds until the job *finishes*, or
``None`` while there is no timing history for some job ahead of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from bot.config import MAX_SEED, SchedulerConfig, TimelapseConfig
from bot.eta import EtaEstimator, WorkKey, steps_of, work_key
from bot.events import (
    JobFinished,
    JobInfo,
    JobProgress,
    JobQueued,
    JobRequeued,
    JobStarted,
    QueueMoved,
    SchedulerEvent,
    SchedulerListener,
)
from bot.execution import OOM_ADVICE, is_out_of_memory
from bot.executor import Executor, Outcome, Progress, Run, RunningRef, StopReason
from bot.fair_queue import FairQueue
from bot.jobs import PRELOADED_KINDS, JobKind, JobRequest, JobStatus
from bot.pipeline_source import PipelineSource
from bot.safety import ALL_WITHHELD, ImageSafety
from bot.store import QueuedJob, RecoveryReport, ResultRecord, Store

log = logging.getLogger(__name__)

SAFETY_CHECK_FAILED = (
    "the image safety check could not check the results, so none were posted; try again later"
)

__all__ = ["OOM_ADVICE", "CancelOutcome", "QueueSnapshot", "Scheduler", "SubmitRefused",
           "is_out_of_memory"]


class SubmitRefused(Exception):
    """The job was not queued. ``str(exc)`` is the reason, written for the user."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "user_limit" | "global_limit" | "shutting_down"


class CancelOutcome(str, Enum):
    REMOVED = "removed"  # it was waiting; it will never run
    STOPPING = "stopping"  # it is running; it stops at the pipeline's next step
    NOT_FOUND = "not_found"
    ALREADY_FINISHED = "already_finished"


@dataclass(frozen=True)
class Submitted:
    job_id: int
    position: int
    eta_seconds: float | None
    # Why it cannot start soon although it is safely queued (e.g. the GPU workers are unreachable).
    notice: str | None = None
    # The models were still loading when it was queued: it starts once they are ready.
    models_loading: bool = False


@dataclass(frozen=True)
class QueueEntry:
    job_id: int
    user_id: int
    channel_id: int
    kind: JobKind
    position: int
    eta_seconds: float | None


@dataclass(frozen=True)
class RunningEntry:
    job_id: int
    user_id: int
    channel_id: int
    kind: JobKind
    step: int
    total: int | None
    elapsed_seconds: float
    eta_seconds: float | None
    stopping: bool


@dataclass(frozen=True)
class QueueSnapshot:
    running: RunningEntry | None  # the first job started of those running
    queued: list[QueueEntry]
    # The other running jobs, in the order they started (more than one device or GPU worker).
    also_running: tuple[RunningEntry, ...] = ()
    # Why waiting jobs cannot start now (e.g. no GPU worker is alive), for /queue.
    notice: str | None = None

    @property
    def all_running(self) -> list[RunningEntry]:
        return ([self.running] if self.running else []) + list(self.also_running)

    @property
    def length(self) -> int:
        """Jobs waiting or running."""
        return len(self.queued) + len(self.all_running)

    def for_user(self, user_id: int) -> list[QueueEntry]:
        return [entry for entry in self.queued if entry.user_id == user_id]

    def position_of(self, job_id: int) -> int | None:
        for position, entry in enumerate(self.all_running, start=1):
            if entry.job_id == job_id:
                return position
        for entry in self.queued:
            if entry.job_id == job_id:
                return entry.position
        return None


@dataclass(frozen=True)
class _Waiting:
    job: QueuedJob
    work: WorkKey


def _waiting(job: QueuedJob) -> _Waiting:
    return _Waiting(job, work_key(job.kind, job.params))


@dataclass
class _Running:
    """A launched job, as the scheduler tracks it on the event loop."""

    info: JobInfo
    total: int | None
    started_monotonic: float = field(default_factory=time.monotonic)
    stop_reason: StopReason | None = None
    run: Run | None = None
    task: asyncio.Task | None = None

    @property
    def step(self) -> int:
        latest = self.run.latest if self.run is not None else None
        return latest.step if latest is not None else 0

    @property
    def current_total(self) -> int | None:
        latest = self.run.latest if self.run is not None else None
        return latest.total if latest is not None else self.total


def _info(job: QueuedJob) -> JobInfo:
    return JobInfo(job.id, job.kind, job.user_id, job.channel_id, job.params)


class Scheduler:
    def __init__(
        self,
        store: Store,
        source: PipelineSource | None,
        config: SchedulerConfig,
        *,
        rng: random.Random | None = None,
        executor: Executor | None = None,
        timelapse: TimelapseConfig | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.config = config
        self.eta = EtaEstimator(config.eta_window)
        if executor is None:
            if source is None:
                raise ValueError("a scheduler needs a pipeline source or an executor")
            from bot.local_executor import LocalExecutor

            # ``timelapse``: where /imagine jobs keep their preview frames (None keeps none).
            executor = LocalExecutor(store, [source], niceness=config.worker_niceness,
                                     timelapse=timelapse)
        self.executor: Executor = executor
        self._rng = rng or random.Random()
        self._queue: FairQueue[_Waiting] = FairQueue()
        # Launched jobs by id, in the order they started.
        self._running: dict[int, _Running] = {}
        self._launching = 0  # popped from the queue, not yet handed to the executor
        self._listeners: list[SchedulerListener] = []
        self._submit_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._dispatcher: asyncio.Task | None = None
        self._accepting = False
        self._stopping = False
        # Jobs are held (queued, not started) while the models load after connecting.
        self._models_ready = asyncio.Event()
        self._models_ready.set()
        self._load_remaining: Callable[[], float | None] = lambda: 0.0
        # The image safety check of finished results; None posts them unchecked.
        self.image_safety: ImageSafety | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def add_listener(self, listener: SchedulerListener) -> None:
        self._listeners.append(listener)

    async def preload(self) -> None:
        """Load the models once, before the first job (the executor decides where)."""
        await self.executor.preload(PRELOADED_KINDS)

    async def start(self) -> RecoveryReport:
        """Recover from the last run, rebuild the queue in its stored order, start dispatching.

        Jobs the store says were running are first offered to the executor: one still running
        somewhere (a GPU worker outlives the bot) is followed again, one that finished meanwhile
        is collected; the rest count one interruption, as after any crash.
        """
        await self.executor.connect(self.wake)
        was_running = [job for job in await self.store.pending_jobs()
                       if job.status is JobStatus.RUNNING]
        recovered = (await self.executor.recover([RunningRef(job) for job in was_running])
                     if was_running else [])
        runs = {item.job_id: item.run for item in recovered if item.run is not None}
        report = await self.store.recover(keep_running=set(runs))
        if report.requeued:
            log.warning("re-queued job(s) interrupted by the last shutdown: %s", report.requeued)
        if report.failed:
            log.warning("failed job(s) interrupted twice: %s", report.failed)
        self._queue = FairQueue(
            current_round=await self.store.last_started_round(),
            last_run_round_by_user=await self.store.last_run_round_by_user(),
        )
        for job in await self.store.pending_jobs():
            if job.id not in runs:
                self._queue.push(job.id, job.user_id, job.fair_round, _waiting(job))
        self.eta.seed(
            (t.kind, t.params, t.seconds_per_step)
            for t in await self.store.recent_step_timings(self.config.eta_window * 4)
        )
        for job_id in report.failed:
            record = await self.store.get_job(job_id)
            if record is not None:
                info = JobInfo(job_id, record.request.kind, record.request.user_id,
                               record.request.channel_id, record.request.params)
                self._emit(JobFinished(info, JobStatus.FAILED, record.error, [], None, None, None,
                                       None))
        for job in was_running:
            run = runs.get(job.id)
            if run is not None:
                log.info("job %d is still running on a worker (or finished while the bot was "
                         "down); following it again", job.id)
                running = _Running(_info(job), steps_of(job.params), run=run)
                self._running[job.id] = running
                self._emit(JobStarted(running.info, running.total, running.started_monotonic))
                self._track(running, self._follow(job, running))
        positions = self._positions()
        for job_id, _user, waiting in self._queue:
            position, eta = positions[job_id]
            self._emit(JobQueued(_info(waiting.job), position, eta))
        self._accepting = True
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="faraday-dispatcher")
        self._update_idle()
        self._wakeup.set()
        return report

    async def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop taking jobs; running jobs stop at their next step and go back in the queue."""
        grace = self.config.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self._accepting = False
        self._stopping = True
        for running in list(self._running.values()):
            running.stop_reason = running.stop_reason or "shutdown"
            try:
                await self.executor.cancel(running.info.job_id, "shutdown")
            except Exception:
                log.exception("could not ask job %d to stop", running.info.job_id)
        tasks = [r.task for r in self._running.values() if r.task is not None and not r.task.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for running in list(self._running.values()):
                if running.task in pending:
                    log.warning("job %d did not stop within %.0f s; it will be re-queued on the "
                                "next start", running.info.job_id, grace)
                    await self.store.requeue(running.info.job_id)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        await self.executor.close()

    async def wait_idle(self) -> None:
        """Until nothing is running or waiting (tests and benchmarks)."""
        await self._idle.wait()

    def wake(self) -> None:
        """Look again for jobs to start (the executor calls it when slots appear)."""
        self._wakeup.set()

    @property
    def worker(self) -> Any:
        """The first local worker thread (local executor only)."""
        return self.executor.slots[0].worker  # type: ignore[attr-defined]

    @property
    def worker_thread_ident(self) -> int | None:
        return self.worker.ident

    def hold_for_models(self, remaining_seconds: Callable[[], float | None]) -> None:
        """Start no job until :meth:`models_ready`; ETAs add ``remaining_seconds()`` meanwhile."""
        self._models_ready.clear()
        self._load_remaining = remaining_seconds

    def models_ready(self) -> None:
        self._models_ready.set()
        self._load_remaining = lambda: 0.0
        self._wakeup.set()

    @property
    def models_loading(self) -> bool:
        return not self._models_ready.is_set()

    def refresh_positions(self) -> None:
        """Tell listeners every waiting job's position and ETA again (the load time changed)."""
        self._emit_queue_moved()

    # -- submitting and cancelling -----------------------------------------------------------

    async def submit(self, request: JobRequest) -> Submitted:
        if not self._accepting:
            raise SubmitRefused(
                "shutting_down", "The bot is restarting and not taking new jobs; try again soon."
            )
        async with self._submit_lock:
            self._check_limits(request.user_id)
            if request.params.get("seed") is None:
                # Fixed before persisting, so a job re-run after a crash gives the same images.
                request = replace(
                    request, params={**request.params, "seed": self._rng.randint(0, MAX_SEED)}
                )
            fair_round = self._queue.assign_round(request.user_id)
            record = await self.store.insert_job(request, fair_round)
            job = QueuedJob(record.id, request.kind, request.user_id, request.channel_id,
                            fair_round, request.params, JobStatus.QUEUED, request.guild_id,
                            request.parent_result_id, record.stored_images)
            self._queue.push(job.id, job.user_id, fair_round, _waiting(job))
            position, eta = self._positions()[job.id]
        log.info("job %d queued (%s, user %d, position %d)", job.id, job.kind.value,
                 job.user_id, position)
        self._emit(JobQueued(_info(job), position, eta))
        if position < len(self._queue) + len(self._running):
            self._emit_queue_moved()  # fairness put it ahead of someone; they moved back
        self._update_idle()
        self._wakeup.set()
        return Submitted(job.id, position, eta, self.executor.unavailable_reason(),
                         models_loading=self.models_loading)

    def _check_limits(self, user_id: int) -> None:
        in_line = len(self._queue) + len(self._running)
        cap = self.config.max_queued_per_user
        if self._queue.count_for_user(user_id) >= cap:
            positions = self._positions()
            mine = [positions[job_id][0] for job_id, user, _ in self._queue if user == user_id]
            where = ", ".join(str(p) for p in mine)
            raise SubmitRefused(
                "user_limit",
                f"You already have {len(mine)} job(s) waiting (the limit is {cap} per person), at "
                f"position(s) {where} of {in_line}. Try again when one has started, or "
                "cancel one with /cancel.",
            )
        total_cap = self.config.max_queued_total
        if len(self._queue) >= total_cap:
            # Where fairness would have put it, which for someone with nothing waiting is often
            # well ahead of the end of the line.
            position = self._queue.ahead_of_new(user_id) + len(self._running) + 1
            raise SubmitRefused(
                "global_limit",
                f"The queue is full: {len(self._queue)} jobs are waiting (the limit is "
                f"{total_cap}), so a new job would be at position {position} of "
                f"{in_line + 1}. Try again in a few minutes.",
            )

    async def cancel(self, job_id: int) -> CancelOutcome:
        running = self._running.get(job_id)
        if running is not None:
            if running.stop_reason is None:
                running.stop_reason = "cancel"
            if running.run is not None:
                await self.executor.cancel(job_id, running.stop_reason)
            log.info("job %d: cancellation requested while running", job_id)
            return CancelOutcome.STOPPING
        waiting = self._queue.remove(job_id)
        if waiting is not None:
            job = waiting.job
            await self.store.finish_job(job_id, JobStatus.CANCELLED)
            log.info("job %d cancelled while waiting", job_id)
            self._emit(JobFinished(_info(job), JobStatus.CANCELLED, None, [], None, None, None,
                                   None))
            self._emit_queue_moved()
            self._update_idle()
            return CancelOutcome.REMOVED
        status = await self.store.job_status(job_id)
        if status is None:
            return CancelOutcome.NOT_FOUND
        if status.finished:
            return CancelOutcome.ALREADY_FINISHED
        # Pending in the store but unknown here: it belongs to a scheduler not started yet.
        return CancelOutcome.NOT_FOUND

    # -- queue facts -------------------------------------------------------------------------

    def _remaining(self, running: _Running) -> float | None:
        total = running.current_total
        if total is None:
            return None
        elapsed = time.monotonic() - running.started_monotonic
        return self.eta.remaining_seconds(running.info.kind, running.info.params, running.step,
                                          total, elapsed)

    def _positions(self) -> dict[int, tuple[int, float | None]]:
        """Position and ETA of every waiting job, in one pass over the run order.

        Each waiting job goes to the slot that frees first, as the dispatcher will hand it out;
        with one slot this is a running clock of durations.
        """
        # Called on every queue change with possibly hundreds waiting: most jobs share a few
        # work keys, so each key's duration is looked up once per pass.
        out: dict[int, tuple[int, float | None]] = {}
        durations: dict[WorkKey, float | None] = {}
        position = len(self._running) + 1
        busy = [self._remaining(running) for running in self._running.values()]
        idle = max(0, self.executor.free_slots() - self._launching)
        known = all(t is not None for t in busy) and (busy or idle)
        # While the models load, no slot frees before they are ready.
        start = self._load_remaining() if self.models_loading else 0.0
        known = known and start is not None
        free_at: list[float] = sorted([t for t in busy if t is not None] + [start or 0.0] * idle)
        for job_id, _user, waiting in self._queue:
            eta: float | None = None
            if known:
                work = waiting.work
                if work not in durations:
                    durations[work] = self.eta.key_seconds(work)
                duration = durations[work]
                if duration is None:
                    known = False
                else:
                    eta = heapq.heappop(free_at) + duration
                    heapq.heappush(free_at, eta)
            out[job_id] = (position, eta)
            position += 1
        return out

    def snapshot(self) -> QueueSnapshot:
        positions = self._positions()
        queued = [
            QueueEntry(job_id, w.job.user_id, w.job.channel_id, w.job.kind, *positions[job_id])
            for job_id, _user, w in self._queue
        ]
        entries = [
            RunningEntry(
                job_id=running.info.job_id,
                user_id=running.info.user_id,
                channel_id=running.info.channel_id,
                kind=running.info.kind,
                step=running.step,
                total=running.current_total,
                elapsed_seconds=time.monotonic() - running.started_monotonic,
                eta_seconds=self._remaining(running),
                stopping=running.stop_reason is not None,
            )
            for running in self._running.values()
        ]
        notice = self.executor.unavailable_reason() if queued else None
        return QueueSnapshot(entries[0] if entries else None, queued, tuple(entries[1:]), notice)

    # -- events ------------------------------------------------------------------------------

    def _emit(self, event: SchedulerEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a scheduler listener failed on %s", type(event).__name__)

    def _emit_queue_moved(self) -> None:
        if self._listeners and len(self._queue):
            self._emit(QueueMoved(self._positions()))

    def _update_idle(self) -> None:
        if not self._running and not len(self._queue) and not self._launching:
            self._idle.set()
        else:
            self._idle.clear()

    # -- running jobs ------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        # An executor whose slots come and go (GPU workers) is asked again now and then.
        poll = getattr(self.executor, "poll_interval_seconds", None)
        while True:
            if poll is None:
                await self._wakeup.wait()
            else:
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow the
                # cancellation that shutdown() sends when the wait ends at the same moment.
                waiter = asyncio.ensure_future(self._wakeup.wait())
                try:
                    await asyncio.wait({waiter}, timeout=poll)
                finally:
                    waiter.cancel()
            self._wakeup.clear()
            if self.models_loading:
                continue  # models_ready() wakes this loop again
            while (not self._stopping and len(self._queue)
                   and self.executor.free_slots() - self._launching > 0):
                popped = self._queue.pop()
                assert popped is not None
                job = popped[1].job
                # Registered before any await, so a cancel arriving meanwhile finds it running.
                running = _Running(_info(job), steps_of(job.params))
                self._running[job.id] = running
                self._launching += 1
                self._track(running, self._run(job, running))

    def _track(self, running: _Running, work: Any) -> None:
        job_id = running.info.job_id

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the scheduler failed around job %d; carrying on", job_id)
            finally:
                if self._running.get(job_id) is running:
                    del self._running[job_id]
                self._update_idle()
                self._wakeup.set()

        running.task = asyncio.create_task(guarded(), name=f"faraday-run-{job_id}")

    async def _run(self, job: QueuedJob, running: _Running) -> None:
        info = running.info
        try:
            await self.store.mark_running(info.job_id, running.total)
            log.info("job %d started (%s, user %d)", info.job_id, info.kind.value, info.user_id)
            running.started_monotonic = time.monotonic()
            running.run = self.executor.launch(job)
        finally:
            self._launching -= 1
        self._emit(JobStarted(info, running.total, running.started_monotonic))
        self._emit_queue_moved()
        if running.stop_reason is not None:  # cancelled or shut down while it was starting
            await self.executor.cancel(info.job_id, running.stop_reason)
        await self._follow(job, running)

    async def _follow(self, job: QueuedJob, running: _Running) -> None:
        assert running.run is not None
        async for event in running.run:
            if isinstance(event, Progress):
                self._on_progress(running, event)
            else:
                await self._finish(job, running, event)

    def _on_progress(self, running: _Running, progress: Progress) -> None:
        if self._running.get(running.info.job_id) is not running:
            return  # the job has ended; its final event already went out
        elapsed = time.monotonic() - running.started_monotonic
        eta = self.eta.remaining_seconds(running.info.kind, running.info.params, progress.step,
                                         progress.total, elapsed)
        self._emit(JobProgress(running.info, progress.step, progress.total, progress.preview,
                               progress.preview_step, eta, running.started_monotonic))

    async def _finish(self, job: QueuedJob, running: _Running, outcome: Outcome) -> None:
        await self._record(job, running, outcome)
        if outcome.after_commit is not None:
            try:
                await outcome.after_commit()
            except Exception:
                log.exception("job %d: cleaning up after its outcome failed", job.id)

    async def _record(self, job: QueuedJob, running: _Running, outcome: Outcome) -> None:
        info = running.info
        status_now = await self.store.job_status(info.job_id)
        if status_now is None or status_now.finished:
            # Collected twice (a NOTIFY and the backstop poll, or a recovery): once is enough.
            log.info("job %d already finished; ignoring a second outcome", info.job_id)
            self._running.pop(info.job_id, None)
            return
        results: list[ResultRecord] = []
        withheld = 0
        hide_preview = screen_failed = False
        safety = self.image_safety
        if outcome.status == "done" and safety is not None and safety.wanted(info.channel_id):
            # Checked off the loop, before anything is recorded or posted.
            try:
                outcome.results, withheld = await safety.screen_results(
                    outcome.results, lambda rank: self.store.paths.result_path(info.job_id, rank))
                hide_preview = withheld > 0 or any(r.flagged for r in outcome.results)
            except Exception:
                # Unchecked is not safe: post nothing of it (previews included) and say why,
                # rather than leave the job "running" forever.
                log.exception("job %d: the image safety check failed; failing the job",
                              info.job_id)
                unchecked = [r.path for r in outcome.results]
                await asyncio.to_thread(_remove_files, unchecked)
                outcome.results, hide_preview, screen_failed = [], True, True
            if hide_preview:
                # The previews and the timelapse frames show the flagged image forming.
                await asyncio.to_thread(shutil.rmtree, self.store.paths.frames_dir(info.job_id),
                                        True)
            if not outcome.results:
                outcome.status = "failed"
                outcome.error = SAFETY_CHECK_FAILED if screen_failed else ALL_WITHHELD
        if outcome.status == "done":
            results = await self.store.complete_job(info.job_id, outcome.results, withheld)
            # Per step the job asked for, as estimates of waiting jobs (and the history the store
            # gives back after a restart) count them; the pipeline's own count may differ.
            asked = steps_of(info.params) or outcome.total
            if asked and outcome.seconds > 0:
                self.eta.record(info.kind, info.params, outcome.seconds / asked)
            status = JobStatus.DONE
        elif outcome.status == "stopped":
            await self.store.requeue(info.job_id)
            self._running.pop(info.job_id, None)
            if self._stopping:
                log.info("job %d stopped for shutdown; it will run again after the restart",
                         info.job_id)
                self._emit(JobRequeued(info))
            else:
                # A GPU worker shut down under it: back in line at its fair place.
                self._requeue_in_line(job)
            return
        elif outcome.status == "interrupted":
            if await self.store.interrupt(info.job_id):
                self._running.pop(info.job_id, None)
                log.warning("job %d was interrupted (its worker stopped answering); re-queued",
                            info.job_id)
                self._requeue_in_line(job)
                return
            log.warning("job %d was interrupted a second time; failing it", info.job_id)
            record = await self.store.get_job(info.job_id)
            outcome.error = record.error if record is not None else outcome.error
            status = JobStatus.FAILED
        elif outcome.status == "cancelled":
            await self.store.finish_job(info.job_id, JobStatus.CANCELLED,
                                        preview_path=outcome.preview_path)
            status = JobStatus.CANCELLED
        else:
            await self.store.finish_job(info.job_id, JobStatus.FAILED, outcome.error)
            status = JobStatus.FAILED
        self._running.pop(info.job_id, None)
        log.info("job %d %s", info.job_id, status.value)
        self._emit(JobFinished(info, status, outcome.error, results, outcome.preview,
                               outcome.step, outcome.total, running.started_monotonic,
                               hide_preview=hide_preview))
        # No QueueMoved here: the next job starts at once and reports the new positions then.

    def _requeue_in_line(self, job: QueuedJob) -> None:
        """Put a job back at its own fair round: the front of the line, as it had started."""
        self._queue.push(job.id, job.user_id, job.fair_round, _waiting(job))
        position, eta = self._positions()[job.id]
        self._emit(JobQueued(_info(job), position, eta))
        self._emit_queue_moved()
        self._wakeup.set()


def _remove_files(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def make_source(kind: str, models: Any, stand_in: Any, *, private: bool = False) -> PipelineSource:
    """The pipeline source the config asks for: ``"real"`` or ``"stand-in"`` (testing only).

    ``private`` gives the source models of its own, not shared with another source on the same
    settings (two worker threads on one device).
    """
    if kind == "stand-in":
        from bot.stand_in import StandInPipeline, StandInSource

        return StandInSource(StandInPipeline(stand_in.step_seconds, stand_in.image_size,
                                             stand_in.work))
    from bot.pipeline_source import RegistrySource

    return RegistrySource(models, private=private)


def make_executor(store: Store, config: Any) -> Executor:
    """GPU workers through PostgreSQL when ``[cluster] database_url`` is set; otherwise local
    worker threads, one per ``[models] devices`` entry."""
    if config.cluster.enabled:
        from bot.cluster.executor import PostgresExecutor

        return PostgresExecutor(store, config.cluster, timelapse=config.timelapse)
    from bot.local_executor import LocalExecutor

    return LocalExecutor.from_config(store, config)
