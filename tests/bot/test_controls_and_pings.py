"""Buttons as data (layout within Discord's limits, custom_ids that round-trip), the ping when a
job ends, per-user preferences, and the ℹ️ text."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.controls import (
    MAX_PER_ROW,
    MAX_ROWS,
    Act,
    custom_id,
    parse_custom_id,
    progress_controls,
    result_controls,
    row_count,
)
from bot.job_info import reproduce_command
from bot.jobs import JobKind, JobStatus
from bot.store import MIGRATIONS, Store
from tests.bot.conftest import FakeSink, make_publisher, request


@pytest.mark.parametrize("count", range(1, 11))
def test_result_buttons_fit_discords_limits_for_every_candidate_count(count: int) -> None:
    rows = result_controls(123456789012, JobKind.IMAGINE, count)
    assert len(rows) <= MAX_ROWS and all(1 <= len(row) <= MAX_PER_ROW for row in rows)
    assert len(rows) == row_count(count)
    ids = [control.custom_id for row in rows for control in row]
    assert len(ids) == len(set(ids)) and all(len(i) <= 100 for i in ids)
    continues = [c.n for row in rows for c in row if c.act is Act.CONTINUE]
    singles = [c.n for row in rows for c in row if c.act is Act.SINGLE]
    assert continues == singles == list(range(1, count + 1))
    assert [c.act for c in rows[-1]] == [Act.REROLL, Act.REMIX, Act.INFO, Act.TIMELAPSE, Act.DELETE]


def test_nine_candidates_line_up_numbers_over_their_u_buttons() -> None:
    rows = result_controls(5, JobKind.IMAGINE, 9)
    labels = [[c.label for c in row] for row in rows[:4]]
    assert labels == [
        ["1", "2", "3", "4", "5"],
        ["6", "7", "8", "9"],
        ["U1", "U2", "U3", "U4", "U5"],
        ["U6", "U7", "U8", "U9"],
    ]


def test_edit_results_have_no_timelapse_and_progress_has_cancel() -> None:
    tools = result_controls(5, JobKind.EDIT, 4)[-1]
    assert Act.TIMELAPSE not in [c.act for c in tools]
    ((cancel,),) = progress_controls(5)
    assert cancel.custom_id == "fd:cancel:5:0"


def test_custom_ids_round_trip_and_foreign_ones_are_not_ours() -> None:
    for act in Act:
        press = parse_custom_id(custom_id(act, 42, 3))
        assert press is not None and (press.act, press.job_id, press.n) == (act, 42, 3)
    for foreign in ("fd:explode:1:0", "fd:continue:x:1", "other:continue:1:1", "fd:info:1"):
        assert parse_custom_id(foreign) is None


def test_the_info_command_reproduces_the_job() -> None:
    params = {
        "prompt": "a fox | oil:0.5",
        "seed": 9,
        "steps": 40,
        "width": 384,
        "height": 256,
        "cutn": 16,
        "candidates": 4,
        "preview_every": 10,
    }
    assert reproduce_command(JobKind.IMAGINE, params) == (
        "/imagine prompt:a fox | oil:0.5 seed:9 steps:40 size:384x256 cutn:16"
    )
    with_image_prompt = {**params, "image_prompt_weights": [-0.5]}
    assert reproduce_command(JobKind.IMAGINE, with_image_prompt) == (
        "/imagine prompt:a fox | oil:0.5 seed:9 steps:40 size:384x256 cutn:16 "
        "image_prompt_weight:-0.5"
    )
    edit = {
        "prompt": "a hat",
        "seed": 1,
        "steps": 50,
        "candidates": 4,
        "blend_start": 0.25,
        "guidance": 7.5,
        "background": "none",
        "shrink": True,
        "start": "noise",
        "max_side": 512,
    }
    assert reproduce_command(JobKind.EDIT, edit) == (
        "/edit prompt:a hat seed:1 steps:50 candidates:4 blend_start:0.25 guidance:7.5 "
        "background:none shrink:True start:noise"
    )


async def test_user_prefs_default_to_the_server_and_persist(store: Store, data_dir: Path) -> None:
    assert (await store.user_prefs(7)).ping is None and (await store.user_prefs(7)).pings()
    assert (await store.set_user_prefs(7, ping=False)).pings() is False
    assert (await store.set_user_prefs(7)).ping is False  # no change asked: nothing changes
    assert (await store.user_prefs(8)).pings()  # per user
    with pytest.raises(ValueError, match="unknown preference"):
        await store.set_user_prefs(7, colour="red")
    await store.close()
    reopened = await Store.open(data_dir / "faraday.sqlite3", data_dir)
    try:
        assert (await reopened.user_prefs(7)).ping is False
    finally:
        await reopened.close()
    # The fixture closes it again; a second close of aiosqlite is harmless.


async def test_an_old_database_keeps_its_message_links_through_the_migration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"

    def make_v1() -> None:
        db = sqlite3.connect(path)
        db.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
        db.execute(
            "INSERT INTO jobs (kind, user_id, channel_id, request_json, status, fair_round,"
            " created_at) VALUES ('imagine', 1, 2, '{}', 'done', 0, 0)"
        )
        db.execute("INSERT INTO messages VALUES (77, 2, 1, 'results', 0)")
        db.commit()
        db.close()

    await asyncio.to_thread(make_v1)
    store = await Store.open(path, tmp_path / "data")
    try:
        link = await store.message_role(77)
        assert link is not None and (link.job_id, link.role) == (1, "results")
        await store.link_message(78, 2, 1, "single")  # the new roles are accepted
        assert [m.role for m in await store.messages_for_job(1)] == ["results", "single"]
    finally:
        await store.close()


async def ended(
    make_scheduler: Any, store: Store, sink: FakeSink, job: Any, cancel_by: int | None = None
) -> int:
    publisher = make_publisher(store)
    publisher.set_sink(sink)
    scheduler = await make_scheduler(None, listeners=(publisher,))
    submitted = await scheduler.submit(job)
    if cancel_by is not None:
        publisher.cancel_requested(submitted.job_id, cancel_by)
        await scheduler.cancel(submitted.job_id)
    await scheduler.wait_idle()
    await publisher.wait_settled()
    return submitted.job_id


async def test_done_results_ping_the_requester_unless_they_turned_it_off(
    store: Store, make_scheduler: Any
) -> None:
    sink = FakeSink()
    job_id = await ended(make_scheduler, store, sink, request(user=7))
    link = await store.message_for_job(job_id, "results")
    (posted,) = [c for c in sink.of("send") if c.message_id == link.message_id]
    assert posted.ping_user == 7 and "<@7>" in posted.content
    assert posted.controls[-1][0].act is Act.REROLL
    # The progress message offered Cancel while running and lost it at the end.
    progress = await store.message_for_job(job_id, "progress")
    (first,) = [c for c in sink.of("send") if c.message_id == progress.message_id]
    assert first.controls and first.controls[0][0].act is Act.CANCEL
    assert sink.of("edit", progress.message_id)[-1].controls == ()

    await store.set_user_prefs(7, ping=False)
    quiet_sink = FakeSink()
    job_id = await ended(make_scheduler, store, quiet_sink, request(user=7))
    link = await store.message_for_job(job_id, "results")
    (posted,) = [c for c in quiet_sink.of("send") if c.message_id == link.message_id]
    assert posted.ping_user is None


async def test_failed_or_cancelled_by_someone_else_pings_in_a_new_message(
    store: Store, make_scheduler: Any
) -> None:
    sink = FakeSink()
    failed = await ended(make_scheduler, store, sink, request(user=3, fail="error"))
    notice = await store.message_for_job(failed, "notice")
    (sent,) = [c for c in sink.of("send") if c.message_id == notice.message_id]
    assert sent.ping_user == 3 and "failed" in sent.content and "<@3>" in sent.content

    sink = FakeSink()
    stopped = await ended(
        make_scheduler, store, sink, request(user=3, steps=400, step_seconds=0.01), cancel_by=9
    )
    assert await store.job_status(stopped) is JobStatus.CANCELLED
    notice = await store.message_for_job(stopped, "notice")
    (sent,) = [c for c in sink.of("send") if c.message_id == notice.message_id]
    assert sent.ping_user == 3 and "cancelled by <@9>" in sent.content

    sink = FakeSink()
    own = await ended(
        make_scheduler, store, sink, request(user=3, steps=400, step_seconds=0.01), cancel_by=3
    )
    assert await store.job_status(own) is JobStatus.CANCELLED
    assert await store.message_for_job(own, "notice") is None
    assert all(c.ping_user is None for c in sink.of("send"))


async def test_the_progress_message_is_awaited_until_posted(
    store: Store, make_scheduler: Any
) -> None:
    publisher = make_publisher(store)
    sink = FakeSink()
    scheduler = await make_scheduler(None, listeners=(publisher,))
    submitted = await scheduler.submit(request(user=1))
    waiting = asyncio.create_task(publisher.progress_message(submitted.job_id, 30))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no sink yet: nothing posted
    publisher.set_sink(sink)
    link = await asyncio.wait_for(waiting, 30)
    assert link is not None and link.message_id == sink.of("send")[0].message_id
    assert await publisher.progress_message(424242, 0.05) is None
    await scheduler.wait_idle()
    await publisher.wait_settled()
    await publisher.close()
