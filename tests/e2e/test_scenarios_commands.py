"""The rules around the commands, end to end: allowed channels, cooldown, who may continue,
🔁 reruns, /help, and the owner-only re-sync.

Each test runs the real FaradayBot (tiny presets) against the Discord stand-in, in-process.
"""

from __future__ import annotations

import discord

from bot.jobs import JobStatus
from tests.e2e.bot_harness import (
    WAIT,
    box_mask,
    picture,
    queued_job_id,
    react_and_wait_for_new_job,
    results_with_reactions,
    running_bot,
    write_test_config,
)
from tests.e2e.standin import DiscordStandin
from tests.e2e.standin.server import DEFAULT_BOT_PERMISSIONS


async def test_commands_outside_allowed_channels_are_refused(tmp_path) -> None:
    async with DiscordStandin(channel_names=("general", "art")) as standin:
        art = standin.channel_named("art")
        config = write_test_config(
            tmp_path, standin, {"discord": {"allowed_channel_ids": [art]}}
        )
        async with running_bot(standin, config) as bot:
            for command, options in (("imagine", {"prompt": "a cat"}), ("queue", {}),
                                     ("help", {})):
                handle = await standin.send_slash_command(command, options)  # in #general
                reply = await handle.wait_for_reply(timeout=WAIT)
                assert reply.ephemeral and f"only take commands in <#{art}>" in reply.content
            assert await bot.store.get_job(1) is None

            allowed = await standin.send_slash_command("imagine", {"prompt": "a cat"},
                                                       channel_id=art)
            job_id = await queued_job_id(allowed)
            message, _ = await results_with_reactions(bot, standin, job_id)
            assert message.channel_id == art


OUT_OF_BOUNDS = [
    ("imagine", {"prompt": "a cat", "steps": 999}, "`steps` must be between 1 and 40, not 999"),
    ("imagine", {"prompt": "a cat", "cutn": 0}, "`cutn` must be between 1 and 4, not 0"),
    ("imagine", {"prompt": "a cat " * 100}, "at most 500 are allowed"),
    ("imagine", {"prompt": "a cat", "size": "4096x4096"}, "size must be one of 64x64, 128x64"),
    ("edit", {"prompt": "a door", "guidance": 50.0}, "`guidance` must be between 1 and 20"),
    ("edit", {"prompt": "a door", "background": "finetune"},
     "`background` must be one of none, paste, not 'finetune'"),
]


async def test_options_outside_the_configured_bounds_are_refused_before_any_download(
    standin, tmp_path
) -> None:
    """Discord's client enforces the synced bounds, but discord.py does not check them on
    arrival, and a client may still hold an older, wider registration (a global sync takes up to
    an hour), so the bot checks them against config.toml itself."""
    config = write_test_config(tmp_path, standin, {"edit": {"backgrounds": ["none", "paste"]}})
    async with running_bot(standin, config) as bot:
        for command, options, expected in OUT_OF_BOUNDS:
            attachments = {}
            if command == "edit":
                attachments = {
                    "image": standin.add_cdn_file("photo.png", picture()),
                    "mask": standin.add_cdn_file("mask.png", box_mask()),
                }
            handle = await standin.send_slash_command(
                command, options, attachments=attachments, validate=False
            )
            reply = await handle.wait_for_reply(timeout=WAIT)
            assert handle.ephemeral and reply.ephemeral, handle.describe()
            assert "Nothing was queued" in reply.content and expected in reply.content, (
                handle.describe()
            )
        assert await bot.store.get_job(1) is None
        assert standin.bot_messages() == []
        assert not standin.requests_matching("GET", r"/cdn/")


async def test_a_mask_without_an_init_image_is_refused_before_any_download(
    standin, tmp_path
) -> None:
    config = write_test_config(tmp_path, standin)
    async with running_bot(standin, config) as bot:
        for name, value in (("mask_text", "the door"), ("mask", None)):
            attachments = {"image_prompt": standin.add_cdn_file("style.png", picture())}
            options = {"prompt": "a red door"}
            if value is None:
                attachments[name] = standin.add_cdn_file("mask.png", box_mask())
            else:
                options[name] = value
            handle = await standin.send_slash_command("imagine", options, attachments=attachments)
            reply = await handle.wait_for_reply(timeout=WAIT)
            assert handle.ephemeral and reply.ephemeral, handle.describe()
            assert "Nothing was queued" in reply.content, reply.content
            assert f"a `{name}` edits an image" in reply.content, reply.content
        assert await bot.store.get_job(1) is None
        assert not standin.requests_matching("GET", r"/cdn/")


async def test_submit_cooldown_is_per_user_and_counts_only_queued_jobs(standin, tmp_path) -> None:
    config = write_test_config(tmp_path, standin, {"discord": {"submit_cooldown_seconds": 60.0}})
    async with running_bot(standin, config) as bot:
        typo = await standin.send_slash_command("imagine", {"prompt": "a cat:0.5x"})
        refused = await typo.wait_for_reply(
            lambda m: "Nothing was queued" in m.content, timeout=WAIT
        )
        assert "prompt" in refused.content
        first = await queued_job_id(await standin.send_slash_command("imagine", {"prompt": "a"}))
        again = await standin.send_slash_command("imagine", {"prompt": "b"})
        reply = await again.wait_for_reply(timeout=WAIT)
        assert reply.ephemeral and "Slow down" in reply.content and "60 s" in reply.content
        other = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "c"}, user="bob")
        )
        assert other == first + 1
        await results_with_reactions(bot, standin, other)
        # A reaction is a submission too: alice's cooldown still holds.
        grid = await bot.store.message_for_job(first, "results")
        assert grid is not None
        alice = standin.users["alice"].id
        await standin.add_reaction(grid.message_id, "1️⃣", "alice")
        await standin.wait_for(
            lambda: any(f"<@{alice}>" in m.content and "Slow down" in m.content
                        for m in standin.bot_messages()),
            timeout=WAIT, description="a cooldown notice for alice's reaction",
        )
        assert await bot.store.get_job(other + 1) is None


async def test_requester_only_continuation_and_rerun_with_a_new_seed(standin, tmp_path) -> None:
    config = write_test_config(tmp_path, standin, {"discord": {"continue_by": "requester"}})
    async with running_bot(standin, config) as bot:
        parent_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a boat", "seed": 7})
        )
        grid, _ = await results_with_reactions(bot, standin, parent_id)
        alice, bob = standin.users["alice"].id, standin.users["bob"].id

        await standin.add_reaction(grid.id, "1️⃣", "bob")
        await standin.wait_for(
            lambda: any(f"<@{bob}> only <@{alice}> can continue" in m.content
                        for m in standin.bot_messages()),
            timeout=WAIT, description="a notice that only alice may continue",
        )
        assert await bot.store.get_job(parent_id + 1) is None

        # An admin always may.
        by_admin = await react_and_wait_for_new_job(bot, standin, grid.id, "1️⃣", "root",
                                                    parent_id)
        assert by_admin.request.user_id == standin.users["root"].id
        assert by_admin.parent_result_id is not None

        rerun = await react_and_wait_for_new_job(bot, standin, grid.id, "🔁", "alice",
                                                 by_admin.id)
        parent = await bot.store.get_job(parent_id)
        assert parent is not None
        assert rerun.request.images == parent.request.images == {}
        assert rerun.request.params["seed"] != 7
        assert {k: v for k, v in rerun.request.params.items() if k != "seed"} == {
            k: v for k, v in parent.request.params.items() if k != "seed"
        }
        assert rerun.parent_result_id is None
        await results_with_reactions(bot, standin, rerun.id)
        assert (await bot.store.get_job(rerun.id)).status is JobStatus.DONE


async def test_help_and_owner_only_resync(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)):
        help_reply = await (await standin.send_slash_command("help")).wait_for_reply(timeout=WAIT)
        assert help_reply.ephemeral and "/imagine" in help_reply.content
        assert "oil painting:0.5" in help_reply.content

        assert sorted(c["name"] for c in standin.synced_commands(standin.guild_id)) == COMMANDS
        syncs = len(standin.command_syncs)
        handle = await standin.send_slash_command("resync", user="root")
        refused = await handle.wait_for_reply(timeout=WAIT)
        assert refused.ephemeral and "Only the bot's owner" in refused.content
        assert len(standin.command_syncs) == syncs

        done = await (
            await standin.send_slash_command("resync", user=standin.owner)
        ).wait_for_reply(lambda m: "re-synced" in m.content, timeout=WAIT)
        assert done.ephemeral and "1 guild(s)" in done.content
        assert len(standin.command_syncs) == syncs + 1


COMMANDS = [
    "block", "cancel", "edit", "help", "history", "imagine", "pause", "prefs", "purge", "queue",
    "resume", "resync", "settings", "stats", "unblock",
]


async def test_without_guild_ids_commands_are_synced_globally_and_resync_says_so(
    standin, tmp_path
) -> None:
    config = write_test_config(tmp_path, standin, {"discord": {"guild_ids": []}})
    async with running_bot(standin, config):
        assert sorted(c["name"] for c in standin.synced_commands(None)) == COMMANDS
        assert standin.synced_commands(standin.guild_id) == []
        assert [scope for scope, _, _ in standin.command_syncs] == [None]

        done = await (
            await standin.send_slash_command("resync", user=standin.owner)
        ).wait_for_reply(lambda m: "re-synced" in m.content, timeout=WAIT)
        assert done.ephemeral and "all servers (global" in done.content
        assert [scope for scope, _, _ in standin.command_syncs] == [None, None]


async def test_without_manage_messages_reactions_still_work_and_simply_stay(
    standin, tmp_path
) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        without = discord.Permissions(DEFAULT_BOT_PERMISSIONS.value)
        without.manage_messages = False
        await standin.set_bot_permissions(without)
        parent_id = await queued_job_id(
            await standin.send_slash_command("imagine", {"prompt": "a kite"})
        )
        grid, _ = await results_with_reactions(bot, standin, parent_id)
        child = await react_and_wait_for_new_job(bot, standin, grid.id, "1️⃣", "bob", parent_id)
        await results_with_reactions(bot, standin, child.id)
        removals = standin.requests_matching("DELETE", rf"/messages/{grid.id}/reactions/")
        assert removals and all(r.status == 403 for r in removals)
        assert standin.users["bob"].id in grid.reactors("1️⃣")  # left in place, no harm done
