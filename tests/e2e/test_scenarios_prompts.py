"""/imagine prompts end to end: zero-sum weights accepted, the reading shown on the progress and
result messages, an image prompt's weight, and the self-mask shown on the first snapshot."""

from __future__ import annotations

from bot.progress_text import MASK_LINE
from tests.e2e.bot_harness import (
    WAIT,
    message_of,
    picture,
    queued_job_id,
    results_with_reactions,
    running_bot,
    write_test_config,
)

READING = "📝 read as: a red apple (1) · blurry (\u22121) · image prompt 1 (0.5)"


async def test_a_zero_sum_prompt_with_a_weighted_image_is_read_back_to_the_user(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        handle = await standin.send_slash_command(
            "imagine",
            {"prompt": "a red apple | blurry:-1", "image_prompt_weight": 0.5, "steps": 2},
            attachments={"image_prompt": standin.add_cdn_file("style.png", picture((96, 48)))},
        )
        job_id = await queued_job_id(handle)
        record = await bot.store.get_job(job_id)
        assert record is not None
        assert record.request.params["image_prompt_weights"] == [0.5]
        progress = await message_of(bot, standin, job_id, "progress")
        grid_message, _ = await results_with_reactions(bot, standin, job_id)
        await bot.publisher.wait_settled()
        assert READING in standin.message(progress.id).content
        assert READING in grid_message.content


async def test_an_image_weight_without_an_image_is_refused(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        handle = await standin.send_slash_command(
            "imagine", {"prompt": "a red apple", "image_prompt_weight": 0.5}
        )
        reply = await handle.wait_for_reply(timeout=WAIT)
        assert reply.ephemeral and "Nothing was queued" in reply.content
        assert "attach it as `image_prompt`" in reply.content
        assert await bot.store.get_job(1) is None


async def test_a_zero_text_weight_beside_an_image_is_named_not_called_all_zero(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        handle = await standin.send_slash_command(
            "imagine",
            {"prompt": "a castle:0", "image_prompt_weight": 1.0},
            attachments={"image_prompt": standin.add_cdn_file("style.png", picture((96, 48)))},
        )
        reply = await handle.wait_for_reply(timeout=WAIT)
        assert reply.ephemeral and "Nothing was queued" in reply.content
        # The image prompt guides, so "every prompt weight is 0" would be false.
        assert "the prompt ('a castle') has a weight that is too small" in reply.content
        assert "every prompt weight is 0" not in reply.content
        assert await bot.store.get_job(1) is None


async def test_the_self_mask_is_shown_on_the_first_snapshot(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        handle = await standin.send_slash_command(
            "imagine",
            {"prompt": "a red door", "mask_text": "the door", "steps": 4},
            attachments={"init_image": standin.add_cdn_file("photo.png", picture())},
        )
        job_id = await queued_job_id(handle)
        progress = await message_of(bot, standin, job_id, "progress")
        await results_with_reactions(bot, standin, job_id)
        await bot.publisher.wait_settled()
        history = standin.message(progress.id).history
        first_with_preview = next(version for version in history if version.files)
        assert MASK_LINE in first_with_preview.content
        # Shown once: every version that mentions the mask carries that same first picture.
        masked = {tuple(v.files.values()) for v in history if MASK_LINE in v.content}
        assert masked == {tuple(first_with_preview.files.values())}
        assert MASK_LINE not in history[-1].content
