"""``/prefs``: each user's own settings, kept in the store (the ``user_prefs`` table).

``ping`` (whether the bot pings you when your job ends), ``dm`` (a copy of your results by direct
message), and your preferred defaults for /imagine (steps, candidates, size) and /edit (steps,
candidates). A preferred default beats the channel's default but stays within the channel's
bounds (:func:`bot.runtime_settings.apply_prefs`); when it does not fit, the reply to the command
says what was used instead. Given no option, /prefs shows what is set. A new preference is a
column of ``user_prefs``, a field of ``bot.store.UserPrefs`` and an option here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import pipeline_hard_limits
from bot.runtime_settings import size_text
from bot.store import UserPrefs
from cogs.checks import channel_allowed_for, channel_refusal
from cogs.options import annotate

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

# Option name -> (UserPrefs field, words for the user).
DEFAULTS = {
    "imagine_steps": ("imagine_steps", "/imagine steps"),
    "imagine_candidates": ("imagine_candidates", "/imagine candidates"),
    "size": ("imagine_size", "/imagine size"),
    "edit_steps": ("edit_steps", "/edit steps"),
    "edit_candidates": ("edit_candidates", "/edit candidates"),
}
FORGET_ALL = "all"


def describe_prefs(prefs: UserPrefs) -> str:
    ping = "on" if prefs.pings() else "off"
    default = " (the default)" if prefs.ping is None else ""
    lines = [
        f"Ping when your job ends: **{ping}**{default}. "
        "Change it with `/prefs ping:False` or `/prefs ping:True`.",
        f"Copy of your results by DM: **{'on' if prefs.dm else 'off'}** (`/prefs dm:`).",
    ]
    chosen = [
        f"{words} **{getattr(prefs, name)}**"
        for name, words in DEFAULTS.values()
        if getattr(prefs, name) is not None
    ]
    lines.append(
        "Your defaults: "
        + (", ".join(chosen) if chosen else "none (the channel's)")
        + ". `/prefs forget:` drops them."
    )
    return "\n".join(lines)


class PrefsCog(commands.Cog):
    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot
        self.command = build_prefs_command(self)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)

    async def handle(
        self, interaction: discord.Interaction, changes: dict[str, Any], forget: str | None
    ) -> None:
        config = self.bot.config.discord
        if not await channel_allowed_for(
            self.bot, config, interaction.channel_id, interaction.channel
        ):
            await interaction.response.send_message(channel_refusal(config), ephemeral=True)
            return
        user_id = interaction.user.id
        if forget == FORGET_ALL:
            changes.update({name: None for name, _ in DEFAULTS.values()})
        elif forget is not None:
            changes[DEFAULTS[forget][0]] = None
        try:
            prefs = await self.bot.store.set_user_prefs(user_id, **changes)
            # What this channel makes of them, so a capped preference is pointed out at once.
            effective = await self.bot.settings.for_user(
                interaction.guild_id, interaction.channel_id, user_id
            )
        except Exception:
            log.exception("could not store the preferences of user %d", user_id)
            await interaction.response.send_message(
                "Your preferences could not be saved just now; nothing changed. Try again in a "
                "moment.",
                ephemeral=True,
            )
            return
        saved = "Saved. " if changes else ""
        notes = [text for _, _, text in effective.notes]
        here = ("\nIn this channel: " + " ".join(notes)) if notes else ""
        await interaction.response.send_message(
            saved + describe_prefs(prefs) + here, ephemeral=True
        )


def build_prefs_command(cog: PrefsCog) -> app_commands.Command:
    imagine_limits, edit_limits = pipeline_hard_limits()

    async def prefs(
        interaction: discord.Interaction,
        ping: bool | None = None,
        dm: bool | None = None,
        imagine_steps: int | None = None,
        imagine_candidates: int | None = None,
        size: str | None = None,
        edit_steps: int | None = None,
        edit_candidates: int | None = None,
        forget: str | None = None,
    ) -> None:
        given = {
            "ping": ping,
            "dm": dm,
            "imagine_steps": imagine_steps,
            "imagine_candidates": imagine_candidates,
            "imagine_size": size,
            "edit_steps": edit_steps,
            "edit_candidates": edit_candidates,
        }
        await cog.handle(interaction, {k: v for k, v in given.items() if v is not None}, forget)

    # The pipelines' hard limits: each channel's own bounds apply when a preference is used.
    annotate(
        prefs,
        imagine_steps=app_commands.Range[
            int, imagine_limits["steps"][0], imagine_limits["steps"][1]
        ],
        imagine_candidates=app_commands.Range[
            int, imagine_limits["candidates"][0], imagine_limits["candidates"][1]
        ],
        edit_steps=app_commands.Range[int, edit_limits["steps"][0], edit_limits["steps"][1]],
        edit_candidates=app_commands.Range[
            int, edit_limits["candidates"][0], edit_limits["candidates"][1]
        ],
    )
    app_commands.describe(
        ping="Ping you when your job is done, fails, or is cancelled by someone",
        dm="Also send you your results by direct message",
        imagine_steps="Your default /imagine steps (kept within each channel's bounds)",
        imagine_candidates="How many images your /imagine makes (at most the channel's number)",
        size="Your default /imagine size",
        edit_steps="Your default /edit steps (kept within each channel's bounds)",
        edit_candidates="Your default /edit candidates (kept within each channel's bounds)",
        forget="Drop one of your defaults, or all of them",
    )(prefs)
    app_commands.choices(
        size=[
            app_commands.Choice(name=size_text(s), value=size_text(s))
            for s in cog.bot.config.imagine.sizes
        ][:25],
        forget=[app_commands.Choice(name="all my defaults", value=FORGET_ALL)]
        + [
            app_commands.Choice(name=words, value=option) for option, (_, words) in DEFAULTS.items()
        ],
    )(prefs)
    return app_commands.Command(
        name="prefs",
        description="Your own settings: pings, a DM copy of results, your default options",
        callback=prefs,
    )


async def setup(bot: FaradayBot) -> None:
    await bot.add_cog(PrefsCog(bot))
