"""Scenario 8: the bot is killed with SIGKILL mid-job and started again.

The bot runs as a subprocess, ``python -m bot --config <tmp config>``, exactly as ``make run``
starts it. After the restart the interrupted job runs again and posts its results, and a number
reaction on a results grid posted before the kill still continues from that result.

The test reads the bot's SQLite store through :class:`bot.store.Store` (WAL lets a second
process read while the bot writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from bot.config import load_config
from bot.jobs import JobStatus
from bot.store import JobRecord, Store
from tests.e2e.bot_harness import REPO_ROOT, WAIT, eventually, queued_job_id, write_test_config

START_TIMEOUT = 120.0  # a cold interpreter imports torch, diffusers and transformers


@contextlib.asynccontextmanager
async def bot_process(config_path: Path, log_path: Path, token: str) -> AsyncIterator[
    subprocess.Popen
]:
    env = {**os.environ, "DISCORD_TOKEN": token, "HF_HUB_OFFLINE": "1"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "--config", str(config_path)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        await asyncio.to_thread(process.wait, 30)


def log_tail(log_path: Path, lines: int = 40) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


async def job_where(store: Store, job_id: int, wanted: set[JobStatus], timeout: float) -> JobRecord:
    async def probe() -> JobRecord | None:
        record = await store.get_job(job_id)
        return record if record is not None and record.status in wanted else None

    return await eventually(probe, timeout=timeout, what=f"job {job_id} to be {wanted}")


async def test_sigkill_mid_job_then_restart_resumes_and_old_reactions_still_work(
    standin, tmp_path
) -> None:
    config_path = write_test_config(
        tmp_path, standin, {"imagine": {"steps": {"default": 3, "min": 1, "max": 400}}}
    )
    config = load_config(config_path)
    log_path = tmp_path / "bot.log"
    store: Store | None = None
    try:
        async with bot_process(config_path, log_path, standin.token) as first:
            await standin.wait_until_connected(identifies=1, timeout=START_TIMEOUT)
            await standin.wait_for(lambda: standin.synced_commands(standin.guild_id),
                                   timeout=START_TIMEOUT, description="commands synced")
            store = await Store.open(config.storage.database_path, config.storage.data_dir)

            # A finished job whose grid will be reacted to after the restart.
            before_id = await queued_job_id(
                await standin.send_slash_command("imagine", {"prompt": "before the crash"}),
                timeout=60,
            )
            await job_where(store, before_id, {JobStatus.DONE}, 60)

            async def grid_linked() -> int | None:
                link = await store.message_for_job(before_id, "results")
                return link.message_id if link else None

            grid_id = await eventually(grid_linked, timeout=30, what="the grid's message link")
            await standin.wait_for(
                lambda: standin.bot_user.id in standin.message(grid_id).reactors("2️⃣"),
                timeout=WAIT, description="the grid's 2️⃣ reaction",
            )

            # A long job, killed while it runs.
            long_id = await queued_job_id(
                await standin.send_slash_command(
                    "imagine", {"prompt": "interrupted", "steps": 30}
                ),
                timeout=30,
            )
            await job_where(store, long_id, {JobStatus.RUNNING}, 60)
            progress_link = await eventually(
                lambda: store.message_for_job(long_id, "progress"), timeout=30,
                what="the long job's progress message",
            )
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 30)
            assert first.returncode == -signal.SIGKILL
        assert (await store.job_status(long_id)) is JobStatus.RUNNING  # nothing marked it

        async with bot_process(config_path, log_path, standin.token):
            await standin.wait_until_connected(identifies=2, timeout=START_TIMEOUT)
            resumed = await job_where(store, long_id, {JobStatus.DONE, JobStatus.FAILED}, 120)
            assert resumed.status is JobStatus.DONE, (resumed.error, log_tail(log_path))
            assert resumed.interruptions == 1
            results = await store.results_for_job(long_id)
            assert len(results) == 2

            async def resumed_grid() -> int | None:
                link = await store.message_for_job(long_id, "results")
                return link.message_id if link else None

            resumed_grid_id = await eventually(resumed_grid, timeout=30, what="resumed grid")
            assert standin.message(resumed_grid_id).files
            # The progress message from before the kill was kept and brought to "done".
            await standin.wait_for(
                lambda: "✅" in standin.message(progress_link.message_id).content,
                timeout=30, description="the old progress message to show the job done",
            )

            # A reaction on the grid posted before the kill continues from that result.
            await standin.add_reaction(grid_id, "2️⃣", "bob")
            child = await eventually(lambda: store.get_job(long_id + 1), timeout=30,
                                     what="the continuation job")
            second = next(r for r in await store.results_for_job(before_id) if r.rank == 2)
            assert child.request.images["init_image"] == second.path.read_bytes()
            assert child.parent_result_id == second.id
            done = await job_where(store, child.id, {JobStatus.DONE, JobStatus.FAILED}, 60)
            assert done.status is JobStatus.DONE, (done.error, log_tail(log_path))
    finally:
        if store is not None:
            await store.close()
