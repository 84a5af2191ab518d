"""Buttons under results and progress messages, the remix modal, pings, /prefs, threads.

Each test runs the real FaradayBot (tiny presets) against the Discord stand-in, in-process. A
press is a component interaction (type 3) built from the message's stored components, a modal
submit a type 5 interaction mirroring the modal the bot opened, as Discord sends them.
"""

from __future__ import annotations

import io
import re
from dataclasses import replace

import av
import discord
from PIL import Image

from bot.controls import Act, custom_id
from bot.jobs import JobKind, JobStatus
from tests.e2e.bot_harness import (
    WAIT,
    finished_job,
    message_of,
    queued_job_id,
    results_with_reactions,
    running_bot,
    write_test_config,
)
from tests.e2e.standin import InteractionHandle, InvalidInvocation

MANAGE_THREADS = discord.Permissions(manage_threads=True).value
LONG = {"imagine": {"steps": {"default": 3, "min": 1, "max": 400}}}


async def press(
    standin, message_id: int, act: Act, job_id: int, n: int = 0, user: str = "alice"
) -> tuple[InteractionHandle, str]:
    """Press a button; the bot's private answer to it."""
    handle = await standin.press_button(message_id, custom_id(act, job_id, n), user)
    reply = await handle.wait_for_reply(timeout=WAIT)
    assert handle.callback is not None and handle.callback.ephemeral, handle.describe()
    assert reply.ephemeral, handle.describe()
    return handle, reply.content


def job_in(text: str) -> int:
    # "continuing from result 2 of job #1: Job #4 is starting now …" (the commands' words)
    match = re.search(r"Job #(\d+) (?:is starting|queued)", text)
    assert match, text
    return int(match.group(1))


async def test_every_result_button_and_the_remix_modal(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        alice = standin.users["alice"].id
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a red fox", "seed": 7})
        )
        grid, results = await results_with_reactions(bot, standin, job_id)
        # Two results: numbers, then U buttons, then the tools; reactions stay beside them.
        rows = [[b["custom_id"] for b in row["components"]] for row in grid.components]
        assert rows == [
            [custom_id(Act.CONTINUE, job_id, 1), custom_id(Act.CONTINUE, job_id, 2)],
            [custom_id(Act.SINGLE, job_id, 1), custom_id(Act.SINGLE, job_id, 2)],
            [
                custom_id(a, job_id)
                for a in (Act.REROLL, Act.REMIX, Act.INFO, Act.TIMELAPSE, Act.DELETE)
            ],
        ]
        assert grid.reactors("1️⃣") == [standin.bot_user.id]

        # "2" continues from result 2, exactly as the 2️⃣ reaction does.
        _, text = await press(standin, grid.id, Act.CONTINUE, job_id, 2, user="bob")
        assert f"continuing from result 2 of job #{job_id}" in text.lower()
        child = await bot.store.get_job(job_in(text))
        second = next(r for r in results if r.rank == 2)
        assert child.request.images["init_image"] == second.path.read_bytes()
        assert child.parent_result_id == second.id
        assert child.request.user_id == standin.users["bob"].id

        # 🔁 reruns with a new seed.
        _, text = await press(standin, grid.id, Act.REROLL, job_id)
        rerun = await bot.store.get_job(job_in(text))
        assert rerun.request.params["prompt"] == "a red fox"
        assert rerun.request.params["seed"] != 7 and not rerun.request.images

        # U1 posts result 1 alone at its full size.
        _, text = await press(standin, grid.id, Act.SINGLE, job_id, 1)
        assert "posted at full size" in text
        single = await message_of(bot, standin, job_id, "single")
        (data,) = single.files.values()
        assert data == results[0].path.read_bytes()
        assert Image.open(io.BytesIO(data)).size == Image.open(results[0].path).size
        # …with an Upscale ×4 button: an upscale job through the queue, its image posted.
        upscale_button = single.button(custom_id(Act.UPSCALE, job_id, 1))
        assert upscale_button is not None and upscale_button["label"] == "Upscale ×4"
        _, text = await press(standin, single.id, Act.UPSCALE, job_id, 1, user="bob")
        upscaled = await finished_job(bot, job_in(text))
        assert upscaled.status is JobStatus.DONE and upscaled.request.kind is JobKind.UPSCALE
        posted = await message_of(bot, standin, upscaled.id, "results")
        (big,) = posted.files.values()
        assert Image.open(io.BytesIO(big)).size == (4 * 64, 4 * 64)

        # ℹ️ shows every setting, the seed, the models, timings and a command to copy.
        _, text = await press(standin, grid.id, Act.INFO, job_id, user="bob")
        assert "Seed: 7" in text and "cutn=2" in text and "tiny preset" in text
        assert "Timings:" in text and "ran" in text
        assert "/imagine prompt:a red fox seed:7 steps:3 size:64x64 cutn:2" in text

        # 🎞 posts the MP4 of the image forming: H.264 that PyAV decodes, one frame per preview.
        _, text = await press(standin, grid.id, Act.TIMELAPSE, job_id, user="bob")
        assert f"timelapse of job #{job_id} is posted" in text
        frames = int(re.search(r"\((\d+) frames\)", text).group(1))
        # 3 steps with a preview at each, and the final ranked candidates.
        assert frames == 3 + 1
        video_message = next(m for m in standin.bot_messages() if "Timelapse of job" in m.content)
        ((name, video),) = video_message.files.items()
        assert name.endswith(".mp4")
        with av.open(io.BytesIO(video)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert sum(1 for _ in container.decode(stream)) == frames

        # ✏️ opens a modal with the prompt filled in; its submit continues from result 1.
        opened = await standin.press_button(grid.id, custom_id(Act.REMIX, job_id), "alice")
        await opened.wait_for_callback(timeout=WAIT)
        assert opened.callback.type == 9 and opened.modal is not None
        inputs = {
            i["custom_id"]: i for row in opened.modal["components"] for i in row["components"]
        }
        assert inputs["prompt"]["value"] == "a red fox"
        submit = await standin.submit_modal(opened, {"prompt": "a blue fox", "result": "1"})
        reply = await submit.wait_for_reply(timeout=WAIT)
        assert submit.callback.ephemeral and reply.ephemeral
        remixed = await bot.store.get_job(job_in(reply.content))
        assert remixed.request.params["prompt"] == "a blue fox"
        assert remixed.request.images["init_image"] == results[0].path.read_bytes()
        # Left empty, the remix reruns from scratch with the new prompt.
        opened = await standin.press_button(grid.id, custom_id(Act.REMIX, job_id), "alice")
        await opened.wait_for_callback(timeout=WAIT)
        submit = await standin.submit_modal(opened, {"prompt": "a green fox"})
        reply = await submit.wait_for_reply(timeout=WAIT)
        fresh = await bot.store.get_job(job_in(reply.content))
        assert fresh.request.params["prompt"] == "a green fox" and not fresh.request.images

        # 🗑 by someone else is refused; by the requester it removes messages and files.
        _, text = await press(standin, grid.id, Act.DELETE, job_id, user="bob")
        assert f"Only <@{alice}>" in text and "delete" in text
        assert not standin.message(grid.id).deleted
        progress = await message_of(bot, standin, job_id, "progress")
        for other in (child.id, rerun.id, remixed.id, fresh.id, upscaled.id):
            await finished_job(bot, other)
        _, text = await press(standin, grid.id, Act.DELETE, job_id)
        assert f"Job #{job_id} is deleted" in text
        for message_id in (grid.id, progress.id, single.id, video_message.id):
            assert standin.message(message_id).deleted
        assert await bot.store.get_job(job_id) is None
        # Its upscale (an end product with no 🗑 of its own) goes with it; bob's continuation
        # is a job of its own and stays.
        assert "and 1 upscale(s)" in text, text
        assert standin.message(posted.id).deleted
        assert await bot.store.get_job(upscaled.id) is None
        assert await bot.store.get_job(child.id) is not None
        assert not any(r.path.exists() for r in results)


async def test_remix_refuses_an_empty_or_too_long_prompt_and_a_pruned_job_has_expired(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a lighthouse"})
        )
        grid, _ = await results_with_reactions(bot, standin, job_id)
        limit = bot.config.imagine.max_prompt_chars
        before = await bot.store.count_jobs()

        async def remix(prompt: str, *, validate: bool = True) -> str:
            opened = await standin.press_button(grid.id, custom_id(Act.REMIX, job_id))
            await opened.wait_for_callback(timeout=WAIT)
            submit = await standin.submit_modal(opened, {"prompt": prompt}, validate=validate)
            reply = await submit.wait_for_reply(timeout=WAIT)
            assert reply.ephemeral
            return reply.content

        assert "the prompt is empty" in await remix("   ")
        # Discord's client enforces the modal's max_length; a modified client is refused too.
        opened = await standin.press_button(grid.id, custom_id(Act.REMIX, job_id))
        await opened.wait_for_callback(timeout=WAIT)
        try:
            await standin.submit_modal(opened, {"prompt": "x" * (limit + 1)})
        except InvalidInvocation:
            pass
        else:
            raise AssertionError("the modal should cap the prompt at the configured length")
        text = await remix("x" * (limit + 1), validate=False)
        assert f"the limit is {limit}" in text and "Nothing was queued" in text
        assert await bot.store.count_jobs() == before

        # Retention removes the job; its buttons then answer that the result has expired.
        await bot.store._db.execute(
            "UPDATE jobs SET finished_at = finished_at - 90 * 86400 WHERE id = ?", (job_id,)
        )
        assert await bot.store.prune(30) == 1
        for act, n in (
            (Act.CONTINUE, 1),
            (Act.SINGLE, 1),
            (Act.INFO, 0),
            (Act.REROLL, 0),
            (Act.DELETE, 0),
        ):
            _, text = await press(standin, grid.id, act, job_id, n)
            assert "this result has expired" in text.lower(), (act, text)
        opened = await standin.press_button(grid.id, custom_id(Act.REMIX, job_id))
        reply = await opened.wait_for_reply(timeout=WAIT)
        assert reply.ephemeral and "this result has expired" in reply.content.lower()


async def test_cancel_button_and_the_ping_names_only_the_requester(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin, LONG)) as bot:
        alice = standin.users["alice"].id
        handle = await standin.send_slash_command("imagine", {"prompt": "done soon"})
        done_id = await queued_job_id(handle)
        grid, _ = await results_with_reactions(bot, standin, done_id)
        posts = [
            r
            for r in standin.requests_matching("POST", r"/channels/\d+/messages$")
            if r.json
            and f"/imagine #{done_id}**" in (r.json.get("content") or "")
            and "results, best first" in r.json["content"]
        ]
        assert len(posts) == 1
        # The results ping the requester alone: one user named, nothing parsed from the text.
        assert posts[0].json["allowed_mentions"] == {"parse": [], "users": [alice]}
        assert f"<@{alice}>" in grid.content
        # The "queued" reply was edited with a link to the progress message.
        progress = await message_of(bot, standin, done_id, "progress")
        await handle.wait_for_reply(lambda m: str(progress.id) in m.content, timeout=WAIT)
        assert f"/{progress.channel_id}/{progress.id}" in handle.replies[0].content
        # The progress message lost its Cancel button when the job ended.
        assert progress.components == []

        # A running job: Cancel sits beside ❌; bob may not press it, root (admin) may.
        running_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "slow", "steps": 400})
        )
        progress = await message_of(bot, standin, running_id, "progress")
        await standin.wait_for(
            lambda: progress.button(custom_id(Act.CANCEL, running_id)),
            timeout=WAIT,
            description="the Cancel button",
        )
        assert progress.reactors("❌") == [standin.bot_user.id]
        _, text = await press(standin, progress.id, Act.CANCEL, running_id, user="bob")
        assert "Only the person who asked" in text
        _, text = await press(standin, progress.id, Act.CANCEL, running_id, user="root")
        assert f"job #{running_id} is stopping" in text.lower()
        record = await finished_job(bot, running_id, timeout=WAIT)
        assert record.status is JobStatus.CANCELLED
        # Cancelled by someone else: a new message pings alice, and only her.
        notice = await message_of(bot, standin, running_id, "notice")
        assert f"<@{alice}>" in notice.content and "cancelled by" in notice.content
        (post,) = [
            r
            for r in standin.requests_matching("POST", r"/channels/\d+/messages$")
            if r.json and (r.json.get("content") or "") == notice.content
        ]
        assert post.json["allowed_mentions"] == {"parse": [], "users": [alice]}
        await standin.wait_for(
            lambda: not standin.message(progress.id).components,
            timeout=WAIT,
            description="the Cancel button to go",
        )

        # /prefs ping:False: her next job's results mention her without pinging.
        prefs = await standin.send_slash_command("prefs", {"ping": False})
        assert "off" in (await prefs.wait_for_reply(timeout=WAIT)).content
        quiet_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "quietly"})
        )
        await results_with_reactions(bot, standin, quiet_id)
        (post,) = [
            r
            for r in standin.requests_matching("POST", r"/channels/\d+/messages$")
            if r.json
            and f"/imagine #{quiet_id}**" in (r.json.get("content") or "")
            and "results, best first" in r.json["content"]
        ]
        assert post.json["allowed_mentions"] == {"parse": []}
        assert (await bot.store.user_prefs(standin.users["alice"].id)).ping is False

        # Her own cancel does not ping her.
        prefs = await standin.send_slash_command("prefs", {"ping": True})
        assert "on" in (await prefs.wait_for_reply(timeout=WAIT)).content
        own_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "mine", "steps": 400})
        )
        own_progress = await message_of(bot, standin, own_id, "progress")
        await standin.wait_for(
            lambda: own_progress.button(custom_id(Act.CANCEL, own_id)),
            timeout=WAIT,
            description="the Cancel button",
        )
        await press(standin, own_progress.id, Act.CANCEL, own_id)
        await finished_job(bot, own_id, timeout=WAIT)
        await bot.publisher.wait_settled()
        assert await bot.store.message_for_job(own_id, "notice") is None


async def test_a_thread_under_an_allowed_channel_and_thread_per_job(standin, tmp_path) -> None:
    allowed = standin.channel_id
    extra = {"discord": {"allowed_channel_ids": [allowed], "thread_per_job": True}}
    async with running_bot(standin, write_test_config(tmp_path, standin, extra)) as bot:
        # Asked in the channel: the job gets a new public thread of its own.
        handle = await standin.send_slash_command("imagine", {"prompt": "in a thread"})
        job_id = await queued_job_id(handle)
        (thread,) = standin.threads_of(allowed)
        assert thread.type == 11 and "in a thread" in thread.name
        assert f"<#{thread.id}>" in handle.replies[0].content
        grid, _ = await results_with_reactions(bot, standin, job_id)
        assert grid.channel_id == thread.id
        thread_grid = grid
        assert (await message_of(bot, standin, job_id, "progress")).channel_id == thread.id

        # Asked inside a thread of the allowed channel: accepted, and it stays in that thread.
        user_thread = standin.add_thread(
            "alice's corner", parent_id=allowed, owner=standin.users["alice"]
        )
        handle = await standin.send_slash_command(
            "imagine", {"prompt": "here"}, channel_id=user_thread.id
        )
        inner = await queued_job_id(handle)
        grid, _ = await results_with_reactions(bot, standin, inner)
        assert grid.channel_id == user_thread.id
        inner_grid = grid
        assert len(standin.threads_of(allowed)) == 2  # no thread inside the thread
        # Buttons and reactions work there too.
        _, text = await press(standin, grid.id, Act.CONTINUE, inner, 1)
        assert "continuing from result 1" in text.lower()

        # A grid in the channel itself (posted before thread_per_job was turned on): 🔁 there
        # starts a new thread, and the answer says where, as a command's does.
        with_threads = bot.config
        bot.config = replace(
            with_threads, discord=replace(with_threads.discord, thread_per_job=False)
        )
        plain = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "in the open"})
        )
        grid, _ = await results_with_reactions(bot, standin, plain)
        assert grid.channel_id == allowed
        bot.config = with_threads
        _, text = await press(standin, grid.id, Act.REROLL, plain)
        new_thread = next(t for t in standin.threads_of(allowed) if "in the open" in t.name)
        assert f"<#{new_thread.id}>" in text, text
        rerolled = await bot.store.get_job(job_in(text))
        assert rerolled.request.channel_id == new_thread.id

        # 🗑 on the job that made a thread deletes that thread (its name shows the prompt);
        # deleting a thread needs Manage Threads, as on Discord.
        await standin.set_bot_permissions(
            discord.Permissions(standin.bot_permissions.value | MANAGE_THREADS)
        )
        _, text = await press(standin, thread_grid.id, Act.DELETE, job_id)
        assert f"Job #{job_id} is deleted" in text and "thread is deleted" in text, text
        assert thread.id not in standin.guild.channels
        assert all(t.id != thread.id for t in standin.threads_of(allowed))
        assert standin.message(thread_grid.id).deleted
        # A thread a user made is theirs: deleting a job asked there leaves it.
        _, text = await press(standin, inner_grid.id, Act.DELETE, inner)
        assert f"Job #{inner} is deleted" in text and "thread" not in text, text
        assert user_thread.id in standin.guild.channels

        # A thread of a channel that is not allowed is refused like the channel itself.
        other = standin.add_thread("elsewhere", parent_id=999)
        handle = await standin.send_slash_command("queue", {}, channel_id=other.id)
        reply = await handle.wait_for_reply(timeout=WAIT)
        assert "I only take commands in" in reply.content


async def test_a_blocked_user_presses_nothing_and_public_posts_are_paced(
    standin, tmp_path
) -> None:
    extra = {"discord": {"post_cooldown_seconds": 600.0}}
    async with running_bot(standin, write_test_config(tmp_path, standin, extra)) as bot:
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a quiet harbour"})
        )
        grid, _ = await results_with_reactions(bot, standin, job_id)
        bob = standin.users["bob"]
        block = await standin.send_slash_command("block", {"user": bob}, user="root")
        assert "is blocked" in (await block.wait_for_reply(timeout=WAIT)).content
        jobs = await bot.store.count_jobs()
        posted = len(standin.bot_messages())

        # Every button answers bob with the same private refusal, and posts nothing.
        for act, n in ((Act.SINGLE, 1), (Act.TIMELAPSE, 0), (Act.CONTINUE, 1), (Act.INFO, 0)):
            _, text = await press(standin, grid.id, act, job_id, n, user="bob")
            assert "cannot use this bot's commands, reactions or buttons" in text, (act, text)
        opened = await standin.press_button(grid.id, custom_id(Act.REMIX, job_id), "bob")
        reply = await opened.wait_for_reply(timeout=WAIT)
        assert reply.ephemeral and opened.modal is None
        assert "reactions or buttons" in reply.content
        # A number reaction queues nothing for him either.
        await standin.add_reaction(grid.id, "1️⃣", "bob")
        await standin.wait_for(
            lambda: any("reactions or buttons" in m.content for m in standin.bot_messages()),
            timeout=WAIT,
            description="the refusal of bob's reaction",
        )
        assert await bot.store.count_jobs() == jobs
        assert await bot.store.message_for_job(job_id, "single") is None
        assert not any("Timelapse of job" in m.content for m in standin.bot_messages())
        assert len(standin.bot_messages()) == posted + 1  # the reaction's notice alone

        # Alice may post one result alone; the next public post waits for the pause.
        _, text = await press(standin, grid.id, Act.SINGLE, job_id, 1)
        assert "posted at full size" in text
        for act, n in ((Act.SINGLE, 2), (Act.TIMELAPSE, 0)):
            _, text = await press(standin, grid.id, act, job_id, n)
            assert "Slow down a little" in text and "one every 600 s" in text, text
        assert sum(m.content.startswith("Result ") for m in standin.bot_messages()) == 1
        assert not any("Timelapse of job" in m.content for m in standin.bot_messages())


async def test_a_reaction_notice_pings_the_reactor_alone(standin, tmp_path) -> None:
    extra = {"discord": {"continue_by": "requester"}}
    async with running_bot(standin, write_test_config(tmp_path, standin, extra)) as bot:
        alice, bob = standin.users["alice"].id, standin.users["bob"].id
        job_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a windmill"})
        )
        grid, _ = await results_with_reactions(bot, standin, job_id)
        await standin.add_reaction(grid.id, "1️⃣", "bob")
        notice = await standin.wait_for(
            lambda: next(
                (m for m in standin.bot_messages() if f"only <@{alice}> can" in m.content), None
            ),
            timeout=WAIT,
            description="the refusal of bob's reaction",
        )
        assert notice.content.startswith(f"<@{bob}> ")
        (post,) = [
            r
            for r in standin.requests_matching("POST", r"/channels/\d+/messages$")
            if r.json and r.json.get("content") == notice.content
        ]
        # Bob is told; alice, named in the sentence, is not pinged.
        assert post.json["allowed_mentions"] == {"parse": [], "users": [bob]}, post.json
