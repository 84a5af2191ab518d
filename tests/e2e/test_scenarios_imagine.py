"""Scenarios 1, 2, 6 and 7: /imagine end to end, continuing by reaction, fairness, faults.

Each test runs the real FaradayBot (tiny presets) against the Discord stand-in, in-process.
"""

from __future__ import annotations

import io
import itertools

from PIL import Image

from bot.jobs import JobStatus
from tests.e2e.bot_harness import (
    PROGRESS_INTERVAL,
    WAIT,
    finished_job,
    message_of,
    queued_job_id,
    react_and_wait_for_new_job,
    results_with_reactions,
    running_bot,
    write_test_config,
)


async def test_imagine_acknowledges_then_throttles_progress_and_posts_a_scored_grid(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        handle = await standin.send_slash_command(
            "imagine", {"prompt": "a lighthouse at dusk | oil painting:0.5", "steps": 20}
        )
        callback = await handle.wait_for_callback(timeout=WAIT)
        assert callback.type == 5 and callback.ephemeral  # deferred at once, privately
        job_id = await queued_job_id(handle)
        reply = handle.replies[0].content
        assert f"Job #{job_id} is starting now" in reply and "ETA" in reply

        progress = await message_of(bot, standin, job_id, "progress")
        assert not progress.ephemeral and callback.at <= progress.created_at
        grid_message, results = await results_with_reactions(bot, standin, job_id)
        await bot.publisher.wait_settled()

        # Progress: edited with previews, never more often than the configured interval.
        edits = standin.edits_of(progress.id)
        shown_at = [progress.created_at, *(edit.at for edit in edits)]
        gaps = [later - earlier for earlier, later in itertools.pairwise(shown_at)]
        assert len(edits) >= 2, "a 20-step job should be shown more than once"
        # The publisher waits the interval after each send has completed, and the stand-in
        # stamps a request when it arrives, so no slack is needed here.
        assert min(gaps) >= PROGRESS_INTERVAL, gaps
        previews = [e for e in edits if any(name.endswith(".png") for name in e.files)]
        assert previews, "no edit carried a preview image"
        preview = Image.open(io.BytesIO(next(iter(previews[0].files.values()))))
        assert preview.height == 64  # the candidates side by side
        assert "✅" in progress.content and "20/20" in progress.content

        # Results: a grid of both candidates, their scores, one number reaction each.
        assert [r.rank for r in results] == [1, 2]
        assert results[0].score >= results[1].score
        (grid_bytes,) = grid_message.files.values()
        grid = Image.open(io.BytesIO(grid_bytes))
        assert grid.width >= 2 * 64 and grid.height >= 64
        for result in results:
            assert f"{result.score:.3f}" in grid_message.content
        assert grid_message.reactors("1️⃣") == [standin.bot_user.id]
        assert grid_message.reactors("2️⃣") == [standin.bot_user.id]
        assert not grid_message.reactors("3️⃣")
        # The controls the cogs handle are offered too: 🔁 under the grid, ❌ under progress.
        assert grid_message.reactors("🔁") == [standin.bot_user.id]
        assert standin.message(progress.id).reactors("❌") == [standin.bot_user.id]


async def test_reacting_2_continues_from_result_2_byte_for_byte(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        handle = await standin.send_slash_command(
            "imagine", {"prompt": "a red fox", "seed": 1234, "cutn": 3}
        )
        parent_id = await queued_job_id(handle)
        grid_message, results = await results_with_reactions(bot, standin, parent_id)
        parent = await bot.store.get_job(parent_id)
        assert parent is not None and "init_image" not in parent.request.images

        child = await react_and_wait_for_new_job(
            bot, standin, grid_message.id, "2️⃣", "bob", parent_id
        )
        second = next(r for r in results if r.rank == 2)
        assert child.request.images["init_image"] == second.path.read_bytes()
        assert child.parent_result_id == second.id
        assert child.request.user_id == standin.users["bob"].id
        same = {k: v for k, v in child.request.params.items() if k != "seed"}
        assert same == {k: v for k, v in parent.request.params.items() if k != "seed"}
        assert child.request.params["seed"] != 1234  # a new seed, drawn by the scheduler

        await results_with_reactions(bot, standin, child.id)
        bob = standin.users["bob"].id
        await standin.wait_for(
            lambda: bob not in grid_message.reactors("2️⃣"),
            timeout=WAIT, description="bob's 2️⃣ to be removed once acted on",
        )
        notices = [m for m in standin.bot_messages() if f"<@{bob}>" in m.content]
        assert any(f"continuing from result 2 of job #{parent_id}" in m.content for m in notices)


async def test_two_users_jobs_interleave_fairly(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        first = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "alice one", "steps": 15})
        )
        alice_more = [
            await queued_job_id(await standin.send_slash_command("imagine", {"prompt": p}))
            for p in ("alice two", "alice three")
        ]
        bob_handle = await standin.send_slash_command(
            "imagine", {"prompt": "bob one"}, user="bob"
        )
        bob_job = await queued_job_id(bob_handle)
        assert "position 2" in bob_handle.replies[0].content, bob_handle.describe()

        queue = await standin.send_slash_command("queue", user="bob")
        answer = (await queue.wait_for_reply(timeout=WAIT)).content
        assert queue.ephemeral and f"job #{bob_job} (imagine): position 2" in answer
        assert f"Running: job #{first}" in answer

        records = [await finished_job(bot, job_id) for job_id in (first, *alice_more, bob_job)]
        assert all(r.status is JobStatus.DONE for r in records)
        order = [r.id for r in sorted(records, key=lambda r: r.started_at or 0)]
        assert order == [first, bob_job, *alice_more]


async def test_a_429_on_a_progress_edit_and_a_500_on_the_result_post_are_survived(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        throttled = standin.fail_next("PATCH", r"/channels/\d+/messages/\d+$", 429,
                                      retry_after=0.3)
        handle = await standin.send_slash_command("imagine", {"prompt": "storm", "steps": 20})
        job_id = await queued_job_id(handle)
        progress = await message_of(bot, standin, job_id, "progress")
        # Armed once the progress message exists, so the next post is the results grid.
        broken = standin.fail_next("POST", r"/channels/\d+/messages$", 500)

        grid_message, results = await results_with_reactions(bot, standin, job_id)
        await bot.publisher.wait_settled()
        assert throttled.hits and broken.hits
        assert len(results) == 2 and grid_message.files
        # The 500 really met the grid's post (its file), and the retry delivered the same file.
        (refused,) = broken.hits
        assert {f.filename: f.data for f in refused.files} == grid_message.files
        assert "✅" in standin.message(progress.id).content
        record = await bot.store.get_job(job_id)
        assert record is not None and record.status is JobStatus.DONE


async def test_a_deleted_progress_message_is_replaced_and_a_missing_permission_is_survived(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "moderated", "steps": 20})
        )
        first = await message_of(bot, standin, job_id, "progress")
        await standin.delete_message(first.id)  # a moderator removes it mid-job (edits now 404)
        await results_with_reactions(bot, standin, job_id)
        await bot.publisher.wait_settled()
        fresh = await bot.store.message_for_job(job_id, "progress")
        assert fresh is not None and fresh.message_id != first.id
        assert "✅" in standin.message(fresh.message_id).content

        # The bot may no longer post here (403 Missing Permissions on every post): its job
        # still runs and its results stay retrievable.
        forbidden = standin.fail_next("POST", r"/channels/\d+/messages$", 403, times=None)
        posted_before = len(standin.bot_messages())
        muted_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "unseen"})
        )
        record = await finished_job(bot, muted_id)
        await bot.publisher.wait_settled()
        assert record.status is JobStatus.DONE
        assert len(await bot.store.results_for_job(muted_id)) == 2
        assert len(standin.bot_messages()) == posted_before
        assert len(forbidden.hits) >= 2  # the progress message and the results grid
