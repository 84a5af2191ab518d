"""What /imagine and /edit share: one slash command whose options become one queued job.

No ``setup`` here: discord.py executes an extension module afresh when it loads it, so a base
class that several cogs share lives in a module that is only imported.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Generic, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import JobRequest
from cogs.replies import SOMETHING_WENT_WRONG, answer
from cogs.submission import SubmitDesk
from pipelines.interface import InvalidRequest

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

OptionsT = TypeVar("OptionsT")


class JobCommandCog(commands.Cog, Generic[OptionsT]):
    """Admit the user, defer, build the request (downloads included), queue it, answer.

    Subclasses say how the command looks (:meth:`make_command`) and how its options become a
    :class:`~bot.jobs.JobRequest` (:meth:`build_request`); bad input is an ``InvalidRequest``,
    whose words the user sees.
    """

    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot
        self.command = self.make_command()

    def make_command(self) -> app_commands.Command:
        raise NotImplementedError

    async def build_request(
        self, interaction: discord.Interaction, options: OptionsT, desk: SubmitDesk
    ) -> tuple[JobRequest, tuple[str, ...]]:
        raise NotImplementedError

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)

    async def handle(self, interaction: discord.Interaction, options: OptionsT) -> None:
        desk = SubmitDesk.of(self.bot)
        if not await desk.admit(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            request, notes = await self.build_request(interaction, options, desk)
        except InvalidRequest as exc:
            await answer(interaction, f"Nothing was queued: {exc}")
            return
        except Exception:
            log.exception("building a /%s request failed", self.command.name)
            await answer(interaction, SOMETHING_WENT_WRONG)
            return
        await desk.submit_and_answer(interaction, request, notes)
