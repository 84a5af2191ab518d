"""Results copied by direct message to users whose /prefs ask for it (``dm``).

Thin: :class:`bot.dm_copies.DmCopies` decides what and when; this opens the DM and posts.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord

from bot.dm_copies import DmCopies

if TYPE_CHECKING:
    from bot.app import FaradayBot


async def setup(bot: FaradayBot) -> None:
    async def send(user_id: int, text: str, png: bytes, spoiler: bool) -> None:
        user = bot.get_user(user_id) or await bot.fetch_user(user_id)
        await user.send(
            text, file=discord.File(io.BytesIO(png), filename="results.png", spoiler=spoiler)
        )

    copies = DmCopies(bot.store, send)
    bot.dm_copies = copies
    bot.scheduler.add_listener(copies)
