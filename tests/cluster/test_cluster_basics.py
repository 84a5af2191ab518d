"""The scheduler on GPU workers through a real PostgreSQL and procrastinate."""

from __future__ import annotations

import asyncio

from bot.events import JobFinished, JobProgress
from bot.jobs import JobStatus
from bot.stand_in import StandInPipeline
from tests.bot.conftest import EventLog, request
from tests.cluster.conftest import start_cluster_scheduler


async def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_job_runs_on_a_worker_and_its_results_land_in_sqlite(
    store, cluster_config, workers  # type: ignore[no-untyped-def]
) -> None:
    workers.start(StandInPipeline(0.02, 16, "sleep"))
    scheduler = await start_cluster_scheduler(store, cluster_config)
    log = EventLog()
    scheduler.add_listener(log)
    try:
        await wait_for(lambda: scheduler.executor.free_slots() == 1)
        job = await scheduler.submit(request(user=1, steps=10))
        await asyncio.wait_for(scheduler.wait_idle(), 30)
    finally:
        await scheduler.shutdown(grace_seconds=5)
    [finished] = log.of(JobFinished)
    assert finished.status is JobStatus.DONE
    assert log.of(JobProgress)
    results = await store.results_for_job(job.job_id)
    assert len(results) == 1 and results[0].path.is_file()
