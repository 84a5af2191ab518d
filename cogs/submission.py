"""The one door every new job goes through, whether it came from a command or a reaction.

:class:`SubmitDesk` is a cog so the commands and the reaction handler share one per-user cooldown
and one attachment downloader (discord.py's way for cogs to share state: ``bot.get_cog``).

This module has no ``setup``: discord.py executes an extension module afresh when it loads it, so
classes that several cogs share (the desk, :class:`Refused`) live here, imported once, and each
cog that needs the desk adds it with :func:`ensure_desk` from its own ``setup``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.jobs import JobRequest
from bot.scheduler import SubmitRefused, Submitted
from cogs.attachments import AttachmentFetcher, AttachmentPolicy
from cogs.checks import (
    SubmitCooldown,
    channel_allowed,
    channel_refusal,
    is_admin,
    role_ids_of,
)
from cogs.replies import SOMETHING_WENT_WRONG, answer, queued_text

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)


class Refused(Exception):
    """A submission we will not take for a reason that is not the input (cooldown, queue cap).

    ``str(exc)`` is the human-readable reason.
    """


class SubmitDesk(commands.Cog):
    """Admission rules (channel, cooldown) and the hand-off to the scheduler."""

    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot
        discord_config = bot.config.discord
        self.cooldown = SubmitCooldown(discord_config.submit_cooldown_seconds)
        self.fetcher = AttachmentFetcher(
            AttachmentPolicy(
                allowed_sources=tuple(discord_config.cdn_hosts),
                max_bytes=discord_config.max_attachment_bytes,
                timeout_seconds=discord_config.download_timeout_seconds,
            )
        )

    @classmethod
    def of(cls, bot: commands.Bot) -> SubmitDesk:
        desk = bot.get_cog(cls.__cog_name__)
        if not isinstance(desk, SubmitDesk):
            raise RuntimeError("the SubmitDesk cog is not loaded (call ensure_desk in setup)")
        return desk

    async def cog_unload(self) -> None:
        await self.fetcher.close()

    def cooldown_problem(
        self, user_id: int, guild_id: int | None, channel_id: int | None
    ) -> str | None:
        seconds = self.bot.settings.effective(guild_id, channel_id).cooldown_seconds
        wait = self.cooldown.retry_after(user_id, seconds=seconds)
        return self.cooldown.refusal(wait, seconds) if wait > 0 else None

    def admission_problem(
        self, user_id: int, channel_id: int | None, command: str | None = None,
        guild_id: int | None = None,
    ) -> str | None:
        """Why this user may not submit here and now, or ``None`` if they may."""
        discord_config = self.bot.config.discord
        if not channel_allowed(discord_config, channel_id):
            return channel_refusal(discord_config)
        if command is not None:
            problem = self.bot.gatekeeper.command_refusal(user_id, command, guild_id, channel_id)
            if problem is not None:
                return problem
        return self.cooldown_problem(user_id, guild_id, channel_id)

    async def admit(self, interaction: discord.Interaction) -> bool:
        """Answer a refused interaction at once (ephemeral); true when it may go on."""
        command = interaction.command.name if interaction.command is not None else None
        problem = self.admission_problem(interaction.user.id, interaction.channel_id, command,
                                         interaction.guild_id)
        if problem is None:
            return True
        await interaction.response.send_message(problem, ephemeral=True)
        return False

    async def submit(self, request: JobRequest, *, admin: bool = False) -> Submitted:
        """Queue the job (persisted before this returns) and start the user's cooldown.

        Every new job passes here, so the owners' rules (block lists, pause, quota, switched-off
        commands) are checked here for all of them. Raises :class:`Refused` when those rules, the
        cooldown or the scheduler's caps say no; ``admin`` lifts the daily quota.
        """
        problem = await self.bot.gatekeeper.submit_refusal(request, admin=admin)
        if problem is None:
            problem = self.cooldown_problem(request.user_id, request.guild_id,
                                            request.channel_id)
        if problem is not None:
            raise Refused(problem)
        try:
            submitted = await self.bot.scheduler.submit(request)
        except SubmitRefused as exc:
            raise Refused(str(exc)) from exc
        self.cooldown.consume(request.user_id)
        log.debug(
            "job %d queued (%s) for user %d at position %d",
            submitted.job_id, request.kind.value, request.user_id, submitted.position,
        )
        return submitted

    async def submit_and_answer(
        self, interaction: discord.Interaction, request: JobRequest, notes: tuple[str, ...] = ()
    ) -> None:
        """Submit and tell the user where the job stands (the interaction is already deferred)."""
        admin = is_admin(self.bot.config.discord, interaction.user.id,
                         role_ids_of(interaction.user))
        try:
            submitted = await self.submit(request, admin=admin)
        except Refused as exc:
            await answer(interaction, str(exc))
            return
        except Exception:
            # E.g. the store could not write the job; without an answer the user would watch
            # "thinking…" until the interaction expires.
            log.exception("queueing a %s job for user %d failed", request.kind.value,
                          request.user_id)
            await answer(interaction, SOMETHING_WENT_WRONG)
            return
        await answer(interaction, queued_text(submitted, notes))


async def ensure_desk(bot: FaradayBot) -> SubmitDesk:
    """The bot's desk, added on first use by whichever cog's ``setup`` runs first."""
    desk = bot.get_cog(SubmitDesk.__cog_name__)
    if isinstance(desk, SubmitDesk):
        return desk
    desk = SubmitDesk(bot)
    await bot.add_cog(desk)
    return desk
