"""The publisher against a fake channel sink: pacing, results, and Discord's failures."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import re
import time
from typing import Any

import pytest
from PIL import Image

from bot.events import JobInfo, JobProgress, JobQueued, JobStarted, QueueMoved
from bot.jobs import JobKind, JobStatus
from bot.progress_text import NUMBER_EMOJIS
from bot.publisher import MessageGone, NoPermission, TransientSendError
from bot.stand_in import StandInPipeline
from bot.store import Store
from tests.bot.conftest import EventLog, FakeSink, make_publisher, request


def steps_shown(content: str) -> int | None:
    found = re.search(r"[Ss]tep (\d+)/\d+", content)
    return int(found.group(1)) if found else None


async def run_jobs(make_scheduler: Any, store: Store, sink: FakeSink, jobs: list, *,
                   interval: float = 0.05, pipeline: Any = None, **retry: Any) -> tuple:
    publisher = make_publisher(store, interval, **retry)
    publisher.set_sink(sink)
    log = EventLog()
    scheduler = await make_scheduler(pipeline, listeners=(publisher, log))
    submitted = [await scheduler.submit(job) for job in jobs]
    await scheduler.wait_idle()
    await publisher.wait_settled()
    return scheduler, publisher, log, submitted


async def test_fast_pipeline_and_slow_sink_edit_at_most_once_per_interval(
    store: Store, make_scheduler: Any
) -> None:
    interval = 0.2
    sink = FakeSink(delay=0.08)
    _, _, log, [job] = await run_jobs(
        make_scheduler, store, sink, [request(user=1, steps=400)], interval=interval,
        pipeline=StandInPipeline(0.002, 16, "sleep"),
    )
    progress_id = (await store.message_for_job(job.job_id, "progress")).message_id
    shown = [c for c in sink.calls if c.message_id == progress_id]
    assert shown[0].op == "send" and len(shown) >= 3
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(shown)]
    assert min(gaps) >= interval, gaps
    # Far more snapshots arrived than were shown: the old ones were dropped, not queued.
    assert len(log.of(JobProgress)) > len(shown)
    steps = [steps_shown(c.content) for c in shown if steps_shown(c.content) is not None]
    assert steps == sorted(steps), "an older snapshot was shown after a newer one"
    final = shown[-1].content
    assert "Done" in final and steps_shown(final) == 400


async def test_results_go_out_as_one_message_with_grid_scores_and_reactions(
    store: Store, make_scheduler: Any
) -> None:
    sink = FakeSink()
    _, _, _, [job] = await run_jobs(
        make_scheduler, store, sink, [request(user=7, steps=3, kind=JobKind.EDIT, prompt="a hat")]
    )
    results = await store.results_for_job(job.job_id)
    assert len(results) == 4
    link = await store.message_for_job(job.job_id, "results")
    [posted] = [c for c in sink.of("send") if c.message_id == link.message_id]
    assert len(posted.files) == 1
    grid = Image.open(io.BytesIO(posted.files[0].data))
    assert grid.width > 2 * 16 and grid.height > 2 * 16  # 2x2 tiles of the stand-in's 16 px
    for result, emoji in zip(results, NUMBER_EMOJIS, strict=False):
        assert f"{emoji} score {result.score:.3f} · seed {result.seed}" in posted.content
    assert "“a hat”" in posted.content and "<@7>" in posted.content
    [reacted] = sink.of("react")
    assert reacted.message_id == link.message_id and reacted.emojis == list(NUMBER_EMOJIS[:4])
    assert (await store.message_role(link.message_id)).role == "results"
    progress = await store.message_for_job(job.job_id, "progress")
    assert (await store.message_role(progress.message_id)).job_id == job.job_id


async def test_a_deleted_progress_message_is_replaced_by_a_fresh_one(store: Store) -> None:
    record = await store.insert_job(request(user=1, steps=10), 0)
    info = JobInfo(record.id, JobKind.IMAGINE, 1, 1001, record.request.params)
    sink = FakeSink()
    publisher = make_publisher(store, 0.01)
    publisher.set_sink(sink)
    publisher(JobQueued(info, 1, None))
    for _ in range(200):
        if sink.calls:
            break
        await asyncio.sleep(0.01)
    first = sink.calls[0].message_id
    sink.deleted.add(first)  # a moderator deletes it
    started = time.monotonic()
    publisher(JobStarted(info, 10, started))
    preview = Image.new("RGB", (8, 8), (200, 10, 10))
    publisher(JobProgress(info, 4, 10, preview, 4, 1.0, started))
    for _ in range(200):
        link = await store.message_for_job(record.id, "progress")
        if link and link.message_id != first:
            break
        await asyncio.sleep(0.01)
    fresh = [c for c in sink.of("send") if c.message_id != first]
    assert fresh and fresh[-1].files, "the fresh message must carry the preview again"
    assert link.message_id == fresh[-1].message_id
    await publisher.close()


async def test_no_permission_is_logged_and_the_job_still_completes(
    store: Store, make_scheduler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FakeSink()
    sink.failures["send"] = [NoPermission("403 Missing Permissions")] * 2
    with caplog.at_level(logging.WARNING, logger="bot.publisher"):
        _scheduler, _, _, [job] = await run_jobs(make_scheduler, store, sink,
                                                [request(user=1, steps=5)])
    assert await store.job_status(job.job_id) is JobStatus.DONE
    results = await store.results_for_job(job.job_id)
    assert results and all(r.path.is_file() for r in results)
    assert sink.calls == [], "after a 403 the publisher must stop hammering the channel"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no permission to post progress" in w for w in warnings)
    assert any("no permission to post results" in w for w in warnings)


async def test_a_deleted_channel_is_logged_once_and_the_job_still_completes(
    store: Store, make_scheduler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FakeSink()
    sink.failures["send"] = [MessageGone("404 Unknown Channel")] * 20
    with caplog.at_level(logging.WARNING, logger="bot.publisher"):
        _, _, _, [job] = await run_jobs(make_scheduler, store, sink, [request(user=1, steps=5)])
    assert await store.job_status(job.job_id) is JobStatus.DONE
    assert len(await store.results_for_job(job.job_id)) == 1
    # One try for the progress message and one for the results, not one per update.
    assert len(sink.failures["send"]) == 18
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("is gone" in w for w in warnings) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_server_errors_are_retried_with_backoff(store: Store, make_scheduler: Any) -> None:
    sink = FakeSink()
    sink.failures["send"] = [TransientSendError("503"), TransientSendError("502")]
    sink.failures["react"] = [TransientSendError("500")]
    _, _, _, [job] = await run_jobs(
        make_scheduler, store, sink, [request(user=1, steps=3)], base_delay_seconds=0.05,
        max_attempts=4,
    )
    sends = sink.of("send")
    assert len(sends) == 2  # the progress message (3rd try) and the results
    assert len(sink.of("react")) == 1
    # Two failures before the progress message went out: 0.05 s then 0.1 s of backoff.
    assert sink.failures["send"] == [] and sink.failures["react"] == []
    assert await store.message_for_job(job.job_id, "results") is not None


async def test_results_that_never_get_through_stay_in_the_store(
    store: Store, make_scheduler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FakeSink()
    publisher_failures = [TransientSendError("500")] * 20
    sink.failures["send"] = publisher_failures
    sink.failures["edit"] = list(publisher_failures)
    with caplog.at_level(logging.ERROR, logger="bot.publisher"):
        _, _, _, [job] = await run_jobs(make_scheduler, store, sink, [request(user=1, steps=3)],
                                        max_attempts=3)
    assert await store.job_status(job.job_id) is JobStatus.DONE
    assert len(await store.results_for_job(job.job_id)) == 1
    assert any("results stay in the store" in r.getMessage() for r in caplog.records)


async def test_backoff_waits_grow(store: Store) -> None:
    record = await store.insert_job(request(user=1), 0)
    info = JobInfo(record.id, JobKind.IMAGINE, 1, 1001, {})
    sink = FakeSink()
    sink.failures["send"] = [TransientSendError("500")] * 3
    publisher = make_publisher(store, 0.0, base_delay_seconds=0.05, max_delay_seconds=1.0,
                               max_attempts=5)
    publisher.set_sink(sink)
    started = time.monotonic()
    publisher(JobQueued(info, 1, None))
    for _ in range(300):
        if sink.calls:
            break
        await asyncio.sleep(0.01)
    # Backoff 0.05 + 0.1 + 0.2 before the fourth attempt succeeds.
    assert sink.calls and sink.calls[0].at - started >= 0.35
    await publisher.close()


async def test_a_cancelled_job_keeps_its_last_preview(store: Store, make_scheduler: Any) -> None:
    sink = FakeSink()
    publisher = make_publisher(store, 0.05)
    publisher.set_sink(sink)
    log = EventLog()
    scheduler = await make_scheduler(StandInPipeline(0.01, 16, "sleep"),
                                     listeners=(publisher, log))
    job = await scheduler.submit(request(user=1, steps=5000))
    while not log.of(JobProgress) or log.of(JobProgress)[-1].step < 5:
        await asyncio.sleep(0.01)
    await scheduler.cancel(job.job_id)
    await scheduler.wait_idle()
    await publisher.wait_settled()
    link = await store.message_for_job(job.job_id, "progress")
    content, files = sink.messages[link.message_id]
    assert "Cancelled at step" in content and "last preview is kept" in content
    assert files and Image.open(io.BytesIO(files[0].data)).size == (16, 16)
    assert sink.of("react") == []  # no results message for a cancelled job


async def test_a_waiting_job_shows_its_position_as_the_queue_moves(store: Store) -> None:
    record = await store.insert_job(request(user=1), 0)
    info = JobInfo(record.id, JobKind.IMAGINE, 1, 1001, {})
    sink = FakeSink()
    publisher = make_publisher(store, 0.01)
    publisher.set_sink(sink)
    publisher(JobQueued(info, 3, 90.0))
    for _ in range(200):
        if sink.calls:
            break
        await asyncio.sleep(0.01)
    assert "Queued, position 3 · ETA 1m 30s" in sink.calls[0].content
    publisher(QueueMoved({record.id: (2, 30.0)}))
    for _ in range(200):
        if sink.of("edit"):
            break
        await asyncio.sleep(0.01)
    assert "Queued, position 2 · ETA 30s" in sink.of("edit")[0].content
    await publisher.close()


async def test_a_job_from_before_a_restart_keeps_its_progress_message(store: Store) -> None:
    record = await store.insert_job(request(user=1), 0)
    await store.link_message(4242, 1001, record.id, "progress")
    info = JobInfo(record.id, JobKind.IMAGINE, 1, 1001, {})
    sink = FakeSink()
    sink.messages[4242] = ("old", [])
    publisher = make_publisher(store, 0.01)
    publisher.set_sink(sink)
    publisher(JobQueued(info, 1, None))
    for _ in range(200):
        if sink.calls:
            break
        await asyncio.sleep(0.01)
    assert [(c.op, c.message_id) for c in sink.calls] == [("edit", 4242)]
    await publisher.close()


async def test_a_broken_sink_never_changes_a_jobs_outcome(
    store: Store, make_scheduler: Any
) -> None:
    class BrokenSink(FakeSink):
        async def send(self, *args: Any) -> int:
            raise RuntimeError("discord.py bug")

    sink = BrokenSink()
    _, _, _, jobs = await run_jobs(make_scheduler, store, sink,
                                   [request(user=1), request(user=2, fail="error")])
    assert await store.job_status(jobs[0].job_id) is JobStatus.DONE
    assert await store.job_status(jobs[1].job_id) is JobStatus.FAILED


async def test_results_committed_but_never_posted_are_posted_after_a_restart(
    store: Store,
) -> None:
    from bot.files import write_atomic
    from bot.store import NewResult

    record = await store.insert_job(request(user=3, steps=4), 0)
    await store.mark_running(record.id, 4)
    path = store.paths.result_path(record.id, 1)
    write_atomic(path, _png(Image.new("RGB", (16, 16), (9, 9, 9))))
    await store.complete_job(record.id, [NewResult(1, 0.5, 8, path)])
    # The bot stopped here. After the restart:
    sink = FakeSink()
    publisher = make_publisher(store, 0.01)
    publisher.set_sink(sink)
    assert await publisher.announce_unposted() == [record.id]
    await publisher.wait_settled()
    link = await store.message_for_job(record.id, "results")
    assert link is not None and "1️⃣ score 0.500 · seed 8" in sink.messages[link.message_id][0]
    assert await publisher.announce_unposted() == []


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
