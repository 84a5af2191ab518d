"""``/queue``, ``/cancel [job]`` and ``/help``: where things stand, stopping them, how it works."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import JobStatus
from bot.scheduler import CancelOutcome, QueueSnapshot
from cogs.checks import channel_allowed_for, channel_refusal, is_admin, role_ids_of
from cogs.replies import format_eta
from cogs.results import CANCEL_EMOJI, RERUN_EMOJI

if TYPE_CHECKING:
    from bot.app import FaradayBot

log = logging.getLogger(__name__)

HELP_TEXT = f"""\
**faraday** makes images from text (VQGAN-CLIP) and edits images (Blended Latent Diffusion).

**/imagine** `prompt` — make an image. Example: `/imagine prompt: a lighthouse at dusk | \
oil painting:0.5 | blurry:-1`
• Prompts are separated by `|`; `text:weight` weights one (default 1); a negative weight \
pushes away from it; `text:weight:stop` stops once that close.
• Options: `seed`, `steps`, `size`, `cutn`; `init_image` starts from your picture; `mask` \
(white = change) or `mask_text` limits where it changes; `image_prompt` steers toward a picture.

**/edit** `image` `mask` `prompt` — change only the masked part. Example: `/edit image: photo.png \
mask: mask.png prompt: a red door`
• The mask is white (or opaque) where the image should change and black elsewhere, same shape \
as the image. Options: `candidates`, `steps`, `blend_start`, `guidance`, `seed`, `background`, \
`shrink`.

**Buttons and reactions** on the bot's messages (answers to buttons only you see):
• **1** **2** … or 1️⃣ 2️⃣ … under a result grid: continue from that result (new seed).
• **U1** **U2** …: that result alone at full size, with **Upscale ×4**.
• {RERUN_EMOJI}: the same job with a new seed · ✏️ **Remix**: change the prompt first · ℹ️: \
settings and a command to copy · 🎞️: the timelapse · 🗑️: delete it (requester or admin).
• **Cancel** or {CANCEL_EMOJI} under a progress message: cancel it (the requester or an admin).
**/prefs** `ping:False` — no ping when your job ends; `dm:True` — your results by DM too; \
`imagine_steps`, `size`, `edit_steps`, … — your own defaults (within the channel's bounds).
**/history** — your recent jobs with links, seeds and rerun buttons.

**/queue** — your jobs, the running job and the queue length. **/cancel** `[job]` — cancel your \
job (admins: any job).
"""


def describe_queue(snapshot: QueueSnapshot, user_id: int) -> str:
    lines: list[str] = []
    running = snapshot.running
    if running is None:
        lines.append("Nothing is running right now.")
    for entry in snapshot.all_running:
        progress = f"step {entry.step}/{entry.total}" if entry.total else "starting"
        whose = "yours" if entry.user_id == user_id else f"<@{entry.user_id}>'s"
        state = "stopping" if entry.stopping else f"{progress}, done in " + format_eta(
            entry.eta_seconds
        )
        lines.append(f"Running: job #{entry.job_id} ({entry.kind.value}, {whose}), {state}.")
    if snapshot.notice:
        lines.append(snapshot.notice)
    lines.append(f"Queue length: {snapshot.length} job(s) waiting or running.")
    mine = snapshot.for_user(user_id)
    if mine:
        lines.append("Your waiting jobs:")
        lines.extend(
            f"• job #{e.job_id} ({e.kind.value}): position {e.position}, "
            f"ETA {format_eta(e.eta_seconds)}"
            for e in mine
        )
    elif all(entry.user_id != user_id for entry in snapshot.all_running):
        lines.append("You have no jobs waiting.")
    return "\n".join(lines)


class QueueCog(commands.Cog):
    def __init__(self, bot: FaradayBot) -> None:
        self.bot = bot

    async def refused_here(self, interaction: discord.Interaction) -> bool:
        """Answer (ephemeral) and return true when commands are not taken in this channel."""
        config = self.bot.config.discord
        if await channel_allowed_for(self.bot, config, interaction.channel_id,
                                     interaction.channel):
            return False
        await interaction.response.send_message(channel_refusal(config), ephemeral=True)
        return True

    @app_commands.command(name="queue", description="Your jobs, the running job and the queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        if await self.refused_here(interaction):
            return
        text = describe_queue(self.bot.scheduler.snapshot(), interaction.user.id)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your running or waiting job")
    @app_commands.describe(job="The job number (default: your running job, else your next one)")
    async def cancel(
        self, interaction: discord.Interaction, job: app_commands.Range[int, 1] | None = None
    ) -> None:
        if await self.refused_here(interaction):
            return
        user_id = interaction.user.id
        admin = is_admin(self.bot.config.discord, user_id, role_ids_of(interaction.user))
        if job is None:
            job = self.own_job(self.bot.scheduler.snapshot(), user_id)
            if job is None:
                await interaction.response.send_message(
                    "You have no running or waiting job to cancel.", ephemeral=True
                )
                return
        else:
            record = await self.bot.store.get_job(job)
            if record is None:
                await interaction.response.send_message(
                    f"There is no job #{job}. /queue lists yours.", ephemeral=True
                )
                return
            if record.request.user_id != user_id and not admin:
                await interaction.response.send_message(
                    f"Job #{job} is not yours; only its requester or an admin can cancel it.",
                    ephemeral=True,
                )
                return
            if record.status.finished:
                await interaction.response.send_message(
                    f"Job #{job} has already {finished_word(record.status)}.", ephemeral=True
                )
                return
        self.bot.publisher.cancel_requested(job, user_id)
        outcome = await self.bot.scheduler.cancel(job)
        if outcome not in (CancelOutcome.REMOVED, CancelOutcome.STOPPING):
            self.bot.publisher.cancel_settled(job)
        log.info("job %d: /cancel by user %d: %s", job, user_id, outcome.value)
        await interaction.response.send_message(cancel_text(job, outcome), ephemeral=True)

    @staticmethod
    def own_job(snapshot: QueueSnapshot, user_id: int) -> int | None:
        for entry in snapshot.all_running:
            if entry.user_id == user_id:
                return entry.job_id
        mine = snapshot.for_user(user_id)
        return mine[0].job_id if mine else None

    @app_commands.command(name="help", description="How to use the bot and write prompts")
    async def help(self, interaction: discord.Interaction) -> None:
        if await self.refused_here(interaction):
            return
        await interaction.response.send_message(HELP_TEXT, ephemeral=True)


def finished_word(status: JobStatus) -> str:
    return {JobStatus.DONE: "finished", JobStatus.FAILED: "failed"}.get(status, "been cancelled")


def cancel_text(job_id: int, outcome: CancelOutcome) -> str:
    if outcome is CancelOutcome.REMOVED:
        return f"Job #{job_id} was waiting; it is cancelled and will not run."
    if outcome is CancelOutcome.STOPPING:
        return f"Job #{job_id} is stopping; its progress message will show where it got to."
    if outcome is CancelOutcome.ALREADY_FINISHED:
        return f"Job #{job_id} had already finished."
    return f"Job #{job_id} is not in the queue."


async def setup(bot: FaradayBot) -> None:
    await bot.add_cog(QueueCog(bot))
