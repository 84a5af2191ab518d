"""Reactions on the bot's messages: 1️⃣…🔟 continue from a result, 🔁 reruns, ❌ cancels.

Handled in ``on_raw_reaction_add``, which fires for messages that are not in discord.py's cache,
and resolved through the store's message mapping, so a reaction on a grid posted days ago, before
a restart, still works. Nothing here lives only in memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.jobs import JobKind, JobRequest
from bot.progress_text import NUMBER_EMOJIS
from bot.scheduler import CancelOutcome
from bot.store import JobRecord, MessageLink
from cogs.checks import channel_allowed, is_admin, role_ids_of
from cogs.continuations import continue_from, rerun
from cogs.replies import format_eta
from cogs.submission import Refused, SubmitDesk, ensure_desk

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

RERUN_EMOJI = "🔁"
CANCEL_EMOJI = "❌"
HANDLED_EMOJIS = frozenset((*NUMBER_EMOJIS, RERUN_EMOJI, CANCEL_EMOJI))
# Refusals to a reaction cannot be ephemeral; they vanish after this long.
NOTICE_SECONDS = 20.0
KIND_COMMAND = {JobKind.IMAGINE: "/imagine", JobKind.EDIT: "/edit"}


def number_of(emoji: str) -> int | None:
    """1 for 1️⃣ … 10 for 🔟; None for anything else."""
    try:
        return NUMBER_EMOJIS.index(emoji) + 1
    except ValueError:
        return None


class ResultsCog(commands.Cog):
    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        emoji = str(payload.emoji)
        if emoji not in HANDLED_EMOJIS:
            return
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return  # the bot's own number reactions under its grid
        if payload.member is not None and payload.member.bot:
            return
        if not channel_allowed(self.bot.config.discord, payload.channel_id):
            return
        link = await self.bot.store.message_role(payload.message_id)
        if link is None:
            return  # not one of our progress or result messages
        try:
            acted = await self.act(payload, emoji, link)
        except Exception:
            log.exception("handling reaction %s on message %d failed", emoji, payload.message_id)
            await self.notify(
                payload, "something went wrong on my side handling that reaction; try again."
            )
            acted = True
        if acted:
            await self.remove_reaction(payload)

    async def act(
        self, payload: discord.RawReactionActionEvent, emoji: str, link: MessageLink
    ) -> bool:
        """Do what the reaction asks; true when it was meant for us (so it can be removed)."""
        if link.role == "progress":
            if emoji != CANCEL_EMOJI:
                return False
            await self.cancel(payload, link.job_id)
            return True
        if link.role != "results" or emoji == CANCEL_EMOJI:
            return False
        job = await self.bot.store.get_job(link.job_id)
        if job is None:
            await self.notify(payload, "that job is no longer stored, so I cannot reuse it.")
            return True
        if not self.may_continue(payload, job):
            await self.notify(
                payload,
                f"only <@{job.request.user_id}> can continue or rerun this job "
                f"(use {KIND_COMMAND[job.request.kind]} to start your own).",
            )
            return True
        if emoji == RERUN_EMOJI:
            await self.rerun(payload, job)
        else:
            number = number_of(emoji)
            assert number is not None
            await self.continue_result(payload, job, number)
        return True

    def may_continue(self, payload: discord.RawReactionActionEvent, job: JobRecord) -> bool:
        config = self.bot.config.discord
        if config.continue_by == "anyone" or payload.user_id == job.request.user_id:
            return True
        return is_admin(config, payload.user_id, role_ids_of(payload.member))

    async def cancel(self, payload: discord.RawReactionActionEvent, job_id: int) -> None:
        job = await self.bot.store.get_job(job_id)
        if job is None:
            return
        config = self.bot.config.discord
        if payload.user_id != job.request.user_id and not is_admin(
            config, payload.user_id, role_ids_of(payload.member)
        ):
            await self.notify(payload, "only the person who asked for a job, or an admin, can "
                              "cancel it.")
            return
        outcome = await self.bot.scheduler.cancel(job_id)
        log.info("job %d: cancel by reaction from user %d: %s", job_id, payload.user_id,
                 outcome.value)
        if outcome in (CancelOutcome.NOT_FOUND, CancelOutcome.ALREADY_FINISHED):
            await self.notify(payload, f"job #{job_id} has already finished.")

    async def continue_result(
        self, payload: discord.RawReactionActionEvent, job: JobRecord, number: int
    ) -> None:
        results = await self.bot.store.results_for_job(job.id)
        chosen = next((r for r in results if r.rank == number), None)
        if chosen is None:
            await self.notify(payload, f"job #{job.id} has no result {number}.")
            return
        try:
            png = await asyncio.to_thread(chosen.path.read_bytes)
        except OSError:
            await self.notify(payload, f"result {number} of job #{job.id} is no longer stored.")
            return
        request = continue_from(
            job.request, png, chosen.id,
            user_id=payload.user_id, channel_id=payload.channel_id, guild_id=payload.guild_id,
        )
        await self.submit(payload, request, f"continuing from result {number} of job #{job.id}")

    async def rerun(self, payload: discord.RawReactionActionEvent, job: JobRecord) -> None:
        request = rerun(
            job.request,
            user_id=payload.user_id, channel_id=payload.channel_id, guild_id=payload.guild_id,
        )
        await self.submit(payload, request, f"rerunning job #{job.id} with a new seed")

    async def submit(
        self, payload: discord.RawReactionActionEvent, request: JobRequest, what: str
    ) -> None:
        try:
            submitted = await SubmitDesk.of(self.bot).submit(request)
        except Refused as exc:
            await self.notify(payload, f"{what} was not queued: {exc}")
            return
        if submitted.models_loading:
            where = (
                f"queued as job #{submitted.job_id}, position {submitted.position}; the models "
                "are loading and it starts when they are ready"
            )
        elif submitted.position > 1:
            where = (
                f"queued as job #{submitted.job_id}, position {submitted.position}, "
                f"ETA {format_eta(submitted.eta_seconds)}"
            )
        else:
            where = f"started as job #{submitted.job_id}"
        await self.notify(payload, f"{what}: {where}.")

    async def notify(self, payload: discord.RawReactionActionEvent, text: str) -> None:
        """A short channel message to the reacting user (reactions cannot get ephemeral replies)."""
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        try:
            await channel.send(
                f"<@{payload.user_id}> {text}",
                delete_after=NOTICE_SECONDS,
                allowed_mentions=discord.AllowedMentions(users=True, roles=False, everyone=False),
            )
        except discord.HTTPException as exc:
            log.warning("could not tell user %d about their reaction: %s", payload.user_id, exc)

    async def remove_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        """Take the user's reaction off once handled, so it can be used again; needs Manage
        Messages, without which the reaction simply stays."""
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        message = channel.get_partial_message(payload.message_id)
        try:
            await message.remove_reaction(payload.emoji, discord.Object(payload.user_id))
        except discord.Forbidden:
            log.debug("no permission to remove reactions in channel %d", payload.channel_id)
        except discord.HTTPException as exc:
            log.info("could not remove a reaction: %s", exc)


async def setup(bot: FaradayBot) -> None:
    await ensure_desk(bot)
    await bot.add_cog(ResultsCog(bot))
    # Offer the controls this cog handles, so users need not know the emoji by heart.
    bot.publisher.progress_reactions = (CANCEL_EMOJI,)
    bot.publisher.results_reactions = (RERUN_EMOJI,)
