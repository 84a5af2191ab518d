"""The publisher's :class:`~bot.publisher.ChannelSink`, written with discord.py.

It posts and edits plain channel messages (they never expire, unlike interaction tokens) and
translates discord.py's errors into the three the publisher acts on: a deleted message
(:class:`MessageGone`), a missing permission (:class:`NoPermission`) and anything worth retrying
(:class:`TransientSendError`). discord.py itself already waits out 429s and retries a few 5xx.

Files larger than the channel's upload limit (read at run time, it has changed over the years)
are re-encoded as JPEG, then shrunk, rather than failing the post.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import discord
from discord.ext import commands
from PIL import Image

from bot.controls import Controls
from bot.publisher import MessageGone, NoPermission, OutgoingFile, TransientSendError
from bot.uploads import UPLOAD_HEADROOM
from cogs.components import view_for

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

T = TypeVar("T")

# Discord's smallest upload limit today; used when the guild is unknown (e.g. not cached).
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


async def translated(operation: Callable[[], Awaitable[T]]) -> T:
    try:
        return await operation()
    except discord.NotFound as exc:
        raise MessageGone(str(exc)) from exc
    except discord.Forbidden as exc:
        raise NoPermission(str(exc)) from exc
    except (discord.DiscordServerError, discord.RateLimited) as exc:
        raise TransientSendError(str(exc)) from exc
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise TransientSendError(f"network error: {type(exc).__name__}") from exc


def fit_files(files: list[OutgoingFile], limit: int) -> list[OutgoingFile]:
    """Files whose total size fits ``limit``: JPEG first, then halving the pixels. Blocking."""
    budget = max(1, limit - UPLOAD_HEADROOM)
    if sum(len(f.data) for f in files) <= budget:
        return files
    share = budget // max(1, len(files))
    return [f if len(f.data) <= share else _shrink(f, share) for f in files]


def _shrink(file: OutgoingFile, budget: int) -> OutgoingFile:
    with Image.open(io.BytesIO(file.data)) as opened:
        image = opened.convert("RGB")
    stem = file.filename.rsplit(".", 1)[0]
    while True:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=88)
        if buffer.tell() <= budget or min(image.size) <= 64:
            return OutgoingFile(f"{stem}.jpg", buffer.getvalue())
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)


def mentions_for(ping_user: int | None) -> discord.AllowedMentions:
    """Mentions in job headers name the requester without pinging anyone, except the one user
    a finished job pings (and nobody else, whatever the text holds)."""
    if ping_user is None:
        return discord.AllowedMentions.none()
    return discord.AllowedMentions(everyone=False, roles=False, replied_user=False,
                                   users=[discord.Object(id=ping_user)])


def discord_files(files: list[OutgoingFile]) -> list[discord.File]:
    """Fresh file objects per attempt: an upload that is retried starts from the first byte."""
    return [discord.File(io.BytesIO(f.data), filename=f.filename) for f in files]


class DiscordChannelSink:
    """Channel messages through discord.py, by id, so nothing needs to be in the cache."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    def _channel(self, channel_id: int) -> discord.PartialMessageable:
        return self.bot.get_partial_messageable(channel_id)

    def upload_limit(self, channel_id: int) -> int:
        channel = self.bot.get_channel(channel_id)
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _fitted(self, channel_id: int, files: list[OutgoingFile]) -> list[OutgoingFile]:
        return await asyncio.to_thread(fit_files, files, self.upload_limit(channel_id))

    async def send(
        self,
        channel_id: int,
        content: str,
        files: list[OutgoingFile],
        *,
        controls: Controls = (),
        ping_user: int | None = None,
    ) -> int:
        fitted = await self._fitted(channel_id, files)

        async def post() -> int:
            view = view_for(controls)
            message = await self._channel(channel_id).send(
                content,
                files=discord_files(fitted),
                allowed_mentions=mentions_for(ping_user),
                **({"view": view} if view is not None else {}),
            )
            return message.id

        return await translated(post)

    async def edit(
        self,
        channel_id: int,
        message_id: int,
        content: str,
        files: list[OutgoingFile] | None,
        *,
        controls: Controls | None = None,
    ) -> None:
        message = self._channel(channel_id).get_partial_message(message_id)
        # view=None removes every button; leaving the key out keeps them.
        extra: dict[str, Any] = {} if controls is None else {"view": view_for(controls)}
        if files is None:
            await translated(lambda: message.edit(content=content, **extra))
            return
        fitted = await self._fitted(channel_id, files)

        async def replace() -> None:
            await message.edit(content=content, attachments=discord_files(fitted), **extra)

        await translated(replace)

    async def add_reactions(self, channel_id: int, message_id: int, emojis: list[str]) -> None:
        message = self._channel(channel_id).get_partial_message(message_id)
        for emoji in emojis:
            await translated(lambda emoji=emoji: message.add_reaction(emoji))


async def setup(bot: FaradayBot) -> None:
    bot.publisher.set_sink(DiscordChannelSink(bot))
