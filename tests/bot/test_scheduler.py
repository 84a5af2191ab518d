"""The scheduler on the deterministic stand-in pipeline, with real SQLite files."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any

import pytest

from bot.events import JobFinished, JobProgress, JobQueued, JobRequeued, JobStarted
from bot.jobs import JobKind, JobStatus
from bot.scheduler import CancelOutcome, Scheduler, SubmitRefused
from bot.stand_in import StandInPipeline, StandInSource
from bot.store import INTERRUPTED_TWICE, Store
from bot.worker import LatestOnlyMailbox
from pipelines.downloads import ModelFileError
from tests.bot.conftest import EventLog, request, scheduler_config


class Gate:
    """Wraps a pipeline: the first ``calls`` runs stop inside step ``at_step`` until released."""

    def __init__(self, inner: Any, at_step: int = 1, calls: int = 1) -> None:
        self.inner = inner
        self.at_step = at_step
        self.calls = calls
        self.count = 0
        self.reached = threading.Event()
        self.release = threading.Event()
        self.fail_after_release = False

    def __call__(self, request: Any, on_progress: Any, should_cancel: Any) -> Any:
        gated = self.count < self.calls
        self.count += 1

        def progress(step: int, total: int, preview: Any) -> None:
            on_progress(step, total, preview)
            if gated and step == self.at_step:
                self.reached.set()
                # Polls cancellation too, so a test that fails early still shuts down quickly.
                while not self.release.wait(0.01):
                    if should_cancel():
                        break
                if self.fail_after_release:
                    raise RuntimeError("this process is gone")

        return self.inner(request, progress, should_cancel)

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, 30), "the gated step was never reached"


def finished_order(log: EventLog) -> list[int]:
    return [e.job.job_id for e in log.of(JobFinished)]


async def test_fair_round_robin_across_users_fifo_within_user(make_scheduler: Any) -> None:
    gate = Gate(StandInPipeline(0.0, 8, "sleep"))
    log = EventLog()
    scheduler = await make_scheduler(gate, listeners=(log,))
    first = await scheduler.submit(request(user=9))
    await gate.wait_reached()
    # User 1 floods the queue before users 2 and 3 arrive.
    a = [(await scheduler.submit(request(user=1))).job_id for _ in range(3)]
    b = [(await scheduler.submit(request(user=2))).job_id for _ in range(2)]
    c = [(await scheduler.submit(request(user=3))).job_id]
    positions = {entry.job_id: entry.position for entry in scheduler.snapshot().queued}
    gate.release.set()
    await scheduler.wait_idle()
    expected = [first.job_id, a[0], b[0], c[0], a[1], b[1], a[2]]
    assert finished_order(log) == expected
    # Reported positions matched the order the jobs then ran in (the running job is 1).
    assert [positions[j] for j in expected[1:]] == [2, 3, 4, 5, 6, 7]


async def test_a_user_who_had_this_rounds_turn_waits_for_the_next_round(
    make_scheduler: Any,
) -> None:
    gate = Gate(StandInPipeline(0.0, 8, "sleep"))
    log = EventLog()
    scheduler = await make_scheduler(gate, listeners=(log,))
    b0 = (await scheduler.submit(request(user=2))).job_id  # runs first, in round 0
    await gate.wait_reached()
    a = [(await scheduler.submit(request(user=1))).job_id for _ in range(2)]
    b1 = (await scheduler.submit(request(user=2))).job_id  # user 2 already ran this round
    gate.release.set()
    await scheduler.wait_idle()
    # Round 0: b0, a0. Round 1: a1 and b1, in order of arrival.
    assert finished_order(log) == [b0, a[0], a[1], b1]


async def test_cancelling_waiting_jobs_gives_their_rounds_back(make_scheduler: Any) -> None:
    gate = Gate(StandInPipeline(0.0, 8, "sleep"))
    log = EventLog()
    scheduler = await make_scheduler(gate, listeners=(log,))
    first = await scheduler.submit(request(user=9))
    await gate.wait_reached()
    a = [(await scheduler.submit(request(user=1))).job_id for _ in range(3)]
    b = [(await scheduler.submit(request(user=2))).job_id for _ in range(3)]
    for job_id in a[1:]:
        assert await scheduler.cancel(job_id) is CancelOutcome.REMOVED
    # User 1 changed their mind; their new job takes the next round (after user 2's job of that
    # round, which came first), not a round behind the two jobs they cancelled.
    again = (await scheduler.submit(request(user=1))).job_id
    gate.release.set()
    await scheduler.wait_idle()
    done = [e.job.job_id for e in log.of(JobFinished) if e.status is JobStatus.DONE]
    assert done == [first.job_id, a[0], b[0], b[1], again, b[2]]


async def test_fair_order_and_given_back_rounds_survive_a_restart(
    store: Store, make_scheduler: Any
) -> None:
    gate = Gate(StandInPipeline(0.0, 8, "sleep"))
    scheduler = await make_scheduler(gate)
    first = await scheduler.submit(request(user=9))
    await gate.wait_reached()
    a = [(await scheduler.submit(request(user=1))).job_id for _ in range(4)]  # rounds 0-3
    b = [(await scheduler.submit(request(user=2))).job_id for _ in range(5)]  # rounds 0-4
    await scheduler.cancel(a[3])
    await scheduler.shutdown(grace_seconds=5)
    log = EventLog()
    restarted = await make_scheduler(Gate(StandInPipeline(0.0, 8, "sleep"), calls=0),
                                     listeners=(log,))
    # Run order is the stored fair order, not arrival order (user 1's jobs all came first).
    in_line = [first.job_id, a[0], b[0], a[1], b[1], a[2], b[2], b[3], b[4]]
    assert [e.job.job_id for e in log.of(JobQueued)] == in_line
    user_3 = (await restarted.submit(request(user=3))).job_id  # a newcomer: the current round
    user_1 = (await restarted.submit(request(user=1))).job_id  # round 3, as a[3] is gone
    await restarted.wait_idle()
    assert finished_order(log) == [first.job_id, a[0], b[0], user_3, a[1], b[1], a[2], b[2],
                                   b[3], user_1, b[4]]


async def test_per_user_limit_refuses_with_reason_and_positions(make_scheduler: Any) -> None:
    gate = Gate(StandInPipeline(0.0, 8, "sleep"))
    scheduler = await make_scheduler(
        gate, config=scheduler_config(max_queued_per_user=2, max_queued_total=10)
    )
    await scheduler.submit(request(user=1))  # runs, so it does not count as waiting
    await gate.wait_reached()
    await scheduler.submit(request(user=1))
    await scheduler.submit(request(user=1))
    with pytest.raises(SubmitRefused) as refused:
        await scheduler.submit(request(user=1))
    assert refused.value.reason == "user_limit"
    text = str(refused.value)
    assert "2 job(s) waiting" in text and "limit is 2" in text and "position(s) 2, 3 of 3" in text
    # Someone else is not affected (and, being fair, goes ahead of user 1's second job), and
    # nothing was stored for the refused job.
    assert (await scheduler.submit(request(user=2))).position == 2
    assert await scheduler.store.count_jobs() == 4
    gate.release.set()


async def test_global_limit_refuses_with_the_position_it_would_have(make_scheduler: Any) -> None:
    gate = Gate(StandInPipeline(0.0, 8, "sleep"))
    scheduler = await make_scheduler(
        gate, config=scheduler_config(max_queued_per_user=2, max_queued_total=3)
    )
    await scheduler.submit(request(user=1))
    await gate.wait_reached()
    for user in (2, 3, 4):
        await scheduler.submit(request(user=user))
    with pytest.raises(SubmitRefused) as refused:
        await scheduler.submit(request(user=5))
    assert refused.value.reason == "global_limit"
    assert "3 jobs are waiting (the limit is 3)" in str(refused.value)
    assert "position 5 of 5" in str(refused.value)
    gate.release.set()


async def test_the_global_limit_names_the_fair_position_not_the_end_of_the_line(
    make_scheduler: Any,
) -> None:
    gate = Gate(StandInPipeline(0.0, 8, "sleep"))
    scheduler = await make_scheduler(
        gate, config=scheduler_config(max_queued_per_user=3, max_queued_total=3)
    )
    await scheduler.submit(request(user=1))
    await gate.wait_reached()
    for _ in range(3):
        await scheduler.submit(request(user=2))
    with pytest.raises(SubmitRefused) as refused:
        await scheduler.submit(request(user=5))
    # After the running job and user 2's first; user 2's other two wait for later rounds.
    assert "would be at position 3 of 5" in str(refused.value)
    gate.release.set()


async def test_cancel_a_queued_job_removes_it(make_scheduler: Any) -> None:
    gate = Gate(StandInPipeline(0.0, 8, "sleep"))
    log = EventLog()
    scheduler = await make_scheduler(gate, listeners=(log,))
    running = await scheduler.submit(request(user=1))
    await gate.wait_reached()
    waiting = await scheduler.submit(request(user=2))
    after = await scheduler.submit(request(user=3))
    assert await scheduler.cancel(waiting.job_id) is CancelOutcome.REMOVED
    assert scheduler.snapshot().position_of(after.job_id) == 2
    gate.release.set()
    await scheduler.wait_idle()
    assert await scheduler.store.job_status(waiting.job_id) is JobStatus.CANCELLED
    assert waiting.job_id not in [e.job.job_id for e in log.of(JobStarted)]
    assert gate.count == 2  # only the other two jobs ever reached the pipeline
    assert await scheduler.cancel(waiting.job_id) is CancelOutcome.ALREADY_FINISHED
    assert await scheduler.cancel(running.job_id) is CancelOutcome.ALREADY_FINISHED
    assert await scheduler.cancel(12345) is CancelOutcome.NOT_FOUND


async def test_cancel_a_running_job_stops_at_the_next_step_and_keeps_its_preview(
    make_scheduler: Any,
) -> None:
    log = EventLog()
    scheduler = await make_scheduler(StandInPipeline(0.02, 16, "sleep"), listeners=(log,))
    job = await scheduler.submit(request(user=1, steps=2000))
    for _ in range(500):
        if log.of(JobProgress) and log.of(JobProgress)[-1].step >= 3:
            break
        await asyncio.sleep(0.01)
    step_at_cancel = scheduler.snapshot().running.step
    assert await scheduler.cancel(job.job_id) is CancelOutcome.STOPPING
    assert scheduler.snapshot().running.stopping
    await scheduler.wait_idle()
    [finished] = log.of(JobFinished)
    assert finished.status is JobStatus.CANCELLED
    assert step_at_cancel <= finished.step <= step_at_cancel + 1  # stopped at the next step
    assert finished.last_preview is not None
    record = await scheduler.store.get_job(job.job_id)
    assert record.status is JobStatus.CANCELLED
    assert record.preview_path is not None and record.preview_path.is_file()
    assert await scheduler.store.results_for_job(job.job_id) == []


async def test_a_pipeline_exception_fails_only_its_own_job(
    make_scheduler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = await make_scheduler()
    ok_before = await scheduler.submit(request(user=1))
    broken = await scheduler.submit(request(user=2, fail="error", fail_at_step=2))
    ok_after = await scheduler.submit(request(user=3))
    with caplog.at_level(logging.ERROR, logger="bot.scheduler"):
        await scheduler.wait_idle()
    store = scheduler.store
    assert await store.job_status(ok_before.job_id) is JobStatus.DONE
    assert await store.job_status(ok_after.job_id) is JobStatus.DONE
    failed = await store.get_job(broken.job_id)
    assert failed.status is JobStatus.FAILED
    assert failed.error.startswith("something went wrong while making the image (RuntimeError)")
    assert "Traceback" not in failed.error and "stand-in failure" not in failed.error
    logged = [r for r in caplog.records if r.exc_info and f"job {broken.job_id}" in r.message]
    assert logged and "stand-in failure at step 2" in str(logged[0].exc_info[1])
    assert len(await store.results_for_job(ok_after.job_id)) == 1


@pytest.mark.parametrize(
    ("kind", "advice"),
    [(JobKind.IMAGINE, "smaller size or fewer cutouts"), (JobKind.EDIT, "fewer candidates")],
)
async def test_out_of_memory_gets_its_own_message(
    make_scheduler: Any, kind: JobKind, advice: str
) -> None:
    scheduler = await make_scheduler()
    job = await scheduler.submit(request(user=1, kind=kind, fail="oom"))
    await scheduler.wait_idle()
    record = await scheduler.store.get_job(job.job_id)
    assert record.status is JobStatus.FAILED
    assert record.error.startswith("ran out of memory") and advice in record.error


async def test_models_that_cannot_load_fail_the_job_without_naming_server_files(
    make_scheduler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def unloadable(request: Any, on_progress: Any, should_cancel: Any) -> Any:
        raise ModelFileError("models.vqgan_config: local file /srv/secret/model.yaml is missing")

    scheduler = await make_scheduler(unloadable)
    job = await scheduler.submit(request(user=1))
    later = await scheduler.submit(request(user=2))
    with caplog.at_level(logging.ERROR, logger="bot.scheduler"):
        await scheduler.wait_idle()
    record = await scheduler.store.get_job(job.job_id)
    assert record.status is JobStatus.FAILED
    assert record.error.startswith("the bot's models could not be loaded")
    assert "/srv/secret" not in record.error
    assert any("/srv/secret/model.yaml" in r.getMessage() for r in caplog.records)
    assert await scheduler.store.job_status(later.job_id) is JobStatus.FAILED


async def test_an_invalid_request_fails_with_the_pipelines_own_words(make_scheduler: Any) -> None:
    scheduler = await make_scheduler()
    job = await scheduler.submit(request(user=1, fail="invalid", fail_at_step=1))
    await scheduler.wait_idle()
    record = await scheduler.store.get_job(job.job_id)
    assert record.error == "the stand-in refused step 1 (invalid on purpose)"


async def test_the_pipeline_never_runs_on_the_loop_thread(make_scheduler: Any) -> None:
    pipeline = StandInPipeline(0.0, 8, "sleep")
    scheduler = await make_scheduler(pipeline)
    for user in (1, 2, 3):
        await scheduler.submit(request(user=user))
    await scheduler.wait_idle()
    loop_thread = threading.get_ident()
    assert len(pipeline.thread_idents) == 3
    assert set(pipeline.thread_idents) == {scheduler.worker_thread_ident}
    assert loop_thread not in pipeline.thread_idents
    source = scheduler.source
    assert isinstance(source, StandInSource)
    assert set(source.prepared_on) == {scheduler.worker_thread_ident}


async def test_progress_hand_off_keeps_only_the_newest_snapshot() -> None:
    loop = asyncio.get_running_loop()
    delivered: list[int] = []
    mailbox: LatestOnlyMailbox[int] = LatestOnlyMailbox(loop, delivered.append)

    def flood() -> None:
        for item in range(1, 1001):
            mailbox.post(item)

    worker = threading.Thread(target=flood)
    worker.start()
    worker.join()  # the loop is deliberately held while the worker posts 1,000 snapshots
    for _ in range(3):
        await asyncio.sleep(0)
    assert delivered == [1000]
    assert mailbox.posted == 1000 and mailbox.delivered == 1


async def test_a_missing_seed_is_fixed_before_the_job_is_stored(make_scheduler: Any) -> None:
    scheduler = await make_scheduler()
    free = await scheduler.submit(request(user=1, seed=None))
    fixed = await scheduler.submit(request(user=2, seed=77))
    await scheduler.wait_idle()
    stored_free = (await scheduler.store.get_job(free.job_id)).request.params["seed"]
    assert isinstance(stored_free, int) and 0 <= stored_free < 2**32
    assert (await scheduler.store.get_job(fixed.job_id)).request.params["seed"] == 77
    results = await scheduler.store.results_for_job(free.job_id)
    assert results[0].seed == stored_free


async def test_positions_and_etas_come_from_recent_step_times(make_scheduler: Any) -> None:
    gate = Gate(StandInPipeline(0.01, 8, "sleep"), at_step=5, calls=2)
    gate.calls = 0  # the first job runs freely to give the estimator a step time
    scheduler = await make_scheduler(gate)
    await scheduler.submit(request(user=1, steps=10))
    await scheduler.wait_idle()
    per_step = scheduler.eta.seconds_per_step(JobKind.IMAGINE, {"steps": 10})
    assert per_step is not None and per_step >= 0.01
    gate.calls = 2
    running = await scheduler.submit(request(user=1, steps=10))
    await gate.wait_reached()
    second = await scheduler.submit(request(user=2, steps=10))
    third = await scheduler.submit(request(user=3, steps=20))
    snapshot = scheduler.snapshot()
    assert snapshot.running.job_id == running.job_id and snapshot.running.step == 5
    assert [(e.job_id, e.position) for e in snapshot.queued] == [
        (second.job_id, 2), (third.job_id, 3)
    ]
    eta2, eta3 = (e.eta_seconds for e in snapshot.queued)
    assert eta2 is not None and eta3 is not None
    # The third waits for the second, then runs twice as many steps.
    assert eta3 - eta2 == pytest.approx(20 * per_step, rel=0.05)
    assert second.eta_seconds is not None
    gate.release.set()
    await scheduler.wait_idle()


class ReportsThreeQuarters:
    """Reports progress over the last 3/4 of its steps only, as an edit with blend_start 0.25."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, request: Any, on_progress: Any, should_cancel: Any) -> Any:
        def progress(step: int, total: int, preview: Any) -> None:
            shown = total * 3 // 4
            on_progress(max(0, step - (total - shown)), shown, preview)

        return self.inner(request, progress, should_cancel)


async def test_eta_history_predicts_a_whole_job_before_and_after_a_restart(
    store: Store, make_scheduler: Any
) -> None:
    scheduler = await make_scheduler(ReportsThreeQuarters(StandInPipeline(0.01, 8, "sleep")))
    job = await scheduler.submit(request(user=1, steps=20, kind=JobKind.EDIT))
    await scheduler.wait_idle()
    record = await store.get_job(job.job_id)
    wall = record.finished_at - record.started_at
    # The pipeline counted 15 steps, the job asked for 20: an average per reported step would
    # predict a third more than the job took.
    predicted = scheduler.eta.job_seconds(JobKind.EDIT, {"steps": 20})
    assert predicted is not None and 20 * 0.01 <= predicted <= wall
    await scheduler.shutdown()
    restarted = await make_scheduler()
    assert restarted.eta.job_seconds(JobKind.EDIT, {"steps": 20}) == pytest.approx(wall)


async def test_shutdown_stops_the_running_job_and_requeues_it(
    store: Store, make_scheduler: Any
) -> None:
    log = EventLog()
    scheduler = await make_scheduler(StandInPipeline(0.02, 8, "sleep"), listeners=(log,))
    job = await scheduler.submit(request(user=1, steps=2000))
    waiting = await scheduler.submit(request(user=2))
    while not log.of(JobProgress):
        await asyncio.sleep(0.01)
    await scheduler.shutdown(grace_seconds=5)
    assert log.of(JobRequeued)[0].job.job_id == job.job_id
    record = await store.get_job(job.job_id)
    assert record.status is JobStatus.QUEUED and record.interruptions == 0
    assert await store.job_status(waiting.job_id) is JobStatus.QUEUED
    with pytest.raises(SubmitRefused) as refused:
        await scheduler.submit(request(user=3))
    assert refused.value.reason == "shutting_down"
    # A clean stop is not an interruption: the next start runs the job normally.
    log2 = EventLog()
    restarted = await make_scheduler(StandInPipeline(0.0, 8, "sleep"), listeners=(log2,))
    queued_again = [e.job.job_id for e in log2.of(JobQueued)]
    assert queued_again == [job.job_id, waiting.job_id]
    await restarted.wait_idle()
    assert await store.job_status(job.job_id) is JobStatus.DONE


async def _crash(scheduler: Scheduler) -> None:
    """What a killed process leaves behind: no more writes, no clean shutdown."""
    tasks = [r.task for r in scheduler._running.values()] + [scheduler._dispatcher]
    for task in tasks:
        if task is not None:
            task.cancel()
    for task in tasks:
        if task is not None:
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_recovery_after_a_crash_requeues_and_loses_nothing(
    data_dir: Any, make_scheduler: Any
) -> None:
    database = data_dir / "faraday.sqlite3"
    first_store = await Store.open(database, data_dir)
    gate = Gate(StandInPipeline(0.0, 8, "sleep"), at_step=3, calls=2)
    gate.calls = 0
    gate.fail_after_release = True
    crashed = Scheduler(first_store, StandInSource(gate), scheduler_config())
    await crashed.start()
    done = await crashed.submit(request(user=1, steps=4, candidates=2))
    await crashed.wait_idle()
    gate.calls = 2
    halfway = await crashed.submit(request(user=2, steps=6, candidates=3))
    behind = [(await crashed.submit(request(user=u))).job_id for u in (3, 4, 3)]
    await gate.wait_reached()
    assert await first_store.job_status(halfway.job_id) is JobStatus.RUNNING
    await _crash(crashed)

    # A new process: a new connection to the same files while the old one is still open.
    second_store = await Store.open(database, data_dir)
    log = EventLog()
    recovered = await make_scheduler(StandInPipeline(0.0, 8, "sleep"), listeners=(log,),
                                     on_store=second_store)
    await recovered.wait_idle()
    assert [e.job.job_id for e in log.of(JobQueued)] == [halfway.job_id, *behind]
    assert finished_order(log) == [halfway.job_id, *behind]
    record = await second_store.get_job(halfway.job_id)
    assert record.status is JobStatus.DONE and record.interruptions == 1
    assert [r.rank for r in await second_store.results_for_job(halfway.job_id)] == [1, 2, 3]
    kept = await second_store.results_for_job(done.job_id)
    assert [r.rank for r in kept] == [1, 2] and all(r.path.is_file() for r in kept)
    assert await second_store.count_jobs() == 5
    assert await second_store.count_jobs(JobStatus.DONE) == 5
    gate.release.set()
    await first_store.close()
    await recovered.shutdown()
    await second_store.close()


async def test_a_job_interrupted_twice_is_failed(data_dir: Any) -> None:
    database = data_dir / "faraday.sqlite3"
    stores = []
    for attempt in range(2):
        store = await Store.open(database, data_dir)
        stores.append(store)
        gate = Gate(StandInPipeline(0.0, 8, "sleep"), at_step=2)
        scheduler = Scheduler(store, StandInSource(gate), scheduler_config())
        report = await scheduler.start()
        if attempt == 0:
            job = await scheduler.submit(request(user=1, steps=5))
        else:
            assert report.requeued == [job.job_id]
        await gate.wait_reached()
        await _crash(scheduler)
        gate.fail_after_release = True
        gate.release.set()
    store = await Store.open(database, data_dir)
    log = EventLog()
    scheduler = Scheduler(store, StandInSource(StandInPipeline(0.0, 8, "sleep")),
                          scheduler_config())
    scheduler.add_listener(log)
    report = await scheduler.start()
    assert report.failed == [job.job_id] and report.requeued == []
    record = await store.get_job(job.job_id)
    assert record.status is JobStatus.FAILED and record.error == INTERRUPTED_TWICE
    assert log.of(JobFinished)[0].error == INTERRUPTED_TWICE
    await scheduler.shutdown()
    for opened in [*stores, store]:
        await opened.close()


async def test_results_that_cannot_be_saved_fail_the_job_not_the_worker(
    make_scheduler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.local_executor as scheduler_module

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    scheduler = await make_scheduler()
    monkeypatch.setattr(scheduler_module, "write_atomic", disk_full)
    lost = await scheduler.submit(request(user=1))
    await scheduler.wait_idle()
    monkeypatch.undo()
    kept = await scheduler.submit(request(user=2))
    await scheduler.wait_idle()
    record = await scheduler.store.get_job(lost.job_id)
    assert record.status is JobStatus.FAILED
    assert record.error.startswith("the images were made but could not be saved (No space left")
    assert await scheduler.store.job_status(kept.job_id) is JobStatus.DONE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_the_worker_thread_runs_at_a_lower_priority_than_the_loop() -> None:
    from bot.worker import WorkerThread

    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker = WorkerThread(niceness=3)
    worker.start()
    try:
        worker_nice = await worker.run(nice_of_this_thread)
    finally:
        worker.stop()
    assert worker_nice == min(19, nice_of_this_thread() + 3)
