"""Admins' moderation: /block and /unblock a user, /pause and /resume new jobs, /purge a user.

Thin: the rules live in :mod:`bot.runtime_settings` (blocked users, the pause switch, both
stored) and :mod:`bot.moderation` (the purge); this cog answers, and deletes the purged user's
messages on Discord.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.moderation import purge_user
from cogs.admin_only import refuse_unless_admin
from cogs.checks import is_admin, role_ids_of

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)


class ModerationCog(commands.Cog):
    # default_permissions only hides these from members without Manage Server (a server can
    # change who sees them); refuse_unless_admin is the real gate.
    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot

    @app_commands.default_permissions(manage_guild=True)
    @app_commands.command(name="block", description="Admins: refuse every command of a user")
    @app_commands.describe(user="Who to block")
    async def block(self, interaction: discord.Interaction, user: discord.User) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        if is_admin(self.bot.config.discord, user.id, role_ids_of(user)):
            await interaction.response.send_message("Admins cannot be blocked.", ephemeral=True)
            return
        await self.bot.settings.block_user(user.id, interaction.user.id)
        log.info("user %d blocked by admin %d", user.id, interaction.user.id)
        await interaction.response.send_message(
            f"{user.mention} is blocked: their commands, reactions and button presses are "
            "refused. Their queued jobs still run; /purge removes them. /unblock undoes this.",
            ephemeral=True,
        )

    @app_commands.default_permissions(manage_guild=True)
    @app_commands.command(name="unblock", description="Admins: let a blocked user back in")
    @app_commands.describe(user="Who to unblock")
    async def unblock(self, interaction: discord.Interaction, user: discord.User) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        removed = await self.bot.settings.unblock_user(user.id)
        log.info("user %d unblocked by admin %d", user.id, interaction.user.id)
        text = f"{user.mention} is unblocked." if removed else f"{user.mention} was not blocked."
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.default_permissions(manage_guild=True)
    @app_commands.command(
        name="pause", description="Admins: stop taking new jobs (the queue still runs)"
    )
    async def pause(self, interaction: discord.Interaction) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        await self.bot.settings.set_paused(True, interaction.user.id)
        log.info("new jobs paused by admin %d", interaction.user.id)
        await interaction.response.send_message(
            "Paused: new jobs are refused until /resume. The running job finishes and jobs "
            "already queued still run.",
            ephemeral=True,
        )

    @app_commands.default_permissions(manage_guild=True)
    @app_commands.command(name="resume", description="Admins: take new jobs again")
    async def resume(self, interaction: discord.Interaction) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        await self.bot.settings.set_paused(False, interaction.user.id)
        log.info("new jobs resumed by admin %d", interaction.user.id)
        await interaction.response.send_message(
            "Resumed: new jobs are taken again.", ephemeral=True
        )

    @app_commands.default_permissions(manage_guild=True)
    @app_commands.command(
        name="purge", description="Admins: delete a user's jobs, messages and files"
    )
    @app_commands.describe(user="Whose jobs to delete")
    async def purge(self, interaction: discord.Interaction, user: discord.User) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = self.bot
        report = await purge_user(
            user.id,
            scheduler=bot.scheduler,
            publisher=bot.publisher,
            store=bot.store,
            owner_store=bot.owner_store,
            timeout=bot.config.scheduler.shutdown_grace_seconds,
        )
        deleted = failed = 0
        for channel_id, message_id in report.messages:
            channel = bot.get_partial_messageable(channel_id, guild_id=interaction.guild_id)
            try:
                await channel.get_partial_message(message_id).delete()
                deleted += 1
            except discord.NotFound:
                deleted += 1  # already gone
            except discord.HTTPException as exc:
                failed += 1
                log.warning("purge: could not delete message %d: %s", message_id, exc)
        text = (
            f"Purged {user.mention}: {len(report.job_ids)} job(s) with their files, and "
            f"{deleted} message(s), deleted."
        )
        if failed:
            text += (
                f" {failed} message(s) could not be deleted (the bot needs Manage Messages "
                "there, or the message is too old); see the log."
            )
        await interaction.edit_original_response(content=text)


async def setup(bot: FaradayBot) -> None:
    await bot.add_cog(ModerationCog(bot))
