"""A copy of a finished job's results by direct message, for users whose /prefs ask for one.

A scheduler listener like the publisher: when a job ends with results it looks up the requester's
preferences and, if ``dm`` is on, hands a grid of the results to ``send`` (the cog's way of
opening a DM and posting). It never delays the channel's own results message, and a user who
does not accept DMs from server members only costs a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from PIL import Image

from bot.events import JobFinished, SchedulerEvent
from bot.files import png_bytes
from bot.grid import numbered_grid
from bot.jobs import JobStatus
from bot.store import ResultRecord, Store

log = logging.getLogger(__name__)

# send(user_id, text, png, spoiler) posts to the user's DMs; spoiler hides a flagged grid.
DmSender = Callable[[int, str, bytes, bool], Awaitable[None]]


def grid_png(results: list[ResultRecord]) -> bytes:
    images = []
    for result in results:
        with Image.open(result.path) as image:
            images.append(image.convert("RGB"))
    return png_bytes(numbered_grid(images))


def dm_text(event: JobFinished) -> str:
    params = event.job.params
    prompt = " ".join(str(params.get("prompt", "")).split())
    prompt = prompt if len(prompt) <= 200 else prompt[:199] + "…"
    seed = params.get("seed")
    return (
        f"Your /{event.job.kind.value} job #{event.job.job_id} is done: “{prompt}”"
        f"{f', seed {seed}' if seed is not None else ''}. Its results are also in "
        f"<#{event.job.channel_id}>. (/prefs dm turns these copies off.)"
    )


class DmCopies:
    def __init__(self, store: Store, send: DmSender) -> None:
        self.store = store
        self.send = send
        self._tasks: set[asyncio.Task] = set()

    def __call__(self, event: SchedulerEvent) -> None:
        if isinstance(event, JobFinished) and event.status is JobStatus.DONE and event.results:
            task = asyncio.get_running_loop().create_task(self._copy(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Until every copy under way is sent or given up (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def _copy(self, event: JobFinished) -> None:
        user_id = event.job.user_id
        try:
            prefs = await self.store.user_prefs(user_id)
            if not prefs.dm:
                return
            png = await asyncio.to_thread(grid_png, event.results)
            # Flagged results are stored blurred already (withheld ones not at all); the grid
            # goes as a spoiler too, as in the channel.
            flagged = any(getattr(r, "flagged", False) for r in event.results)
            await self.send(user_id, dm_text(event), png, flagged)
            log.info("job %d: results copied to user %d by DM", event.job.job_id, user_id)
        except Exception as exc:  # a closed DM must never disturb the job or the channel
            log.warning(
                "job %d: could not send user %d a copy by DM: %s", event.job.job_id, user_id, exc
            )
