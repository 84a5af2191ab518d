"""/history's pages, /stats' figures and /purge's deletions, read from and done on a real store."""

from __future__ import annotations

import time
from pathlib import Path

from bot.history import STATS_DAYS, history_page, stats
from bot.jobs import JobKind, JobRequest, JobStatus
from bot.owner_store import OwnerStore
from bot.owner_text import chunks, history_text, stats_text
from bot.store import NewResult, Store


def job(
    user: int, prompt: str, kind: JobKind = JobKind.IMAGINE, images: dict | None = None
) -> JobRequest:
    return JobRequest(
        kind, user, 500, 9, {"prompt": prompt, "seed": 1000 + user}, images=images or {}
    )


async def finish(store: Store, job_id: int, ok: bool = True, error: str = "") -> list:
    await store.mark_running(job_id, 3)
    if not ok:
        await store.finish_job(job_id, JobStatus.FAILED, error)
        return []
    path = store.paths.result_path(job_id, 1)
    path.write_bytes(b"png")
    return await store.complete_job(job_id, [NewResult(1, 0.5, 7, path)])


async def test_history_pages_newest_first_with_links_and_seeds(store: Store) -> None:
    ids = [(await store.insert_job(job(1, f"prompt {i}"), 0)).id for i in range(7)]
    await store.insert_job(job(2, "someone else"), 0)
    await finish(store, ids[-1])
    await store.link_message(777, 500, ids[-1], "results")

    first = await history_page(store, 1, 0, 5)
    assert (first.page, first.pages, first.total) == (0, 2, 7)
    assert [e.job_id for e in first.entries] == ids[::-1][:5]
    assert first.entries[0].message == (500, 777) and first.entries[1].message is None
    text = history_text(first, "Your")
    assert "page 1 of 2 (7 in all)" in text
    assert "https://discord.com/channels/9/500/777" in text and "seed `1001`" in text
    second = await history_page(store, 1, 1, 5)
    assert [e.job_id for e in second.entries] == ids[1::-1]
    assert (await history_page(store, 1, 99, 5)).page == 1  # past the end: the last page
    assert (await history_page(store, 3, 0, 5)).total == 0


async def test_stats_count_days_medians_failures_queue_and_users(store: Store) -> None:
    a = (await store.insert_job(job(1, "a"), 0)).id
    b = (await store.insert_job(job(1, "b"), 0)).id
    c = (await store.insert_job(job(2, "c", JobKind.EDIT), 0)).id
    await store.insert_job(job(3, "waiting"), 0)
    await finish(store, a)
    await finish(store, b, ok=False, error="ran out of memory\ntrace")
    await finish(store, c, ok=False, error="ran out of memory")
    figures = await stats(store)
    assert len(figures.days) == STATS_DAYS and figures.days[-1][1] == 4
    assert sum(n for _, n in figures.days) == 4
    kinds = {t.kind: t for t in figures.times}
    assert kinds["imagine"].jobs == 3 and kinds["edit"].jobs == 1
    assert kinds["imagine"].median_run_seconds is not None  # a finished job
    assert kinds["edit"].median_run_seconds is None  # only a failed one
    assert figures.failures == [("ran out of memory", 2)]
    assert figures.queue_length == 1
    assert figures.busiest == [(1, 2), (2, 1), (3, 1)]
    text = stats_text(figures)
    assert "2 × ran out of memory" in text and "<@1> 2" in text
    # Jobs older than the window are left out.
    old = await stats(store, now=time.time() + 30 * 86_400)
    assert old.busiest == [] and sum(n for _, n in old.days) == 0


async def test_purge_deletes_only_that_users_finished_jobs_and_unshared_files(
    store: Store, data_dir: Path
) -> None:
    owners = OwnerStore(store)
    shared, own = b"shared image", b"alice's image"
    mine = (await store.insert_job(job(1, "a", images={"init_image": shared}), 0)).id
    mine2 = (await store.insert_job(job(1, "b", images={"init_image": own}), 0)).id
    waiting = (await store.insert_job(job(1, "still queued"), 0)).id
    theirs = (await store.insert_job(job(2, "c", images={"init_image": shared}), 0)).id
    results = await finish(store, mine)
    await finish(store, mine2)
    await finish(store, theirs)
    await store.link_message(41, 500, mine, "progress")
    frames = store.paths.frames_dir(mine)
    frames.mkdir(parents=True)
    (frames / "000001.png").write_bytes(b"frame")
    await store.link_message(42, 500, mine, "results")

    report = await owners.purge_user(1)
    assert sorted(report.job_ids) == [mine, mine2]
    assert sorted(report.messages) == [(500, 41), (500, 42)]
    assert not results[0].path.exists() and not frames.exists()
    assert not store.paths.input_path(own).exists()
    assert store.paths.input_path(shared).exists()  # bob's job still names it
    assert await store.get_job(mine) is None and await store.message_role(42) is None
    assert await store.get_job(waiting) is not None  # the caller cancels these first
    assert (await store.get_job(theirs)).status is JobStatus.DONE


def test_long_answers_are_split_at_line_ends_under_discords_limit() -> None:
    text = "\n".join(f"line {i} " + "x" * 90 for i in range(60))
    parts = chunks(text)
    assert len(parts) > 1 and all(len(p) <= 2000 for p in parts)
    assert "\n".join(parts) == text
