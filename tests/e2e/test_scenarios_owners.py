"""Server owners' tools end to end: /settings, the prompt block list, /block, /pause, /purge,
/stats.

Each test runs the real FaradayBot (tiny presets) against the Discord stand-in, in-process. The
admin is the stand-in's "root" (it holds the configured admin role); "alice" and "bob" are users.
"""

from __future__ import annotations

import logging

from bot.jobs import JobStatus
from tests.e2e.bot_harness import (
    WAIT,
    box_mask,
    finished_job,
    picture,
    queued_job_id,
    react_and_wait_for_new_job,
    results_with_reactions,
    running_bot,
    write_test_config,
)
from tests.e2e.standin import DiscordStandin


async def ask(
    standin: DiscordStandin, command: str, options: dict | None = None, user: str = "root", **kwargs
) -> str:
    """The text of the bot's (ephemeral) answer to one command."""
    handle = await standin.send_slash_command(command, options or {}, user=user, **kwargs)
    reply = await handle.wait_for_reply(timeout=WAIT)
    assert handle.ephemeral and reply.ephemeral, handle.describe()
    return reply.content


async def test_settings_change_a_bound_and_the_next_command_obeys_without_restart(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        # Before: config.toml's bound (steps up to 40) lets 30 through.
        first = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a cat", "steps": 30})
        )
        assert (await bot.store.get_job(first)).request.params["steps"] == 30

        answer = await ask(standin, "settings set", {"key": "imagine.steps.default", "value": "4"})
        assert "`imagine.steps.default` is now `4` in this channel" in answer
        answer = await ask(standin, "settings set", {"key": "imagine.steps.max", "value": "5"})
        assert "is now `5`" in answer

        refused = await ask(standin, "imagine", {"prompt": "a cat", "steps": 30}, user="alice")
        assert "Nothing was queued" in refused and "between 1 and 5, not 30" in refused
        second = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a dog"})
        )
        assert (await bot.store.get_job(second)).request.params["steps"] == 4

        shown = await ask(standin, "settings show")
        assert "`imagine.steps`: default `4` (channel), min `1`, max `5` (channel)" in shown
        assert "`imagine.cutn`: default `2`, min `1`, max `4`" in shown

        # A server-wide value applies wherever no channel overrides it.
        answer = await ask(
            standin, "settings set", {"key": "enabled.edit", "value": "off", "scope": "server"}
        )
        assert "in this server" in answer
        refused = await ask(
            standin,
            "edit",
            {
                "prompt": "a door",
                "image": standin.add_cdn_file("photo.png", picture()),
                "mask": standin.add_cdn_file("mask.png", box_mask()),
            },
            user="alice",
        )
        assert "/edit is switched off" in refused

        answer = await ask(standin, "settings reset", {"key": "imagine.steps.max"})
        assert "reset in this channel" in answer
        third = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a cow", "steps": 30})
        )
        assert (await bot.store.get_job(third)).request.params["steps"] == 30


async def test_settings_refuse_wrong_types_out_of_bounds_and_non_admins(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        for key, value, expected in (
            ("imagine.steps.max", "lots", "takes a whole number, not 'lots'"),
            ("imagine.steps.max", "5000", "between 1 and 2000 (the limits the pipeline accepts)"),
            ("edit.guidance.max", "31", "between 1 and 30"),
            ("edit.shrink", "maybe", "is on or off"),
            ("imagine.default_size", "999x999", "must be one of 64x64, 128x64"),
            ("cooldown_seconds", "-1", "between 0 and 3600"),
            ("imagine.steps.min", "3.5", "takes a whole number"),
            ("no.such.key", "1", "there is no setting `no.such.key`"),
            ("imagine.steps.max", "2", "`imagine.steps.default` (3) would fall outside 1..2"),
        ):
            answer = await ask(standin, "settings set", {"key": key, "value": value})
            assert answer.startswith("Not changed:") and expected in answer, (key, answer)
        answer = await ask(
            standin, "settings set", {"key": "imagine.steps.max", "value": "5"}, user="alice"
        )
        assert "Only the server's admins" in answer
        assert bot.settings.effective(standin.guild_id, standin.channel_id).imagine.steps.max == 40
        assert await bot.owner_store.all_settings() == []


async def test_a_blocked_prompt_is_refused_ephemerally_without_naming_the_term(
    standin, tmp_path, caplog
) -> None:
    config = write_test_config(tmp_path, standin, {"moderation": {"blocked_words": ["ogre"]}})
    async with running_bot(standin, config) as bot:
        parent = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a castle on a hill"})
        )
        grid, _ = await results_with_reactions(bot, standin, parent)

        answer = await ask(
            standin, "settings blocklist_add", {"term": r"cast(le|ing)\b", "kind": "pattern"}
        )
        assert "now refused in this channel" in answer
        bad = await ask(standin, "settings blocklist_add", {"term": "([", "kind": "pattern"})
        assert bad.startswith("Not added:") and "does not compile" in bad
        assert [t.text for t, _ in bot.settings.terms(standin.guild_id, standin.channel_id)] == [
            "ogre",
            r"cast(le|ing)\b",
        ]

        caplog.set_level(logging.WARNING, logger="bot.admission")
        for prompt in ("an OGRE in the woods", "a Castle in the sky"):
            answer = await ask(standin, "imagine", {"prompt": prompt}, user="alice")
            assert "does not allow" in answer and "nothing was queued" in answer
            assert "ogre" not in answer.lower() and "cast" not in answer.lower()
        assert any("ogre" in r.getMessage() for r in caplog.records)
        assert any("cast(le|ing)" in r.getMessage() for r in caplog.records)
        # A continuation of a job made before the term was added goes through the same check.
        alice = standin.users["alice"].id
        await standin.add_reaction(grid.id, "1️⃣", "alice")
        await standin.wait_for(
            lambda: any(
                f"<@{alice}>" in m.content and "does not allow" in m.content
                for m in standin.bot_messages()
            ),
            timeout=WAIT,
            description="a refusal of the continuation",
        )
        assert await bot.store.get_job(parent + 1) is None
        # Prompts without a blocked term still go through.
        assert (
            await queued_job_id(
                await standin.send_slash_command("imagine", {"prompt": "a fishing net"}, user="bob")
            )
            == parent + 1
        )


async def test_block_and_pause_refuse_new_work_until_lifted(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        alice = standin.users["alice"]
        assert "is blocked" in await ask(standin, "block", {"user": alice})
        for command, options in (("imagine", {"prompt": "a cat"}), ("queue", {})):
            answer = await ask(standin, command, options, user="alice")
            assert "cannot use this bot's commands" in answer
        assert "Admins cannot be blocked" in await ask(
            standin, "block", {"user": standin.users["root"]}
        )
        assert "is unblocked" in await ask(standin, "unblock", {"user": alice})

        assert "Paused" in await ask(standin, "pause")
        answer = await ask(standin, "imagine", {"prompt": "a cat"}, user="bob")
        assert "paused by an admin" in answer
        assert await bot.store.get_job(1) is None
        assert "Resumed" in await ask(standin, "resume")
        assert (
            await queued_job_id(
                await standin.send_slash_command("imagine", {"prompt": "a cat"}, user="alice")
            )
            == 1
        )


async def test_purge_removes_a_users_jobs_messages_and_files(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        mine = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a cat"}, user="alice")
        )
        theirs = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a dog"}, user="bob")
        )
        grid, results = await results_with_reactions(bot, standin, mine)
        await results_with_reactions(bot, standin, theirs)
        progress = await bot.store.message_for_job(mine, "progress")
        assert progress is not None and all(r.path.exists() for r in results)
        bobs = await bot.store.results_for_job(theirs)

        answer = await ask(standin, "purge", {"user": standin.users["alice"]})
        assert "Purged" in answer and "1 job(s)" in answer, answer
        assert await bot.store.get_job(mine) is None
        assert not any(r.path.exists() for r in results)
        assert standin.message(grid.id).deleted
        assert standin.message(progress.message_id).deleted
        # Bob's job is untouched.
        assert (await bot.store.get_job(theirs)).status is JobStatus.DONE
        assert all(r.path.exists() for r in bobs)
        assert not standin.message(
            (await bot.store.message_for_job(theirs, "results")).message_id
        ).deleted


async def test_stats_reads_the_figures_from_the_store(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        job = await queued_job_id(await standin.send_slash_command("imagine", {"prompt": "a"}))
        await results_with_reactions(bot, standin, job)
        assert "Only the server's admins" in await ask(standin, "stats", user="alice")
        text = await ask(standin, "stats")
        alice = standin.users["alice"].id
        assert "**Jobs per day**" in text and ": 1" in text
        assert "• imagine:" in text and "(1 jobs)" in text
        assert "**Queue now**: 0 job(s)" in text
        assert f"<@{alice}> 1" in text


async def test_a_bound_raised_through_settings_can_be_used_in_discord(standin, tmp_path) -> None:
    """Discord's client refuses values outside an option's registered range before the bot sees
    them, so the registered range must be the pipeline's, not config.toml's (steps up to 40)."""
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        answer = await ask(standin, "settings set", {"key": "imagine.steps.max", "value": "60"})
        assert "is now `60`" in answer
        # The stand-in validates against the synced schema as Discord's client does.
        raised = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a cat", "steps": 50})
        )
        assert (await bot.store.get_job(raised)).request.params["steps"] == 50
        refused = await ask(standin, "imagine", {"prompt": "a cat", "steps": 61}, user="alice")
        assert "Nothing was queued" in refused and "between 1 and 60, not 61" in refused
        assert await bot.store.get_job(raised + 1) is None


async def test_a_channels_settings_apply_in_its_threads(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        parent = standin.channel_id
        thread = standin.add_thread("side talk", parent_id=parent)
        assert "now refused in this channel" in await ask(
            standin, "settings blocklist_add", {"term": "ogre"}
        )
        # Set from inside the thread: stored for (and said of) the parent channel.
        answer = await ask(
            standin,
            "settings set",
            {"key": "imagine.steps.max", "value": "5"},
            channel_id=thread.id,
        )
        assert f"is now `5` in <#{parent}> (this thread's channel" in answer, answer
        assert bot.settings.effective(standin.guild_id, parent).imagine.steps.max == 5

        refused = await ask(
            standin, "imagine", {"prompt": "an ogre"}, user="alice", channel_id=thread.id
        )
        assert "does not allow" in refused
        refused = await ask(
            standin, "imagine", {"prompt": "a cat", "steps": 30}, user="alice", channel_id=thread.id
        )
        assert "between 1 and 5, not 30" in refused
        assert await bot.store.get_job(1) is None
        # Within the channel's bounds it goes through, in the thread.
        job = await queued_job_id(
            await standin.send_slash_command(
                "imagine", {"prompt": "a cat", "steps": 4}, channel_id=thread.id
            )
        )
        assert (await bot.store.get_job(job)).request.channel_id == thread.id


async def test_a_continuation_of_an_older_job_obeys_the_bounds_in_force_now(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        older = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a cat", "steps": 8})
        )
        grid, _ = await results_with_reactions(bot, standin, older)
        await ask(standin, "settings set", {"key": "imagine.steps.default", "value": "3"})
        assert "is now `5`" in await ask(
            standin, "settings set", {"key": "imagine.steps.max", "value": "5"}
        )
        alice = standin.users["alice"].id
        await standin.add_reaction(grid.id, "1️⃣", "alice")
        await standin.wait_for(
            lambda: any(
                f"<@{alice}>" in m.content and "outside what this channel allows" in m.content
                for m in standin.bot_messages()
            ),
            timeout=WAIT,
            description="a refusal of the continuation",
        )
        refusal = next(
            m.content for m in standin.bot_messages() if "outside what this" in m.content
        )
        assert "steps 8 (allowed: 1 to 5)" in refusal
        assert await bot.store.get_job(older + 1) is None
        # Back within bounds, the same continuation is taken.
        await ask(standin, "settings reset", {"key": "imagine.steps.max"})
        continued = await react_and_wait_for_new_job(bot, standin, grid.id, "2️⃣", "alice", older)
        assert continued.request.params["steps"] == 8


async def test_a_cooldown_and_a_quota_set_through_settings_apply(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        assert "is now `600`" in await ask(
            standin, "settings set", {"key": "cooldown_seconds", "value": "600"}
        )
        await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a cat"}, user="alice")
        )
        refused = await ask(standin, "imagine", {"prompt": "a dog"}, user="alice")
        assert "Slow down a little" in refused and "one every 600 s" in refused
        await ask(standin, "settings reset", {"key": "cooldown_seconds"})

        assert "is now `1`" in await ask(
            standin, "settings set", {"key": "daily_job_quota", "value": "1", "scope": "server"}
        )
        bobs = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a cat"}, user="bob")
        )
        refused = await ask(standin, "imagine", {"prompt": "a dog"}, user="bob")
        assert "used your 1 job(s) in this server for the last 24 hours" in refused
        # Deleting the job (as 🗑, /purge and retention do) does not give the submission back.
        await finished_job(bot, bobs)
        assert await bot.store.delete_jobs([bobs]) == 1
        refused = await ask(standin, "imagine", {"prompt": "a dog"}, user="bob")
        assert "used your 1 job(s)" in refused
        # Admins are not limited.
        for prompt in ("a cow", "a hen"):
            await queued_job_id(
                await standin.send_slash_command("imagine", {"prompt": prompt}, user="root")
            )
