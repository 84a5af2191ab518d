"""``/prefs``: each user's own settings, kept in the store (the ``user_prefs`` table).

Today one: ``ping``, whether the bot pings you when your job ends. Given no option, /prefs shows
what is set. A new preference is a column of ``user_prefs``, a field of ``bot.store.UserPrefs``
and an option here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.store import UserPrefs
from cogs.checks import channel_allowed_for, channel_refusal

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)


def describe_prefs(prefs: UserPrefs) -> str:
    ping = "on" if prefs.pings() else "off"
    default = " (the default)" if prefs.ping is None else ""
    return (
        f"Ping when your job ends: **{ping}**{default}. "
        "Change it with `/prefs ping:False` or `/prefs ping:True`."
    )


class PrefsCog(commands.Cog):
    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot

    @app_commands.command(name="prefs", description="Your own settings, e.g. whether to ping you")
    @app_commands.describe(ping="Ping you when your job is done, fails, or is cancelled by someone")
    async def prefs(self, interaction: discord.Interaction, ping: bool | None = None) -> None:
        config = self.bot.config.discord
        if not await channel_allowed_for(
            self.bot, config, interaction.channel_id, interaction.channel
        ):
            await interaction.response.send_message(channel_refusal(config), ephemeral=True)
            return
        user_id = interaction.user.id
        changes = {} if ping is None else {"ping": ping}
        try:
            prefs = await self.bot.store.set_user_prefs(user_id, **changes)
        except Exception:
            log.exception("could not store the preferences of user %d", user_id)
            await interaction.response.send_message(
                "Your preferences could not be saved just now; nothing changed. Try again in a "
                "moment.",
                ephemeral=True,
            )
            return
        saved = "Saved. " if changes else ""
        await interaction.response.send_message(saved + describe_prefs(prefs), ephemeral=True)


async def setup(bot: FaradayBot) -> None:
    await bot.add_cog(PrefsCog(bot))
