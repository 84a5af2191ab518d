"""Faults with GPU workers on a real PostgreSQL: each one loses nothing and posts nothing twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.cluster import tables
from bot.cluster.executor import NO_WORKER, UNREACHABLE, PostgresExecutor
from bot.cluster.private_pg import create_cluster
from bot.config import ClusterConfig
from bot.events import JobFinished, JobProgress, JobQueued, JobRequeued
from bot.executor import ClusterRefused
from bot.jobs import JobStatus
from bot.scheduler import Scheduler
from bot.stand_in import StandInPipeline
from bot.store import INTERRUPTED_TWICE, QueuedJob, Store
from cogs.queue import describe_queue
from tests.bot.conftest import EventLog, FakeSink, make_publisher, request, scheduler_config
from tests.cluster.conftest import (
    TEST_CLUSTER,
    Workers,
    fresh_database,
    start_cluster_scheduler,
    start_worker_process,
    worker_config_text,
)

pytestmark = pytest.mark.cluster


async def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _a_running_job(store: Store) -> QueuedJob:
    """A stored job as the scheduler hands it to an executor's launch()."""
    record = await store.insert_job(request(user=1), 0)
    return QueuedJob(record.id, record.request.kind, 1, record.request.channel_id, 0,
                     record.request.params, JobStatus.RUNNING)


def test_the_gpu_worker_never_imports_discord() -> None:
    code = (
        "import sys, bot.gpu_worker, bot.cluster.worker_side, bot.cluster.executor\n"
        "bad = sorted(m for m in sys.modules if m == 'discord' or m.startswith('discord.'))\n"
        "print(','.join(bad))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == ""


def test_a_worker_without_a_cluster_url_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[scheduler]\npipeline = "stand-in"\n')
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "bot.gpu_worker", "--config", str(config)],
                         cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {config} has no [cluster] database_url: a GPU worker needs the PostgreSQL the "
        "bot uses"
    ]


async def test_a_killed_worker_is_noticed_requeued_fairly_and_fails_after_two(
    store: Store, cluster_config: ClusterConfig, tmp_path: Path, workers: Workers
) -> None:
    config_path = tmp_path / "worker.toml"
    config_path.write_text(worker_config_text(cluster_config, step_seconds=0.05))
    log = EventLog()
    scheduler = await start_cluster_scheduler(store, cluster_config)
    scheduler.add_listener(log)
    procs: list[Any] = []
    try:
        doomed = await scheduler.submit(request(user=1, steps=400))
        later = None
        for attempt in (1, 2):
            proc = start_worker_process(config_path, f"victim-{attempt}")
            procs.append(proc)
            seen = len([e for e in log.of(JobProgress) if e.job.job_id == doomed.job_id])
            await wait_for(lambda s=seen: len([e for e in log.of(JobProgress)
                                               if e.job.job_id == doomed.job_id]) > s + 2,
                           90, "progress on the worker process")
            queued_before = _times_queued(log, doomed.job_id)
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if attempt == 1:
                await wait_for(lambda b=queued_before: _times_queued(log, doomed.job_id) > b,
                               30, "the re-queue")
                # Noticed through the stall timeout (plus a poll), not by luck.
                noticed = time.monotonic() - killed_at
                assert noticed < 3 * cluster_config.stall_timeout_seconds
                record = await store.get_job(doomed.job_id)
                assert record.status is JobStatus.QUEUED and record.interruptions == 1
                # It keeps its fair round: ahead of a job submitted after it.
                later = await scheduler.submit(request(user=2, steps=1))
                assert [e.job_id for e in scheduler.snapshot().queued] == [
                    doomed.job_id, later.job_id]
        await wait_for(lambda: any(e.job.job_id == doomed.job_id for e in log.of(JobFinished)),
                       30, "the second interruption")
        record = await store.get_job(doomed.job_id)
        assert record.status is JobStatus.FAILED and record.error == INTERRUPTED_TWICE
        assert record.interruptions == 2
        # Nothing else was lost: a new worker runs what is left.
        workers.start(StandInPipeline(0.0, 16, "sleep"))
        await asyncio.wait_for(scheduler.wait_idle(), 60)
        assert later is not None and await store.job_status(later.job_id) is JobStatus.DONE
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        await scheduler.shutdown(grace_seconds=5)


def _times_queued(log: EventLog, job_id: int) -> int:
    return sum(1 for e in log.of(JobQueued) if e.job.job_id == job_id)


async def _crash(scheduler: Scheduler) -> None:
    """What a SIGKILLed bot leaves behind: no clean shutdown, connections just gone."""
    executor = scheduler.executor
    assert isinstance(executor, PostgresExecutor)
    tasks = [r.task for r in scheduler._running.values() if r.task is not None]
    tasks += [scheduler._dispatcher, executor._poller, executor._listener, *executor._tasks]
    for task in tasks:
        if task is not None:
            task.cancel()
    await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
    await executor._close_connections()


async def test_a_restarted_bot_reattaches_collects_and_posts_once(
    tmp_path: Path, cluster_config: ClusterConfig, workers: Workers
) -> None:
    data = tmp_path / "data"
    for _ in range(2):
        workers.start(StandInPipeline(0.05, 16, "sleep"))
    first_store = await Store.open(data / "faraday.sqlite3", data)
    first = await start_cluster_scheduler(first_store, cluster_config)
    log1 = EventLog()
    first.add_listener(log1)
    await wait_for(lambda: first.executor.free_slots() == 2, 30, "two workers")
    long_job = await first.submit(request(user=1, steps=120))
    short_job = await first.submit(request(user=2, steps=30))
    # Both are on their workers (progress came back), not merely handed over.
    await wait_for(lambda: {e.job.job_id for e in log1.of(JobProgress)}
                   == {long_job.job_id, short_job.job_id}, 30, "both running")
    await _crash(first)
    await first_store.close()
    # While the bot is down the short job finishes on its worker.
    with psycopg.connect(cluster_config.database_url) as conn:
        deadline = time.monotonic() + 30
        while not conn.execute("SELECT 1 FROM faraday_outcomes WHERE job_id = %s AND queue = %s",
                               (short_job.job_id, cluster_config.queue)).fetchone():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    store = await Store.open(data / "faraday.sqlite3", data)
    sink = FakeSink()
    publisher = make_publisher(store)
    publisher.set_sink(sink)
    log2 = EventLog()
    restarted = Scheduler(store, None, scheduler_config(),
                          executor=PostgresExecutor(store, cluster_config))
    restarted.add_listener(publisher)
    restarted.add_listener(log2)
    try:
        report = await restarted.start()
        await publisher.announce_unposted()
        assert report.requeued == [] and report.failed == []
        await asyncio.wait_for(restarted.wait_idle(), 60)
        await publisher.wait_settled()
        # Still running: followed again (progress kept coming) and finished.
        assert any(e.job.job_id == long_job.job_id for e in log2.of(JobProgress))
        for job in (long_job, short_job):
            record = await store.get_job(job.job_id)
            assert record.status is JobStatus.DONE and record.interruptions == 0
        finished = [e.job.job_id for e in log2.of(JobFinished)]
        assert sorted(finished) == sorted([long_job.job_id, short_job.job_id])
        # The job that finished while the bot was down is posted once, not twice.
        for job in (long_job, short_job):
            link = await store.message_for_job(job.job_id, "results")
            assert link is not None
        results_posts = [c for c in sink.of("send") if "· seed" in c.content and c.files]
        per_user = {user: sum(f"<@{user}>" in c.content for c in results_posts) for user in (1, 2)}
        assert per_user == {1: 1, 2: 1}
        # Postgres holds nothing of finished jobs any more.
        with psycopg.connect(cluster_config.database_url) as conn:
            left = conn.execute("SELECT count(*) FROM faraday_outcomes WHERE queue = %s",
                                (cluster_config.queue,)).fetchone()
        assert left == (0,)
    finally:
        await restarted.shutdown(grace_seconds=5)
        await publisher.close()
        await store.close()


async def test_an_unknown_running_job_counts_one_interruption(
    store: Store, cluster_config: ClusterConfig
) -> None:
    record = await store.insert_job(request(user=1), 0)
    await store.mark_running(record.id, 3)  # running when the bot died; Postgres never saw it
    scheduler = await start_cluster_scheduler(store, cluster_config)
    try:
        job = await store.get_job(record.id)
        assert job.status is JobStatus.QUEUED and job.interruptions == 1
    finally:
        await scheduler.shutdown(grace_seconds=5)


async def test_no_worker_alive_means_jobs_wait_and_queue_says_so(
    store: Store, cluster_config: ClusterConfig, workers: Workers
) -> None:
    scheduler = await start_cluster_scheduler(store, cluster_config)
    try:
        submitted = await scheduler.submit(request(user=1))
        assert submitted.notice == NO_WORKER
        await asyncio.sleep(3 * cluster_config.poll_interval_seconds)
        assert await store.job_status(submitted.job_id) is JobStatus.QUEUED
        text = describe_queue(scheduler.snapshot(), 1)
        assert NO_WORKER in text and f"job #{submitted.job_id}" in text
        workers.start()
        await asyncio.wait_for(scheduler.wait_idle(), 30)
        assert await store.job_status(submitted.job_id) is JobStatus.DONE
        assert scheduler.snapshot().notice is None
    finally:
        await scheduler.shutdown(grace_seconds=5)


async def test_a_second_bot_on_the_same_queue_refuses_to_start(
    tmp_path: Path, cluster_config: ClusterConfig
) -> None:
    stores = [await Store.open(tmp_path / f"d{i}" / "f.sqlite3", tmp_path / f"d{i}")
              for i in range(3)]
    first = await start_cluster_scheduler(stores[0], cluster_config)
    try:
        second = Scheduler(stores[1], None, scheduler_config(),
                           executor=PostgresExecutor(stores[1], cluster_config))
        with pytest.raises(ClusterRefused) as refused:
            await second.start()
        assert f"already uses queue {cluster_config.queue!r}" in str(refused.value)
        assert "set [cluster] queue to another name" in str(refused.value)
        distinct = replace(cluster_config, queue=cluster_config.queue + "b")
        third = await start_cluster_scheduler(stores[2], distinct)
        await third.shutdown(grace_seconds=5)
    finally:
        await first.shutdown(grace_seconds=5)
        for store in stores:
            await store.close()


async def test_postgres_down_for_ten_seconds_pauses_and_loses_nothing(
    store: Store, tmp_path: Path
) -> None:
    server = create_cluster()  # a server of its own, to stop and start
    worker_thread = None
    scheduler = None
    try:
        cluster = replace(TEST_CLUSTER, database_url=fresh_database(server.url()), queue="outage")
        workers = Workers(cluster)
        workers.start(StandInPipeline(0.05, 16, "sleep"))
        worker_thread = workers
        log = EventLog()
        scheduler = await start_cluster_scheduler(store, cluster)
        scheduler.add_listener(log)
        await wait_for(lambda: scheduler.executor.free_slots() == 1, 30, "the worker")
        # Long enough to run through the whole outage and past it.
        running = await scheduler.submit(request(user=1, steps=300))
        await wait_for(lambda: bool(log.of(JobProgress)), 30, "progress")
        await asyncio.to_thread(server.kill)
        await wait_for(lambda: not scheduler.executor.reachable, 30, "the outage to be noticed")
        waiting = await scheduler.submit(request(user=2, steps=5))
        assert waiting.notice == UNREACHABLE
        assert scheduler.snapshot().notice == UNREACHABLE
        await asyncio.sleep(10)
        assert await store.job_status(waiting.job_id) is JobStatus.QUEUED
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(scheduler.wait_idle(), 120)
        for job in (running, waiting):
            assert await store.job_status(job.job_id) is JobStatus.DONE
            assert len(await store.results_for_job(job.job_id)) == 1
            assert (await store.get_job(job.job_id)).interruptions == 0
        finished = [e.job.job_id for e in log.of(JobFinished)]
        assert sorted(finished) == sorted([running.job_id, waiting.job_id])  # once each
    finally:
        if scheduler is not None:
            await scheduler.shutdown(grace_seconds=5)
        if worker_thread is not None:
            worker_thread.stop_all()
        server.remove()


async def test_a_worker_stopped_with_sigterm_hands_its_job_back_without_an_interruption(
    store: Store, cluster_config: ClusterConfig, tmp_path: Path, workers: Workers
) -> None:
    config_path = tmp_path / "worker.toml"
    config_path.write_text(worker_config_text(cluster_config, step_seconds=0.05))
    log = EventLog()
    scheduler = await start_cluster_scheduler(store, cluster_config)
    scheduler.add_listener(log)
    proc = start_worker_process(config_path, "leaving")
    try:
        job = await scheduler.submit(request(user=1, steps=400))
        await wait_for(lambda: len(log.of(JobProgress)) > 2, 90, "progress on the worker")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # it stops at the job's next step and exits cleanly
        await wait_for(lambda: _times_queued(log, job.job_id) > 1, 30, "the job back in line")
        record = await store.get_job(job.job_id)
        # Back in line, or already handed out again (the worker count is refreshed by the poll);
        # either way not counted as an interruption.
        assert record.status in (JobStatus.QUEUED, JobStatus.RUNNING)
        assert record.interruptions == 0
        workers.start(StandInPipeline(0.0, 16, "sleep"))
        await asyncio.wait_for(scheduler.wait_idle(), 60)
        record = await store.get_job(job.job_id)
        assert record.status is JobStatus.DONE and record.interruptions == 0
    finally:
        proc.kill()
        proc.wait(10)
        await scheduler.shutdown(grace_seconds=5)


async def test_a_relaunched_job_is_not_judged_by_its_earlier_finished_attempt(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # A job a worker handed back runs again under a new procrastinate job. Until that enqueue
    # returns, the newest row for the job is the finished first attempt, which has no outcome
    # left; reading it as this run's would count an interruption that never happened.
    job = await _a_running_job(store)
    executor = PostgresExecutor(store, cluster_config)
    await executor.connect(lambda: None)
    try:
        assert executor._app is not None
        earlier = await executor._app.configure_task(
            tables.TASK_NAME, queue=cluster_config.queue
        ).defer_async(job_id=job.id, kind=job.kind.value, params=job.params, images={})
        async with await psycopg.AsyncConnection.connect(cluster_config.database_url,
                                                         autocommit=True) as conn:
            await conn.execute(
                "UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id = %s", (earlier,)
            )
        async with executor._enqueue_lock:  # the relaunch's enqueue is still on its way
            run = executor.launch(job)
            await executor._check_all()
            assert not run.finished
        await wait_for(lambda: executor._runs[job.id].pj_id is not None, 30, "the enqueue")
        assert executor._runs[job.id].pj_id != earlier
        await executor._check_all()
        assert not run.finished
    finally:
        await executor.close()


# -- a worker that is registered but never fetches: the bot's side alone, step by step ---------


def _idle_worker(cluster: ClusterConfig) -> None:
    """A worker row the bot counts as alive (one free slot) that never fetches a job."""
    with psycopg.connect(cluster.database_url, autocommit=True) as conn:
        conn.execute(tables.SCHEMA)  # type: ignore[arg-type]  # before the bot first connects
        # A heartbeat in the future stays fresh for the whole test.
        row = conn.execute("INSERT INTO procrastinate_workers (last_heartbeat)"
                           " VALUES (now() + interval '1 hour') RETURNING id").fetchone()
        assert row is not None
        conn.execute("INSERT INTO faraday_workers (worker_id, queue, name) VALUES (%s, %s, %s)",
                     (row[0], cluster.queue, "idle"))


def _finish_remotely(cluster: ClusterConfig, pj_id: int, job_id: int) -> None:
    """What a worker does at the end of a job: its outcome and result, then procrastinate's
    status, each committed."""
    from PIL import Image

    from bot.files import png_bytes

    png = png_bytes(Image.new("RGB", (16, 16), "red"))
    with psycopg.connect(cluster.database_url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO faraday_results (pj_id, rank, score, seed, png)"
                         " VALUES (%s, 0, 0.5, 7, %s)", (pj_id, png))
            conn.execute("INSERT INTO faraday_outcomes (pj_id, queue, job_id, status, step,"
                         " total, seconds) VALUES (%s, %s, %s, 'done', 1, 1, 0.1)",
                         (pj_id, cluster.queue, job_id))
        conn.execute("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id = %s", (pj_id,))


async def _submit_and_wait_enqueued(scheduler: Scheduler, user: int = 1) -> tuple[int, int]:
    executor = scheduler.executor
    assert isinstance(executor, PostgresExecutor)
    await wait_for(lambda: executor.free_slots() == 1, 30, "the idle worker to be counted")
    submitted = await scheduler.submit(request(user=user, steps=5))
    job_id = submitted.job_id
    await wait_for(lambda: job_id in executor._runs and executor._runs[job_id].pj_id is not None,
                   30, "the enqueue")
    pj_id = executor._runs[job_id].pj_id
    assert pj_id is not None
    return job_id, pj_id


async def test_a_clean_shutdown_requeues_a_job_no_worker_had_picked_up(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # Aborting a job still in "todo" makes procrastinate cancel it outright; for a shutdown that
    # is not the user's cancel: the job must come back, not end CANCELLED.
    _idle_worker(cluster_config)
    log = EventLog()
    scheduler = await start_cluster_scheduler(store, cluster_config)
    scheduler.add_listener(log)
    job_id, _pj_id = await _submit_and_wait_enqueued(scheduler)
    await scheduler.shutdown(grace_seconds=10)
    record = await store.get_job(job_id)
    assert record.status is JobStatus.QUEUED and record.interruptions == 0
    assert [e.job.job_id for e in log.of(JobRequeued)] == [job_id]
    assert log.of(JobFinished) == []


async def test_a_finished_job_is_not_judged_interrupted_between_two_reads(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # The worker commits its outcome, then procrastinate marks the job succeeded; if the bot
    # looked for the outcome before and at the status after, it saw a job that ended with none.
    _idle_worker(cluster_config)
    scheduler = await start_cluster_scheduler(store, cluster_config)
    executor = scheduler.executor
    assert isinstance(executor, PostgresExecutor)
    try:
        async with executor._enqueue_lock:  # hold the enqueue until the wrapper is in place
            submitted = await scheduler.submit(request(user=1, steps=5))
            await wait_for(lambda: submitted.job_id in executor._runs, 30, "the launch")
            real = executor._has_outcome
            landed: list[int] = []

            async def outcome_lands_meanwhile(pj_id: int) -> bool:
                if not landed:
                    landed.append(pj_id)
                    found = await real(pj_id)
                    await asyncio.to_thread(_finish_remotely, cluster_config, pj_id,
                                            submitted.job_id)
                    return found
                return await real(pj_id)

            executor._has_outcome = outcome_lands_meanwhile  # type: ignore[method-assign]
        await asyncio.wait_for(scheduler.wait_idle(), 30)
        record = await store.get_job(submitted.job_id)
        assert landed and record.status is JobStatus.DONE and record.interruptions == 0
        assert len(await store.results_for_job(submitted.job_id)) == 1
    finally:
        await scheduler.shutdown(grace_seconds=5)


async def test_a_collect_cut_short_by_a_lost_database_is_retried(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # The database is lost while an outcome is being collected: the collect must not stay
    # "in progress" for ever; after reconnecting, the poll collects the job.
    _idle_worker(cluster_config)
    scheduler = await start_cluster_scheduler(store, cluster_config)
    executor = scheduler.executor
    assert isinstance(executor, PostgresExecutor)
    try:
        job_id, pj_id = await _submit_and_wait_enqueued(scheduler)
        assert executor._conn is not None
        db_type = type(executor._conn)
        real_execute = db_type.execute
        cut: list[str] = []

        async def lost_midway(self: Any, query: Any, params: Any = None) -> Any:
            rows = await real_execute(self, query, params)
            if not cut and str(query).startswith("SELECT status, error"):
                cut.append(str(query))
                await executor._lost(psycopg.OperationalError("pulled the plug (test)"))
            return rows

        db_type.execute = lost_midway  # type: ignore[method-assign]
        try:
            await asyncio.to_thread(_finish_remotely, cluster_config, pj_id, job_id)
            await asyncio.wait_for(scheduler.wait_idle(), 30)
        finally:
            db_type.execute = real_execute  # type: ignore[method-assign]
        assert cut
        record = await store.get_job(job_id)
        assert record.status is JobStatus.DONE and record.interruptions == 0
    finally:
        await scheduler.shutdown(grace_seconds=5)


async def test_a_user_cancel_wins_over_a_worker_leaving_at_the_same_time(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # The user cancels while the worker is being stopped with SIGTERM: the worker reports
    # "stopped" (run it again elsewhere), but the user asked for the job to end.
    _idle_worker(cluster_config)
    scheduler = await start_cluster_scheduler(store, cluster_config)
    try:
        job_id, pj_id = await _submit_and_wait_enqueued(scheduler)
        with psycopg.connect(cluster_config.database_url, autocommit=True) as conn:
            conn.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (pj_id,))
        await scheduler.cancel(job_id)
        with psycopg.connect(cluster_config.database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO faraday_outcomes (pj_id, queue, job_id, status, step, total,"
                         " seconds) VALUES (%s, %s, %s, 'stopped', 2, 5, 0.1)",
                         (pj_id, cluster_config.queue, job_id))
        await asyncio.wait_for(scheduler.wait_idle(), 30)
        record = await store.get_job(job_id)
        assert record.status is JobStatus.CANCELLED and record.interruptions == 0
    finally:
        await scheduler.shutdown(grace_seconds=5)


async def test_no_stall_is_judged_until_a_stall_timeout_after_reconnecting(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # No worker could write its heartbeat while the database was away: right after the bot
    # reconnects every running job would look stalled. Only a heartbeat still stale a full
    # stall timeout later means a dead worker.
    job = await _a_running_job(store)
    executor = PostgresExecutor(store, cluster_config)
    await executor._open()  # no poll loop: this test decides when the backstop runs
    try:
        run = executor.launch(job)
        await wait_for(lambda: executor._runs[job.id].pj_id is not None, 30, "the enqueue")
        pj_id = executor._runs[job.id].pj_id
        with psycopg.connect(cluster_config.database_url, autocommit=True) as conn:
            row = conn.execute("INSERT INTO procrastinate_workers (last_heartbeat)"
                               " VALUES (now() - interval '1 minute') RETURNING id").fetchone()
            assert row is not None
            conn.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s"
                         " WHERE id = %s", (row[0], pj_id))
        await executor._close_connections()  # the outage ...
        await executor._open()  # ... and the reconnect
        await executor._check_all()
        assert not run.finished
        await asyncio.sleep(cluster_config.stall_timeout_seconds)
        await executor._check_all()
        assert run.finished and run._outcome is not None
        assert run._outcome.status == "interrupted"
    finally:
        await executor.close()


async def test_recovery_does_not_take_an_earlier_attempt_for_the_one_never_enqueued(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # Attempt 1 was given up (its worker looked dead) and its worker, alive after all, wrote a
    # late "cancelled" outcome. Attempt 2 was marked running, then the bot died before its
    # enqueue committed. Recovery must not read attempt 1's leftover as attempt 2's end.
    record = await store.insert_job(request(user=1), 0)
    await store.mark_running(record.id, 3)
    first = await store.get_job(record.id)
    assert first.started_at is not None
    executor = PostgresExecutor(store, cluster_config)
    await executor.connect(lambda: None)
    try:
        assert executor._app is not None
        earlier = await executor._app.configure_task(
            tables.TASK_NAME, queue=cluster_config.queue
        ).defer_async(job_id=record.id, kind=record.request.kind.value,
                      params=record.request.params, images={},
                      attempt=int(first.started_at * 1_000_000))
    finally:
        await executor.close()
    with psycopg.connect(cluster_config.database_url, autocommit=True) as conn:
        conn.execute("UPDATE procrastinate_jobs SET status = 'aborted' WHERE id = %s", (earlier,))
        conn.execute("INSERT INTO faraday_outcomes (pj_id, queue, job_id, status, step, total,"
                     " seconds) VALUES (%s, %s, %s, 'cancelled', 1, 3, 0.1)",
                     (earlier, cluster_config.queue, record.id))
    await store.requeue(record.id)
    await asyncio.sleep(0.01)  # attempt 2 starts at a later microsecond
    await store.mark_running(record.id, 3)
    scheduler = await start_cluster_scheduler(store, cluster_config)
    try:
        await asyncio.sleep(5 * cluster_config.poll_interval_seconds)
        job = await store.get_job(record.id)
        # Unknown to Postgres: one interruption, back in line (no worker is alive to take it).
        assert job.status is JobStatus.QUEUED and job.interruptions == 1
    finally:
        await scheduler.shutdown(grace_seconds=5)


async def test_a_run_being_collected_is_not_given_up(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # A NOTIFY started collecting the outcome; the backstop, racing it, must not end the run
    # as interrupted (and have its cleanup delete the results being collected).
    job = await _a_running_job(store)
    executor = PostgresExecutor(store, cluster_config)
    await executor._open()  # no poll loop
    try:
        run = executor.launch(job)
        await wait_for(lambda: executor._runs[job.id].pj_id is not None, 30, "the enqueue")
        remote = executor._runs[job.id]
        remote.collecting = True
        await executor._give_up(remote, "interrupted")
        assert not run.finished
        remote.collecting = False
        await executor._give_up(remote, "interrupted")
        assert run.finished and run._outcome is not None
        assert run._outcome.status == "interrupted"
    finally:
        await executor.close()
