"""Running the real FaradayBot (tiny presets) against the Discord stand-in, for the scenarios.

The scenario modules use these helpers; the stand-in itself and its fixtures belong to
``tests/e2e/standin`` and ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from bot.app import FaradayBot
from bot.config import Config, load_config
from bot.jobs import JobStatus
from bot.store import JobRecord, ResultRecord
from tests.e2e.standin import DiscordStandin, StoredMessage, write_bot_config
from tests.e2e.standin.inprocess import discord_py_pointed_at

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRESS_INTERVAL = 0.25
# Upper bounds only (a passing test never waits for them): generous, because a CI machine shared
# with other work can stall a process for many seconds.
JOB_TIMEOUT = 180.0
WAIT = 60.0  # for quick things: a reply, a notice, a reaction removed

# Small enough that a job takes well under a second on 2 shared cores.
TINY_OVERRIDES: dict[str, Any] = {
    "discord": {"submit_cooldown_seconds": 0.0, "post_cooldown_seconds": 0.0},
    "models": {"preset": "tiny", "device": "cpu", "dtype": "float32"},
    "imagine": {
        "sizes": ["64x64", "128x64"],
        "default_size": "64x64",
        "preview_every": 1,
        "candidates": 2,
        "steps": {"default": 3, "min": 1, "max": 40},
        "cutn": {"default": 2, "min": 1, "max": 4},
    },
    "edit": {
        "max_side": 64,
        "preview_every": 1,
        "steps": {"default": 3, "min": 2, "max": 10},
        "candidates": {"default": 2, "min": 1, "max": 3},
    },
    "scheduler": {
        # The product lowers the worker's priority so the event loop stays responsive; on a test
        # machine shared with other work that only starves the jobs the scenarios wait for.
        "worker_niceness": 0,
        "progress_interval_seconds": PROGRESS_INTERVAL,
        "retry": {"base_delay_seconds": 0.1, "max_delay_seconds": 0.5},
    },
}


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def write_test_config(
    directory: Path, standin: DiscordStandin, extra: Mapping[str, Any] | None = None
) -> Path:
    """The repo's config.toml, pointed at the stand-in, with tiny models and the given extras.

    The stand-in's CDN is plain http on a loopback port; its config trusts exactly that origin
    (bare host names in ``cdn_hosts`` are https only).
    """
    overrides = merged(TINY_OVERRIDES, {"storage": {"data_dir": str(directory / "data")}})
    return write_bot_config(
        directory / "config.toml",
        standin,
        base=REPO_ROOT / "config.toml",
        overrides=merged(overrides, extra or {}),
    )


@contextlib.asynccontextmanager
async def running_bot(
    standin: DiscordStandin,
    config_path: Path,
    *,
    wait_for_models: bool = True,
    prepare: Callable[[FaradayBot], None] | None = None,
) -> AsyncIterator[FaradayBot]:
    """FaradayBot started as ``python -m bot`` starts it, in this event loop; closed after.

    By default the models are loaded before it connects, so scenarios start from a ready bot;
    ``wait_for_models=False`` connects while they load, as ``python -m bot`` does. ``prepare``
    may change the bot before anything starts (a test slowing the model loading down, say).
    """
    config: Config = load_config(config_path)
    with discord_py_pointed_at(standin):
        bot = await FaradayBot.create(config)
        if prepare is not None:
            prepare(bot)
        client: asyncio.Task | None = None
        try:
            await bot.start_services(wait_for_models=wait_for_models)
            client = asyncio.create_task(bot.start(standin.token), name="faraday-under-test")
            await standin.wait_until_connected()
            # To the configured guilds, or globally (None) when there are none.
            scope = standin.guild_id if config.discord.guild_ids else None
            await standin.wait_for(
                lambda: standin.synced_commands(scope), timeout=20,
                description="the bot's slash commands to be synced",
            )
            await asyncio.wait_for(bot.wait_until_ready(), timeout=20)
            yield bot
        finally:
            await bot.stop_services()
            await bot.close()
            if client is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(client, timeout=10)
            await bot.store.close()


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0, what: str = "a condition"
) -> T:
    """Poll an async probe until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def job_id_in(text: str) -> int:
    match = re.search(r"job #(\d+)", text, re.IGNORECASE)
    assert match, f"no job number in {text!r}"
    return int(match.group(1))


async def queued_job_id(handle: Any, timeout: float = 60.0) -> int:
    """The job number from the bot's ephemeral "queued" answer to a slash command."""
    reply = await handle.wait_for_reply(
        lambda m: "Job #" in m.content or "Nothing was queued" in m.content, timeout=timeout
    )
    assert reply.ephemeral, handle.describe()
    assert "Nothing was queued" not in reply.content, reply.content
    return job_id_in(reply.content)


async def finished_job(bot: FaradayBot, job_id: int, timeout: float = JOB_TIMEOUT) -> JobRecord:
    async def probe() -> JobRecord | None:
        record = await bot.store.get_job(job_id)
        return record if record is not None and record.status.finished else None

    return await eventually(probe, timeout=timeout, what=f"job {job_id} to finish")


async def message_of(
    bot: FaradayBot, standin: DiscordStandin, job_id: int, role: str, timeout: float = JOB_TIMEOUT
) -> StoredMessage:
    """The stand-in's copy of the job's progress or results message, once the bot linked it."""

    async def probe() -> StoredMessage | None:
        link = await bot.store.message_for_job(job_id, role)
        return standin.messages.get(link.message_id) if link else None

    return await eventually(probe, timeout=timeout, what=f"the {role} message of job {job_id}")


async def results_with_reactions(
    bot: FaradayBot, standin: DiscordStandin, job_id: int, timeout: float = JOB_TIMEOUT
) -> tuple[StoredMessage, list[ResultRecord]]:
    """The results grid once the bot has put a number reaction under each result."""
    record = await finished_job(bot, job_id, timeout)
    assert record.status is JobStatus.DONE, (record.status, record.error)
    results = await bot.store.results_for_job(job_id)
    message = await message_of(bot, standin, job_id, "results", timeout)
    numbers = ["1️⃣", "2️⃣", "3️⃣", "4️⃣"][: len(results)]
    await standin.wait_for(
        lambda: all(standin.bot_user.id in message.reactors(e) for e in numbers),
        timeout=timeout, description=f"number reactions under job {job_id}'s results",
    )
    return message, results


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(size: tuple[int, int] = (64, 64)) -> bytes:
    """A test photo: a gradient, so it is not flat."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata([(x * 4 % 256, y * 4 % 256, 128) for y in range(height) for x in range(width)])
    return png(image)


def box_mask(
    size: tuple[int, int] = (64, 64), box: tuple[int, int, int, int] = (16, 16, 48, 48)
) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return png(mask)


async def react_and_wait_for_new_job(
    bot: FaradayBot,
    standin: DiscordStandin,
    message_id: int,
    emoji: str,
    user: str,
    last_job_id: int,
    timeout: float = 60.0,
) -> JobRecord:
    """React as ``user`` and return the job the reaction queued (ids increase by one)."""
    await standin.add_reaction(message_id, emoji, user)

    async def probe() -> JobRecord | None:
        return await bot.store.get_job(last_job_id + 1)

    return await eventually(probe, timeout=timeout, what=f"a job queued by {emoji}")
