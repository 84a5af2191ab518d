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
from cogs.checks import SubmitCooldown, channel_allowed, channel_refusal
from cogs.replies import SOMETHING_WENT_WRONG, answer, queued_text

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)


# The attachments a user starts from (image prompts only steer, and are not shown).
SAFETY_CHECKED_INPUTS = ("init_image", "image")


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

    def admission_problem(self, user_id: int, channel_id: int | None) -> str | None:
        """Why this user may not submit here and now, or ``None`` if they may."""
        discord_config = self.bot.config.discord
        if not channel_allowed(discord_config, channel_id):
            return channel_refusal(discord_config)
        wait = self.cooldown.retry_after(user_id)
        if wait > 0:
            return self.cooldown.refusal(wait)
        return None

    async def admit(self, interaction: discord.Interaction) -> bool:
        """Answer a refused interaction at once (ephemeral); true when it may go on."""
        problem = self.admission_problem(interaction.user.id, interaction.channel_id)
        if problem is None:
            return True
        await interaction.response.send_message(problem, ephemeral=True)
        return False

    async def submit(self, request: JobRequest) -> Submitted:
        """Queue the job (persisted before this returns) and start the user's cooldown.

        Raises :class:`Refused` when the cooldown or the scheduler's caps say no.
        """
        wait = self.cooldown.retry_after(request.user_id)
        if wait > 0:
            raise Refused(self.cooldown.refusal(wait))
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

    async def safety_refusal(self, request: JobRequest) -> str | None:
        """Why an input image may not be used, by the image safety check; ``None`` if it may."""
        safety = self.bot.image_safety
        if safety is None:
            return None
        inputs = {
            name: data for name, data in request.images.items()
            if name in SAFETY_CHECKED_INPUTS and isinstance(data, bytes)
        }
        try:
            return await safety.refused_input(request.channel_id, inputs)
        except Exception:
            # Unchecked is not the same as safe: refuse rather than queue.
            log.exception("the image safety check of an input image failed")
            return SOMETHING_WENT_WRONG

    async def submit_and_answer(
        self, interaction: discord.Interaction, request: JobRequest, notes: tuple[str, ...] = ()
    ) -> None:
        """Submit and tell the user where the job stands (the interaction is already deferred)."""
        refusal = await self.safety_refusal(request)
        if refusal is not None:
            await answer(interaction, refusal)
            return
        try:
            submitted = await self.submit(request)
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
