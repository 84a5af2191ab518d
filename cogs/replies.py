"""The words the bot answers with: queue positions, ETAs, and ephemeral replies."""

from __future__ import annotations

import logging

import discord

from bot.scheduler import Submitted

log = logging.getLogger(__name__)

# Discord's lifetime of an interaction token: the "queued" reply can be edited until then.
INTERACTION_TOKEN_SECONDS = 15 * 60
# Stop trying to edit that reply this long before the token dies (a late edit just fails).
TOKEN_MARGIN_SECONDS = 30

SOMETHING_WENT_WRONG = (
    "Something went wrong on my side and nothing was queued. Please try again in a moment; "
    "if it keeps happening, tell the server's admins."
)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "not known yet (no job like it has finished since the bot started)"
    if seconds < 60:
        return f"about {max(1, round(seconds))} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"about {round(minutes)} min"
    return f"about {minutes / 60:.1f} h"


MODELS_LOADING_NOTE = "The models are loading; your job starts when they are ready."


def queued_text(
    submitted: Submitted, notes: tuple[str, ...] = (), thread_id: int | None = None
) -> str:
    eta = f"ETA {format_eta(submitted.eta_seconds)}"
    if submitted.models_loading and submitted.eta_seconds is None:
        eta = "ETA not known yet (the models are still loading)"
    if submitted.models_loading:
        head = f"Job #{submitted.job_id} queued, position {submitted.position}, {eta}."
        notes = (MODELS_LOADING_NOTE, *notes)
    elif submitted.position <= 1:
        head = f"Job #{submitted.job_id} is starting now ({eta})."
    else:
        head = f"Job #{submitted.job_id} queued, position {submitted.position}, {eta}."
    where = f"the thread <#{thread_id}>" if thread_id is not None else "this channel"
    tail = f"Progress and results will appear in {where}."
    if submitted.notice:
        # Safely queued, but nothing can run it right now: say so rather than promise an ETA.
        head = f"Job #{submitted.job_id} queued, position {submitted.position}. {submitted.notice}"
    return "\n".join((f"{head} {tail}", *notes))


async def answer(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer, whether or not the interaction was deferred already."""
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=text)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        # The token may have expired or the channel vanished; nothing more we can tell the user.
        log.warning("could not answer an interaction: %s", exc)
