"""The image safety check end to end: a flagged result is blurred behind a spoiler, or withheld;
a flagged input image is refused before anything is queued; age-restricted channels skip it.

The tiny preset's checker has random weights and flags nothing; ``force_flag`` lowers its
thresholds so that the real check flags everything, which is how these tests get a flag.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from bot.jobs import JobStatus
from bot.safety import ALL_WITHHELD
from bot.scheduler import SAFETY_CHECK_FAILED
from pipelines.safety import SafetyChecker, load_safety_checker
from pipelines.settings import ModelSettings
from tests.e2e.bot_harness import (
    WAIT,
    box_mask,
    finished_job,
    job_id_in,
    message_of,
    picture,
    queued_job_id,
    running_bot,
    write_test_config,
)
from tests.e2e.standin import DiscordStandin

TINY = ModelSettings(preset="tiny", device="cpu", dtype="float32")


@pytest.fixture
def checker() -> Iterator[SafetyChecker]:
    """The process's tiny checker (the bot under test shares it), set back to flag nothing."""
    shared = load_safety_checker(TINY)
    try:
        yield shared
    finally:
        shared.force_flag(False)


async def test_a_flagged_result_is_posted_blurred_behind_a_spoiler(
    standin: DiscordStandin, tmp_path, checker: SafetyChecker
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        # First unflagged: the same job, so the flagged one can be compared with it.
        plain_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a lighthouse", "seed": 7})
        )
        assert (await finished_job(bot, plain_id)).status is JobStatus.DONE
        plain = await bot.store.results_for_job(plain_id)
        assert not any(r.flagged for r in plain)
        plain_message = await message_of(bot, standin, plain_id, "results")
        assert not any(name.startswith("SPOILER_") for name in plain_message.files)

        checker.force_flag(True)
        flagged_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a lighthouse", "seed": 7})
        )
        record = await finished_job(bot, flagged_id)
        assert record.status is JobStatus.DONE, record.error
        flagged = await bot.store.results_for_job(flagged_id)
        assert [r.flagged for r in flagged] == [True, True]
        for before, after in zip(plain, flagged, strict=True):
            original = Image.open(before.path).convert("RGB")
            stored = Image.open(after.path).convert("RGB")
            # Only the blurred image is kept, and it is not the original.
            assert stored.size == original.size and stored.tobytes() != original.tobytes()
        message = await message_of(bot, standin, flagged_id, "results")
        await standin.wait_for(lambda: message.files, timeout=WAIT, description="the grid")
        [name] = message.files
        assert name.startswith("SPOILER_"), name
        assert "flagged result(s) 1, 2: they are blurred" in message.content
        grid = Image.open(io.BytesIO(message.files[name]))
        assert grid.width >= 2 * Image.open(flagged[0].path).width
        # The progress message's last preview (all but the result itself) is taken off, and the
        # timelapse frames, which show the image forming, are deleted.
        progress = await message_of(bot, standin, flagged_id, "progress")
        await standin.wait_for(
            lambda: not progress.files,
            timeout=WAIT,
            description="the flagged job's preview to be taken off",
        )
        plain_progress = await message_of(bot, standin, plain_id, "progress")
        assert plain_progress.files, "an unflagged job keeps its last preview"
        frames = tmp_path / "data" / "frames"
        assert (frames / f"job-{plain_id}").is_dir()
        assert not (frames / f"job-{flagged_id}").exists()


async def test_withhold_holds_flagged_results_back_and_says_so(
    standin: DiscordStandin, tmp_path, checker: SafetyChecker
) -> None:
    config = write_test_config(tmp_path, standin, {"safety": {"action": "withhold"}})
    async with running_bot(standin, config) as bot:
        checker.force_flag(True)
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a lighthouse"})
        )
        record = await finished_job(bot, job_id)
        assert record.status is JobStatus.FAILED and record.error == ALL_WITHHELD
        assert await bot.store.results_for_job(job_id) == []
        assert not list((tmp_path / "data" / "results").glob(f"job-{job_id}-*"))
        progress = await message_of(bot, standin, job_id, "progress")
        await standin.wait_for(
            lambda: "withheld by the image safety check" in progress.content,
            timeout=WAIT,
            description="the job's message to say why",
        )
        assert await bot.store.message_for_job(job_id, "results") is None


async def test_a_flagged_input_image_is_refused_ephemerally_and_nothing_is_queued(
    standin: DiscordStandin, tmp_path, checker: SafetyChecker
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        checker.force_flag(True)
        handle = await standin.send_slash_command(
            "edit",
            {
                "prompt": "a red door",
                "image": standin.add_cdn_file("photo.png", picture()),
                "mask": standin.add_cdn_file("mask.png", box_mask()),
            },
        )
        reply = await handle.wait_for_reply(lambda m: "safety" in m.content, timeout=WAIT)
        assert reply.ephemeral
        assert reply.content == (
            "The image was refused by the image safety check, so nothing "
            "was queued. Try another picture."
        )
        assert await bot.store.pending_jobs() == []
        assert bot.scheduler.snapshot().length == 0


async def test_an_age_restricted_channel_skips_the_check_unless_the_owner_turns_it_on(
    standin: DiscordStandin, tmp_path, checker: SafetyChecker
) -> None:
    def age_restrict(bot: object) -> None:
        standin.guild.channels[standin.channel_id].nsfw = True

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = write_test_config(tmp_path / "a", standin)
    async with running_bot(standin, config, prepare=age_restrict) as bot:
        checker.force_flag(True)
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a lighthouse"})
        )
        assert (await finished_job(bot, job_id)).status is JobStatus.DONE
        assert not any(r.flagged for r in await bot.store.results_for_job(job_id))
        # A thread is age-restricted when its channel is (Discord gives threads no flag).
        thread = standin.add_thread("after dark", parent_id=standin.channel_id)
        job_id = await queued_job_id(
            await standin.send_slash_command(
                "imagine", {"prompt": "a lighthouse"}, channel_id=thread.id
            )
        )
        assert (await finished_job(bot, job_id)).status is JobStatus.DONE
        assert not any(r.flagged for r in await bot.store.results_for_job(job_id))

    strict = write_test_config(tmp_path / "b", standin, {"safety": {"check_age_restricted": True}})
    async with running_bot(standin, strict, prepare=age_restrict) as bot:
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a lighthouse"})
        )
        assert (await finished_job(bot, job_id)).status is JobStatus.DONE
        assert all(r.flagged for r in await bot.store.results_for_job(job_id))


async def test_a_safety_check_that_fails_fails_the_job_and_posts_nothing(
    standin: DiscordStandin, tmp_path, monkeypatch
) -> None:
    """Unchecked is not safe: a checker that raises must not leave the job "running" forever,
    nor post its results."""
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        assert bot.image_safety is not None

        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("the checker is broken")

        monkeypatch.setattr(bot.image_safety, "screen_results", broken)
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a lighthouse"})
        )
        record = await finished_job(bot, job_id)
        assert record.status is JobStatus.FAILED and record.error == SAFETY_CHECK_FAILED
        assert await bot.store.results_for_job(job_id) == []
        assert not list((tmp_path / "data" / "results").glob(f"job-{job_id}-*"))
        progress = await message_of(bot, standin, job_id, "progress")
        await standin.wait_for(
            lambda: "could not check the results" in progress.content and not progress.files,
            timeout=WAIT,
            description="the job's message to say why, without a preview",
        )
        assert await bot.store.message_for_job(job_id, "results") is None


async def test_a_flagged_result_alone_and_its_upscale_stay_behind_a_spoiler(
    standin: DiscordStandin, tmp_path, checker: SafetyChecker
) -> None:
    from bot.controls import Act, custom_id

    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        checker.force_flag(True)
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a lighthouse"})
        )
        assert (await finished_job(bot, job_id)).status is JobStatus.DONE
        assert (await bot.store.results_for_job(job_id))[0].flagged
        grid = await message_of(bot, standin, job_id, "results")
        # The checker flags nothing from here on, so the upscale's own output is not flagged:
        # only its flagged source can hide it.
        checker.force_flag(False)

        handle = await standin.press_button(grid.id, custom_id(Act.SINGLE, job_id, 1), "alice")
        reply = await handle.wait_for_reply(timeout=WAIT)
        assert "posted at full size" in reply.content and reply.ephemeral
        single = await message_of(bot, standin, job_id, "single")
        [name] = single.files
        assert name.startswith("SPOILER_"), name
        assert "⚠️" in single.content and "flagged result 1" in single.content

        handle = await standin.press_button(single.id, custom_id(Act.UPSCALE, job_id, 1), "alice")
        reply = await handle.wait_for_reply(timeout=WAIT)
        upscale_id = job_id_in(reply.content.split(": ", 1)[1])
        upscaled = await finished_job(bot, upscale_id)
        assert upscaled.status is JobStatus.DONE, upscaled.error
        assert not (await bot.store.results_for_job(upscale_id))[0].flagged
        posted = await message_of(bot, standin, upscale_id, "results")
        [name] = posted.files
        assert name.startswith("SPOILER_"), name
        assert "⚠️" in posted.content
