"""Previews of jobs run on GPU workers: the self-mask reaches Discord once, the timelapse keeps
its frames, and the worker's progress writer throttles without losing the mask or the last step."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from PIL import Image

from bot.cluster import tables
from bot.cluster.executor import PostgresExecutor, _Remote
from bot.cluster.worker_side import _ProgressWriter
from bot.config import ClusterConfig, TimelapseConfig
from bot.executor import Outcome, Progress, Run
from bot.jobs import JobKind, JobRequest, JobStatus
from bot.mask_overlay import mask_overlay
from bot.progress_text import MASK_LINE
from bot.publisher import Publisher
from bot.scheduler import Scheduler
from bot.stand_in import StandInPipeline, StandInRequest
from bot.store import QueuedJob, Store
from bot.timelapse import frames_for, timelapse_file
from pipelines.interface import CancelCheck, PipelineResult, ProgressCallback, attach_mask
from pipelines.timelapse import frame_files
from tests.bot.conftest import FakeSink, make_publisher, request, scheduler_config
from tests.cluster.conftest import Workers, fresh_database

pytestmark = pytest.mark.cluster

STEPS = 8


class MaskingStandIn(StandInPipeline):
    """The stand-in, handing a self-mask with its first preview as VQGAN-CLIP's ``mask_text``
    does (left half white: "may change")."""

    def __init__(self) -> None:
        super().__init__(0.02, 16, "sleep")
        self.first: Image.Image | None = None
        self.mask = Image.new("L", (16, 16), 0)
        self.mask.paste(255, (0, 0, 8, 16))

    def __call__(
        self,
        request: StandInRequest,
        on_progress: ProgressCallback,
        should_cancel: CancelCheck,
    ) -> PipelineResult:
        def with_mask(step: int, total: int, preview: Image.Image | None) -> None:
            if preview is not None and self.first is None:
                self.first = preview.copy()
                attach_mask(preview, self.mask)
            on_progress(step, total, preview)

        return super().__call__(request, with_mask, should_cancel)


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def run_one_job(
    store: Store, cluster: ClusterConfig, publisher: Publisher | None = None, **params: Any
) -> int:
    executor = PostgresExecutor(store, cluster, timelapse=TimelapseConfig())
    scheduler = Scheduler(store, None, scheduler_config(), executor=executor)
    if publisher is not None:
        scheduler.add_listener(publisher)
    await scheduler.start()
    try:
        await wait_for(lambda: executor.free_slots() == 1)
        submitted = await scheduler.submit(request(user=1, steps=STEPS, **params))
        await asyncio.wait_for(scheduler.wait_idle(), 60)
    finally:
        await scheduler.shutdown(grace_seconds=5)
    record = await store.get_job(submitted.job_id)
    assert record is not None and record.status.value == "done"
    return submitted.job_id


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


async def test_the_self_mask_of_a_worker_job_is_shown_once_on_the_first_snapshot(
    store: Store, cluster_config: ClusterConfig, workers: Workers
) -> None:
    pipeline = MaskingStandIn()
    workers.start(pipeline)
    sink = FakeSink()
    publisher = make_publisher(store, 0.05)
    publisher.set_sink(sink)
    try:
        await run_one_job(store, cluster_config, publisher, prompt="a red door")
        await publisher.wait_settled()
    finally:
        await publisher.close()
    with_files = [call for call in sink.calls if call.files]
    assert with_files, "no preview was ever posted"
    first = with_files[0]
    assert first.files is not None
    assert MASK_LINE in first.content
    # The overlay of the mask over the very preview it came with, pixel for pixel.
    assert pipeline.first is not None
    expected = mask_overlay(pipeline.first, pipeline.mask)
    assert decoded(first.files[0].data).tobytes() == expected.convert("RGB").tobytes()
    # Once: every message that mentions the mask carries that first picture, and the end not.
    masked = {call.files[0].data for call in with_files if MASK_LINE in call.content
              and call.files}
    assert masked == {first.files[0].data}
    progress = [c for c in sink.calls if c.message_id == first.message_id and c.op != "react"]
    assert MASK_LINE not in progress[-1].content


async def test_a_worker_job_keeps_timelapse_frames_up_to_its_last_step(
    store: Store, cluster_config: ClusterConfig, workers: Workers
) -> None:
    workers.start(StandInPipeline(0.02, 16, "sleep"))
    job_id = await run_one_job(store, cluster_config, prompt="a red door")
    frames = frame_files(store.paths.frames_dir(job_id))
    assert len(frames) >= 2
    # The last step is always written by the worker and read before the outcome: the video
    # ends on the finished picture.
    assert frames[-1].name == f"frame-{STEPS:06d}.png"
    [best] = [r for r in await store.results_for_job(job_id) if r.rank == 1]
    with Image.open(frames[-1]) as last, Image.open(best.path) as result:
        assert last.convert("RGB").tobytes() == result.convert("RGB").tobytes()
    made = await timelapse_file(store, job_id, 8 * 1024 * 1024, TimelapseConfig())
    assert made.frames == len(frames) and made.file.data


# -- the worker's progress writer, on a fake clock ------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def writer_setup(cluster_config: ClusterConfig) -> tuple[ClusterConfig, FakeClock]:
    with psycopg.connect(cluster_config.database_url, autocommit=True) as conn:
        conn.execute(tables.SCHEMA)  # type: ignore[arg-type]
    return replace(cluster_config, progress_interval_seconds=1.0), FakeClock()


def progress_row(url: str, pj_id: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT step, total, preview, preview_step, mask, mask_preview, mask_step"
            " FROM faraday_progress WHERE pj_id = %s", (pj_id,)).fetchone()
    assert row is not None
    names = ("step", "total", "preview", "preview_step", "mask", "mask_preview", "mask_step")
    return dict(zip(names, row, strict=True))


def solid(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (8, 8), colour)


def colour_of(blob: bytes) -> tuple[int, int, int]:
    return decoded(bytes(blob)).getpixel((0, 0))  # type: ignore[return-value]


def test_the_progress_writer_writes_at_most_once_per_interval_and_always_the_last_step(
    writer_setup: tuple[ClusterConfig, FakeClock],
) -> None:
    cluster, clock = writer_setup
    writer = _ProgressWriter(cluster.database_url, cluster, 101, 7, clock=clock)
    try:
        writer(1, 5, solid((10, 0, 0)))
        row = progress_row(cluster.database_url, 101)
        assert (row["step"], row["total"], row["preview_step"]) == (1, 5, 1)
        assert colour_of(row["preview"]) == (10, 0, 0)

        clock.now = 0.5
        writer(2, 5, solid((20, 0, 0)))  # within the interval: not written
        assert progress_row(cluster.database_url, 101)["step"] == 1

        clock.now = 1.0
        writer(3, 5, None)  # due: the newest preview (step 2) goes with it
        row = progress_row(cluster.database_url, 101)
        assert (row["step"], row["preview_step"]) == (3, 2)
        assert colour_of(row["preview"]) == (20, 0, 0)

        clock.now = 1.2
        writer(4, 5, solid((40, 0, 0)))
        assert progress_row(cluster.database_url, 101)["step"] == 3

        clock.now = 1.3
        writer(5, 5, solid((50, 0, 0)))  # the last step, however soon
        row = progress_row(cluster.database_url, 101)
        assert (row["step"], row["preview_step"]) == (5, 5)
        assert colour_of(row["preview"]) == (50, 0, 0)
        assert row["mask"] is None and row["mask_step"] is None
    finally:
        writer.close()


def test_the_progress_writer_sends_the_mask_at_once_and_keeps_it_past_later_previews(
    writer_setup: tuple[ClusterConfig, FakeClock],
) -> None:
    cluster, clock = writer_setup
    writer = _ProgressWriter(cluster.database_url, cluster, 202, 8, clock=clock)
    try:
        writer(1, 9, None)
        clock.now = 0.1
        first = solid((0, 90, 0))
        mask = Image.new("L", (8, 8), 0)
        mask.paste(255, (0, 0, 4, 8))
        attach_mask(first, mask)
        writer(2, 9, first)  # within the interval, but it carries the mask: written now
        row = progress_row(cluster.database_url, 202)
        assert (row["step"], row["mask_step"]) == (2, 2)
        assert colour_of(row["mask_preview"]) == (0, 90, 0)
        assert Image.open(io.BytesIO(bytes(row["mask"]))).convert("L").tobytes() == mask.tobytes()

        clock.now = 0.2
        writer(3, 9, solid((0, 0, 30)))  # an ordinary preview stays throttled
        assert progress_row(cluster.database_url, 202)["step"] == 2

        clock.now = 5.0
        writer(4, 9, solid((0, 0, 40)))
        row = progress_row(cluster.database_url, 202)
        assert colour_of(row["preview"]) == (0, 0, 40)
        # The newer preview replaced the row's picture, not the mask and its own preview.
        assert row["mask_step"] == 2 and colour_of(row["mask_preview"]) == (0, 90, 0)
    finally:
        writer.close()


async def test_a_run_never_drops_the_masked_snapshot_for_a_newer_one() -> None:
    # The executor posts the masked preview and the newest one back to back when a worker got
    # ahead of the bot; only the newest of ordinary snapshots is kept, the masked one must stay.
    run = Run(1)
    masked = solid((1, 1, 1))
    attach_mask(masked, Image.new("L", (8, 8), 255))
    run.post(Progress(3, 9, masked, 1))
    run.post(Progress(3, 9, solid((2, 2, 2)), 3))
    run.post(Progress(4, 9, solid((3, 3, 3)), 4))  # ordinary snapshots still replace each other
    run.finish(Outcome("done"))
    seen: list[Any] = []

    async def consume() -> None:
        async for event in run:
            seen.append(event)

    run.post(Progress(5, 9, None, None))  # after the outcome: ignored
    await asyncio.wait_for(consume(), 5)
    assert [type(e).__name__ for e in seen] == ["Outcome"]

    run = Run(2)
    run.post(Progress(3, 9, masked, 1))
    run.post(Progress(3, 9, solid((2, 2, 2)), 3))
    run.post(Progress(4, 9, solid((3, 3, 3)), 4))
    iterator = aiter(run)
    first = await asyncio.wait_for(anext(iterator), 5)
    second = await asyncio.wait_for(anext(iterator), 5)
    assert isinstance(first, Progress) and first.preview is masked
    assert isinstance(second, Progress) and second.preview_step == 4
    # The same masked picture posted again (no newer preview yet) just replaces, as before.
    run.post(Progress(5, 9, masked, 1))
    run.post(Progress(6, 9, masked, 1))
    third = await asyncio.wait_for(anext(iterator), 5)
    assert isinstance(third, Progress) and third.step == 6
    run.finish(Outcome("done"))
    assert isinstance(await asyncio.wait_for(anext(iterator), 5), Outcome)


def test_a_progress_table_from_before_the_mask_gains_its_columns(pg_server_url: str) -> None:
    url = fresh_database(pg_server_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE faraday_progress (pj_id bigint PRIMARY KEY, queue text NOT NULL,"
            " job_id bigint NOT NULL, step integer NOT NULL, total integer NOT NULL,"
            " preview bytea, preview_step integer, sent_at double precision NOT NULL)"
        )
        conn.execute(tables.SCHEMA)  # type: ignore[arg-type]
        conn.execute(tables.SCHEMA)  # type: ignore[arg-type]  # and again: harmless
        columns = {row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'faraday_progress'").fetchall()}
    assert {"mask", "mask_preview", "mask_step"} <= columns


async def test_collecting_an_outcome_first_keeps_the_last_preview_as_a_frame(
    store: Store, cluster_config: ClusterConfig
) -> None:
    # The worker wrote its last step and then its outcome; the bot heard only of the outcome
    # (a NOTIFY lost, or both read by the backstop poll). The video still ends on that step.
    record = await store.insert_job(request(user=1, steps=4), 0)
    job = QueuedJob(record.id, JobKind.IMAGINE, 1, 1001, 0, record.request.params,
                    JobStatus.RUNNING)
    executor = PostgresExecutor(store, cluster_config, timelapse=TimelapseConfig())
    await executor.connect(lambda: None)
    pj_id = 900_000 + record.id
    last = io.BytesIO()
    solid((9, 99, 199)).save(last, format="PNG")
    try:
        with psycopg.connect(cluster_config.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO faraday_progress (pj_id, queue, job_id, step, total, preview,"
                " preview_step, sent_at) VALUES (%s, %s, %s, 4, 4, %s, 4, %s)",
                (pj_id, cluster_config.queue, job.id, last.getvalue(), time.time()))
            conn.execute(
                "INSERT INTO faraday_outcomes (pj_id, queue, job_id, status, step, total)"
                " VALUES (%s, %s, %s, 'done', 4, 4)", (pj_id, cluster_config.queue, job.id))
        remote = _Remote(job, Run(job.id), pj_id=pj_id,
                         frames=frames_for(store, TimelapseConfig(), JobKind.IMAGINE, job.id))
        await executor._collect(remote)
        assert remote.run.finished
    finally:
        await executor.close()
    [frame] = frame_files(store.paths.frames_dir(job.id))
    assert frame.name == "frame-000004.png"
    with Image.open(frame) as kept:
        assert kept.convert("RGB").getpixel((0, 0)) == (9, 99, 199)


async def test_the_tiny_vqgan_clip_self_mask_reaches_discord_from_a_worker(
    store: Store, cluster_config: ClusterConfig, workers: Workers
) -> None:
    # The real pipeline (tiny random weights) finding its own mask for ``mask_text``, on a worker.
    from bot.cluster.worker_side import serve_in_thread
    from bot.pipeline_source import RegistrySource
    from pipelines.settings import ModelSettings

    source = RegistrySource(ModelSettings(preset="tiny", device="cpu", dtype="float32"))
    worker, thread = serve_in_thread(cluster_config.database_url, cluster_config, source, "tiny")
    assert worker.registered.wait(20)
    workers.started.append((worker, thread))
    photo = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(photo, format="PNG")
    sink = FakeSink()
    publisher = make_publisher(store, 0.05)
    publisher.set_sink(sink)
    executor = PostgresExecutor(store, cluster_config, timelapse=TimelapseConfig())
    scheduler = Scheduler(store, None, scheduler_config(), executor=executor)
    scheduler.add_listener(publisher)
    await scheduler.start()
    try:
        await wait_for(lambda: executor.free_slots() == 1)
        job = await scheduler.submit(JobRequest(
            JobKind.IMAGINE, 1, 1001, 1,
            {"prompt": "a red door", "mask_text": "the door", "steps": 3, "width": 64,
             "height": 64, "cutn": 2, "preview_every": 1},
            {"init_image": photo.getvalue()},
        ))
        await asyncio.wait_for(scheduler.wait_idle(), 300)
        await publisher.wait_settled()
    finally:
        await scheduler.shutdown(grace_seconds=5)
        await publisher.close()
    assert await store.job_status(job.job_id) is JobStatus.DONE
    with_files = [c for c in sink.calls if c.files and c.op != "react"]
    first = with_files[0]
    assert first.files is not None and MASK_LINE in first.content
    masked = {c.files[0].data for c in with_files if c.files and MASK_LINE in c.content}
    assert masked == {first.files[0].data}
    progress = [c for c in sink.calls if c.message_id == first.message_id and c.op != "react"]
    assert MASK_LINE not in progress[-1].content
