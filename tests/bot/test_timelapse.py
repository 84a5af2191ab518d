"""An /imagine's preview frames kept by the scheduler, pruned with the job, made into a video."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
import pytest

from bot.config import TimelapseConfig
from bot.jobs import JobKind
from bot.scheduler import Scheduler
from bot.stand_in import StandInPipeline, StandInSource
from bot.store import Store
from bot.timelapse import TimelapseUnavailable, timelapse_file
from bot.uploads import UPLOAD_HEADROOM
from pipelines.timelapse import frame_files
from tests.bot.conftest import request, scheduler_config

TEN_MIB = 10 * 1024 * 1024
KEEP = TimelapseConfig()


@pytest.fixture
async def run_job(store: Store) -> AsyncIterator[Callable[..., Any]]:
    schedulers: list[Scheduler] = []

    async def run(job: Any, config: TimelapseConfig | None = KEEP) -> int:
        source = StandInSource(StandInPipeline(0.0, 96, "sleep"))
        scheduler = Scheduler(store, source, scheduler_config(), timelapse=config)
        schedulers.append(scheduler)
        await scheduler.start()
        submitted = await scheduler.submit(job)
        await scheduler.wait_idle()
        return submitted.job_id

    yield run
    for scheduler in schedulers:
        await scheduler.shutdown(grace_seconds=5)


def decoded_frame_count(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


async def test_an_imagine_keeps_its_frames_and_its_timelapse_mp4_has_them_all(
    store: Store, run_job: Any
) -> None:
    job_id = await run_job(request(user=1, steps=12, preview_every=1))
    frames = frame_files(store.paths.frames_dir(job_id))
    assert len(frames) == 12
    made = await timelapse_file(store, job_id, TEN_MIB, TimelapseConfig())
    assert made.file.filename == f"job-{job_id}-timelapse.mp4"
    assert made.frames == 12
    assert decoded_frame_count(made.file.data) == 12
    assert made.note == ""
    # Made once: a second press is served from the job's folder, identical.
    videos = list(store.paths.frames_dir(job_id).glob("timelapse-*.mp4"))
    assert len(videos) == 1
    again = await timelapse_file(store, job_id, TEN_MIB, TimelapseConfig())
    assert again == made
    videos[0].write_bytes(b"not the video it was")
    assert (await timelapse_file(store, job_id, TEN_MIB, TimelapseConfig())).file.data == (
        b"not the video it was"
    )


def steps_of(frames: list[Any]) -> list[int]:
    return [int(path.stem.removeprefix("frame-")) for path in frames]


async def test_frames_are_one_per_preview_and_capped(store: Store, run_job: Any) -> None:
    # Under the cap: one frame per preview (every 3rd step), the last being the finished image.
    job_id = await run_job(request(user=1, steps=12, preview_every=3), TimelapseConfig())
    assert steps_of(frame_files(store.paths.frames_dir(job_id))) == [3, 6, 9, 12]

    # 20 previews (every 3rd step of 60) against a cap of 8. Steps 3…24 fill it; step 27 thins
    # them to every 6th step and keeps every 2nd preview from then on; step 51 thins again to
    # every 12th step (stride 4), so 54, 57 and 60's previews are skipped; the finished image
    # at step 60 is always kept. The frames stay evenly spread over the whole run.
    job_id = await run_job(
        request(user=2, steps=60, preview_every=3), TimelapseConfig(max_frames=8)
    )
    frames = frame_files(store.paths.frames_dir(job_id))
    assert steps_of(frames) == [3, 15, 27, 39, 51, 60]


async def test_no_frames_are_kept_when_turned_off_or_for_other_kinds(
    store: Store, run_job: Any
) -> None:
    off = await run_job(request(user=1, steps=4), TimelapseConfig(keep_frames=False))
    edit = await run_job(request(user=2, steps=4, kind=JobKind.EDIT))
    for job_id in (off, edit):
        assert frame_files(store.paths.frames_dir(job_id)) == []
    with pytest.raises(TimelapseUnavailable, match="kept no frames"):
        await timelapse_file(store, off, TEN_MIB, TimelapseConfig())
    with pytest.raises(TimelapseUnavailable, match="only /imagine"):
        await timelapse_file(store, edit, TEN_MIB, TimelapseConfig())
    with pytest.raises(TimelapseUnavailable, match="expired"):
        await timelapse_file(store, edit + 100, TEN_MIB, TimelapseConfig())


async def test_frames_are_pruned_with_their_job(
    store: Store, run_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = await run_job(request(user=1, steps=5))
    folder = store.paths.frames_dir(job_id)
    assert frame_files(folder)
    future = time.time() + 40 * 86_400
    monkeypatch.setattr(time, "time", lambda: future)
    assert await store.prune(30) == 1
    assert not folder.exists()
    with pytest.raises(TimelapseUnavailable, match="expired"):
        await timelapse_file(store, job_id, TEN_MIB, TimelapseConfig())


async def test_the_timelapse_is_scaled_down_to_fit_a_small_upload_limit(
    store: Store, run_job: Any
) -> None:
    job_id = await run_job(request(user=1, steps=20, preview_every=1))
    full = await timelapse_file(store, job_id, TEN_MIB, TimelapseConfig())
    limit = UPLOAD_HEADROOM + len(full.file.data) // 2
    small = await timelapse_file(store, job_id, limit, TimelapseConfig())
    assert len(small.file.data) <= len(full.file.data) // 2
    assert "scaled down from 96×96" in small.note
    assert decoded_frame_count(small.file.data) == 20
