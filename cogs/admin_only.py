"""The gate in front of the owners' commands (/settings, /block, /purge, /pause, /stats, …).

No ``setup`` here: a plain module the admin cogs import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from cogs.checks import is_admin, role_ids_of

if TYPE_CHECKING:
    from bot.app import FaradayBot

NOT_ADMIN = "Only the server's admins (the roles in `admin_role_ids`) can use this command."


def interaction_is_admin(bot: FaradayBot, interaction: discord.Interaction) -> bool:
    return is_admin(bot.config.discord, interaction.user.id, role_ids_of(interaction.user))


async def refuse_unless_admin(bot: FaradayBot, interaction: discord.Interaction) -> bool:
    """Answer a non-admin at once (ephemeral) and return true; false for an admin."""
    if interaction_is_admin(bot, interaction):
        return False
    await interaction.response.send_message(NOT_ADMIN, ephemeral=True)
    return True


async def send_long(interaction: discord.Interaction, parts: list[str]) -> None:
    """Ephemeral answer in as many messages as Discord's length limit needs."""
    first, *rest = parts or ["(nothing)"]
    if interaction.response.is_done():
        await interaction.followup.send(first, ephemeral=True)
    else:
        await interaction.response.send_message(first, ephemeral=True)
    for part in rest:
        await interaction.followup.send(part, ephemeral=True)
