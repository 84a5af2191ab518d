"""The scheduler's own test suite (tests/bot/test_scheduler.py), run on the PostgresExecutor.

The same test functions, imported here, get a ``make_scheduler`` whose jobs go through a real
PostgreSQL and procrastinate to an in-process GPU worker running the test's pipeline: fairness,
limits, cancellation, failures and restarts must behave exactly as with local worker threads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cluster.executor import PostgresExecutor
from bot.config import ClusterConfig, SchedulerConfig
from bot.scheduler import Scheduler
from bot.store import Store
from tests.bot.conftest import scheduler_config
from tests.bot.test_scheduler import (  # noqa: F401  (collected here, on this module's fixtures)
    test_a_missing_seed_is_fixed_before_the_job_is_stored,
    test_a_pipeline_exception_fails_only_its_own_job,
    test_a_user_who_had_this_rounds_turn_waits_for_the_next_round,
    test_an_invalid_request_fails_with_the_pipelines_own_words,
    test_cancel_a_queued_job_removes_it,
    test_cancelling_waiting_jobs_gives_their_rounds_back,
    test_fair_order_and_given_back_rounds_survive_a_restart,
    test_fair_round_robin_across_users_fifo_within_user,
    test_global_limit_refuses_with_the_position_it_would_have,
    test_models_that_cannot_load_fail_the_job_without_naming_server_files,
    test_out_of_memory_gets_its_own_message,
    test_per_user_limit_refuses_with_reason_and_positions,
    test_shutdown_stops_the_running_job_and_requeues_it,
    test_the_global_limit_names_the_fair_position_not_the_end_of_the_line,
)
from tests.cluster.conftest import Workers

# Not imported: test_cancel_a_running_job_stops_at_the_next_step_and_keeps_its_preview compares
# with the step the queue view shows, which a remote worker reports at most once per progress
# interval; test_cancel_of_a_remote_job_stops_within_a_step_and_a_poll below is its remote form.

pytestmark = pytest.mark.cluster


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def make_scheduler(
    store: Store, cluster_config: ClusterConfig, workers: Workers
) -> AsyncIterator[Any]:
    made: list[Scheduler] = []

    async def factory(
        pipeline: Any = None,
        *,
        config: SchedulerConfig | None = None,
        listeners: tuple = (),
        start: bool = True,
        on_store: Store | None = None,
    ) -> Scheduler:
        # A restarted bot meets a worker with the new pipeline; the old worker is gone.
        workers.stop_all()
        workers.started.clear()
        workers.start(pipeline)
        target = on_store or store
        scheduler = Scheduler(target, None, config or scheduler_config(),
                              executor=PostgresExecutor(target, cluster_config))
        for listener in listeners:
            scheduler.add_listener(listener)
        made.append(scheduler)
        if start:
            await scheduler.start()
        return scheduler

    yield factory
    for scheduler in made:
        await scheduler.shutdown(grace_seconds=5)


async def test_cancel_of_a_remote_job_stops_within_a_step_and_a_poll(
    make_scheduler: Any, cluster_config: ClusterConfig
) -> None:
    import asyncio
    import math

    from bot.events import JobFinished
    from bot.jobs import JobStatus
    from bot.stand_in import StandInPipeline
    from tests.bot.conftest import EventLog, request

    step_seconds = 0.02
    counted = _StepCounter(StandInPipeline(step_seconds, 16, "sleep"))
    log = EventLog()
    scheduler = await make_scheduler(counted, listeners=(log,))
    job = await scheduler.submit(request(user=1, steps=2000))
    while counted.steps < 5:
        await asyncio.sleep(0.01)
    at_cancel = counted.steps
    await scheduler.cancel(job.job_id)
    await asyncio.wait_for(scheduler.wait_idle(), 30)
    [finished] = log.of(JobFinished)
    assert finished.status is JobStatus.CANCELLED and finished.last_preview is not None
    # One step, plus the steps that fit in one poll interval (the abort's backstop).
    allowed = 1 + math.ceil(cluster_config.poll_interval_seconds / step_seconds)
    assert counted.steps - at_cancel <= allowed
    record = await scheduler.store.get_job(job.job_id)
    assert record.preview_path is not None and record.preview_path.is_file()


class _StepCounter:
    """Counts the steps the pipeline really ran, on the worker's side."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.steps = 0

    def __call__(self, request: Any, on_progress: Any, should_cancel: Any) -> Any:
        def progress(step: int, total: int, preview: Any) -> None:
            self.steps = step
            on_progress(step, total, preview)

        return self.inner(request, progress, should_cancel)
