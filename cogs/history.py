"""``/history`` (your recent jobs, paged with buttons) and ``/stats`` (admins: the figures).

The page buttons are a :class:`discord.ui.DynamicItem` whose ``custom_id`` carries everything a
press needs (``fh:<user>:<page>``), registered once at start-up, so a page button works on a
message of any age, after any number of restarts. The prefix is not ``fd:``, whose
``fd:<act>:<job>:<n>`` buttons the result messages use; each entry's rerun button is one of
those (``fd:reroll:<job>:0``), answered by the same handler as the 🔁 under a result.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.history import history_page
from bot.history import stats as store_stats
from bot.owner_text import chunks, history_text, stats_text
from cogs.admin_only import interaction_is_admin, refuse_unless_admin, send_long

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

PER_PAGE = 5
PAGE_TEMPLATE = r"fh:(?P<user>[0-9]+):(?P<page>[0-9]+)"


def page_id(user_id: int, page: int) -> str:
    return f"fh:{user_id}:{page}"


def rerun_id(job_id: int) -> str:
    return f"fd:reroll:{job_id}:0"


class PageButton(discord.ui.DynamicItem[discord.ui.Button], template=PAGE_TEMPLATE):
    def __init__(self, user_id: int, page: int, label: str = "", disabled: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or f"page {page + 1}",
                style=discord.ButtonStyle.secondary,
                custom_id=page_id(user_id, page),
                disabled=disabled,
                row=1,
            )
        )
        self.user_id = user_id
        self.page = page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> PageButton:
        return cls(int(match["user"]), int(match["page"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: Any = interaction.client
        if interaction.user.id != self.user_id and not interaction_is_admin(bot, interaction):
            await interaction.response.send_message(
                "Those are someone else's jobs; /history shows yours.", ephemeral=True
            )
            return
        content, view = await render(
            bot, self.user_id, self.page, mine=interaction.user.id == self.user_id
        )
        await interaction.response.edit_message(content=content, view=view)


async def render(
    bot: FaradayBot, user_id: int, page: int, *, mine: bool
) -> tuple[str, discord.ui.View | None]:
    shown = await history_page(bot.store, user_id, page, PER_PAGE)
    content = chunks(history_text(shown, "Your" if mine else f"<@{user_id}>'s"))[0]
    if shown.total == 0:
        return content, None
    view = discord.ui.View(timeout=None)
    for entry in shown.entries:
        view.add_item(
            discord.ui.Button(
                label=f"Rerun #{entry.job_id}",
                emoji="🔁",
                style=discord.ButtonStyle.secondary,
                custom_id=rerun_id(entry.job_id),
                row=0,
            )
        )
    view.add_item(PageButton(user_id, max(shown.page - 1, 0), "◀ Newer", disabled=shown.page == 0))
    view.add_item(
        PageButton(user_id, shown.page + 1, "Older ▶", disabled=shown.page >= shown.pages - 1)
    )
    # Answered by the registered dynamic items, never by this view: discord.py must not keep it.
    view.stop()
    return content, view


class HistoryCog(commands.Cog):
    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="history", description="Your recent jobs, with links, seeds and rerun buttons"
    )
    @app_commands.describe(user="Admins: whose jobs to show (default: yours)")
    async def history(
        self, interaction: discord.Interaction, user: discord.User | None = None
    ) -> None:
        target = user.id if user is not None else interaction.user.id
        if target != interaction.user.id and not interaction_is_admin(self.bot, interaction):
            await interaction.response.send_message(
                "Only admins can see someone else's history.", ephemeral=True
            )
            return
        content, view = await render(self.bot, target, 0, mine=target == interaction.user.id)
        if view is None:
            await interaction.response.send_message(content, ephemeral=True)
        else:
            await interaction.response.send_message(content, view=view, ephemeral=True)

    # Hidden from members without Manage Server; refuse_unless_admin is the real gate.
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.command(
        name="stats",
        description="Admins: jobs per day, waiting and running "
        "times, failures, the queue, the busiest users",
    )
    async def stats(self, interaction: discord.Interaction) -> None:
        if await refuse_unless_admin(self.bot, interaction):
            return
        figures = await store_stats(self.bot.store)
        await send_long(interaction, chunks(stats_text(figures)))


async def setup(bot: FaradayBot) -> None:
    bot.add_dynamic_items(PageButton)
    await bot.add_cog(HistoryCog(bot))
