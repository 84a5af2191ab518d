"""Who may do what, where, and how often: allowed channels, admins, owners, submit cooldown.

These read only the ``[discord]`` table of the config, so every rule has one home there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import discord

from bot.config import DiscordConfig


def channel_allowed(config: DiscordConfig, channel_id: int | None) -> bool:
    """An empty ``allowed_channel_ids`` means every channel the bot can see."""
    if not config.allowed_channel_ids:
        return True
    return channel_id is not None and channel_id in config.allowed_channel_ids


async def channel_allowed_for(
    client: discord.Client,
    config: DiscordConfig,
    channel_id: int | None,
    channel: object = None,
) -> bool:
    """Like :func:`channel_allowed`, and a thread is allowed when its parent channel is."""
    if channel_allowed(config, channel_id):
        return True
    parent = await parent_channel_id(client, channel_id, channel)
    return parent is not None and channel_allowed(config, parent)


async def parent_channel_id(
    client: discord.Client, channel_id: int | None, channel: object = None
) -> int | None:
    """The channel a thread lives in (None for anything else): from the interaction's own
    channel, the cache, or, for a thread the bot has not seen, one REST lookup."""
    if isinstance(channel, discord.Thread):
        return channel.parent_id
    if channel_id is None:
        return None
    cached = client.get_channel(channel_id)
    if cached is not None:
        return cached.parent_id if isinstance(cached, discord.Thread) else None
    try:
        fetched = await client.fetch_channel(channel_id)
    except discord.HTTPException:
        return None
    return fetched.parent_id if isinstance(fetched, discord.Thread) else None


def channel_refusal(config: DiscordConfig) -> str:
    channels = ", ".join(f"<#{c}>" for c in config.allowed_channel_ids)
    return f"I only take commands in {channels}. Try again there."


def is_admin(config: DiscordConfig, user_id: int, role_ids: Iterable[int]) -> bool:
    """Owners always; otherwise anyone holding one of the configured admin roles."""
    if user_id in config.owner_ids:
        return True
    admin_roles = set(config.admin_role_ids)
    return bool(admin_roles) and any(role in admin_roles for role in role_ids)


def role_ids_of(member: object) -> list[int]:
    """The role ids of a guild member; a plain user (a DM, or an uncached member) has none."""
    return [role.id for role in getattr(member, "roles", [])]


class SubmitCooldown:
    """A per-user pause between submitted jobs (``discord.submit_cooldown_seconds``, or what
    /settings says for the channel, passed in as ``seconds``).

    Only jobs that were actually queued count, so a user who made a typo can fix it and resubmit
    at once. The pause is measured from the user's last queued job with the length that applies
    where they submit now, so an admin's change applies at once.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[int, float] = {}

    def retry_after(
        self, user_id: int, now: float | None = None, seconds: float | None = None
    ) -> float:
        """Seconds this user must still wait; 0 when they may submit now."""
        pause = self.seconds if seconds is None else seconds
        last = self._last.get(user_id)
        if pause <= 0 or last is None:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, last + pause - now)

    def consume(self, user_id: int, now: float | None = None) -> None:
        """Start this user's pause; call once the job is queued."""
        self._last[user_id] = time.time() if now is None else now

    def refusal(self, wait: float, seconds: float | None = None) -> str:
        pause = self.seconds if seconds is None else seconds
        return (
            f"Slow down a little: you can submit another job in {math.ceil(wait)} s "
            f"(one every {pause:g} s per user)."
        )
