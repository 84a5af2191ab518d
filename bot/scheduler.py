"""The single-GPU job scheduler: fair queueing on the event loop, execution on one worker thread.

Everything public here is called on the event loop and never blocks it: the store is async, the
pipeline runs on :class:`bot.worker.WorkerThread`, and progress comes back through a
latest-only mailbox. Jobs are persisted before :meth:`Scheduler.submit` returns, so "queued" is a
promise the bot keeps across a crash.

Positions count the jobs still to run up to and including this one: the running job is position 1,
and a waiting job's position is one more than the number of jobs ahead of it (the running one
included). ETAs are seconds until the job *finishes*, or ``None`` while there is no timing history
for some job ahead of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from PIL import Image

from bot.config import MAX_SEED, SchedulerConfig
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
from bot.fair_queue import FairQueue
from bot.files import png_bytes, write_atomic
from bot.jobs import JobKind, JobRequest, JobStatus
from bot.pipeline_source import PipelineSource
from bot.safety import ALL_WITHHELD, ImageSafety, Screened
from bot.store import NewResult, QueuedJob, RecoveryReport, ResultRecord, Store
from bot.worker import LatestOnlyMailbox, WorkerThread
from pipelines.downloads import ModelFileError
from pipelines.interface import Cancelled, InvalidRequest

log = logging.getLogger(__name__)

OOM_ADVICE = {
    JobKind.IMAGINE: "try a smaller size or fewer cutouts (cutn)",
    JobKind.EDIT: "try fewer candidates or a smaller image",
}


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
    running: RunningEntry | None
    queued: list[QueueEntry]

    @property
    def length(self) -> int:
        """Jobs waiting or running."""
        return len(self.queued) + (1 if self.running else 0)

    def for_user(self, user_id: int) -> list[QueueEntry]:
        return [entry for entry in self.queued if entry.user_id == user_id]

    def position_of(self, job_id: int) -> int | None:
        if self.running and self.running.job_id == job_id:
            return 1
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
class _Progress:
    step: int
    total: int
    preview: Image.Image | None
    preview_step: int | None


@dataclass
class _Running:
    """The job on the worker. Fields written by the worker are only read under ``lock``."""

    info: JobInfo
    total: int | None
    started_monotonic: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # "cancel" | "shutdown"
    lock: threading.Lock = field(default_factory=threading.Lock)
    step: int = 0
    preview: Image.Image | None = None
    preview_step: int | None = None


@dataclass
class _Outcome:
    status: str  # "done" | "failed" | "cancelled" | "stopped"
    results: list[NewResult] = field(default_factory=list)
    error: str | None = None
    preview: Image.Image | None = None
    preview_path: Path | None = None
    step: int | None = None
    total: int | None = None
    seconds: float = 0.0
    withheld: int = 0  # results the image safety check held back


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


def _info(job: QueuedJob) -> JobInfo:
    return JobInfo(job.id, job.kind, job.user_id, job.channel_id, job.params)


class Scheduler:
    def __init__(
        self,
        store: Store,
        source: PipelineSource,
        config: SchedulerConfig,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.config = config
        self.eta = EtaEstimator(config.eta_window)
        self.worker = WorkerThread(niceness=config.worker_niceness)
        self._rng = rng or random.Random()
        self._queue: FairQueue[_Waiting] = FairQueue()
        self._running: _Running | None = None
        self._listeners: list[SchedulerListener] = []
        self._submit_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._dispatcher: asyncio.Task | None = None
        self._current_run: asyncio.Task | None = None
        self._accepting = False
        self._stopping = False
        self._mailbox: LatestOnlyMailbox[tuple[_Running, _Progress]] | None = None
        # Jobs are held (queued, not started) while the models load after connecting.
        self._models_ready = asyncio.Event()
        self._models_ready.set()
        self._load_remaining: Callable[[], float | None] = lambda: 0.0
        # The image safety check of results; None runs without one.
        self.image_safety: ImageSafety | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def add_listener(self, listener: SchedulerListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> RecoveryReport:
        """Recover from the last run, rebuild the queue in its stored order, start the worker."""
        loop = asyncio.get_running_loop()
        self._mailbox = LatestOnlyMailbox(loop, self._deliver_progress)
        report = await self.store.recover()
        if report.requeued:
            log.warning("re-queued job(s) interrupted by the last shutdown: %s", report.requeued)
        if report.failed:
            log.warning("failed job(s) interrupted twice: %s", report.failed)
        self._queue = FairQueue(
            current_round=await self.store.last_started_round(),
            last_run_round_by_user=await self.store.last_run_round_by_user(),
        )
        for job in await self.store.pending_jobs():
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
        positions = self._positions()
        for job_id, _user, waiting in self._queue:
            position, eta = positions[job_id]
            self._emit(JobQueued(_info(waiting.job), position, eta))
        self.worker.start()
        self._accepting = True
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="faraday-dispatcher")
        self._update_idle()
        self._wakeup.set()
        return report

    async def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop taking jobs; the running job stops at its next step and goes back in the queue."""
        grace = self.config.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self._accepting = False
        self._stopping = True
        running = self._running
        if running is not None:
            running.stop_reason = running.stop_reason or "shutdown"
            running.stop.set()
        current = self._current_run
        if current is not None and not current.done():
            try:
                await asyncio.wait_for(asyncio.shield(current), grace)
            except asyncio.TimeoutError:
                log.warning("job %d did not stop within %.0f s; it will be re-queued on the next "
                            "start", running.info.job_id if running else -1, grace)
                if running is not None:
                    await self.store.requeue(running.info.job_id)
            except Exception:
                log.exception("the running job failed while shutting down")
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        self.worker.stop()

    async def wait_idle(self) -> None:
        """Until nothing is running or waiting (tests and benchmarks)."""
        await self._idle.wait()

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
        if position < len(self._queue) + (1 if self._running is not None else 0):
            self._emit_queue_moved()  # fairness put it ahead of someone; they moved back
        self._update_idle()
        self._wakeup.set()
        return Submitted(job.id, position, eta, models_loading=self.models_loading)

    def _check_limits(self, user_id: int) -> None:
        in_line = len(self._queue) + (1 if self._running is not None else 0)
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
            position = self._queue.ahead_of_new(user_id) + (2 if self._running else 1)
            raise SubmitRefused(
                "global_limit",
                f"The queue is full: {len(self._queue)} jobs are waiting (the limit is "
                f"{total_cap}), so a new job would be at position {position} of "
                f"{in_line + 1}. Try again in a few minutes.",
            )

    async def cancel(self, job_id: int) -> CancelOutcome:
        running = self._running
        if running is not None and running.info.job_id == job_id:
            if running.stop_reason is None:
                running.stop_reason = "cancel"
            running.stop.set()
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

    def _running_remaining(self) -> float | None:
        running = self._running
        if running is None:
            return 0.0
        with running.lock:
            step = running.step
        total = running.total
        if total is None:
            return None
        elapsed = time.monotonic() - running.started_monotonic
        return self.eta.remaining_seconds(running.info.kind, running.info.params, step, total,
                                          elapsed)

    def _positions(self) -> dict[int, tuple[int, float | None]]:
        """Position and ETA of every waiting job, in one pass over the run order."""
        # Called on every queue change with possibly hundreds waiting: most jobs share a few
        # work keys, so each key's duration is looked up once per pass.
        out: dict[int, tuple[int, float | None]] = {}
        durations: dict[WorkKey, float | None] = {}
        position = 1 if self._running is None else 2
        clock = self._running_remaining()
        if clock is not None and self.models_loading:
            loading = self._load_remaining()
            clock = None if loading is None else clock + loading
        for job_id, _user, waiting in self._queue:
            if clock is not None:
                work = waiting.work
                if work not in durations:
                    durations[work] = self.eta.key_seconds(work)
                duration = durations[work]
                clock = None if duration is None else clock + duration
            out[job_id] = (position, clock)
            position += 1
        return out

    def snapshot(self) -> QueueSnapshot:
        positions = self._positions()
        queued = [
            QueueEntry(job_id, w.job.user_id, w.job.channel_id, w.job.kind, *positions[job_id])
            for job_id, _user, w in self._queue
        ]
        running_entry = None
        running = self._running
        if running is not None:
            with running.lock:
                step = running.step
            running_entry = RunningEntry(
                job_id=running.info.job_id,
                user_id=running.info.user_id,
                channel_id=running.info.channel_id,
                kind=running.info.kind,
                step=step,
                total=running.total,
                elapsed_seconds=time.monotonic() - running.started_monotonic,
                eta_seconds=self._running_remaining(),
                stopping=running.stop.is_set(),
            )
        return QueueSnapshot(running_entry, queued)

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
        if self._running is None and not len(self._queue):
            self._idle.set()
        else:
            self._idle.clear()

    def _deliver_progress(self, item: tuple[_Running, _Progress]) -> None:
        running, progress = item
        if self._running is not running:
            return  # the job has ended; its final event already went out
        elapsed = time.monotonic() - running.started_monotonic
        eta = self.eta.remaining_seconds(running.info.kind, running.info.params, progress.step,
                                         progress.total, elapsed)
        self._emit(JobProgress(running.info, progress.step, progress.total, progress.preview,
                               progress.preview_step, eta, running.started_monotonic))

    # -- running jobs ------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.models_loading:
                continue  # models_ready() wakes this loop again
            while not self._stopping and self._running is None and len(self._queue):
                popped = self._queue.pop()
                assert popped is not None
                job = popped[1].job
                # Registered before any await, so a cancel arriving meanwhile finds it running.
                self._running = _Running(_info(job), steps_of(job.params))
                self._current_run = asyncio.create_task(self._run(job, self._running))
                try:
                    await asyncio.shield(self._current_run)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("the scheduler failed around job %d; carrying on", job.id)
                finally:
                    if self._running is not None and self._current_run.done():
                        self._running = None
                    self._update_idle()

    async def _run(self, job: QueuedJob, running: _Running) -> None:
        info = running.info
        await self.store.mark_running(info.job_id, running.total)
        log.info("job %d started (%s, user %d)", info.job_id, info.kind.value, info.user_id)
        running.started_monotonic = time.monotonic()
        self._emit(JobStarted(info, running.total, running.started_monotonic))
        self._emit_queue_moved()
        assert self._mailbox is not None
        mailbox = self._mailbox
        # Decided here, on the loop, where the bot's channel cache may be read.
        safety = self.image_safety
        if safety is not None and not safety.wanted(info.channel_id):
            safety = None
        outcome = await self.worker.run(lambda: self._execute(job, running, mailbox, safety))
        # Anything still in the mailbox is older than the outcome; drop it by clearing _running
        # first (the delivery checks it).
        results: list[ResultRecord] = []
        if outcome.status == "done":
            results = await self.store.complete_job(info.job_id, outcome.results,
                                                    outcome.withheld)
            # Per step the job asked for, as estimates of waiting jobs (and the history the store
            # gives back after a restart) count them; the pipeline's own count may differ.
            asked = steps_of(info.params) or outcome.total
            if asked:
                self.eta.record(info.kind, info.params, outcome.seconds / asked)
            status = JobStatus.DONE
        elif outcome.status == "stopped":
            await self.store.requeue(info.job_id)
            self._running = None
            log.info("job %d stopped for shutdown; it will run again after the restart",
                     info.job_id)
            self._emit(JobRequeued(info))
            return
        elif outcome.status == "cancelled":
            await self.store.finish_job(info.job_id, JobStatus.CANCELLED,
                                        preview_path=outcome.preview_path)
            status = JobStatus.CANCELLED
        else:
            await self.store.finish_job(info.job_id, JobStatus.FAILED, outcome.error)
            status = JobStatus.FAILED
        self._running = None
        log.info("job %d %s", info.job_id, status.value)
        self._emit(JobFinished(info, status, outcome.error, results, outcome.preview,
                               outcome.step, outcome.total, running.started_monotonic))
        # No QueueMoved here: the next job starts at once and reports the new positions then.

    def _execute(
        self,
        job: QueuedJob,
        running: _Running,
        mailbox: LatestOnlyMailbox[tuple[_Running, _Progress]],
        safety: ImageSafety | None = None,
    ) -> _Outcome:
        """Runs on the worker thread: read inputs, prepare, run the pipeline, screen the results
        with the image safety check when given one, write them."""
        info = running.info
        started = time.monotonic()

        def on_progress(step: int, total: int, preview: Image.Image | None) -> None:
            with running.lock:
                running.step = step
                running.total = total
                if preview is not None:
                    running.preview = preview
                    running.preview_step = step
                progress = _Progress(step, total, running.preview, running.preview_step)
            mailbox.post((running, progress))

        def stopped_or_cancelled(step: int | None, total: int | None,
                                 latest: Image.Image | None) -> _Outcome:
            with running.lock:
                preview = latest if latest is not None else running.preview
                step = running.step if step is None else step
            if running.stop_reason == "shutdown":
                return _Outcome("stopped", step=step, total=total)
            path = None
            if preview is not None:
                path = self.store.paths.preview_path(info.job_id)
                write_atomic(path, png_bytes(preview), durable=self.store.sync_commits)
            return _Outcome("cancelled", preview=preview, preview_path=path, step=step,
                            total=total)

        if running.stop.is_set():
            return stopped_or_cancelled(0, running.total, None)
        try:
            request = self.store.load_request(job)
        except OSError as exc:
            log.error("job %d: its input images cannot be read: %s", info.job_id, exc)
            return _Outcome("failed", error="its input images were lost from the bot's storage")
        try:
            prepared = self.source.prepare(request)
            result = prepared.pipeline(prepared.request, on_progress, running.stop.is_set)
            if safety is not None:
                screened = safety.screen(result.images)
            else:
                screened = Screened([(ranked, False) for ranked in result.images])
        except Cancelled as exc:
            return stopped_or_cancelled(exc.step, exc.total, exc.latest)
        except InvalidRequest as exc:
            log.info("job %d refused by the pipeline: %s", info.job_id, exc)
            return _Outcome("failed", error=str(exc))
        except ModelFileError as exc:
            # The message names the server's files and settings: for the owner's log, not the
            # channel.
            log.error("job %d: the models could not be loaded: %s", info.job_id, exc)
            return _Outcome(
                "failed",
                error="the bot's models could not be loaded; the server owner can see why in "
                "the bot's log.",
            )
        except Exception as exc:
            if is_out_of_memory(exc):
                log.warning("job %d ran out of memory", info.job_id, exc_info=True)
                _free_accelerator_memory()
                return _Outcome(
                    "failed",
                    error=f"ran out of memory; {OOM_ADVICE[info.kind]}.",
                )
            log.exception("job %d failed in the pipeline", info.job_id)
            return _Outcome(
                "failed",
                error=f"something went wrong while making the image ({type(exc).__name__}); "
                "the details are in the bot's log.",
            )
        seconds = time.monotonic() - started
        if not screened.images:
            return _Outcome("failed", error=ALL_WITHHELD)
        results = []
        try:
            for ranked, flagged in screened.images:
                path = self.store.paths.result_path(info.job_id, ranked.rank)
                write_atomic(path, png_bytes(ranked.image), durable=self.store.sync_commits)
                results.append(NewResult(ranked.rank, float(ranked.score), int(ranked.seed),
                                         path, flagged))
        except OSError as exc:
            log.exception("job %d: its results could not be saved", info.job_id)
            return _Outcome("failed", error=f"the images were made but could not be saved "
                            f"({exc.strerror or type(exc).__name__}); please try again later.")
        with running.lock:
            total = running.total or steps_of(info.params)
        return _Outcome("done", results=results, step=total, total=total, seconds=seconds,
                        withheld=screened.withheld)


def make_source(kind: str, models: Any, stand_in: Any) -> PipelineSource:
    """The pipeline source the config asks for: ``"real"`` or ``"stand-in"`` (testing only)."""
    if kind == "stand-in":
        from bot.stand_in import StandInPipeline, StandInSource

        return StandInSource(StandInPipeline(stand_in.step_seconds, stand_in.image_size,
                                             stand_in.work))
    from bot.pipeline_source import RegistrySource

    return RegistrySource(models)

