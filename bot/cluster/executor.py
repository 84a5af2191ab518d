"""The bot's side of the cluster: hand jobs to GPU workers through procrastinate on PostgreSQL.

The scheduler still decides the order; this executor offers one slot per live worker on its
queue, enqueues a job with ``priority = -fair_round`` (a safety net for that order) once its
input images are in Postgres, and turns the workers' rows into :class:`bot.executor.Run` events:
progress by LISTEN/NOTIFY, outcomes by NOTIFY plus a poll as a backstop. Result PNGs are written
to ``data/`` here; the rows are deleted only after the scheduler has committed the outcome to
SQLite, so a crash in between loses nothing (the restart collects them again, once).

If the database goes away, no slot is offered (jobs wait in SQLite), submitters are told why, and
the executor reconnects with backoff. A worker whose heartbeat is older than
``stall_timeout_seconds`` has died: its job comes back as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from PIL import Image
from procrastinate import App, PsycopgConnector

from bot.cluster import tables
from bot.config import ClusterConfig, TimelapseConfig
from bot.executor import ClusterRefused, Outcome, Progress, Recovered, Run, RunningRef, StopReason
from bot.files import write_atomic
from bot.jobs import JobKind
from bot.store import NewResult, QueuedJob, Store
from bot.timelapse import JobFrames, frames_for
from pipelines.interface import attach_mask

log = logging.getLogger(__name__)

UNREACHABLE = (
    "The GPU workers cannot be reached right now (their job database is down); your "
    "job is saved and waits until they are back."
)
NO_WORKER = "No GPU worker is running right now; jobs wait until one starts."


@dataclass
class _Remote:
    job: QueuedJob
    run: Run
    pj_id: int | None = None
    stop_reason: StopReason | None = None
    progress_sent_at: float = 0.0
    collecting: bool = False
    # Only a run recovered after a restart while the database was down learns its attempt from
    # the database; a fresh launch gets it from its own enqueue, and until then the newest row
    # for its job is an earlier, finished attempt (one a worker handed back, say).
    look_up_attempt: bool = False
    # Which attempt this run is (the microsecond the store marked it running), passed to the
    # worker in the task's arguments, so the procrastinate job of this very attempt is found.
    attempt: int | None = None
    # The preview last read (kept, so a re-read of the same step posts the same picture) and the
    # self-mask, posted once; reads of one run are serialised, so frames arrive in step order.
    preview: Image.Image | None = None
    preview_step: int | None = None
    mask_posted: bool = False
    frames: JobFrames | None = None
    frame_step: int | None = None
    progress_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PostgresExecutor:
    def __init__(
        self,
        store: Store,
        cluster: ClusterConfig,
        *,
        owner: str | None = None,
        timelapse: TimelapseConfig | None = None,
    ) -> None:
        self.store = store
        self.cluster = cluster
        # Where /imagine jobs' preview frames are kept for their timelapse (recorded here, from
        # the previews the workers write); None keeps none, as for the local executor.
        self.timelapse = timelapse
        self.poll_interval_seconds = cluster.poll_interval_seconds
        # Who owns the queue: the same bot restarting (same host and database file) may take it
        # back at once; any other bot is refused while the owner's heartbeat is fresh.
        self.owner = owner or f"{socket.gethostname()}:{store.paths.root.resolve()}"
        self._runs: dict[int, _Remote] = {}
        self._by_pj: dict[int, int] = {}
        self._app: App | None = None
        self._conn: _PoolDb | None = None
        self._listen: psycopg.AsyncConnection | None = None
        self._tasks: set[asyncio.Task] = set()
        self._enqueue_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        self._wake: Callable[[], None] = lambda: None
        self._alive_workers = 0
        self.reachable = False
        self._closing = False
        # When the database was last (re)connected: a worker's heartbeat could not be written
        # while it was away, so no stall is judged until a full stall timeout after that.
        self._connected_at = 0.0
        # When (Unix time, the worker's clock) each job's newest progress was written, so a
        # benchmark can time the path from a worker's write to the bot's listeners.
        self.progress_sent_at: dict[int, float] = {}

    # -- the Executor interface --------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        if not self.reachable:
            return UNREACHABLE
        if self._alive_workers == 0:
            return NO_WORKER
        return None

    async def preload(self, kinds: Iterable[JobKind]) -> None:
        """The workers load their own models."""

    async def connect(self, wake: Callable[[], None]) -> None:
        """Connect, claim the queue and start listening. Refuses (raises) a second bot."""
        self._wake = wake
        try:
            await self._open()
        except ClusterRefused:
            await self._close_connections()
            raise
        except (psycopg.OperationalError, OSError) as exc:
            log.warning(
                "the job database is unreachable at start (%s); jobs wait in SQLite "
                "until it is back",
                exc,
            )
            await self._close_connections()
        self._poller = asyncio.create_task(self._poll_loop(), name="faraday-cluster-poll")

    def free_slots(self) -> int:
        if not self.reachable:
            return 0
        return max(0, self._alive_workers - len(self._runs))

    def launch(self, job: QueuedJob) -> Run:
        run = Run(job.id)
        remote = _Remote(job, run)
        self._runs[job.id] = remote
        self._spawn(self._enqueue(remote), f"faraday-enqueue-{job.id}")
        return run

    async def cancel(self, job_id: int, reason: StopReason) -> bool:
        remote = self._runs.get(job_id)
        if remote is None:
            return False
        remote.stop_reason = remote.stop_reason or reason
        if remote.pj_id is None or self._app is None:
            return True  # the enqueue checks stop_reason; the poll retries otherwise
        try:
            await self._app.job_manager.cancel_job_by_id_async(remote.pj_id, abort=True)
        except Exception as exc:
            log.warning(
                "job %d: could not ask its worker to stop (%s); retrying on the next poll",
                job_id,
                exc,
            )
        return True

    async def recover(self, refs: list[RunningRef]) -> list[Recovered]:
        """Ask Postgres about each job that was running when the bot stopped."""
        out: list[Recovered] = []
        for ref in refs:
            job = ref.job
            attempt = await self._attempt_of(job.id)
            latest = None
            if self.reachable:
                try:
                    latest = await self._latest_attempt(job.id, attempt)
                except psycopg.Error as exc:
                    log.warning("job %d: cannot ask the database about it (%s)", job.id, exc)
            if latest is None and self.reachable:
                out.append(Recovered(job.id, None))  # unknown: one interruption
                continue
            run = Run(job.id)
            remote = _Remote(job, run, pj_id=latest[0] if latest else None,
                             look_up_attempt=latest is None, attempt=attempt)
            # The same attempt goes on: its frames so far stay, later ones join them.
            remote.frames = frames_for(self.store, self.timelapse, job.kind, job.id)
            self._runs[job.id] = remote
            if remote.pj_id is not None:
                self._by_pj[remote.pj_id] = job.id
            out.append(Recovered(job.id, run))
        if out:
            self._spawn(self._check_all(), "faraday-cluster-recover")
        return out

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in (self._poller, self._listener, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        log.debug("cluster executor: background tasks stopped")
        await asyncio.wait_for(self._release_queue(), 5)
        await self._close_connections()
        log.debug("cluster executor: closed")

    # -- connections -------------------------------------------------------------------------

    async def _open(self) -> None:
        url = self.cluster.database_url
        self._app = App(connector=PsycopgConnector(conninfo=url, min_size=1, max_size=6, timeout=5))
        await self._app.open_async()
        self._conn = _PoolDb(self._app.connector.pool)  # type: ignore[attr-defined]
        from bot.cluster.worker_side import ensure_schema

        await ensure_schema(self._app)
        await self._claim_queue()
        self._listen = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=5
        )
        await self._listen.execute(tables.listen_sql(self.cluster.queue))  # type: ignore[arg-type]
        self._listener = asyncio.create_task(
            self._listen_loop(self._listen), name="faraday-cluster-listen"
        )
        self.reachable = True
        self._connected_at = time.monotonic()
        await self._count_workers()
        log.info(
            "connected to the job database; %d GPU worker(s) alive on queue %r",
            self._alive_workers,
            self.cluster.queue,
        )

    async def _claim_queue(self) -> None:
        assert self._conn is not None
        fresh = max(3 * self.cluster.poll_interval_seconds, self.cluster.stall_timeout_seconds)
        async with self._conn.transaction() as tx:
            cursor = await tx.execute(
                "SELECT owner, extract(epoch FROM now() - heartbeat) FROM faraday_bots"
                " WHERE queue = %s FOR UPDATE",
                (self.cluster.queue,),
            )
            row = await cursor.fetchone()
            if row is not None and row[0] != self.owner and row[1] < fresh:
                raise ClusterRefused(
                    f"another bot ({row[0]}) already uses queue {self.cluster.queue!r} on this "
                    "database; two bots may share a database only with distinct queues: set "
                    "[cluster] queue to another name in this bot's config.toml"
                )
            await tx.execute(
                "INSERT INTO faraday_bots (queue, owner, heartbeat) VALUES (%s, %s, now())"
                " ON CONFLICT (queue) DO UPDATE SET owner = EXCLUDED.owner, heartbeat = now()",
                (self.cluster.queue, self.owner),
            )

    async def _release_queue(self) -> None:
        if self._conn is None or not self.reachable:
            return
        with contextlib.suppress(psycopg.Error):
            await self._conn.execute(
                "DELETE FROM faraday_bots WHERE queue = %s AND owner = %s",
                (self.cluster.queue, self.owner),
            )

    async def _close_connections(self) -> None:
        self.reachable = False
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()
        if self._listen is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listen.close(), 5)
        self._listen = None
        self._conn = None
        if self._app is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._app.close_async(), 5)
            self._app = None

    async def _lost(self, exc: BaseException) -> None:
        if self.reachable:
            log.warning("lost the job database (%s); dispatch paused, reconnecting", exc)
        await self._close_connections()

    # -- background loops --------------------------------------------------------------------

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _listen_loop(self, conn: psycopg.AsyncConnection) -> None:
        try:
            async for note in conn.notifies():
                kind, _, number = note.payload.partition(":")
                job_id = self._by_pj.get(int(number)) if number.isdigit() else None
                remote = self._runs.get(job_id) if job_id is not None else None
                if remote is None:
                    continue
                if kind == "p":
                    self._spawn(self._read_progress(remote), f"faraday-progress-{job_id}")
                elif kind == "o":
                    self._spawn(self._collect(remote), f"faraday-collect-{job_id}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._closing:
                await self._lost(exc)

    async def _poll_loop(self) -> None:
        delay = self.cluster.poll_interval_seconds
        while True:
            if not self.reachable:
                try:
                    await self._open()
                    delay = self.cluster.poll_interval_seconds
                    self._wake()
                except ClusterRefused as exc:
                    log.error("%s", exc)
                    await self._close_connections()
                except (psycopg.Error, OSError) as exc:
                    log.info("job database still unreachable (%s); next try in %.1f s", exc, delay)
                    await self._close_connections()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.cluster.reconnect_max_seconds)
                    continue
            try:
                await self._check_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._lost(exc)
                continue
            await asyncio.sleep(self.cluster.poll_interval_seconds)

    async def _count_workers(self) -> None:
        assert self._conn is not None
        cursor = await self._conn.execute(
            "SELECT count(*) FROM faraday_workers fw JOIN procrastinate_workers pw"
            " ON pw.id = fw.worker_id WHERE fw.queue = %s"
            " AND pw.last_heartbeat > now() - make_interval(secs => %s)",
            (self.cluster.queue, self.cluster.stall_timeout_seconds),
        )
        row = await cursor.fetchone()
        before = self._alive_workers
        self._alive_workers = int(row[0]) if row else 0
        if self._alive_workers > before:
            self._wake()

    async def _check_all(self) -> None:
        """The backstop: heartbeat, live workers, and every run's outcome, progress and health."""
        if self._conn is None:
            return
        await self._conn.execute(
            "UPDATE faraday_bots SET heartbeat = now() WHERE queue = %s", (self.cluster.queue,)
        )
        await self._count_workers()
        stalled: set[int] = set()
        settled = time.monotonic() - self._connected_at >= self.cluster.stall_timeout_seconds
        if self._runs and self._app is not None and settled:
            jobs = await self._app.job_manager.get_stalled_jobs(
                queue=self.cluster.queue, seconds_since_heartbeat=self.cluster.stall_timeout_seconds
            )
            stalled = {job.id for job in jobs if job.id is not None}
        for remote in list(self._runs.values()):
            if remote.collecting:
                continue
            if remote.pj_id is None:
                if not remote.look_up_attempt:
                    continue  # still being enqueued
                latest = await self._latest_attempt(remote.job.id, remote.attempt)
                if latest is None:  # the bot stopped before handing it over
                    await self._give_up(remote, "interrupted")
                    continue
                remote.look_up_attempt = False
                remote.pj_id = latest[0]
                self._by_pj[remote.pj_id] = remote.job.id
            if remote.stop_reason is not None and self._app is not None:
                await self._app.job_manager.cancel_job_by_id_async(remote.pj_id, abort=True)
            # The status first: a worker commits its outcome before procrastinate marks the job
            # ended, so an ended status read first means the outcome (if any) is already there.
            status = await self._status(remote.pj_id)
            if await self._has_outcome(remote.pj_id):
                await self._collect(remote)
                continue
            if remote.pj_id in stalled:
                log.warning(
                    "job %d: its worker stopped answering (no heartbeat for %.0f s)",
                    remote.job.id,
                    self.cluster.stall_timeout_seconds,
                )
                await self._give_up(remote, "interrupted")
            elif status in ("failed", "aborted", "cancelled", "succeeded", None):
                # Ended without an outcome row: the task itself broke, or it never ran.
                if status in ("cancelled", "aborted") and remote.stop_reason == "shutdown":
                    # Our own abort for the bot's shutdown (a job still waiting in "todo" is
                    # cancelled outright): it runs again after the restart.
                    await self._give_up(remote, "stopped")
                elif status == "cancelled" or (
                    status == "aborted" and remote.stop_reason == "cancel"
                ):
                    await self._give_up(remote, "cancelled")
                elif status == "failed":
                    await self._give_up(remote, "failed")
                else:
                    await self._give_up(remote, "interrupted")
            else:
                await self._read_progress(remote)

    # -- one run -----------------------------------------------------------------------------

    async def _enqueue(self, remote: _Remote) -> None:
        # One at a time, in launch order: procrastinate breaks priority ties by job id, so jobs
        # handed out together (a worker count not yet refreshed, say) keep the fair order.
        async with self._enqueue_lock:
            await self._enqueue_one(remote)

    async def _enqueue_one(self, remote: _Remote) -> None:
        job = remote.job
        try:
            remote.attempt = await self._attempt_of(job.id)
        except Exception as exc:  # without it, recovery falls back to the newest attempt
            log.warning("job %d: its attempt could not be read (%s)", job.id, exc)
        try:
            request = await asyncio.to_thread(self.store.load_request, job)
        except OSError as exc:
            log.error("job %d: its input images cannot be read: %s", job.id, exc)
            self._end(
                remote, Outcome("failed", error="its input images were lost from the bot's storage")
            )
            return
        if remote.stop_reason is not None:
            self._end(
                remote,
                Outcome("stopped" if remote.stop_reason == "shutdown" else "cancelled", step=0),
            )
            return
        frames = frames_for(self.store, self.timelapse, job.kind, job.id)
        if frames is not None:
            await asyncio.to_thread(frames.start)  # an earlier, interrupted run's frames go
            remote.frames = frames
        try:
            assert self._conn is not None and self._app is not None
            images: dict[str, Any] = {}
            for name, value in request.images.items():
                blobs = value if isinstance(value, list) else [value]
                digests = []
                for blob in blobs:
                    digest = hashlib.sha256(blob).hexdigest()
                    await self._conn.execute(
                        "INSERT INTO faraday_inputs (digest, data) VALUES (%s, %s)"
                        " ON CONFLICT (digest) DO NOTHING",
                        (digest, blob),
                    )
                    digests.append(digest)
                images[name] = digests if isinstance(value, list) else digests[0]
            pj_id = await self._app.configure_task(
                tables.TASK_NAME,
                queue=self.cluster.queue,
                priority=-job.fair_round,
            ).defer_async(job_id=job.id, kind=job.kind.value, params=job.params, images=images,
                          attempt=remote.attempt)
        except Exception as exc:
            log.warning("job %d could not be handed to the workers (%s); back in line", job.id, exc)
            self._end(remote, Outcome("stopped"))
            if isinstance(exc, (psycopg.Error, OSError, AssertionError)):
                await self._lost(exc)
            return
        remote.pj_id = pj_id
        self._by_pj[pj_id] = job.id
        log.info("job %d enqueued for the GPU workers as procrastinate job %d", job.id, pj_id)
        if remote.stop_reason is not None:
            await self.cancel(job.id, remote.stop_reason)

    async def _attempt_of(self, job_id: int) -> int | None:
        record = await self.store.get_job(job_id)
        if record is None or record.started_at is None:
            return None
        return int(record.started_at * 1_000_000)

    async def _latest_attempt(self, job_id: int, attempt: int | None) -> tuple[int, str] | None:
        """The procrastinate job of this attempt. Not merely the newest for the job: if the bot
        stopped before this attempt's enqueue committed, the newest is an earlier attempt, whose
        leftover outcome (say, a worker's late "cancelled") must not be taken for this one's.
        A job enqueued without an attempt (by an older bot) still matches its newest row."""
        assert self._conn is not None
        cursor = await self._conn.execute(
            "SELECT id, status FROM procrastinate_jobs WHERE queue_name = %s AND task_name = %s"
            " AND (args->>'job_id')::bigint = %s"
            " AND (%s::bigint IS NULL OR NOT args ? 'attempt'"
            " OR (args->>'attempt')::bigint = %s::bigint)"
            " ORDER BY id DESC LIMIT 1",
            (self.cluster.queue, tables.TASK_NAME, job_id, attempt, attempt),
        )
        row = await cursor.fetchone()
        return (int(row[0]), str(row[1])) if row else None

    async def _status(self, pj_id: int) -> str | None:
        assert self._conn is not None
        cursor = await self._conn.execute(
            "SELECT status FROM procrastinate_jobs WHERE id = %s", (pj_id,)
        )
        row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def _has_outcome(self, pj_id: int) -> bool:
        assert self._conn is not None
        cursor = await self._conn.execute(
            "SELECT 1 FROM faraday_outcomes WHERE pj_id = %s", (pj_id,)
        )
        return await cursor.fetchone() is not None

    async def _read_progress(self, remote: _Remote) -> None:
        async with remote.progress_lock:
            await self._read_progress_locked(remote)

    async def _read_progress_locked(self, remote: _Remote) -> None:
        if remote.pj_id is None or self._conn is None or remote.run.finished:
            return
        try:
            cursor = await self._conn.execute(
                "SELECT step, total, preview, preview_step, sent_at, mask, mask_preview,"
                " mask_step FROM faraday_progress WHERE pj_id = %s",
                (remote.pj_id,),
            )
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            log.debug("progress of job %d not read: %s", remote.job.id, exc)
            return
        if row is None or row[4] <= remote.progress_sent_at:
            return
        remote.progress_sent_at = row[4]
        step, total, blob, preview_step, sent_at, mask_blob, masked_blob, mask_step = row
        masked = None
        if not remote.mask_posted and mask_blob is not None and masked_blob is not None:
            # The self-mask rides in Image.info, which a PNG drops: put it back, so the
            # publisher shows it once over its preview, as with the local executor.
            masked = await asyncio.to_thread(_open_masked, masked_blob, mask_blob)
            remote.mask_posted = True
            if mask_step == preview_step or remote.preview_step is None or (
                preview_step is not None and mask_step > remote.preview_step
            ):
                remote.preview, remote.preview_step = masked, mask_step
        if blob is not None and preview_step != remote.preview_step:
            remote.preview = await asyncio.to_thread(_open_png, blob)
            remote.preview_step = preview_step
        if remote.frames is not None:
            await self._keep_frames(remote, total, [(mask_step, masked),
                                                     (remote.preview_step, remote.preview)])
        self.progress_sent_at[remote.job.id] = sent_at
        now = time.monotonic()
        if masked is not None and remote.preview is not masked:
            # Older than the newest preview: posted first, and Run keeps it from being dropped.
            remote.run.post(Progress(step, total, masked, mask_step, now))
        remote.run.post(Progress(step, total, remote.preview, remote.preview_step, now))

    async def _keep_frames(
        self, remote: _Remote, total: int, shots: list[tuple[int | None, Image.Image | None]]
    ) -> None:
        """Record previews not yet kept, in step order (the recorder thins and caps them)."""
        frames = remote.frames
        assert frames is not None
        for step, image in shots:
            if step is None or image is None:
                continue
            if remote.frame_step is not None and step <= remote.frame_step:
                continue
            await asyncio.to_thread(frames, step, total, image)
            remote.frame_step = step

    async def _collect(self, remote: _Remote) -> None:
        """An attempt's outcome: files to data/, then the scheduler commits, then rows go."""
        conn = self._conn
        if remote.collecting or remote.pj_id is None or conn is None or remote.run.finished:
            return
        remote.collecting = True
        try:
            # The last previews (the finished picture among them) may not have been read yet:
            # the timelapse needs them, and their rows go with the outcome's.
            await self._read_progress(remote)
            await self._collect_on(remote, remote.pj_id, conn)
        finally:
            # Whatever happened, a later poll may collect again (it is repeatable); a flag left
            # set would make every poll skip this run for ever.
            remote.collecting = False

    async def _collect_on(self, remote: _Remote, pj_id: int, conn: _PoolDb) -> None:
        # One connection object throughout: _lost() may clear self._conn at any await.
        try:
            cursor = await conn.execute(
                "SELECT status, error, step, total, seconds, preview FROM faraday_outcomes"
                " WHERE pj_id = %s",
                (pj_id,),
            )
            row = await cursor.fetchone()
            if row is None:
                return
            status, error, step, total, seconds, preview_blob = row
            if status == "cancelled" and remote.stop_reason == "shutdown":
                status = "stopped"  # the bot is stopping: the job runs again after the restart
            elif status == "stopped" and remote.stop_reason == "cancel":
                # The worker was leaving as the user cancelled: the user's word wins.
                status = "cancelled"
            results: list[NewResult] = []
            preview = preview_path = None
            if status == "done":
                cursor = await conn.execute(
                    "SELECT rank, score, seed, png FROM faraday_results WHERE pj_id = %s"
                    " ORDER BY rank",
                    (pj_id,),
                )
                rows = await cursor.fetchall()
                results = await asyncio.to_thread(self._write_results, remote.job.id, rows)
            elif status == "cancelled" and preview_blob is not None:
                preview = await asyncio.to_thread(_open_png, preview_blob)
                preview_path = self.store.paths.preview_path(remote.job.id)
                await asyncio.to_thread(
                    write_atomic, preview_path, bytes(preview_blob), durable=self.store.sync_commits
                )
        except psycopg.Error as exc:
            await self._lost(exc)
            return
        except OSError as exc:
            log.exception("job %d: its results could not be saved", remote.job.id)
            outcome = Outcome(
                "failed",
                error=f"the images were made but could not be saved "
                f"({exc.strerror or type(exc).__name__}); please try again later.",
            )
            outcome.after_commit = lambda: self._delete_rows(pj_id)
            self._end(remote, outcome)
            return
        outcome = Outcome(
            status,
            results=results,
            error=error,
            preview=preview,
            preview_path=preview_path,
            step=step,
            total=total,
            seconds=float(seconds or 0.0),
        )
        outcome.after_commit = lambda: self._delete_rows(pj_id)
        self._end(remote, outcome)

    def _write_results(self, job_id: int, rows: list[tuple]) -> list[NewResult]:
        out = []
        for rank, score, seed, png in rows:
            path = self.store.paths.result_path(job_id, rank)
            write_atomic(path, bytes(png), durable=self.store.sync_commits)
            out.append(NewResult(int(rank), float(score), int(seed), path))
        return out

    async def _give_up(self, remote: _Remote, status: str) -> None:
        """End a run that left no outcome; make sure its worker (if any) stops writing."""
        if remote.collecting or remote.run.finished:
            return  # an outcome is on its way (or in): that one decides, not a guess
        if remote.pj_id is not None and self._app is not None:
            with contextlib.suppress(Exception):
                await self._app.job_manager.cancel_job_by_id_async(remote.pj_id, abort=True)
        if remote.collecting or remote.run.finished:
            return
        pj_id = remote.pj_id
        outcome = Outcome(status, step=remote.run.latest.step if remote.run.latest else None)
        if status == "failed":
            outcome.error = "something went wrong on the GPU worker; the details are in its log."
        if pj_id is not None:
            outcome.after_commit = lambda: self._delete_rows(pj_id)
        self._end(remote, outcome)

    def _end(self, remote: _Remote, outcome: Outcome) -> None:
        if self._runs.get(remote.job.id) is remote:
            del self._runs[remote.job.id]
        if remote.pj_id is not None:
            self._by_pj.pop(remote.pj_id, None)
        remote.run.finish(outcome)
        self._wake()

    async def _delete_rows(self, pj_id: int) -> None:
        if self._conn is None:
            return  # left for the next start's recovery or cleanup; harmless
        try:
            async with self._conn.transaction() as tx:
                for table in ("faraday_progress", "faraday_results", "faraday_outcomes"):
                    await tx.execute(f"DELETE FROM {table} WHERE pj_id = %s", (pj_id,))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            log.warning("rows of procrastinate job %d not deleted yet: %s", pj_id, exc)


class _Rows:
    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    async def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> list[tuple]:
        return self.rows


class _PoolDb:
    """Queries on procrastinate's connection pool: safe from concurrent tasks, unlike one shared
    connection, and a broken connection is replaced by the pool."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def execute(self, query: Any, params: Any = None) -> _Rows:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall() if cursor.description else []
        return _Rows(rows)

    @contextlib.asynccontextmanager
    async def transaction(self) -> Any:
        async with self.pool.connection() as conn, conn.transaction():
            yield conn


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster task %s failed", task.get_name(), exc_info=task.exception())


def _open_png(blob: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(bytes(blob)))
    image.load()
    return image


def _open_masked(preview_blob: bytes, mask_blob: bytes) -> Image.Image:
    preview = _open_png(preview_blob)
    attach_mask(preview, _open_png(mask_blob))
    return preview
