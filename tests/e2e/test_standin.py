"""The Discord stand-in, proved with the real discord.py client and a throwaway bot.

The bot here exists only to exercise the harness: a slash command with an Attachment option
that defers and answers with a file, an ephemeral command, and a text channel it posts to.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.e2e.standin import DiscordStandin, InvalidInvocation, write_bot_config

RunClient = Callable[..., AbstractAsyncContextManager[discord.Client]]


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Seen:
    """What the throwaway bot observed, for assertions on the client side."""

    downloads: list[bytes] = field(default_factory=list)
    raw_reactions: list[discord.RawReactionActionEvent] = field(default_factory=list)
    cached_reactions: list[discord.Reaction] = field(default_factory=list)
    removed_reactions: list[discord.RawReactionActionEvent] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)


class ThrowawayBot(commands.Bot):
    def __init__(self, guild_id: int) -> None:
        # A short guild_ready_timeout: on_ready fires that long after the last GUILD_CREATE.
        super().__init__(
            command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05
        )
        self.guild_id = guild_id
        self.seen = Seen()

    async def setup_hook(self) -> None:
        seen = self.seen

        @app_commands.command(name="describe", description="Echo an attachment back as a file")
        @app_commands.describe(file="an image", private="answer only to you")
        async def describe(
            interaction: discord.Interaction, file: discord.Attachment, private: bool = False
        ) -> None:
            await interaction.response.defer(ephemeral=private, thinking=True)
            data = await file.read()
            seen.downloads.append(data)
            await interaction.followup.send(
                f"{file.filename}: {file.size} bytes, {file.content_type}",
                file=discord.File(io.BytesIO(data[::-1]), filename="reversed.bin"),
            )

        @app_commands.command(name="whisper", description="Answer ephemerally")
        async def whisper(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.send_message(f"psst: {text}", ephemeral=True)

        @app_commands.command(name="slow", description="Acknowledge too late")
        async def slow(interaction: discord.Interaction, seconds: float) -> None:
            await asyncio.sleep(seconds)
            try:
                await interaction.response.send_message("finally")
            except discord.HTTPException as exc:
                seen.errors.append(exc)

        @app_commands.command(name="card", description="Reply with a file, swap it, follow up")
        async def card(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(
                "v1", file=discord.File(io.BytesIO(b"first"), "card.txt")
            )
            await interaction.edit_original_response(
                content="v2", attachments=[discord.File(io.BytesIO(b"second"), "card.txt")]
            )
            await interaction.followup.send("only you see this", ephemeral=True)

        guild = discord.Object(self.guild_id)
        for command in (describe, whisper, slow, card):
            self.tree.add_command(command, guild=guild)
        await self.tree.sync(guild=guild)

    async def on_raw_reaction_add(self, event: discord.RawReactionActionEvent) -> None:
        self.seen.raw_reactions.append(event)

    async def on_raw_reaction_remove(self, event: discord.RawReactionActionEvent) -> None:
        self.seen.removed_reactions.append(event)

    async def on_reaction_add(self, reaction: discord.Reaction, user: discord.User) -> None:
        self.seen.cached_reactions.append(reaction)

    def channel(self, channel_id: int) -> discord.TextChannel:
        channel = self.get_channel(channel_id)
        assert isinstance(channel, discord.TextChannel)
        return channel


@pytest.fixture
def bot(standin: DiscordStandin) -> ThrowawayBot:
    return ThrowawayBot(standin.guild_id)


async def test_login_ready_and_guild_create(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        assert bot.user is not None and bot.user.id == standin.bot_user.id
        assert bot.application_id == standin.application_id
        guild = bot.get_guild(standin.guild_id)
        assert guild is not None and not guild.unavailable
        channel = bot.channel(standin.channel_id)
        assert channel.name == "general"
        assert guild.get_role(standin.admin_role.id) is not None
        # Without the members intent discord.py caches only the bot's own member.
        assert guild.me is not None and standin.bot_role.id in [r.id for r in guild.me.roles]
        me = channel.permissions_for(guild.me)
        assert me.send_messages and me.attach_files and me.add_reactions and me.manage_messages

        session = await standin.wait_until_connected()
        assert session.intents == discord.Intents.default().value
        assert [r.route for r in standin.requests[:2]] == ["get_me", "get_application"]
        assert standin.unknown_requests == []


async def test_command_sync_is_recorded(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        synced = {c["name"]: c for c in standin.synced_commands(standin.guild_id)}
        assert set(synced) == {"card", "describe", "slow", "whisper"}
        options = {o["name"]: o for o in synced["describe"]["options"]}
        assert options["file"]["type"] == 11 and options["file"]["required"] is True
        assert options["private"]["type"] == 5 and not options["private"].get("required")
        assert standin.synced_commands(None) == []
        assert [(scope, names) for scope, names, _ in standin.command_syncs] == [
            (standin.guild_id, ["card", "describe", "slow", "whisper"])
        ]


async def test_attachment_command_is_deferred_and_answered_with_a_file(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    image = png_bytes((200, 30, 30))
    async with run_client(bot):
        attachment = standin.add_cdn_file("red.png", image, "image/png")
        handle = await standin.send_slash_command("describe", {"file": attachment}, user="bob")

        reply = await handle.wait_for_reply()
        assert handle.deferred and not handle.ephemeral
        assert not reply.ephemeral
        # The first followup after a deferral fills in the "thinking..." message.
        assert handle.original is not None and reply.id == handle.original.id
        assert reply.content == f"red.png: {len(image)} bytes, image/png"
        assert reply.files == {"reversed.bin": image[::-1]}
        # The bot downloaded the exact bytes from the fake CDN.
        assert bot.seen.downloads == [image]
        downloads = standin.requests_matching("GET", r"^/cdn/attachments/")
        assert len(downloads) == 1 and downloads[0].status == 200
        # The followup's upload was recorded with its bytes.
        (upload,) = standin.requests_matching("POST", r"^/webhooks/")[0].files
        assert upload.filename == "reversed.bin" and upload.data == image[::-1]
        assert reply in standin.messages_in(standin.channel_id)


async def test_ephemeral_answers_are_recorded_as_ephemeral(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        handle = await standin.send_slash_command("whisper", {"text": "hi"}, user="alice")
        reply = await handle.wait_for_reply()
        assert handle.callback is not None and handle.callback.type == 4
        assert handle.ephemeral and reply.ephemeral and reply.content == "psst: hi"
        assert standin.messages_in(standin.channel_id) == []
        assert standin.messages_in(standin.channel_id, include_ephemeral=True) == [reply]

        # A private deferral makes the followup ephemeral too, as on Discord.
        attachment = standin.add_cdn_file("a.png", png_bytes((0, 0, 255)))
        deferred = await standin.send_slash_command(
            "describe", {"file": attachment, "private": True}
        )
        answer = await deferred.wait_for_reply()
        assert deferred.deferred and deferred.ephemeral and answer.ephemeral


async def test_original_response_edits_and_followups_go_through_the_webhook_routes(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        handle = await standin.send_slash_command("card", user="alice")
        await handle.wait_for_reply(lambda m: m.ephemeral)
        original, followup = handle.replies
        assert not handle.deferred and not original.ephemeral
        assert original.content == "v2" and original.files == {"card.txt": b"second"}
        assert [v.files for v in original.history] == [
            {"card.txt": b"first"},
            {"card.txt": b"second"},
        ]
        assert followup.ephemeral and followup.content == "only you see this"
        assert original.interaction_user == standin.users["alice"]
        routes = [
            r.route for r in standin.requests if r.path.startswith(("/interactions", "/webhooks"))
        ]
        assert routes == ["interaction_callback", "edit_webhook_message", "create_followup"]
        assert bot.seen.errors == []


async def test_a_callback_after_the_deadline_is_refused_as_discord_does(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    standin.ack_deadline = 0.2
    async with run_client(bot):
        quick = await standin.send_slash_command("whisper", {"text": "now"})
        await quick.wait_for_reply()
        assert quick.ack_seconds is not None and quick.ack_seconds < 0.2

        late = await standin.send_slash_command("slow", {"seconds": 0.5})
        await standin.wait_for(lambda: bot.seen.errors, timeout=5, description="the refusal")
        (error,) = bot.seen.errors
        assert isinstance(error, discord.NotFound) and error.code == 10062
        assert late.callback is None and late.late_callback is not None
        assert late.replies == []


async def test_invocations_a_discord_client_would_refuse_are_refused(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        with pytest.raises(InvalidInvocation, match="needs option"):
            await standin.send_slash_command("describe", {})
        with pytest.raises(InvalidInvocation, match="never synced"):
            await standin.send_slash_command("imagine", {"prompt": "x"})
        with pytest.raises(InvalidInvocation, match="must be bool"):
            await standin.send_slash_command(
                "describe", {"file": standin.add_cdn_file("a.png", b"x"), "private": "yes"}
            )
        assert standin.interactions == []


async def test_channel_message_with_a_file_then_an_edit_that_swaps_it(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    first, second = png_bytes((255, 0, 0)), png_bytes((0, 255, 0))
    async with run_client(bot):
        channel = bot.channel(standin.channel_id)
        sent = await channel.send("step 1/2", file=discord.File(io.BytesIO(first), "preview.png"))
        stored = standin.message(sent.id)
        assert stored.files == {"preview.png": first}
        assert sent.attachments[0].url == stored.attachments[0].url

        edited = await sent.edit(
            content="step 2/2", attachments=[discord.File(io.BytesIO(second), "preview.png")]
        )
        assert edited.attachments[0].filename == "preview.png"
        assert stored.content == "step 2/2" and stored.files == {"preview.png": second}
        (edit,) = standin.edits_of(sent.id)
        assert edit.content == "step 2/2" and edit.files == {"preview.png": second}
        assert edit.at >= stored.created_at
        # The image a user would now download is the new one.
        assert await edited.attachments[0].read() == second

        # An edit that only changes the text keeps the image.
        await edited.edit(content="done")
        assert standin.message(sent.id).files == {"preview.png": second}
        assert [v.content for v in standin.edits_of(sent.id)] == ["step 2/2", "done"]


async def test_messages_discord_refuses_are_refused_and_not_stored(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        channel = bot.channel(standin.channel_id)
        with pytest.raises(discord.HTTPException) as empty:
            await channel.send("")
        assert empty.value.code == 50006
        with pytest.raises(discord.HTTPException) as too_long:
            await channel.send("x" * 2001)
        assert too_long.value.status == 400
        assert standin.messages_in(standin.channel_id) == []

        sent = await channel.send("kept")
        history = [m.content async for m in channel.history(limit=5)]
        assert history == ["kept"]
        with pytest.raises(discord.HTTPException):
            await sent.edit(content="")
        assert standin.message(sent.id).content == "kept" and standin.edits_of(sent.id) == []


async def test_bot_reactions_are_recorded(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        sent = await bot.channel(standin.channel_id).send("pick one")
        for emoji in ("1️⃣", "2️⃣"):
            await sent.add_reaction(emoji)
        stored = standin.message(sent.id)
        assert stored.reactions == {"1️⃣": [bot.user.id], "2️⃣": [bot.user.id]}

        alice = standin.users["alice"]
        await standin.add_reaction(sent.id, "2️⃣", alice)
        event = await standin.wait_for(
            lambda: [e for e in bot.seen.raw_reactions if e.user_id == alice.id],
            timeout=5,
            description="alice's reaction to reach the bot",
        )
        assert str(event[0].emoji) == "2️⃣"

        # The bot removes alice's reaction (it has Manage Messages here).
        await sent.remove_reaction("2️⃣", discord.Object(alice.id))
        assert stored.reactors("2️⃣") == [bot.user.id]
        # Discord tells the bot about every reaction change, its own included.
        await standin.wait_for(
            lambda: bot.seen.removed_reactions, timeout=5, description="MESSAGE_REACTION_REMOVE"
        )
        assert [(e.user_id, str(e.emoji)) for e in bot.seen.removed_reactions] == [(alice.id, "2️⃣")]
        assert {e.user_id for e in bot.seen.raw_reactions} == {bot.user.id, alice.id}


async def test_reaction_on_an_uncached_message_reaches_on_raw_reaction_add(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        old = standin.post_user_message("bob", "a message from before the bot started")
        await standin.add_reaction(old.id, "🔁", "alice")
        await standin.wait_for(
            lambda: bot.seen.raw_reactions, timeout=5, description="on_raw_reaction_add"
        )
        (event,) = bot.seen.raw_reactions
        assert event.message_id == old.id and event.user_id == standin.users["alice"].id
        assert event.member is not None and event.member.id == standin.users["alice"].id
        assert str(event.emoji) == "🔁"
        assert bot.seen.cached_reactions == []  # the message was never in the cache


async def test_injected_429_is_retried_until_it_succeeds(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        channel = bot.channel(standin.channel_id)
        sent = await channel.send("progress 0%")
        rule = standin.fail_next("PATCH", rf"/messages/{sent.id}$", 429, retry_after=0.3)
        started = time.monotonic()
        await sent.edit(content="progress 50%")
        assert time.monotonic() - started >= 0.3
        assert len(rule.hits) == 1 and rule.exhausted
        attempts = standin.requests_matching("PATCH", rf"/messages/{sent.id}$")
        assert [r.status for r in attempts] == [429, 200]
        assert standin.message(sent.id).content == "progress 50%"


async def test_injected_errors_surface_as_discord_exceptions(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        channel = bot.channel(standin.channel_id)
        sent = await channel.send("hello")

        standin.fail_next("PATCH", rf"/messages/{sent.id}$", 403)
        with pytest.raises(discord.Forbidden) as forbidden:
            await sent.edit(content="nope")
        assert forbidden.value.code == 50013

        # A user deletes the message: edits now get 404 Unknown Message.
        await standin.delete_message(sent.id)
        with pytest.raises(discord.NotFound) as not_found:
            await sent.edit(content="gone")
        assert not_found.value.code == 10008

        # discord.py retries a 500 by itself (after 1 s): one failure is survived...
        standin.fail_next("POST", r"/channels/\d+/messages$", 500, times=1)
        survivor = await channel.send("after one 500")
        assert standin.message(survivor.id).content == "after one 500"
        # ...while a 503, which it does not retry, surfaces at once.
        standin.fail_next("POST", r"/channels/\d+/messages$", 503)
        with pytest.raises(discord.DiscordServerError):
            await channel.send("after a 503")
        statuses = [r.status for r in standin.requests_matching("POST", r"/messages$")]
        assert statuses == [200, 500, 200, 503]

        # Faults apply to CDN downloads too.
        attachment = standin.add_cdn_file("my cat.png", png_bytes((1, 2, 3)))
        assert attachment["filename"] == "my_cat.png"  # Discord rewrites unsafe names
        standin.fail_next("GET", r"^/cdn/", 404)
        with pytest.raises(discord.NotFound):
            await bot.http.get_from_cdn(attachment["url"])
        assert await bot.http.get_from_cdn(attachment["url"]) == png_bytes((1, 2, 3))


async def test_bot_without_manage_messages_cannot_remove_user_reactions(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        sent = await bot.channel(standin.channel_id).send("react here")
        alice = standin.users["alice"]
        await standin.add_reaction(sent.id, "1️⃣", alice)
        await standin.set_bot_permissions(
            discord.Permissions(view_channel=True, send_messages=True, read_message_history=True)
        )
        with pytest.raises(discord.Forbidden):
            await sent.remove_reaction("1️⃣", discord.Object(alice.id))
        assert standin.message(sent.id).reactors("1️⃣") == [alice.id]


async def test_gateway_resume_replays_missed_events(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        first = await standin.wait_until_connected()
        await standin.disconnect_gateway(4000)
        await standin.wait_for(
            lambda: first.resumed_count == 1,
            timeout=10,
            description="discord.py to RESUME the session",
        )
        assert standin.identify_count == 1
        message = standin.post_user_message("bob", "posted around the reconnect")
        await standin.add_reaction(message.id, "1️⃣", "bob")
        await standin.wait_for(
            lambda: bot.seen.raw_reactions, timeout=5, description="a reaction after the resume"
        )


async def test_unknown_routes_answer_404_and_are_recorded(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    async with run_client(bot):
        with pytest.raises(discord.NotFound):
            await bot.http.request(
                discord.http.Route("GET", "/stickers/{sticker_id}", sticker_id=1)
            )
        assert [r.path for r in standin.unknown_requests] == ["/stickers/1"]


async def test_bot_config_points_at_the_standin(standin: DiscordStandin, tmp_path) -> None:
    import tomllib

    base = tmp_path / "base.toml"
    base.write_text(
        "[discord]\nguild_ids = []\nowner_ids = [1]\n\n[scheduler]\nprogress_interval = 4\n"
    )
    path = write_bot_config(
        tmp_path / "bot.toml",
        standin,
        base=base,
        overrides={"storage": {"data_dir": str(tmp_path / "data")}},
    )
    config = tomllib.loads(path.read_text())
    assert config["discord"]["api_base_url"] == standin.api_base_url
    assert config["discord"]["gateway_url"] == standin.gateway_url
    assert config["discord"]["cdn_hosts"] == [standin.cdn_origin]
    assert standin.cdn_origin.startswith("http://127.0.0.1:")
    assert config["discord"]["guild_ids"] == [standin.guild_id]
    assert config["discord"]["owner_ids"] == [1]
    assert config["scheduler"]["progress_interval"] == 4
    assert config["storage"]["data_dir"] == str(tmp_path / "data")


async def test_wait_for_fails_with_a_useful_description(standin: DiscordStandin) -> None:
    with pytest.raises(AssertionError, match=r"(?s)waiting for the moon.*no requests yet"):
        await standin.wait_for(lambda: None, timeout=0.1, description="the moon")
    await asyncio.sleep(0)


# A bot in another process, configured only through URLs, as `python -m bot` is.
SUBPROCESS_BOT = """
import sys, discord, yarl
api, gateway, channel_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
discord.http.Route.BASE = api
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)

class Bot(discord.Client):
    async def on_ready(self):
        await self.get_channel(channel_id).send(f"up as {self.user.id}")

    async def on_raw_reaction_add(self, event):
        if event.user_id != self.user.id:
            await self.get_channel(channel_id).send(f"saw {event.emoji} on {event.message_id}")

import os
Bot(intents=discord.Intents.default(), guild_ready_timeout=0.05).run(
    os.environ["DISCORD_TOKEN"], log_handler=None)
"""


async def test_a_bot_subprocess_survives_sigkill_and_a_restart(standin: DiscordStandin) -> None:
    import os
    import signal
    import sys

    async def start_bot() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SUBPROCESS_BOT,
            standin.api_base_url,
            standin.gateway_url,
            str(standin.channel_id),
            env={**os.environ, "DISCORD_TOKEN": standin.token},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    def posted(prefix: str) -> Callable[[], list]:
        return lambda: [m for m in standin.bot_messages() if m.content.startswith(prefix)]

    first = await start_bot()
    try:
        (hello,) = await standin.wait_for(posted("up as"), timeout=20, description="first start")
        first.send_signal(signal.SIGKILL)
        await first.wait()
        await standin.wait_for(
            lambda: standin.gateway.active_session is None,
            timeout=5,
            description="the stand-in to notice the killed bot",
        )
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()

    second = await start_bot()
    try:
        await standin.wait_until_connected(identifies=2, timeout=20)
        # A reaction on a message the killed process posted reaches the new process.
        await standin.add_reaction(hello.id, "1️⃣", "alice")
        (seen,) = await standin.wait_for(posted("saw"), timeout=10, description="the reaction")
        assert seen.content == f"saw 1️⃣ on {hello.id}"
    finally:
        second.terminate()
        _, stderr = await second.communicate()
    assert standin.unknown_requests == [], stderr.decode()[-2000:]


class Knob(discord.ui.DynamicItem[discord.ui.Button], template=r"knob:(?P<n>\d+)"):
    """A persistent button as discord.py resolves it: from the custom_id alone."""

    def __init__(self, n: int, seen: list) -> None:
        super().__init__(discord.ui.Button(label=f"knob {n}", custom_id=f"knob:{n}"))
        self.n = n
        self.seen = seen

    @classmethod
    async def from_custom_id(cls, interaction, item, match):  # type: ignore[no-untyped-def]
        return cls(int(match["n"]), interaction.client.knob_presses)

    async def callback(self, interaction: discord.Interaction) -> None:
        self.seen.append((self.n, interaction.message.id if interaction.message else None,
                          interaction.data.get("custom_id") if interaction.data else None))
        if self.n == 9:
            await asyncio.sleep(0.5)  # too late for the deadline
            try:
                await interaction.response.defer()
            except discord.HTTPException as exc:
                interaction.client.seen.errors.append(exc)
            return
        if self.n == 2:
            await interaction.response.send_modal(NameModal())
            return
        await interaction.response.send_message(f"knob {self.n}", ephemeral=True)


class NameModal(discord.ui.Modal, title="Name it"):
    name = discord.ui.TextInput(label="Name", custom_id="name", max_length=8)
    note = discord.ui.TextInput(label="Note", custom_id="note", required=False)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        interaction.client.modal_values.append((self.name.value, self.note.value))
        try:
            await interaction.response.send_modal(NameModal())  # Discord refuses this
        except discord.HTTPException as exc:
            interaction.client.seen.errors.append(exc)
        await interaction.response.send_message(f"named {self.name.value}", ephemeral=True)


async def test_buttons_and_modals_reach_discord_py_as_discord_sends_them(
    standin: DiscordStandin, bot: ThrowawayBot, run_client: RunClient
) -> None:
    bot.knob_presses = []  # type: ignore[attr-defined]
    bot.modal_values = []  # type: ignore[attr-defined]
    bot.add_dynamic_items(Knob)
    standin.ack_deadline = 0.3
    async with run_client(bot):
        view = discord.ui.View(timeout=None)
        for n in (1, 2, 9):
            view.add_item(Knob(n, []))
        message = await bot.channel(standin.channel_id).send("knobs", view=view)
        stored = standin.message(message.id)
        assert [b["custom_id"] for b in stored.buttons()] == ["knob:1", "knob:2", "knob:9"]
        with pytest.raises(InvalidInvocation):
            await standin.press_button(message.id, "knob:7")

        pressed = await standin.press_button(message.id, "knob:1", "bob")
        reply = await pressed.wait_for_reply()
        assert reply.ephemeral and reply.content == "knob 1"
        assert bot.knob_presses == [(1, message.id, "knob:1")]
        assert pressed.interaction_type == 3

        opened = await standin.press_button(message.id, "knob:2", "bob")
        await opened.wait_for_callback()
        assert opened.callback.type == 9 and opened.modal["title"] == "Name it"
        with pytest.raises(InvalidInvocation):  # over max_length, as Discord's client refuses
            await standin.submit_modal(opened, {"name": "far too long"})
        with pytest.raises(InvalidInvocation):  # a required input left empty
            await standin.submit_modal(opened, {"note": "x"})
        submitted = await standin.submit_modal(opened, {"name": "kit", "note": "hi"})
        reply = await submitted.wait_for_reply()
        assert bot.modal_values == [("kit", "hi")]
        assert reply.content == "named kit" and submitted.interaction_type == 5
        (refused,) = bot.seen.errors
        assert isinstance(refused, discord.HTTPException) and refused.status == 400

        late = await standin.press_button(message.id, "knob:9")
        await standin.wait_for(lambda: len(bot.seen.errors) == 2, timeout=5,
                               description="the late acknowledgement refused")
        assert isinstance(bot.seen.errors[1], discord.NotFound)
        assert bot.seen.errors[1].code == 10062
        assert late.callback is None and late.late_callback is not None

        # Editing with no view removes the buttons; a thread can be created and posted in.
        await message.edit(view=None)
        assert standin.message(message.id).components == []
        thread = await bot.channel(standin.channel_id).create_thread(
            name="a thread", type=discord.ChannelType.public_thread
        )
        assert standin.threads_of(standin.channel_id)[0].id == thread.id
        await thread.send("inside")
        assert [m.content for m in standin.bot_messages(thread.id)] == ["inside"]
