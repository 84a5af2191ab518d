"""Reactions and buttons on the bot's messages: both reach the one action handler.

Reactions: 1️⃣…🔟 continue from a result, 🔁 reruns, ❌ cancels. Handled in ``on_raw_reaction_add``,
which fires for messages that are not in discord.py's cache, and resolved through the store's
message mapping, so a reaction on a grid posted days ago, before a restart, still works.

Buttons: one ``DynamicItem`` (cogs.components.ActionButton) registered here, once; the remix
modal's submit is answered from its custom_id. Nothing here lives only in memory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.controls import Act, Press
from bot.progress_text import NUMBER_EMOJIS
from bot.store import MessageLink
from cogs.actions import Actions, Actor, ensure_actions
from cogs.checks import channel_allowed_for
from cogs.components import ActionButton, on_modal_submit

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

RERUN_EMOJI = "🔁"
CANCEL_EMOJI = "❌"
HANDLED_EMOJIS = frozenset((*NUMBER_EMOJIS, RERUN_EMOJI, CANCEL_EMOJI))
# Refusals to a reaction cannot be ephemeral; they vanish after this long.
NOTICE_SECONDS = 20.0


def number_of(emoji: str) -> int | None:
    """1 for 1️⃣ … 10 for 🔟; None for anything else."""
    try:
        return NUMBER_EMOJIS.index(emoji) + 1
    except ValueError:
        return None


def reaction_press(emoji: str, link: MessageLink) -> Press | None:
    """What a reaction on one of our messages asks for; None when it asks nothing there."""
    if link.role == "progress":
        return Press(Act.CANCEL, link.job_id, 0) if emoji == CANCEL_EMOJI else None
    if link.role != "results":
        return None
    if emoji == RERUN_EMOJI:
        return Press(Act.REROLL, link.job_id, 0)
    number = number_of(emoji)
    return Press(Act.CONTINUE, link.job_id, number) if number is not None else None


class ResultsCog(commands.Cog):
    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is discord.InteractionType.modal_submit:
            await on_modal_submit(interaction)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        emoji = str(payload.emoji)
        if emoji not in HANDLED_EMOJIS:
            return
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return  # the bot's own number reactions under its grid
        if payload.member is not None and payload.member.bot:
            return
        if not await channel_allowed_for(self.bot, self.bot.config.discord, payload.channel_id):
            return
        link = await self.bot.store.message_role(payload.message_id)
        if link is None:
            return  # not one of our progress or result messages
        press = reaction_press(emoji, link)
        if press is None:
            return
        try:
            answer = await Actions.of(self.bot).perform(press, Actor.of_reaction(payload))
            if not answer.quiet:
                await self.notify(payload, answer.text)
        except Exception:
            log.exception("handling reaction %s on message %d failed", emoji, payload.message_id)
            await self.notify(
                payload, "something went wrong on my side handling that reaction; try again."
            )
        await self.remove_reaction(payload)

    async def notify(self, payload: discord.RawReactionActionEvent, text: str) -> None:
        """A short channel message to the reacting user (reactions cannot get ephemeral replies)."""
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        try:
            await channel.send(
                f"<@{payload.user_id}> {text}",
                delete_after=NOTICE_SECONDS,
                # The reactor alone: a requester named in the text ("only <@…> can continue")
                # is not pinged each time someone else reacts.
                allowed_mentions=discord.AllowedMentions(
                    users=[discord.Object(payload.user_id)], roles=False, everyone=False
                ),
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
    await ensure_actions(bot)
    await bot.add_cog(ResultsCog(bot))
    # One registration answers every button we ever posted, before or after any restart.
    bot.add_dynamic_items(ActionButton)
    # Offer the controls this cog handles, so users need not know the emoji by heart.
    bot.publisher.progress_reactions = (CANCEL_EMOJI,)
    bot.publisher.results_reactions = (RERUN_EMOJI,)
