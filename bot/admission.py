"""Whether a new job may be taken: the rules server owners set, checked in one place.

:class:`Gatekeeper` is asked twice: cheaply before a command does any work
(:meth:`~Gatekeeper.command_refusal`), and for every job just before it is queued
(:meth:`~Gatekeeper.submit_refusal`), whether it came from a command, a reaction, a button, a
remix or a continuation. The second check is the one that counts; the first only spares the user a
download. Answers are written for the user and never name a blocked term; the log does, for the
owner.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from bot.jobs import JobKind, JobRequest
from bot.owner_store import OwnerStore
from bot.runtime_settings import Effective, SettingsService, size_text

log = logging.getLogger(__name__)

QUOTA_WINDOW_SECONDS = 86_400.0

# /block is bot-wide (one list for every server the bot is in).
BLOCKED_USER = (
    "You cannot use this bot's commands: an admin has blocked you, in every server the bot is "
    "in. Ask the admins why."
)
PAUSED = "The bot is paused by an admin and is not taking new jobs right now; try again later."
BLOCKED_PROMPT = (
    "Your prompt contains a word or phrase this server does not allow, so nothing "
    "was queued. Please rephrase it."
)


# The numeric parameters /settings bounds, per kind, as a job's params name them.
BOUNDED_PARAMS: dict[JobKind, tuple[str, ...]] = {
    JobKind.IMAGINE: ("steps", "cutn"),
    JobKind.EDIT: ("steps", "candidates", "blend_start", "guidance"),
}


def bounds_refusal(request: JobRequest, effective: Effective) -> str | None:
    """Why a job's settings are outside the bounds in force in its channel now, or ``None``.

    A command checks its own options, but a continuation, reroll, remix or rerun copies an older
    job's settings, which an admin may have narrowed since; refused (not silently changed) so the
    user knows which setting to lower.
    """
    params = request.params
    config: Any = effective.imagine if request.kind is JobKind.IMAGINE else effective.edit
    problems: list[str] = []
    for name in BOUNDED_PARAMS.get(request.kind, ()):
        value = params.get(name)
        option = getattr(config, name)
        if isinstance(value, int | float) and not option.min <= value <= option.max:
            problems.append(f"{name} {value:g} (allowed: {option.min:g} to {option.max:g})")
    if request.kind is JobKind.IMAGINE:
        candidates = params.get("candidates")
        if isinstance(candidates, int) and candidates > effective.imagine.candidates:
            problems.append(
                f"candidates {candidates} (allowed: at most {effective.imagine.candidates})"
            )
        width, height = params.get("width"), params.get("height")
        if isinstance(width, int) and isinstance(height, int):
            sizes = effective.imagine.sizes
            if (width, height) not in sizes:
                allowed = ", ".join(size_text(s) for s in sizes)
                problems.append(f"size {width}x{height} (allowed: {allowed})")
    if not problems:
        return None
    return (
        f"This job's settings are outside what this channel allows now: {'; '.join(problems)}. "
        "Nothing was queued; start a new job with the command instead."
    )


def disabled_text(command: str) -> str:
    return f"/{command} is switched off in this channel by the server's admins."


class Gatekeeper:
    def __init__(self, settings: SettingsService, owner_store: OwnerStore | None) -> None:
        self.settings = settings
        self.owner_store = owner_store

    def command_refusal(
        self, user_id: int, command: str, guild_id: int | None, channel_id: int | None
    ) -> str | None:
        if self.settings.is_blocked(user_id):
            return BLOCKED_USER
        if self.settings.paused:
            return PAUSED
        if not self.settings.effective(guild_id, channel_id).enabled(command):
            return disabled_text(command)
        return None

    async def submit_refusal(self, request: JobRequest, *, admin: bool = False) -> str | None:
        command = request.kind.value
        early = self.command_refusal(request.user_id, command, request.guild_id, request.channel_id)
        if early is not None:
            return early
        effective = self.settings.effective(request.guild_id, request.channel_id)
        params = request.params
        term = effective.prompt_filter.blocked_term(params.get("prompt"), params.get("mask_text"))
        if term is not None:
            log.warning(
                "refused a %s prompt from user %d in channel %d: it matches the blocked %s %r",
                command,
                request.user_id,
                request.channel_id,
                term.kind.value,
                term.text,
            )
            return BLOCKED_PROMPT
        bounds = bounds_refusal(request, effective)
        if bounds is not None:
            return bounds
        quota = effective.daily_job_quota
        if quota > 0 and not admin and self.owner_store is not None:
            since = time.time() - QUOTA_WINDOW_SECONDS
            guild = request.guild_id
            used = await self.owner_store.jobs_since(request.user_id, guild, since)
            if used >= quota:
                oldest = await self.owner_store.oldest_job_since(request.user_id, guild, since)
                wait = (oldest or time.time()) + QUOTA_WINDOW_SECONDS - time.time()
                hours = max(1, math.ceil(wait / 3600))
                where = "in this server" if guild else "in direct messages"
                return (
                    f"You have used your {quota} job(s) {where} for the last 24 hours "
                    f"(deleted jobs count too); you can submit again in about {hours} h."
                )
        return None
