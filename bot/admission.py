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

from bot.jobs import JobRequest
from bot.owner_store import OwnerStore
from bot.runtime_settings import SettingsService

log = logging.getLogger(__name__)

QUOTA_WINDOW_SECONDS = 86_400.0

BLOCKED_USER = "You cannot use this bot's commands in this server; ask its admins why."
PAUSED = "The bot is paused by an admin and is not taking new jobs right now; try again later."
BLOCKED_PROMPT = (
    "Your prompt contains a word or phrase this server does not allow, so nothing "
    "was queued. Please rephrase it."
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
        quota = effective.daily_job_quota
        if quota > 0 and not admin and self.owner_store is not None:
            since = time.time() - QUOTA_WINDOW_SECONDS
            used = await self.owner_store.jobs_since(request.user_id, since)
            if used >= quota:
                oldest = await self.owner_store.oldest_job_since(request.user_id, since)
                wait = (oldest or time.time()) + QUOTA_WINDOW_SECONDS - time.time()
                hours = max(1, math.ceil(wait / 3600))
                return (
                    f"You have used your {quota} job(s) for the last 24 hours here; you can "
                    f"submit again in about {hours} h."
                )
        return None
