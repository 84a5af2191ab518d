"""Scenario 5: cancelling with ❌ on the progress message and with /cancel, with permissions.

Each test runs the real FaradayBot (tiny presets) against the Discord stand-in, in-process.
"""

from __future__ import annotations

from bot.jobs import JobStatus
from tests.e2e.bot_harness import (
    WAIT,
    eventually,
    finished_job,
    message_of,
    queued_job_id,
    running_bot,
    write_test_config,
)

# Jobs long enough that they are still running when the test cancels them.
LONG = {"imagine": {"steps": {"default": 3, "min": 1, "max": 400}}}


async def test_cross_on_the_progress_message_cancels_for_requester_or_admin(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin, LONG)) as bot:
        running_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a slow one", "steps": 400})
        )
        waiting_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "bob's", "steps": 400},
                                             user="bob")
        )
        running_message = await message_of(bot, standin, running_id, "progress")
        waiting_message = await message_of(bot, standin, waiting_id, "progress")

        # Someone else's ❌ does nothing but explain.
        bob = standin.users["bob"].id
        await standin.add_reaction(running_message.id, "❌", "bob")
        await standin.wait_for(
            lambda: any(f"<@{bob}> only the person who asked" in m.content
                        for m in standin.bot_messages()),
            timeout=WAIT, description="a notice telling bob he cannot cancel alice's job",
        )
        assert (await bot.store.job_status(running_id)) is JobStatus.RUNNING

        # An admin may cancel anyone's job, here one still waiting.
        await standin.add_reaction(waiting_message.id, "❌", "root")
        waiting = await finished_job(bot, waiting_id, timeout=WAIT)
        assert waiting.status is JobStatus.CANCELLED and waiting.started_at is None

        # The requester cancels their running job; it stops at its next step.
        await standin.add_reaction(running_message.id, "❌", "alice")
        running = await finished_job(bot, running_id, timeout=WAIT)
        assert running.status is JobStatus.CANCELLED
        await bot.publisher.wait_settled()
        assert "Cancelled" in standin.message(running_message.id).content
        assert not await bot.store.results_for_job(running_id)
        alice = standin.users["alice"].id
        await standin.wait_for(
            lambda: alice not in standin.message(running_message.id).reactors("❌"),
            timeout=WAIT, description="alice's ❌ to be removed once acted on",
        )


async def test_cancel_command_for_own_jobs_and_admins(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin, LONG)) as bot:
        running_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "long", "steps": 400})
        )
        waiting_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "later", "steps": 400})
        )

        async def cancel(user: str, job: int | None = None) -> str:
            options = {} if job is None else {"job": job}
            handle = await standin.send_slash_command("cancel", options, user=user)
            reply = await handle.wait_for_reply(timeout=WAIT)
            assert reply.ephemeral
            return reply.content

        assert "not yours" in await cancel("bob", waiting_id)
        assert "There is no job #999" in await cancel("bob", 999)
        assert "no running or waiting job" in await cancel("bob")
        assert "was waiting; it is cancelled" in await cancel("root", waiting_id)
        assert (await finished_job(bot, waiting_id, timeout=WAIT)).status is JobStatus.CANCELLED

        # Without a number: the user's running job.
        assert f"Job #{running_id} is stopping" in await cancel("alice")
        assert (await finished_job(bot, running_id, timeout=WAIT)).status is JobStatus.CANCELLED
        assert "already been cancelled" in await cancel("alice", running_id)

        async def idle() -> bool:
            return bot.scheduler.snapshot().length == 0

        await eventually(idle, timeout=WAIT, what="an empty queue")
