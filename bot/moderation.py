"""/purge's order of work: stop the user's jobs, let their messages settle, then delete.

Deleting rows under a running job would have the worker write results for a job that no longer
exists, so the user's waiting jobs are cancelled, the running one is asked to stop and waited
for, and only finished jobs are deleted. Deleting the Discord messages is left to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time

from bot.owner_store import OwnerStore, PurgeReport
from bot.publisher import Publisher
from bot.scheduler import Scheduler
from bot.store import Store

log = logging.getLogger(__name__)


async def purge_user(
    user_id: int,
    *,
    scheduler: Scheduler,
    publisher: Publisher,
    store: Store,
    owner_store: OwnerStore,
    timeout: float,
) -> PurgeReport:
    snapshot = scheduler.snapshot()
    job_ids = [entry.job_id for entry in snapshot.for_user(user_id)]
    if snapshot.running is not None and snapshot.running.user_id == user_id:
        job_ids.insert(0, snapshot.running.job_id)
    for job_id in job_ids:
        await scheduler.cancel(job_id)
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        while True:
            status = await store.job_status(job_id)
            if status is None or status.finished:
                break
            if time.monotonic() > deadline:
                log.warning(
                    "purge of user %d: job %d did not stop within %.0f s; it is kept",
                    user_id,
                    job_id,
                    timeout,
                )
                break
            await asyncio.sleep(0.1)
    # The cancelled jobs' last message edits, so none lands after its message was deleted.
    try:
        await asyncio.wait_for(
            publisher.wait_settled(), timeout=max(1.0, deadline - time.monotonic())
        )
    except asyncio.TimeoutError:
        log.warning("purge of user %d: messages still being posted; deleting anyway", user_id)
    report = await owner_store.purge_user(user_id)
    log.info(
        "purged user %d: %d job(s), %d message(s) to delete",
        user_id,
        len(report.job_ids),
        len(report.messages),
    )
    return report
