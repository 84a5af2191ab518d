"""Every button works on messages posted before a SIGKILL of the bot, after it starts again.

The bot runs as ``python -m bot`` (as in test_scenario_restart.py). Each button under a results
grid, the Upscale button under a result posted alone, and Cancel under a progress message is
pressed once before the kill and once after the restart, on the very same messages: nothing about
them lived in the killed process.
"""

from __future__ import annotations

import asyncio
import signal

from bot.config import load_config
from bot.controls import Act, custom_id
from bot.jobs import JobStatus
from bot.store import Store
from tests.e2e.bot_harness import (
    WAIT,
    eventually,
    finished_job,
    message_of,
    queued_job_id,
    running_bot,
    write_test_config,
)
from tests.e2e.test_scenario_restart import START_TIMEOUT, bot_process, job_where, log_tail

EXTRA = {
    "imagine": {"steps": {"default": 3, "min": 1, "max": 400}},
    "scheduler": {"max_queued_per_user": 20},
}


async def answer_to(
    standin, message_id: int, act: Act, job_id: int, n: int = 0, user: str = "alice"
) -> str:
    handle = await standin.press_button(message_id, custom_id(act, job_id, n), user)
    reply = await handle.wait_for_reply(timeout=WAIT)
    assert handle.callback.ephemeral and reply.ephemeral, handle.describe()
    return reply.content


async def press_every_button(
    standin, job_id: int, grid_id: int, single_id: int, alice: int
) -> None:
    """Each result and tool button once; each answer shows the action was really done."""
    expected = {
        (Act.CONTINUE, 1): f"continuing from result 1 of job #{job_id}",
        (Act.CONTINUE, 2): f"continuing from result 2 of job #{job_id}",
        (Act.SINGLE, 2): f"Result 2 of job #{job_id} is posted at full size",
        (Act.REROLL, 0): f"rerunning job #{job_id} with a new seed",
        (Act.INFO, 0): "Reproduce it with",
        (Act.TIMELAPSE, 0): f"timelapse of job #{job_id} is posted",
    }
    for (act, n), words in expected.items():
        text = await answer_to(standin, grid_id, act, job_id, n)
        assert words.lower() in text.lower(), (act, text)
    text = await answer_to(standin, grid_id, Act.DELETE, job_id, user="bob")
    assert f"Only <@{alice}>" in text
    text = await answer_to(standin, single_id, Act.UPSCALE, job_id, 1)
    assert f"upscaling result 1 of job #{job_id}" in text.lower()
    opened = await standin.press_button(grid_id, custom_id(Act.REMIX, job_id), "alice")
    await opened.wait_for_callback(timeout=WAIT)
    submit = await standin.submit_modal(opened, {"prompt": "remixed", "result": "2"})
    reply = await submit.wait_for_reply(timeout=WAIT)
    assert f"remixing result 2 of job #{job_id}" in reply.content.lower(), reply.content


async def test_every_button_before_and_after_a_sigkill(standin, tmp_path) -> None:
    config_path = write_test_config(tmp_path, standin, EXTRA)
    config = load_config(config_path)
    log_path = tmp_path / "bot.log"
    alice = standin.users["alice"].id
    store: Store | None = None
    try:
        async with bot_process(config_path, log_path, standin.token) as first:
            await standin.wait_until_connected(identifies=1, timeout=START_TIMEOUT)
            await standin.wait_for(
                lambda: standin.synced_commands(standin.guild_id),
                timeout=START_TIMEOUT,
                description="commands synced",
            )
            store = await Store.open(config.storage.database_path, config.storage.data_dir)
            job_id = await queued_job_id(
                await standin.send_slash_command("imagine", {"prompt": "kept", "seed": 3}),
                timeout=60,
            )
            await job_where(store, job_id, {JobStatus.DONE}, 60)

            async def grid_linked() -> int | None:
                link = await store.message_for_job(job_id, "results")
                return link.message_id if link else None

            grid_id = await eventually(grid_linked, timeout=30, what="the grid's link")
            await standin.wait_for(
                lambda: standin.message(grid_id).buttons(),
                timeout=WAIT,
                description="the grid's buttons",
            )
            text = await answer_to(standin, grid_id, Act.SINGLE, job_id, 1)
            assert "posted at full size" in text
            single = next(
                m
                for m in standin.bot_messages()
                if m.content.startswith(f"Result 1 of job #{job_id}")
            )
            await press_every_button(standin, job_id, grid_id, single.id, alice)

            # A long job: bob may not cancel it; then the bot is killed while it runs.
            long_id = await queued_job_id(
                await standin.send_slash_command("imagine", {"prompt": "long", "steps": 400}),
                timeout=30,
            )
            await job_where(store, long_id, {JobStatus.RUNNING}, 120)
            progress = await eventually(
                lambda: store.message_for_job(long_id, "progress"),
                timeout=30,
                what="the long job's progress message",
            )
            await standin.wait_for(
                lambda: standin.message(progress.message_id).button(custom_id(Act.CANCEL, long_id)),
                timeout=WAIT,
                description="the Cancel button",
            )
            text = await answer_to(standin, progress.message_id, Act.CANCEL, long_id, user="bob")
            assert "Only the person who asked" in text
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 30)
            assert first.returncode == -signal.SIGKILL

        async with bot_process(config_path, log_path, standin.token):
            await standin.wait_until_connected(identifies=2, timeout=START_TIMEOUT)
            # The same old messages, pressed in a new process: Cancel on the resumed job first.
            await job_where(store, long_id, {JobStatus.RUNNING}, 120)
            text = await answer_to(standin, progress.message_id, Act.CANCEL, long_id)
            assert f"job #{long_id} is stopping" in text.lower(), (text, log_tail(log_path))
            cancelled = await job_where(store, long_id, {JobStatus.CANCELLED}, 60)
            assert cancelled.interruptions == 1
            # The Cancel button the killed process left on the message goes with the job's end.
            await standin.wait_for(
                lambda: "Cancelled" in standin.message(progress.message_id).content
                and not standin.message(progress.message_id).components,
                timeout=WAIT,
                description="the adopted progress message to lose its Cancel button",
            )
            await press_every_button(standin, job_id, grid_id, single.id, alice)
            # Last, the requester deletes the job from its week-old grid.
            text = await answer_to(standin, grid_id, Act.DELETE, job_id)
            assert f"Job #{job_id} is deleted" in text, log_tail(log_path)
            assert standin.message(grid_id).deleted and standin.message(single.id).deleted
            assert await store.get_job(job_id) is None
    finally:
        if store is not None:
            await store.close()


async def test_a_job_resumed_after_a_clean_restart_gets_its_cancel_button_back(
    standin, tmp_path
) -> None:
    config_path = write_test_config(tmp_path, standin, EXTRA)
    async with running_bot(standin, config_path) as bot:
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "long", "steps": 400})
        )
        progress = await message_of(bot, standin, job_id, "progress")
        cancel = custom_id(Act.CANCEL, job_id)
        await standin.wait_for(
            lambda: progress.button(cancel), timeout=WAIT, description="the Cancel button"
        )
    # A clean stop pauses the job and takes Cancel off: nothing can cancel it meanwhile.
    assert "Paused" in progress.content and not progress.components

    async with running_bot(standin, config_path) as bot:
        # Resumed, on the same message: Cancel is back, and it works.
        await standin.wait_for(
            lambda: "Paused" not in progress.content and progress.button(cancel),
            timeout=WAIT,
            description="the resumed job's Cancel button",
        )
        text = await answer_to(standin, progress.id, Act.CANCEL, job_id)
        assert f"job #{job_id} is stopping" in text.lower() or "was waiting" in text, text
        assert (await finished_job(bot, job_id, timeout=WAIT)).status is JobStatus.CANCELLED
        await bot.publisher.wait_settled()
        assert "Cancelled" in progress.content and not progress.components
