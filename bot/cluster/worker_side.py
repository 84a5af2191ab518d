"""The GPU worker's side of a cluster job: a procrastinate task that runs one pipeline.

Runs in a GPU worker process (:mod:`bot.gpu_worker`), never in the bot, and imports no discord.
procrastinate fetches the job (``SKIP LOCKED``), heartbeats while it runs and hands the sync task a
thread; the task reads the inputs from ``faraday_inputs``, runs the pipeline through
:func:`bot.execution.execute` with ``should_cancel`` wired to procrastinate's abort, overwrites
one progress row at most once per interval (plus a NOTIFY), and writes results and the outcome in
one transaction (plus a NOTIFY). The bot turns those into files, SQLite rows and messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from PIL import Image
from procrastinate import App, JobContext, PsycopgConnector
from procrastinate.exceptions import JobAborted
from procrastinate.job_context import AbortReason
from procrastinate.worker import Worker

from bot.cluster import tables
from bot.config import ClusterConfig
from bot.execution import execute
from bot.files import png_bytes
from bot.jobs import JobKind, JobRequest
from bot.pipeline_source import PipelineSource
from pipelines.interface import attached_mask

log = logging.getLogger(__name__)

# How long a finished job's outcome keeps being retried while the database is away.
OUTCOME_RETRY_SECONDS = 300.0


class JobRunner:
    """The procrastinate task: called on a worker thread with the job's context and arguments."""

    def __init__(self, url: str, cluster: ClusterConfig, source: PipelineSource) -> None:
        self.url = url
        self.cluster = cluster
        self.source = source
        self.jobs_run = 0
        self.busy = False

    def __call__(
        self,
        context: JobContext,
        job_id: int,
        kind: str,
        params: dict[str, Any],
        images: dict[str, Any],
        attempt: int | None = None,
    ) -> None:
        # ``attempt`` is for the bot: it finds this procrastinate job again by it after a restart.
        pj_id = context.job.id
        assert pj_id is not None
        log.debug("job %d (attempt %s) is procrastinate job %d", job_id, attempt, pj_id)
        self.busy = True
        try:
            self._run(context, pj_id, job_id, kind, params, images)
        finally:
            self.busy = False

    def _run(
        self,
        context: JobContext,
        pj_id: int,
        job_id: int,
        kind: str,
        params: dict[str, Any],
        images: dict[str, Any],
    ) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            request = JobRequest(JobKind(kind), 0, 0, None, params, _read_inputs(conn, images))
        progress = _ProgressWriter(self.url, self.cluster, pj_id, job_id)
        try:
            executed = execute(job_id, request, self.source, progress, context.should_abort)
        finally:
            progress.close()
        self.jobs_run += 1
        status = executed.status
        preview = None
        if status == "stopped":
            if context.abort_reason() is AbortReason.SHUTDOWN:
                status = "stopped"  # the worker is going away: run it again elsewhere
            else:
                status = "cancelled"
                latest = executed.latest or progress.preview
                preview = png_bytes(latest) if latest is not None else None
        results = [
            (r.rank, float(r.score), int(r.seed), png_bytes(r.image)) for r in executed.images
        ]
        step = executed.step if executed.step is not None else progress.step
        self._write_outcome(
            pj_id,
            job_id,
            status,
            executed.error,
            step,
            executed.total or progress.total,
            executed.seconds,
            preview,
            results,
        )
        if status in ("stopped", "cancelled"):
            raise JobAborted(status)

    def _write_outcome(
        self,
        pj_id: int,
        job_id: int,
        status: str,
        error: str | None,
        step: int | None,
        total: int | None,
        seconds: float,
        preview: bytes | None,
        results: list[tuple[int, float, int, bytes]],
    ) -> None:
        deadline = time.monotonic() + OUTCOME_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                with psycopg.connect(self.url) as conn, conn.transaction():
                    for rank, score, seed, png in results:
                        conn.execute(
                            "INSERT INTO faraday_results (pj_id, rank, score, seed, png)"
                            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (pj_id, rank) DO UPDATE"
                            " SET score = EXCLUDED.score, seed = EXCLUDED.seed,"
                            " png = EXCLUDED.png",
                            (pj_id, rank, score, seed, png),
                        )
                    conn.execute(
                        "INSERT INTO faraday_outcomes (pj_id, queue, job_id, status, error, step,"
                        " total, seconds, preview) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (pj_id) DO NOTHING",
                        (
                            pj_id,
                            self.cluster.queue,
                            job_id,
                            status,
                            error,
                            step,
                            total,
                            seconds,
                            preview,
                        ),
                    )
                    conn.execute(
                        "SELECT pg_notify(%s, %s)",
                        (tables.channel(self.cluster.queue), f"o:{pj_id}"),
                    )
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning(
                    "job %d: cannot reach the database to report its outcome (%s); retrying",
                    job_id,
                    exc,
                )
                time.sleep(delay)
                delay = min(delay * 2, self.cluster.reconnect_max_seconds)


def _read_inputs(conn: psycopg.Connection, images: dict[str, Any]) -> dict[str, Any]:
    digests = [d for v in images.values() for d in (v if isinstance(v, list) else [v])]
    if not digests:
        return {}
    rows = conn.execute(
        "SELECT digest, data FROM faraday_inputs WHERE digest = ANY(%s)", (digests,)
    ).fetchall()
    data = {digest: bytes(blob) for digest, blob in rows}
    return {
        name: [data[d] for d in value] if isinstance(value, list) else data[value]
        for name, value in images.items()
    }


class _ProgressWriter:
    """The pipeline's ``on_progress``: overwrite one row at most once per interval, then NOTIFY.

    Two writes skip the throttle: the last step (so the bot always sees the finished picture,
    the timelapse's last frame), and the preview that carries the self-mask, which goes into
    columns of its own once, because the PNG in ``preview`` drops ``Image.info`` and a later
    preview may overwrite it before the bot reads it.

    A failed write (the database is briefly away) is logged and skipped: progress is a courtesy,
    the outcome is what must arrive. A mask not yet written is tried again on the next call.
    """

    def __init__(
        self,
        url: str,
        cluster: ClusterConfig,
        pj_id: int,
        job_id: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.pj_id = pj_id
        self.job_id = job_id
        self.clock = clock
        self.step = 0
        self.total: int | None = None
        self.preview: Image.Image | None = None
        self.preview_step: int | None = None
        self._sent_preview_step: int | None = None
        self._last_write: float | None = None
        # (mask PNG, its preview PNG, its step) until written; then ``_mask_written``.
        self._mask: tuple[bytes, bytes, int] | None = None
        self._mask_written = False
        self._conn: psycopg.Connection | None = None

    def __call__(self, step: int, total: int, preview: Image.Image | None) -> None:
        self.step, self.total = step, total
        if preview is not None:
            self.preview, self.preview_step = preview, step
            mask = attached_mask(preview)
            if mask is not None and self._mask is None and not self._mask_written:
                self._mask = (png_bytes(mask), png_bytes(preview), step)
        now = self.clock()
        due = (
            self._last_write is None
            or now - self._last_write >= self.cluster.progress_interval_seconds
        )
        if not (due or step >= total or self._mask is not None):
            return
        self._last_write = now
        self._write(step, total)

    def _write(self, step: int, total: int) -> None:
        blob = None
        if self.preview is not None and self.preview_step != self._sent_preview_step:
            blob = png_bytes(self.preview)
        mask, mask_preview, mask_step = self._mask or (None, None, None)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.url, autocommit=True)
            with self._conn.transaction():
                self._conn.execute(
                    "INSERT INTO faraday_progress (pj_id, queue, job_id, step, total, preview,"
                    " preview_step, sent_at, mask, mask_preview, mask_step)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (pj_id) DO UPDATE SET step = EXCLUDED.step,"
                    " total = EXCLUDED.total,"
                    " preview = COALESCE(EXCLUDED.preview, faraday_progress.preview),"
                    " preview_step = COALESCE(EXCLUDED.preview_step,"
                    " faraday_progress.preview_step), sent_at = EXCLUDED.sent_at,"
                    " mask = COALESCE(faraday_progress.mask, EXCLUDED.mask),"
                    " mask_preview = COALESCE(faraday_progress.mask_preview,"
                    " EXCLUDED.mask_preview),"
                    " mask_step = COALESCE(faraday_progress.mask_step, EXCLUDED.mask_step)",
                    (
                        self.pj_id,
                        self.cluster.queue,
                        self.job_id,
                        step,
                        total,
                        blob,
                        self.preview_step if blob is not None else None,
                        time.time(),
                        mask,
                        mask_preview,
                        mask_step,
                    ),
                )
                self._conn.execute(
                    "SELECT pg_notify(%s, %s)",
                    (tables.channel(self.cluster.queue), f"p:{self.pj_id}"),
                )
            if blob is not None:
                self._sent_preview_step = self.preview_step
            if mask is not None:
                self._mask, self._mask_written = None, True
        except psycopg.Error as exc:
            log.warning("job %d: progress not written (%s)", self.job_id, exc)
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


async def ensure_schema(app: App) -> None:
    """procrastinate's tables (when missing) and ours, idempotently."""
    connector = app.connector
    row = await connector.execute_query_one_async(
        "SELECT to_regclass('public.procrastinate_jobs') IS NOT NULL AS present"  # type: ignore[arg-type]
    )
    if not row["present"]:
        await app.schema_manager.apply_schema_async()
    await connector.execute_query_async(tables.SCHEMA)  # type: ignore[arg-type]


class GpuWorker:
    """One procrastinate worker, one job at a time, reconnecting with backoff if the database goes.

    ``stop()`` (SIGTERM) aborts the running job as "shutdown": it reports ``stopped`` and the bot
    puts it back in its fair place in the queue.
    """

    def __init__(
        self, url: str, cluster: ClusterConfig, source: PipelineSource, name: str | None = None
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.runner = JobRunner(url, cluster, source)
        self.name = name or f"{socket.gethostname()}-{threading.get_native_id()}"
        self._worker: Worker | None = None
        self._stopping = False
        self._restart = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.registered = threading.Event()

    def stop(self) -> None:
        """Thread-safe: abort the running job as "shutdown" and return from :meth:`serve`."""
        self._stopping = True
        loop, worker = self._loop, self._worker
        if loop is not None and worker is not None:
            loop.call_soon_threadsafe(worker.stop)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        delay = 0.2
        while not self._stopping:
            try:
                await self._serve_once()
                delay = 0.2
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("lost the job database (%s); reconnecting in %.1f s", exc, delay)
            except Exception as exc:  # procrastinate wraps connection errors in its own types
                if not _is_connection_error(exc):
                    raise
                log.warning("lost the job database (%s); reconnecting in %.1f s", exc, delay)
            if self._stopping:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cluster.reconnect_max_seconds)

    async def _serve_once(self) -> None:
        app = App(connector=PsycopgConnector(conninfo=self.url, min_size=1, max_size=3, timeout=5))
        app.task(name=tables.TASK_NAME, queue=self.cluster.queue, pass_context=True)(self.runner)
        async with app.open_async():
            await ensure_schema(app)
            poll = self.cluster.poll_interval_seconds
            worker = Worker(
                app,
                queues=[self.cluster.queue],
                name=self.name,
                concurrency=1,
                fetch_job_polling_interval=poll,
                abort_job_polling_interval=poll,
                shutdown_graceful_timeout=0,
                install_signal_handlers=False,
                update_heartbeat_interval=self.cluster.heartbeat_seconds,
                stalled_worker_timeout=self.cluster.stall_timeout_seconds,
            )
            self._worker = worker
            if self._stopping:
                return
            side = [asyncio.create_task(self._announce(app, worker)),
                    asyncio.create_task(self._watch(worker)),
                    asyncio.create_task(self._heartbeat(worker))]
            try:
                await worker.run()
            finally:
                for task in side:
                    task.cancel()
                self._worker = None
        if not self._stopping:
            # run() returns only when stopped: by the watchdog after an outage, or a lost
            # connection; either way, connect and register again.
            self._restart = False
            raise psycopg.OperationalError("the procrastinate worker stopped")

    async def _heartbeat(self, worker: Worker) -> None:
        """Keep the worker's heartbeat going through a database outage.

        procrastinate's own heartbeat task ends at its first failed update (in 3.10 nothing
        restarts it), so after an outage the job running here would look stalled to the bot and
        be re-queued while it is still running. This one logs the failure and tries again at
        the next beat, on a connection of its own: the pool's reconnect back-off would hold the
        beat back for many seconds after the database is back.
        """
        conn: psycopg.AsyncConnection | None = None
        try:
            while True:
                await asyncio.sleep(self.cluster.heartbeat_seconds)
                if worker.worker_id is None:
                    continue
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.url, autocommit=True, connect_timeout=3
                        )
                    await conn.execute(
                        "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = %s",
                        (worker.worker_id,),
                    )
                except (psycopg.Error, OSError) as exc:
                    log.debug("heartbeat not written (%s); trying again", exc)
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _watch(self, worker: Worker) -> None:
        """Restart the worker after the database came back, or when its heartbeat went stale.

        Once the database is back (and no job is running) the worker registers afresh, so its
        listener and procrastinate's own side tasks, which do not survive an outage, run again.
        A job running through the outage carries on: its heartbeat is kept by
        :meth:`_heartbeat` and its outcome is retried until it is written.
        """
        lost = False
        while True:
            await asyncio.sleep(self.cluster.heartbeat_seconds)
            if worker.worker_id is None:
                continue
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=3
                ) as conn:
                    cursor = await conn.execute(
                        "SELECT extract(epoch FROM now() - last_heartbeat)"
                        " FROM procrastinate_workers WHERE id = %s", (worker.worker_id,))
                    row = await cursor.fetchone()
            except (psycopg.Error, OSError):
                lost = True
                continue
            stale = row is None or row[0] > self.cluster.stall_timeout_seconds / 2
            if (lost or stale) and not self.runner.busy:
                log.warning("the job database was away; restarting the worker to register again")
                self._restart = True
                worker.stop()
                return

    async def _announce(self, app: App, worker: Worker) -> None:
        """Say which queue this worker serves, once procrastinate has registered it."""
        while worker.worker_id is None:
            await asyncio.sleep(0.05)
        await app.connector.execute_query_async(
            "INSERT INTO faraday_workers (worker_id, queue, name) VALUES (%(w)s, %(q)s, %(n)s)"  # type: ignore[arg-type]
            " ON CONFLICT (worker_id) DO UPDATE SET queue = EXCLUDED.queue, name = EXCLUDED.name",
            w=worker.worker_id,
            q=self.cluster.queue,
            n=self.name,
        )
        log.info(
            "worker %s (id %d) serving queue %r", self.name, worker.worker_id, self.cluster.queue
        )
        self.registered.set()


def _is_connection_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (psycopg.OperationalError, OSError)):
            return True
        current = current.__cause__ or current.__context__
    return "connect" in str(exc).lower()


def serve_in_thread(
    url: str, cluster: ClusterConfig, source: PipelineSource, name: str | None = None
) -> tuple[GpuWorker, threading.Thread]:
    """A worker on its own thread and loop, in this process (tests run the stand-in this way)."""
    worker = GpuWorker(url, cluster, source, name)
    thread = threading.Thread(
        target=lambda: asyncio.run(worker.serve()), name=f"gpu-worker-{worker.name}", daemon=True
    )
    thread.start()
    return worker, thread
