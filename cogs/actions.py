"""The one place that decides what a button press or a reaction does.

A number reaction and a numbered button, 🔁 as a reaction and as a button, ❌ and Cancel: each pair
reaches :meth:`Actions.perform` with the same :class:`~bot.controls.Press` and gets the same
decision. The callers only differ in how they answer: a button press privately (ephemeral), a
reaction with a short channel notice (Discord gives reactions no private reply).

Everything is resolved from the store: a job that was pruned or deleted answers
"this result has expired".

No ``setup`` here: discord.py executes an extension module afresh when it loads it, so the class
that cogs share lives in a module that is only imported (see cogs/submission.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.controls import Act, Press, single_controls
from bot.job_info import job_info_text
from bot.jobs import JobKind, JobRequest
from bot.publisher import (
    SPOILER_PREFIX,
    MessageGone,
    NoPermission,
    OutgoingFile,
    TransientSendError,
    flagged_line,
)
from bot.scheduler import CancelOutcome
from bot.store import JobRecord
from bot.timelapse import TimelapseUnavailable, timelapse_file
from bot.upscaling import UpscaleUnavailable, upscale_request
from cogs.checks import SubmitCooldown, is_admin
from cogs.continuations import continue_from, rerun
from cogs.replies import queued_text
from cogs.submission import Refused, SubmitDesk, ensure_desk
from pipelines.interface import InvalidRequest

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

KIND_COMMAND = {JobKind.IMAGINE: "/imagine", JobKind.EDIT: "/edit"}
UPSCALE_SCALE = 4  # the label of the button a result posted alone offers


BLOCKED_ACTOR = (
    "You cannot use this bot's commands, reactions or buttons in this server; ask its admins why."
)


def expired(job_id: int) -> str:
    return f"this result has expired: job #{job_id} is no longer stored."


@dataclass(frozen=True)
class Actor:
    """Who pressed or reacted, and where."""

    user_id: int
    role_ids: tuple[int, ...]
    channel_id: int
    guild_id: int | None

    @classmethod
    def of_interaction(cls, interaction: discord.Interaction) -> Actor:
        roles = getattr(interaction.user, "roles", [])
        return cls(
            interaction.user.id,
            tuple(r.id for r in roles),
            interaction.channel_id or 0,
            interaction.guild_id,
        )

    @classmethod
    def of_reaction(cls, payload: discord.RawReactionActionEvent) -> Actor:
        roles = getattr(payload.member, "roles", [])
        return cls(
            payload.user_id, tuple(r.id for r in roles), payload.channel_id, payload.guild_id
        )


@dataclass(frozen=True)
class _Chosen:
    """One stored result, read: its id, its PNG, and whether the safety check flagged it."""

    id: int
    png: bytes
    flagged: bool


@dataclass(frozen=True)
class Answer:
    """What to tell the actor. ``quiet`` answers (a cancel that worked) are not repeated as a
    channel notice for a reaction, exactly as before buttons existed."""

    text: str
    quiet: bool = False


class Actions(commands.Cog):
    """The action handler (a cog so that every cog finds the same one: :meth:`of`)."""

    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot
        # One pause per user between the images U n and 🎞 post in public.
        self.post_cooldown = SubmitCooldown(bot.config.discord.post_cooldown_seconds)

    @classmethod
    def of(cls, bot: commands.Bot) -> Actions:
        actions = bot.get_cog(cls.__cog_name__)
        if not isinstance(actions, Actions):
            raise RuntimeError("the Actions cog is not loaded (call ensure_actions in setup)")
        return actions

    # -- the decision ------------------------------------------------------------------------

    def refusal(self, actor: Actor) -> str | None:
        """Why this actor may press nothing at all (``/block``); ``None`` if they may."""
        if self.bot.settings.is_blocked(actor.user_id):
            return BLOCKED_ACTOR
        return None

    def post_refusal(self, actor: Actor) -> str | None:
        """The per-user pause between public posts (``discord.post_cooldown_seconds``)."""
        wait = self.post_cooldown.retry_after(actor.user_id)
        if wait <= 0:
            return None
        return (
            f"Slow down a little: you can post another image in {math.ceil(wait)} s "
            f"(one every {self.post_cooldown.seconds:g} s per user)."
        )

    async def perform(self, press: Press, actor: Actor) -> Answer:
        # Before anything else, cancelling included: a blocked user acts on nothing.
        refusal = self.refusal(actor)
        if refusal is not None:
            return Answer(refusal)
        if press.act is Act.CANCEL:
            return await self.cancel(press.job_id, actor)
        job = await self.bot.store.get_job(press.job_id)
        if job is None:
            return Answer(expired(press.job_id))
        if press.act is Act.INFO:
            results = await self.bot.store.results_for_job(job.id)
            return Answer(job_info_text(job, results, self.bot.config.models))
        if press.act is Act.DELETE:
            return await self.delete(job, actor)
        if press.act is Act.SINGLE:
            return await self.single(job, press.n, actor)
        if press.act is Act.UPSCALE:
            return await self.upscale(job, press.n, actor)
        if press.act is Act.TIMELAPSE:
            return await self.timelapse(job, actor)
        if job.request.kind not in KIND_COMMAND:
            return Answer(
                f"job #{job.id} is an end product ({job.request.kind.value}): there is "
                "nothing to continue or rerun."
            )
        if not self.may_continue(actor, job):
            return Answer(
                f"only <@{job.request.user_id}> can continue or rerun this job "
                f"(use {KIND_COMMAND.get(job.request.kind, 'a command')} to start your own)."
            )
        if press.act is Act.REROLL:
            return await self.submit(
                rerun(
                    job.request,
                    user_id=actor.user_id,
                    channel_id=actor.channel_id,
                    guild_id=actor.guild_id,
                ),
                f"rerunning job #{job.id} with a new seed",
                actor,
            )
        if press.act is Act.CONTINUE:
            return await self.continue_result(job, press.n, actor)
        return Answer("that button does nothing any more.")

    def is_admin(self, actor: Actor) -> bool:
        return is_admin(self.bot.config.discord, actor.user_id, actor.role_ids)

    def may_continue(self, actor: Actor, job: JobRecord) -> bool:
        config = self.bot.config.discord
        if config.continue_by == "anyone" or actor.user_id == job.request.user_id:
            return True
        return self.is_admin(actor)

    async def cancel(self, job_id: int, actor: Actor) -> Answer:
        job = await self.bot.store.get_job(job_id)
        if job is None:
            return Answer(expired(job_id))
        if actor.user_id != job.request.user_id and not self.is_admin(actor):
            return Answer("only the person who asked for a job, or an admin, can cancel it.")
        publisher = self.bot.publisher
        publisher.cancel_requested(job_id, actor.user_id)
        outcome = await self.bot.scheduler.cancel(job_id)
        log.info("job %d: cancel from user %d: %s", job_id, actor.user_id, outcome.value)
        if outcome in (CancelOutcome.NOT_FOUND, CancelOutcome.ALREADY_FINISHED):
            publisher.cancel_settled(job_id)
            return Answer(f"job #{job_id} has already finished.")
        if outcome is CancelOutcome.REMOVED:
            return Answer(
                f"job #{job_id} was waiting; it is cancelled and will not run.", quiet=True
            )
        return Answer(
            f"job #{job_id} is stopping; its progress message will show where it got to.",
            quiet=True,
        )

    async def continue_result(
        self, job: JobRecord, number: int, actor: Actor, prompt: str | None = None
    ) -> Answer:
        chosen = await self._result(job, number)
        if isinstance(chosen, Answer):
            return chosen
        result_id, png = chosen.id, chosen.png
        request = continue_from(
            job.request,
            png,
            result_id,
            user_id=actor.user_id,
            channel_id=actor.channel_id,
            guild_id=actor.guild_id,
        )
        what = f"continuing from result {number} of job #{job.id}"
        if prompt is not None:
            request = _with_prompt(request, prompt)
            what = f"remixing result {number} of job #{job.id}"
        return await self.submit(request, what, actor)

    async def _result(self, job: JobRecord, number: int) -> _Chosen | Answer:
        results = await self.bot.store.results_for_job(job.id)
        chosen = next((r for r in results if r.rank == number), None)
        if chosen is None:
            return Answer(f"job #{job.id} has no result {number}.")
        try:
            png = await asyncio.to_thread(chosen.path.read_bytes)
        except OSError:
            return Answer(f"result {number} of job #{job.id} is no longer stored.")
        return _Chosen(chosen.id, png, chosen.flagged)

    async def submit(self, request: JobRequest, what: str, actor: Actor) -> Answer:
        try:
            # Admins are spared the daily quota, as with commands.
            submitted, thread_id = await SubmitDesk.of(self.bot).submit_placed(
                request, admin=self.is_admin(actor)
            )
        except Refused as exc:
            return Answer(f"{what} was not queued: {exc}")
        # The commands' own words, so a press says where the job went (its thread, if any).
        return Answer(f"{what}: {queued_text(submitted, thread_id=thread_id)}")

    # -- remix -------------------------------------------------------------------------------

    def max_prompt_chars(self, kind: JobKind) -> int:
        config = self.bot.config
        return (
            config.edit.max_prompt_chars
            if kind is JobKind.EDIT
            else config.imagine.max_prompt_chars
        )

    async def remix(self, job_id: int, actor: Actor, prompt: str, result: str) -> Answer:
        """The remix modal's submit: a new prompt, from result ``result`` or from scratch."""
        refusal = self.refusal(actor)
        if refusal is not None:
            return Answer(refusal)
        job = await self.bot.store.get_job(job_id)
        if job is None:
            return Answer(expired(job_id))
        if not self.may_continue(actor, job):
            return Answer(f"only <@{job.request.user_id}> can remix this job.")
        prompt = prompt.strip()
        limit = self.max_prompt_chars(job.request.kind)
        if not prompt:
            return Answer("Nothing was queued: the prompt is empty; write what to make.")
        if len(prompt) > limit:
            return Answer(
                f"Nothing was queued: the prompt is {len(prompt)} characters long; "
                f"the limit is {limit}."
            )
        try:
            await asyncio.to_thread(_check_prompt, job.request.kind, prompt)
        except InvalidRequest as exc:
            return Answer(f"Nothing was queued: {exc}")
        result = result.strip()
        if not result:
            request = _with_prompt(
                rerun(
                    job.request,
                    user_id=actor.user_id,
                    channel_id=actor.channel_id,
                    guild_id=actor.guild_id,
                ),
                prompt,
            )
            return await self.submit(request, f"rerunning job #{job.id} with the new prompt", actor)
        count = len(await self.bot.store.results_for_job(job.id))
        if not result.isdigit() or not 1 <= int(result) <= count:
            return Answer(
                f"Nothing was queued: “{result[:20]}” is not a result of job "
                f"#{job.id}; give a number from 1 to {count}, or leave it empty to "
                "start from scratch."
            )
        return await self.continue_result(job, int(result), actor, prompt=prompt)

    # -- one result alone, upscaling, timelapse ----------------------------------------------

    async def single(self, job: JobRecord, number: int, actor: Actor) -> Answer:
        chosen = await self._result(job, number)
        if isinstance(chosen, Answer):
            return chosen
        pause = self.post_refusal(actor)
        if pause is not None:
            return Answer(pause)
        # Taken before the slow part, so presses arriving meanwhile wait their turn too.
        self.post_cooldown.consume(actor.user_id)
        sink = self.bot.publisher.sink
        if sink is None:
            return Answer("I am not connected to the channel yet; try again in a moment.")
        content = f"Result {number} of job #{job.id}, at full size (asked by <@{actor.user_id}>)."
        name = f"job-{job.id}-{number}.png"
        if chosen.flagged:
            # The same spoiler as on the grid: a flagged result is never shown unasked.
            name = SPOILER_PREFIX + name
            content += f"\n{flagged_line(number)}"
        controls = single_controls(job.id, number, UPSCALE_SCALE) if self.can_upscale() else ()
        try:
            message_id = await sink.send(
                actor.channel_id,
                content,
                [OutgoingFile(name, chosen.png)],
                controls=controls,
            )
        except (NoPermission, MessageGone, TransientSendError) as exc:
            return Answer(f"I could not post the image here ({type(exc).__name__}).")
        await self.bot.store.link_message(message_id, actor.channel_id, job.id, "single")
        offer = " Press Upscale to make it larger." if controls else ""
        return Answer(f"Result {number} of job #{job.id} is posted at full size.{offer}")

    def can_upscale(self) -> bool:
        return True

    async def upscale(self, job: JobRecord, number: int, actor: Actor) -> Answer:
        """An ``upscale`` job of result ``number``, through the same queue as every job."""
        try:
            request = await upscale_request(
                self.bot.store,
                self.bot.config.upscale,
                job_id=job.id,
                rank=number,
                user_id=actor.user_id,
                channel_id=actor.channel_id,
                guild_id=actor.guild_id,
            )
        except UpscaleUnavailable as exc:
            return Answer(str(exc))
        return await self.submit(request, f"upscaling result {number} of job #{job.id}", actor)

    async def timelapse(self, job: JobRecord, actor: Actor) -> Answer:
        """Post the MP4 of the /imagine forming (encoded off the loop, within the upload
        limit), in the channel where it was asked for."""
        pause = self.post_refusal(actor)
        if pause is not None:
            return Answer(pause)
        # Taken before the slow part, so presses arriving meanwhile wait their turn too.
        self.post_cooldown.consume(actor.user_id)
        sink = self.bot.publisher.sink
        if sink is None:
            return Answer("I am not connected to the channel yet; try again in a moment.")
        try:
            made = await timelapse_file(
                self.bot.store,
                job.id,
                sink.upload_limit(actor.channel_id),
                self.bot.config.timelapse,
            )
        except TimelapseUnavailable as exc:
            return Answer(str(exc))
        note = f"\n{made.note}" if made.note else ""
        content = (
            f"🎞️ Timelapse of job #{job.id}, {made.frames} frames (asked by "
            f"<@{actor.user_id}>).{note}"
        )
        try:
            message_id = await sink.send(actor.channel_id, content, [made.file])
        except (NoPermission, MessageGone, TransientSendError) as exc:
            return Answer(f"I could not post the timelapse here ({type(exc).__name__}).")
        await self.bot.store.link_message(message_id, actor.channel_id, job.id, "single")
        return Answer(f"The timelapse of job #{job.id} is posted ({made.frames} frames).")

    # -- deleting ----------------------------------------------------------------------------

    async def delete(self, job: JobRecord, actor: Actor) -> Answer:
        if actor.user_id != job.request.user_id and not self.is_admin(actor):
            return Answer(
                f"only <@{job.request.user_id}>, who asked for job #{job.id}, or an "
                "admin can delete it."
            )
        if not job.status.finished:
            return Answer(f"job #{job.id} has not finished; cancel it first.")
        store = self.bot.store
        # Its upscales are its results, larger, posted with no 🗑 of their own: they go too
        # (one still running is left to finish; its requester can cancel it).
        ids = [job.id]
        for child_id in await store.derived_jobs(job.id, JobKind.UPSCALE):
            child = await store.get_job(child_id)
            if child is not None and child.status.finished:
                ids.append(child_id)
        links = [link for job_id in ids for link in await store.messages_for_job(job_id)]
        gone = 0
        for link in links:
            channel = self.bot.get_partial_messageable(link.channel_id)
            try:
                await channel.get_partial_message(link.message_id).delete()
                gone += 1
            except discord.NotFound:
                gone += 1
            except discord.HTTPException as exc:
                log.warning("job %d: could not delete message %d: %s", job.id, link.message_id, exc)
        thread_note = await self._delete_own_thread(job, ids)
        await store.delete_jobs(ids)
        log.info("job %d deleted by user %d (%d message(s), %d upscale(s))", job.id,
                 actor.user_id, gone, len(ids) - 1)
        kept = (
            ""
            if gone == len(links)
            else f" {len(links) - gone} message(s) could not be deleted (no permission)."
        )
        upscales = f" and {len(ids) - 1} upscale(s)" if len(ids) > 1 else ""
        return Answer(
            f"Job #{job.id} is deleted: {gone} message(s){upscales} and its files.{kept}"
            f"{thread_note}"
        )

    async def _delete_own_thread(self, job: JobRecord, ids: list[int]) -> str:
        """Delete the thread ``thread_per_job`` made for this job (its name shows the prompt),
        unless another job still lives in it. Returns a note for the answer ("" when fine)."""
        thread_id = job.request.channel_id
        channel = self.bot.get_channel(thread_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(thread_id)
            except discord.HTTPException:
                return ""
        if not isinstance(channel, discord.Thread):
            return ""
        me = self.bot.user
        if me is None or channel.owner_id != me.id:
            return ""  # a thread a user made: the job was only asked there
        others = [i for i in await self.bot.store.jobs_in_channel(thread_id) if i not in ids]
        if others:
            return ""  # the thread is shared with later jobs, which keep it
        try:
            await channel.delete()
        except discord.NotFound:
            return ""
        except discord.HTTPException as exc:
            log.warning("job %d: could not delete its thread %d: %s", job.id, thread_id, exc)
            return " Its thread could not be deleted (I need the Manage Threads permission)."
        return " Its thread is deleted too."


def _with_prompt(request: JobRequest, prompt: str) -> JobRequest:
    from dataclasses import replace

    return replace(request, params={**request.params, "prompt": prompt})


def _check_prompt(kind: JobKind, prompt: str) -> None:
    """The pipeline's own prompt parsing (weights, escapes) judges a remixed /imagine prompt."""
    if kind is JobKind.IMAGINE:
        from pipelines.prompts import parse_prompts

        parse_prompts(prompt)


async def ensure_actions(bot: FaradayBot) -> Actions:
    await ensure_desk(bot)
    actions = bot.get_cog(Actions.__cog_name__)
    if isinstance(actions, Actions):
        return actions
    actions = Actions(bot)
    await bot.add_cog(actions)
    return actions
