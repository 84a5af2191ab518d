"""The cluster end to end: the Discord stand-in, the bot, and two ``bot.gpu_worker`` processes
on the stand-in pipeline through a real PostgreSQL (marked ``cluster``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.jobs import JobStatus
from tests.cluster.conftest import pg_server_url, pg_url  # noqa: F401  (fixtures)
from tests.e2e.bot_harness import (
    REPO_ROOT,
    finished_job,
    message_of,
    queued_job_id,
    running_bot,
    write_test_config,
)

pytestmark = pytest.mark.cluster


def start_worker(config_path: Path, name: str, log_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    log_file = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "bot.gpu_worker", "--config", str(config_path), "--name", name],
        cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )


def worker_of_each_job(url: str, queue: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT (j.args->>'job_id')::bigint, fw.name FROM procrastinate_jobs j"
            " JOIN faraday_workers fw ON fw.worker_id = j.worker_id"
            " WHERE j.queue_name = %s AND j.status = 'succeeded'", (queue,)).fetchall()
    return {int(job): name for job, name in rows}


def jain_min(order: list[str], users: list[str]) -> float:
    """Jain's index of the users' shares over every prefix whose length is a multiple of the
    number of users; 1 means every user had exactly the same share at every such point."""
    worst = 1.0
    for k in range(len(users), len(order) + 1, len(users)):
        shares = [order[:k].count(user) for user in users]
        worst = min(worst, sum(shares) ** 2 / (len(users) * sum(s * s for s in shares)))
    return worst


async def test_two_gpu_workers_share_two_users_jobs_fairly_and_survive_a_kill(
    standin: Any, tmp_path: Path, pg_url: str  # noqa: F811
) -> None:
    queue = "e2e"
    config_path = write_test_config(tmp_path, standin, {
        "imagine": {"steps": {"default": 3, "min": 1, "max": 400}},
        "scheduler": {"pipeline": "stand-in",
                      "stand_in": {"work": "sleep", "step_seconds": 0.05, "image_size": 32}},
        # Longer than the other cluster tests' 2 s: on a heavily shared machine a live worker's
        # heartbeat can be late by seconds, and a false stall would re-run a job here.
        "cluster": {"database_url": pg_url, "queue": queue, "stall_timeout_seconds": 6.0,
                    "progress_interval_seconds": 0.1, "poll_interval_seconds": 0.1},
    })
    workers = {name: start_worker(config_path, name, tmp_path) for name in ("gpu-a", "gpu-b")}
    try:
        async with running_bot(standin, config_path) as bot:
            executor = bot.scheduler.executor
            for _ in range(1800):
                if executor.free_slots() == 2:
                    break
                await asyncio.sleep(0.1)
            assert executor.free_slots() == 2, "the two GPU workers never came up"
            jobs: dict[int, str] = {}
            for index in range(3):
                for user in ("alice", "bob"):
                    handle = await standin.send_slash_command(
                        "imagine", {"prompt": f"{user} {index}", "steps": 20}, user=user)
                    jobs[await queued_job_id(handle)] = user
            records = [await finished_job(bot, job_id) for job_id in jobs]
            assert all(r.status is JobStatus.DONE and r.interruptions == 0 for r in records), [
                (r.id, r.status, r.interruptions, r.error) for r in records]
            for job_id in jobs:  # every result was posted
                assert await message_of(bot, standin, job_id, "results")
            ran_on = worker_of_each_job(pg_url, queue)
            assert set(ran_on) == set(jobs) and set(ran_on.values()) == {"gpu-a", "gpu-b"}
            order = [jobs[r.id] for r in sorted(records, key=lambda r: r.started_at or 0)]
            assert jain_min(order, ["alice", "bob"]) >= 0.99, order

            # One worker is killed in the middle of a job: the other one completes it.
            handle = await standin.send_slash_command(
                "imagine", {"prompt": "long", "steps": 200}, user="alice")
            long_job = await queued_job_id(handle)
            await message_of(bot, standin, long_job, "progress")
            victim = None
            for _ in range(600):
                with psycopg.connect(pg_url) as conn:
                    row = conn.execute(
                        "SELECT fw.name FROM procrastinate_jobs j JOIN faraday_workers fw"
                        " ON fw.worker_id = j.worker_id WHERE j.status = 'doing'"
                        " AND (j.args->>'job_id')::bigint = %s", (long_job,)).fetchone()
                if row:
                    victim = row[0]
                    break
                await asyncio.sleep(0.05)
            assert victim is not None
            await asyncio.sleep(0.5)  # a few steps in
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait(10)
            record = await finished_job(bot, long_job)
            assert record.status is JobStatus.DONE and record.interruptions == 1
            survivor = ({"gpu-a", "gpu-b"} - {victim}).pop()
            assert worker_of_each_job(pg_url, queue)[long_job] == survivor
            assert await message_of(bot, standin, long_job, "results")
    finally:
        for proc in workers.values():
            proc.kill()
            proc.wait(10)
