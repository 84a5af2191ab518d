"""Owner-only upkeep: re-register the slash commands without restarting the bot."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)


class AdminCog(commands.Cog):
    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot

    async def is_owner(self, user: discord.abc.User) -> bool:
        """A configured owner id, or the application's owner (or team) as Discord reports it."""
        if user.id in self.bot.config.discord.owner_ids:
            return True
        try:
            return await self.bot.is_owner(user)
        except discord.HTTPException:
            return False

    @app_commands.command(name="resync", description="Owner only: re-register the slash commands")
    @app_commands.default_permissions(administrator=True)
    async def resync(self, interaction: discord.Interaction) -> None:
        if not await self.is_owner(interaction.user):
            await interaction.response.send_message(
                "Only the bot's owner can re-sync its commands.", ephemeral=True
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        log.info("slash commands re-sync asked for by owner %d", interaction.user.id)
        # The same sync as at start-up (one home for how commands are registered).
        await self.bot.sync_commands()
        guild_ids = self.bot.config.discord.guild_ids
        target = f"{len(guild_ids)} guild(s)" if guild_ids else "all servers (global; Discord " \
            "may take up to an hour to show changes)"
        await interaction.edit_original_response(
            content=f"Slash commands re-synced to {target}. The bot's log says if Discord "
            "refused any."
        )


async def setup(bot: FaradayBot) -> None:
    await bot.add_cog(AdminCog(bot))
