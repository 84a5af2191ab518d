"""The one door every new job goes through, whether it came from a command or a reaction.

:class:`SubmitDesk` is a cog so the commands and the reaction handler share one per-user cooldown
and one attachment downloader (discord.py's way for cogs to share state: ``bot.get_cog``).

This module has no ``setup``: discord.py executes an extension module afresh when it loads it, so
classes that several cogs share (the desk, :class:`Refused`) live here, imported once, and each
cog that needs the desk adds it with :func:`ensure_desk` from its own ``setup``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.jobs import JobRequest
from bot.scheduler import SubmitRefused, Submitted
from cogs.attachments import AttachmentFetcher, AttachmentPolicy
from cogs.checks import (
    SubmitCooldown,
    channel_allowed_for,
    channel_refusal,
    is_admin,
    role_ids_of,
)
from cogs.replies import (
    INTERACTION_TOKEN_SECONDS,
    SOMETHING_WENT_WRONG,
    TOKEN_MARGIN_SECONDS,
    answer,
    queued_text,
)

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
        self._link_tasks: set[asyncio.Task] = set()

    @classmethod
    def of(cls, bot: commands.Bot) -> SubmitDesk:
        desk = bot.get_cog(cls.__cog_name__)
        if not isinstance(desk, SubmitDesk):
            raise RuntimeError("the SubmitDesk cog is not loaded (call ensure_desk in setup)")
        return desk

    async def cog_unload(self) -> None:
        for task in list(self._link_tasks):
            task.cancel()
        await self.fetcher.close()

    def cooldown_problem(
        self, user_id: int, guild_id: int | None, channel_id: int | None
    ) -> str | None:
        seconds = self.bot.settings.effective(guild_id, channel_id).cooldown_seconds
        wait = self.cooldown.retry_after(user_id, seconds=seconds)
        return self.cooldown.refusal(wait, seconds) if wait > 0 else None

    async def admission_problem(
        self, user_id: int, channel_id: int | None, command: str | None = None,
        guild_id: int | None = None, channel: object = None,
    ) -> str | None:
        """Why this user may not submit here and now, or ``None`` if they may."""
        discord_config = self.bot.config.discord
        if not await channel_allowed_for(self.bot, discord_config, channel_id, channel):
            return channel_refusal(discord_config)
        if command is not None:
            problem = self.bot.gatekeeper.command_refusal(user_id, command, guild_id, channel_id)
            if problem is not None:
                return problem
        return self.cooldown_problem(user_id, guild_id, channel_id)

    async def admit(self, interaction: discord.Interaction) -> bool:
        """Answer a refused interaction at once (ephemeral); true when it may go on."""
        command = interaction.command.name if interaction.command is not None else None
        problem = await self.admission_problem(interaction.user.id, interaction.channel_id,
                                               command, interaction.guild_id,
                                               interaction.channel)
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
        submitted, _ = await self.submit_placed(request, admin=admin)
        return submitted

    async def submit_placed(
        self, request: JobRequest, *, admin: bool = False
    ) -> tuple[Submitted, int | None]:
        """:meth:`submit`, also saying which new thread the job's messages go to, if any."""
        problem = await self.bot.gatekeeper.submit_refusal(request, admin=admin)
        if problem is None:
            problem = self.cooldown_problem(request.user_id, request.guild_id,
                                            request.channel_id)
        if problem is not None:
            raise Refused(problem)
        thread = await self.new_thread_for(request)
        if thread is not None:
            request = replace(request, channel_id=thread.id)
        try:
            submitted = await self.bot.scheduler.submit(request)
        except BaseException as exc:
            if thread is not None:
                await self.drop_thread(thread)
            if isinstance(exc, SubmitRefused):
                raise Refused(str(exc)) from exc
            raise
        self.cooldown.consume(request.user_id)
        log.debug(
            "job %d queued (%s) for user %d at position %d",
            submitted.job_id, request.kind.value, request.user_id, submitted.position,
        )
        return submitted, thread.id if thread is not None else None

    async def new_thread_for(self, request: JobRequest) -> discord.Thread | None:
        """With ``discord.thread_per_job``, a new public thread under the channel the job was
        asked in (none when asked in a thread already, or when Discord refuses one: the job
        then stays in the channel)."""
        if not self.bot.config.discord.thread_per_job:
            return None
        channel = self.bot.get_channel(request.channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(request.channel_id)
            except discord.HTTPException as exc:
                log.warning("channel %d cannot be read (%s); no thread for this job",
                            request.channel_id, exc)
                return None
        if not isinstance(channel, discord.TextChannel):
            return None  # a thread, a forum post, a DM: keep the job where it was asked
        name = thread_name(request)
        try:
            return await channel.create_thread(
                name=name, type=discord.ChannelType.public_thread,
                reason=f"a {request.kind.value} job for user {request.user_id}",
            )
        except discord.HTTPException as exc:
            log.warning("could not start a thread in channel %d (%s); the job stays in the "
                        "channel", request.channel_id, exc)
            return None

    async def drop_thread(self, thread: discord.Thread) -> None:
        """A job that was not queued leaves no empty thread behind (best effort)."""
        try:
            await thread.delete()
        except discord.HTTPException as exc:
            log.info("could not delete the unused thread %d: %s", thread.id, exc)

    async def safety_refusal(self, request: JobRequest) -> str | None:
        """Why an input image may not be used, by the image safety check; ``None`` if it may."""
        safety = getattr(self.bot, "image_safety", None)
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
        """Submit and tell the user where the job stands (the interaction is already deferred);
        once the job's progress message exists, the answer links to it."""
        refusal = await self.safety_refusal(request)
        if refusal is not None:
            await answer(interaction, refusal)
            return
        admin = is_admin(self.bot.config.discord, interaction.user.id,
                         role_ids_of(interaction.user))
        try:
            submitted, thread_id = await self.submit_placed(request, admin=admin)
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
        text = queued_text(submitted, notes, thread_id)
        await answer(interaction, text)
        task = asyncio.create_task(self.link_progress(interaction, submitted.job_id, text),
                                   name=f"link-progress-{submitted.job_id}")
        self._link_tasks.add(task)
        task.add_done_callback(self._link_tasks.discard)

    async def link_progress(
        self, interaction: discord.Interaction, job_id: int, text: str
    ) -> None:
        """Edit the ephemeral "queued" answer with a link to the job's progress message, while
        the interaction token still lives (Discord's 15 minutes)."""
        publisher = getattr(self.bot, "publisher", None)
        if publisher is None:
            return
        created = getattr(interaction, "created_at", None)
        age = (discord.utils.utcnow() - created).total_seconds() if created else 0.0
        budget = INTERACTION_TOKEN_SECONDS - TOKEN_MARGIN_SECONDS - age
        if budget <= 0:
            return
        link = await publisher.progress_message(job_id, budget)
        if link is None:
            return
        guild = interaction.guild_id
        url = f"https://discord.com/channels/{guild or '@me'}/{link.channel_id}/{link.message_id}"
        await answer(interaction, f"{text}\nProgress: {url}")


def thread_name(request: JobRequest) -> str:
    """Discord allows 1 to 100 characters; the prompt says best what the thread is about."""
    prompt = " ".join(str(request.params.get("prompt") or "").split())
    name = f"{request.kind.value}: {prompt}" if prompt else request.kind.value
    return name if len(name) <= 100 else name[:99] + "…"


async def ensure_desk(bot: FaradayBot) -> SubmitDesk:
    """The bot's desk, added on first use by whichever cog's ``setup`` runs first."""
    desk = bot.get_cog(SubmitDesk.__cog_name__)
    if isinstance(desk, SubmitDesk):
        return desk
    desk = SubmitDesk(bot)
    await bot.add_cog(desk)
    return desk
