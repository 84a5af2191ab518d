"""/history's pages and /prefs end to end (they need the stand-in's component interactions)."""

from __future__ import annotations

from tests.e2e.bot_harness import (
    WAIT,
    queued_job_id,
    results_with_reactions,
    running_bot,
    write_test_config,
)
from tests.e2e.standin import DiscordStandin
from tests.e2e.test_scenarios_owners import ask


async def test_history_pages_with_buttons_and_reruns_from_a_page(standin, tmp_path) -> None:
    config = write_test_config(tmp_path, standin, {"scheduler": {"max_queued_per_user": 10}})
    async with running_bot(standin, config) as bot:
        ids = []
        for i in range(7):
            ids.append(
                await queued_job_id(
                    await standin.send_slash_command("imagine", {"prompt": f"cat number {i}"})
                )
            )
        await results_with_reactions(bot, standin, ids[-1])
        await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "b"}, user="bob")
        )
        handle = await standin.send_slash_command("history")
        page = await handle.wait_for_reply(timeout=WAIT)
        assert handle.ephemeral and page.ephemeral
        assert "page 1 of 2 (7 in all)" in page.content
        assert "cat number 6" in page.content and "cat number 1" not in page.content
        grid = await bot.store.message_for_job(ids[-1], "results")
        assert f"/{grid.channel_id}/{grid.message_id}" in page.content
        seed = (await bot.store.get_job(ids[-1])).request.params["seed"]
        assert f"seed `{seed}`" in page.content
        buttons = [b["custom_id"] for b in page.buttons()]
        assert buttons == [
            *(f"fd:reroll:{i}:0" for i in ids[:1:-1]),
            f"fh:{alice_id(standin)}:0",
            f"fh:{alice_id(standin)}:1",
        ]
        assert page.button(f"fh:{alice_id(standin)}:0").get("disabled")

        older = await standin.press_button(page.id, f"fh:{alice_id(standin)}:1")
        await standin.wait_for(
            lambda: "page 2 of 2" in standin.message(page.id).content,
            timeout=WAIT,
            description="the second page",
        )
        assert older.callback is not None and older.callback.type == 7, older.describe()
        second = standin.message(page.id)
        assert "cat number 1" in second.content and "cat number 6" not in second.content
        assert [b["custom_id"] for b in second.buttons()][:2] == [
            f"fd:reroll:{ids[1]}:0",
            f"fd:reroll:{ids[0]}:0",
        ]

        rerun = await standin.press_button(page.id, f"fd:reroll:{ids[0]}:0")
        text = (await rerun.wait_for_reply(timeout=WAIT)).content
        assert "job #" in text.lower(), text
        newest = max(ids) + 2
        record = await bot.store.get_job(newest)
        assert record is not None and record.request.params["prompt"] == "cat number 0"


def alice_id(standin: DiscordStandin) -> int:
    return standin.users["alice"].id


async def test_prefs_beat_the_channel_default_and_are_capped_with_a_notice(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        answer = await ask(
            standin, "prefs", {"imagine_steps": 8, "imagine_candidates": 1}, user="alice"
        )
        assert "Saved" in answer
        first = await queued_job_id(await standin.send_slash_command("imagine", {"prompt": "a"}))
        params = (await bot.store.get_job(first)).request.params
        assert (params["steps"], params["candidates"]) == (8, 1)

        await ask(standin, "settings set", {"key": "imagine.steps.default", "value": "2"})
        await ask(standin, "settings set", {"key": "imagine.steps.max", "value": "5"})
        handle = await standin.send_slash_command("imagine", {"prompt": "b"})
        second = await queued_job_id(handle)
        assert (await bot.store.get_job(second)).request.params["steps"] == 5
        reply = handle.replies[-1].content
        assert (
            "Your preferred /imagine steps (8) is above this channel's limit, so 5 is used" in reply
        )
        # An explicit option beats the preference, and then no notice is needed.
        handle = await standin.send_slash_command("imagine", {"prompt": "c", "steps": 3})
        third = await queued_job_id(handle)
        assert (await bot.store.get_job(third)).request.params["steps"] == 3
        assert "preferred" not in handle.replies[-1].content
        # Bob has no preferences: the channel's default.
        fourth = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "d"}, user="bob")
        )
        assert (await bot.store.get_job(fourth)).request.params["steps"] == 2
        # /prefs itself says at once what this channel makes of a preference.
        answer = await ask(standin, "prefs", {"edit_steps": 100}, user="alice")
        here = answer.split("In this channel: ")[1]
        assert (
            "Your preferred /edit steps (100) is above this channel's limit, so 10 is used." in here
        )
        assert "Your preferred /imagine steps (8) is above this channel's limit" in here

        # dm: a copy of the results by direct message, besides the channel's results message.
        for earlier in (second, third, fourth):  # the queue is empty again
            await results_with_reactions(bot, standin, earlier)
        assert standin.direct_messages("alice") == []
        await ask(standin, "prefs", {"dm": True}, user="alice")
        fifth = await queued_job_id(await standin.send_slash_command("imagine", {"prompt": "e"}))
        await results_with_reactions(bot, standin, fifth)
        await standin.wait_for(
            lambda: standin.direct_messages("alice"), timeout=WAIT, description="a DM to alice"
        )
        dms = standin.direct_messages("alice")
        assert len(dms) == 1, [(m.content, m.channel_id) for m in dms]
        (copy,) = dms
        assert f"job #{fifth} is done" in copy.content and len(copy.attachments) == 1
        assert standin.direct_messages("bob") == []
