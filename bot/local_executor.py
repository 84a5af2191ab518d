"""The embedded executor: one worker thread per local device, no server needed.

Each slot owns a :class:`bot.worker.WorkerThread` and its own pipeline source, so each device
keeps its own models. The pipeline runs only on the slot's thread; the event loop awaits it.
Result images are written to ``data/`` on that thread too, so the loop never encodes a PNG.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from PIL import Image

from bot.config import Config, TimelapseConfig
from bot.eta import steps_of
from bot.execution import execute
from bot.executor import Outcome, Progress, Recovered, Run, RunningRef, StopReason
from bot.files import png_bytes, write_atomic
from bot.jobs import JobKind
from bot.pipeline_source import PipelineSource
from bot.store import NewResult, QueuedJob, Store
from bot.timelapse import frames_for
from bot.worker import WorkerThread

log = logging.getLogger(__name__)


@dataclass
class _Control:
    """What the loop and the slot's thread share about one job."""

    job: QueuedJob
    run: Run
    total: int | None
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: StopReason | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    step: int = 0
    preview: Image.Image | None = None
    preview_step: int | None = None


@dataclass
class _Slot:
    device: str
    source: PipelineSource
    worker: WorkerThread
    job: _Control | None = None


class LocalExecutor:
    def __init__(
        self,
        store: Store,
        sources: list[PipelineSource],
        *,
        devices: list[str] | None = None,
        niceness: int = 0,
        timelapse: TimelapseConfig | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a local executor needs at least one device")
        names = devices or [f"slot {i}" for i in range(len(sources))]
        self.store = store
        # Where /imagine jobs' preview frames are kept for their timelapse; None keeps none.
        self.timelapse = timelapse
        self.slots = [
            _Slot(name, source, WorkerThread(f"faraday-worker-{i}", niceness))
            for i, (name, source) in enumerate(zip(names, sources, strict=True))
        ]
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def from_config(cls, store: Store, config: Config) -> LocalExecutor:
        """One slot per ``[models] devices`` entry, each with models of its own."""
        from bot.scheduler import make_source

        devices = list(config.models.device_list)
        # Two slots on one device must not share one pipeline object between their threads.
        private = len(set(devices)) < len(devices)
        sources = [
            make_source(
                config.scheduler.pipeline,
                replace(config.models, device=device),
                config.scheduler.stand_in,
                private=private,
            )
            for device in devices
        ]
        return cls(store, sources, devices=devices, niceness=config.scheduler.worker_niceness,
                   timelapse=config.timelapse)

    def unavailable_reason(self) -> str | None:
        return None

    async def connect(self, wake: Callable[[], None]) -> None:
        """Nothing to connect to; slots free only when a run ends, which wakes the scheduler."""

    async def preload(self, kinds: Iterable[JobKind]) -> None:
        """Load every slot's models on the slot's own thread (its device), all at once."""
        wanted = tuple(kinds)
        for slot in self.slots:
            slot.worker.start()
        await asyncio.gather(
            *(slot.worker.run(lambda s=slot: s.source.preload(wanted)) for slot in self.slots)
        )

    def free_slots(self) -> int:
        return sum(1 for slot in self.slots if slot.job is None)

    def launch(self, job: QueuedJob) -> Run:
        slot = next((s for s in self.slots if s.job is None), None)
        if slot is None:
            raise RuntimeError("launch() called with no free slot")
        slot.worker.start()
        run = Run(job.id)
        control = _Control(job, run, steps_of(job.params))
        slot.job = control
        task = asyncio.create_task(self._drive(slot, control), name=f"faraday-job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _drive(self, slot: _Slot, control: _Control) -> None:
        try:
            outcome = await slot.worker.run(lambda: self._execute(slot, control))
        except Exception as exc:  # _execute catches the pipeline's errors; this is a bug
            log.exception("job %d: the worker failed around the pipeline", control.job.id)
            outcome = Outcome(
                "failed",
                error=f"something went wrong while making the image "
                f"({type(exc).__name__}); the details are in the bot's log.",
            )
        finally:
            slot.job = None
        control.run.finish(outcome)

    async def cancel(self, job_id: int, reason: StopReason) -> bool:
        for slot in self.slots:
            control = slot.job
            if control is not None and control.job.id == job_id:
                if control.stop_reason is None:
                    control.stop_reason = reason
                control.stop.set()
                return True
        return False

    async def recover(self, refs: list[RunningRef]) -> list[Recovered]:
        # Threads die with the process: a job that was running then is simply interrupted.
        return [Recovered(ref.job.id, None) for ref in refs]

    async def close(self) -> None:
        for slot in self.slots:
            slot.worker.stop()

    # -- on the slot's thread ----------------------------------------------------------------

    def _execute(self, slot: _Slot, control: _Control) -> Outcome:
        """Read inputs, run the pipeline, write results: all on the slot's worker thread."""
        job = control.job
        frames = frames_for(self.store, self.timelapse, job.kind, job.id)

        def on_progress(step: int, total: int, preview: Image.Image | None) -> None:
            with control.lock:
                control.step = step
                control.total = total
                if preview is not None:
                    control.preview = preview
                    control.preview_step = step
                progress = Progress(
                    step, total, control.preview, control.preview_step, time.monotonic()
                )
            control.run.post(progress)
            if frames is not None and preview is not None:
                frames(step, total, preview)

        if control.stop.is_set():
            return self._stopped(control, 0, control.total, None)
        try:
            request = self.store.load_request(job)
        except OSError as exc:
            log.error("job %d: its input images cannot be read: %s", job.id, exc)
            return Outcome("failed", error="its input images were lost from the bot's storage")
        if frames is not None:
            frames.start()
        executed = execute(job.id, request, slot.source, on_progress, control.stop.is_set)
        if executed.status == "stopped":
            return self._stopped(control, executed.step, executed.total, executed.latest)
        if executed.status == "failed":
            return Outcome("failed", error=executed.error)
        results = []
        try:
            for ranked in executed.images:
                path = self.store.paths.result_path(job.id, ranked.rank)
                write_atomic(path, png_bytes(ranked.image), durable=self.store.sync_commits)
                results.append(NewResult(ranked.rank, float(ranked.score), int(ranked.seed), path))
        except OSError as exc:
            log.exception("job %d: its results could not be saved", job.id)
            return Outcome(
                "failed",
                error=f"the images were made but could not be saved "
                f"({exc.strerror or type(exc).__name__}); please try again later.",
            )
        with control.lock:
            total = control.total or steps_of(job.params)
        return Outcome("done", results=results, step=total, total=total, seconds=executed.seconds)

    def _stopped(
        self, control: _Control, step: int | None, total: int | None, latest: Image.Image | None
    ) -> Outcome:
        with control.lock:
            preview = latest if latest is not None else control.preview
            step = control.step if step is None else step
        if control.stop_reason == "shutdown":
            return Outcome("stopped", step=step, total=total)
        path = None
        if preview is not None:
            path = self.store.paths.preview_path(control.job.id)
            write_atomic(path, png_bytes(preview), durable=self.store.sync_commits)
        return Outcome("cancelled", preview=preview, preview_path=path, step=step, total=total)
