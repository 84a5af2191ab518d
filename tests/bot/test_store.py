"""The SQLite store on real files: schema versions, WAL, input files, atomic writes, retention."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from bot.files import write_atomic
from bot.jobs import JobKind, JobRequest, JobStatus
from bot.store import SCHEMA_VERSION, NewResult, Store, StoreUnusable
from tests.bot.conftest import request


async def test_a_new_database_is_migrated_and_in_wal_mode(store: Store, data_dir: Path) -> None:
    assert await store.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(data_dir / "faraday.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        tables = {row[0] for row in raw.execute(query)}
    assert {"jobs", "results", "messages"} <= tables


async def test_reopening_keeps_data_and_a_newer_schema_is_refused(data_dir: Path) -> None:
    database = data_dir / "faraday.sqlite3"
    store = await Store.open(database, data_dir)
    job = await store.insert_job(request(user=1), 0)
    await store.close()
    store = await Store.open(database, data_dir)
    assert (await store.get_job(job.id)).request.user_id == 1
    await store.close()
    with sqlite3.connect(database) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnusable, match="newer than this bot knows"):
        await Store.open(database, data_dir)


async def test_input_images_live_in_content_addressed_files(store: Store, data_dir: Path) -> None:
    image, prompt_a, prompt_b = b"\x89PNG-one", b"\x89PNG-two", b"\x89PNG-three"
    job = JobRequest(JobKind.IMAGINE, 5, 6, 7, {"prompt": "x", "seed": 1},
                     {"init_image": image, "image_prompts": [prompt_a, prompt_b]}, None)
    first = await store.insert_job(job, 0)
    second = await store.insert_job(job, 1)  # the same images again: stored once
    assert len(list((data_dir / "inputs").glob("*.img"))) == 3
    with sqlite3.connect(data_dir / "faraday.sqlite3") as raw:
        stored = raw.execute("SELECT request_json FROM jobs WHERE id = ?", (first.id,)).fetchone()
    assert "PNG" not in stored[0] and "inputs/" in stored[0]
    for job_id in (first.id, second.id):
        loaded = await store.get_job(job_id)
        assert loaded.request == job
        assert loaded.status is JobStatus.QUEUED


async def test_results_and_the_done_status_commit_together(store: Store, data_dir: Path) -> None:
    job = await store.insert_job(request(user=1), 0)
    await store.mark_running(job.id, 3)
    paths = [store.paths.result_path(job.id, rank) for rank in (1, 2)]
    for path in paths:
        write_atomic(path, b"png")
    broken = [NewResult(1, 0.9, 11, paths[0]), NewResult(1, 0.8, 12, paths[1])]  # same rank
    with pytest.raises(sqlite3.IntegrityError):
        await store.complete_job(job.id, broken)
    assert await store.job_status(job.id) is JobStatus.RUNNING
    assert await store.results_for_job(job.id) == []
    rows = await store.complete_job(job.id, [NewResult(1, 0.9, 11, paths[0]),
                                             NewResult(2, 0.8, 12, paths[1])])
    assert await store.job_status(job.id) is JobStatus.DONE
    assert [r.rank for r in await store.results_for_job(job.id)] == [1, 2]
    assert await store.get_result(rows[1].id) == rows[1]
    assert rows[1].path == paths[1] and rows[1].seed == 12


async def test_an_atomic_write_leaves_the_old_file_whole_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "image.png"
    write_atomic(target, b"old contents")

    def refuse(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new contents that never land")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]  # no temp file left behind


def test_a_durable_write_syncs_the_data_then_the_folder_that_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_atomic(tmp_path / "fast.png", b"png", durable=False)
    assert synced == []
    write_atomic(tmp_path / "durable.png", b"png", durable=True)
    assert synced == ["file", "folder"]
    assert (tmp_path / "durable.png").read_bytes() == b"png"


async def test_messages_map_to_jobs_and_roles(store: Store) -> None:
    job = await store.insert_job(request(user=1), 0)
    await store.link_message(10, 99, job.id, "progress")
    await store.link_message(11, 99, job.id, "progress")  # a fresh one after a deletion
    await store.link_message(12, 99, job.id, "results")
    assert (await store.message_role(12)).role == "results"
    assert (await store.message_role(10)).job_id == job.id
    assert await store.message_role(13) is None
    assert (await store.message_for_job(job.id, "progress")).message_id == 11


async def test_a_finished_job_can_no_longer_be_cancelled_or_failed(store: Store) -> None:
    job = await store.insert_job(request(user=1), 0)
    assert await store.finish_job(job.id, JobStatus.CANCELLED)
    assert not await store.finish_job(job.id, JobStatus.FAILED, "late")
    record = await store.get_job(job.id)
    assert record.status is JobStatus.CANCELLED and record.error is None


async def test_retention_prunes_old_jobs_and_their_files_only(
    store: Store, data_dir: Path
) -> None:
    shared = b"shared input"
    old = await store.insert_job(request(user=1), 0)
    old_with_input = await store.insert_job(
        JobRequest(JobKind.EDIT, 1, 2, None, {}, {"image": shared}), 0
    )
    recent = await store.insert_job(
        JobRequest(JobKind.EDIT, 1, 2, None, {}, {"image": shared}), 1
    )
    lonely_input = await store.insert_job(
        JobRequest(JobKind.EDIT, 1, 2, None, {}, {"image": b"only the old job uses this"}), 0
    )
    for job in (old, old_with_input, recent, lonely_input):
        path = store.paths.result_path(job.id, 1)
        write_atomic(path, b"png")
        await store.complete_job(job.id, [NewResult(1, 1.0, 1, path)])
        await store.link_message(100 + job.id, 9, job.id, "results")
    with sqlite3.connect(data_dir / "faraday.sqlite3") as raw:
        raw.execute("UPDATE jobs SET finished_at = ? WHERE id != ?",
                    (time.time() - 40 * 86_400, recent.id))
    assert await store.prune(0) == 0  # 0 keeps everything
    assert await store.prune(30) == 3
    assert await store.get_job(old.id) is None
    assert await store.message_role(100 + old.id) is None
    assert not store.paths.result_path(old.id, 1).exists()
    assert store.paths.result_path(recent.id, 1).exists()
    assert (await store.get_job(recent.id)).request.images["image"] == shared
    assert len(list((data_dir / "inputs").glob("*.img"))) == 1
