"""What the bot hands the GPU workers through PostgreSQL: the fair order as procrastinate's
priority, and input images stored once per content, by sha256, before the job is enqueued."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from typing import Any

import psycopg
import pytest
from PIL import Image

from bot.cluster import tables
from bot.config import ClusterConfig
from bot.jobs import JobKind, JobRequest
from bot.pipeline_source import PreparedJob
from bot.stand_in import StandInPipeline, StandInSource
from bot.store import Store
from tests.bot.conftest import request
from tests.cluster.conftest import Workers, start_cluster_scheduler

pytestmark = pytest.mark.cluster


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def attempts_of(cluster: ClusterConfig, job_id: int) -> list[tuple[int, dict[str, Any]]]:
    with psycopg.connect(cluster.database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT priority, args FROM procrastinate_jobs WHERE queue_name = %s"
            " AND task_name = %s AND (args->>'job_id')::bigint = %s ORDER BY id",
            (cluster.queue, tables.TASK_NAME, job_id),
        ).fetchall()
    return [(int(priority), args) for priority, args in rows]


async def test_a_job_is_enqueued_with_its_fair_round_as_negative_priority(
    store: Store, cluster_config: ClusterConfig, workers: Workers
) -> None:
    workers.start(StandInPipeline(0.01, 16, "sleep"))
    scheduler = await start_cluster_scheduler(store, cluster_config)
    try:
        await wait_for(lambda: scheduler.executor.free_slots() == 1)
        # One user's third job waits behind two rounds of the fair queue.
        jobs = [await scheduler.submit(request(user=1, steps=3)) for _ in range(3)]
        await asyncio.wait_for(scheduler.wait_idle(), 60)
    finally:
        await scheduler.shutdown(grace_seconds=5)
    rounds = []
    for job in jobs:
        record = await store.get_job(job.job_id)
        assert record is not None
        rounds.append(record.fair_round)
        [(priority, _args)] = attempts_of(cluster_config, job.job_id)
        assert priority == -record.fair_round
    assert max(rounds) > 0  # the check above covered a job past the first round


class RecordingSource(StandInSource):
    """The stand-in, remembering the input images each job reached the worker with."""

    def __init__(self) -> None:
        super().__init__(StandInPipeline(0.01, 16, "sleep"))
        self.received: list[dict[str, Any]] = []

    def prepare(self, job: JobRequest) -> PreparedJob:
        self.received.append(dict(job.images))
        return super().prepare(job)


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, format="PNG")
    return out.getvalue()


async def test_input_images_are_stored_once_per_content_and_reach_the_worker(
    store: Store, cluster_config: ClusterConfig, workers: Workers
) -> None:
    from bot.cluster.worker_side import serve_in_thread

    source = RecordingSource()
    worker, thread = serve_in_thread(cluster_config.database_url, cluster_config, source, "rec")
    assert worker.registered.wait(20)
    workers.started.append((worker, thread))
    picture = png((200, 30, 30))
    scheduler = await start_cluster_scheduler(store, cluster_config)
    try:
        await wait_for(lambda: scheduler.executor.free_slots() == 1)
        # The same picture as the image and as its mask: two fields, one content.
        job = await scheduler.submit(JobRequest(
            JobKind.EDIT, 1, 1001, 1, {"steps": 2, "prompt": "a hat"},
            {"image": picture, "mask": picture},
        ))
        await asyncio.wait_for(scheduler.wait_idle(), 60)
    finally:
        await scheduler.shutdown(grace_seconds=5)
    record = await store.get_job(job.job_id)
    assert record is not None and record.status.value == "done"
    [received] = source.received
    assert set(received) == {"image", "mask"}
    assert received["image"] == received["mask"]
    digest = hashlib.sha256(received["image"]).hexdigest()
    # The task's arguments name the content, not the bytes...
    [(_priority, args)] = attempts_of(cluster_config, job.job_id)
    assert args["images"] == {"image": digest, "mask": digest}
    # ...and the bytes are in faraday_inputs once, under that name.
    with psycopg.connect(cluster_config.database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT digest FROM faraday_inputs WHERE data = %s", (received["image"],)
        ).fetchall()
    assert rows == [(digest,)]
    with Image.open(io.BytesIO(received["image"])) as opened:
        assert opened.convert("RGB").getpixel((3, 3)) == (200, 30, 30)
