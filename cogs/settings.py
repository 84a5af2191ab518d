"""``/settings``: admins change, per server or per channel, what config.toml sets by default.

Thin: parsing, checking, storing and resolving live in :mod:`bot.runtime_settings`; this turns
the subcommands into calls and the answers (or :class:`~bot.runtime_settings.BadSetting`) into
ephemeral replies.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.blocklist import BadTerm, BlockedTerm, TermKind
from bot.owner_text import chunks, settings_text
from bot.runtime_settings import BadSetting, Scope
from cogs.admin_only import refuse_unless_admin, send_long

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

SCOPE_CHOICES = [
    app_commands.Choice(name="this channel", value=Scope.CHANNEL.value),
    app_commands.Choice(name="this whole server", value=Scope.GUILD.value),
]
KIND_CHOICES = [
    app_commands.Choice(name="word (whole word, any case)", value=TermKind.WORD.value),
    app_commands.Choice(name="regular expression (any case)", value=TermKind.PATTERN.value),
]


class SettingsCog(commands.Cog):
    # Hidden from members without Manage Server; refuse_unless_admin is the real gate.
    settings = app_commands.Group(
        name="settings",
        description="Admins: this server's and channel's settings",
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot

    def _where(self, scope: str, interaction: discord.Interaction) -> tuple[Scope, int, str]:
        """The scope, its id, and how to name it. In a thread, "this channel" is the thread's
        parent channel: threads take their channel's settings, so that is where they go."""
        chosen = Scope(scope)
        if chosen is Scope.GUILD:
            return chosen, interaction.guild_id or 0, "this server"
        channel_id = interaction.channel_id
        scope_id = self.bot.settings.channel_scope(channel_id) or 0
        if scope_id != channel_id:
            return chosen, scope_id, f"<#{scope_id}> (this thread's channel, and its threads)"
        return chosen, scope_id, "this channel"

    @settings.command(
        name="show", description="The settings in force here and where each comes from"
    )
    async def show(self, interaction: discord.Interaction) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        service = self.bot.settings
        effective = service.effective(interaction.guild_id, interaction.channel_id)
        await send_long(
            interaction, chunks(settings_text(effective, service.specs, service.paused))
        )

    @settings.command(name="set", description="Change one setting for this channel or server")
    @app_commands.describe(
        key="The setting, e.g. imagine.steps.max (see /settings show)",
        value="The new value (a number, on/off, or one of the choices)",
        scope="Where it applies (default: this channel)",
    )
    @app_commands.choices(scope=SCOPE_CHOICES)
    async def set(
        self, interaction: discord.Interaction, key: str, value: str, scope: str = "channel"
    ) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        chosen, _, label = self._where(scope, interaction)
        try:
            spec, parsed = await self.bot.settings.set(
                chosen,
                key.strip(),
                value,
                interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
            )
        except BadSetting as exc:
            await interaction.response.send_message(f"Not changed: {exc}.", ephemeral=True)
            return
        log.info(
            "setting %s = %r for %s (guild %s, channel %s) by admin %d",
            key,
            parsed,
            chosen.value,
            interaction.guild_id,
            interaction.channel_id,
            interaction.user.id,
        )
        await interaction.response.send_message(
            f"`{spec.key}` is now `{spec.show(parsed)}` in {label}, from the next command on.",
            ephemeral=True,
        )

    @set.autocomplete("key")
    async def key_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=k, value=k)
            for k in self.bot.settings.specs
            if current.lower() in k
        ][:25]

    @settings.command(name="reset", description="Go back to the server's or config.toml's value")
    @app_commands.describe(
        key="The setting, or `all` for every one set at that scope",
        scope="Where to reset (default: this channel)",
    )
    @app_commands.choices(scope=SCOPE_CHOICES)
    async def reset(
        self, interaction: discord.Interaction, key: str, scope: str = "channel"
    ) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        chosen, scope_id, label = self._where(scope, interaction)
        try:
            removed = await self.bot.settings.reset(chosen, scope_id, key.strip())
        except BadSetting as exc:
            await interaction.response.send_message(f"Not changed: {exc}.", ephemeral=True)
            return
        text = (
            f"`{key}` reset in {label}."
            if removed
            else f"`{key}` was not set in {label}; nothing changed."
        )
        await interaction.response.send_message(text, ephemeral=True)

    @settings.command(
        name="blocklist_add",
        description="Refuse prompts containing a word or matching a regular expression",
    )
    @app_commands.describe(
        term="The word, or the regular expression",
        kind="How to match it (default: whole word)",
        scope="Where it applies (default: this channel)",
    )
    @app_commands.choices(kind=KIND_CHOICES, scope=SCOPE_CHOICES)
    async def blocklist_add(
        self,
        interaction: discord.Interaction,
        term: str,
        kind: str = "word",
        scope: str = "channel",
    ) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        chosen, scope_id, label = self._where(scope, interaction)
        blocked = BlockedTerm(TermKind(kind), term)
        try:
            await self.bot.settings.add_term(chosen, scope_id, blocked, interaction.user.id)
        except BadTerm as exc:
            await interaction.response.send_message(f"Not added: {exc}.", ephemeral=True)
            return
        log.info(
            "blocked %s added for %s %s by admin %d",
            kind,
            chosen.value,
            scope_id,
            interaction.user.id,
        )
        await interaction.response.send_message(
            f"Prompts matching that {kind} are now refused in {label}.", ephemeral=True
        )

    @settings.command(name="blocklist_remove", description="Take a term off the block list")
    @app_commands.describe(
        term="The word or expression exactly as added",
        scope="Where it was added (default: this channel)",
    )
    @app_commands.choices(scope=SCOPE_CHOICES)
    async def blocklist_remove(
        self, interaction: discord.Interaction, term: str, scope: str = "channel"
    ) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        chosen, scope_id, label = self._where(scope, interaction)
        removed = await self.bot.settings.remove_term(chosen, scope_id, term)
        text = (
            f"Removed from the block list of {label}."
            if removed
            else f"That term is not on the block list of {label} (config.toml's are edited "
            "there)."
        )
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: FaradayBot) -> None:
    await bot.add_cog(SettingsCog(bot))
