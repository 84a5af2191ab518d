"""Buttons and the remix modal, in discord.py: one ``DynamicItem`` for every button we post.

:class:`ActionButton` matches any ``custom_id`` of the form ``fd:<act>:<job>:<n>``. It is
registered once (``bot.add_dynamic_items``), so a press on any message, of any age, after any
number of restarts, is rebuilt from its custom_id and answered from the store. No view is kept
per message: the views built here are stopped before they are sent, because discord.py would
otherwise store each one and, when it timed out, drop the dynamic item registration with it.

Every answer to a press is ephemeral. A press is acknowledged at once (deferred, "thinking…"),
well within Discord's 3 seconds, and answered when the action handler has decided; ✏️ Remix is
answered with its modal instead.

No ``setup`` here (see cogs/submission.py for why shared classes live in plain modules).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord

from bot.controls import CUSTOM_ID_TEMPLATE, Act, Control, Controls, Press, parse_custom_id
from bot.jobs import JobKind
from cogs.actions import Actions, Actor, expired
from cogs.checks import channel_allowed_for, channel_refusal

log = logging.getLogger(__name__)

STYLES = {
    "primary": discord.ButtonStyle.primary,
    "secondary": discord.ButtonStyle.secondary,
    "success": discord.ButtonStyle.success,
    "danger": discord.ButtonStyle.danger,
}
PROMPT_FIELD = "prompt"
RESULT_FIELD = "result"


class ActionButton(discord.ui.DynamicItem[discord.ui.Button], template=CUSTOM_ID_TEMPLATE):
    def __init__(self, press: Press | None, button: discord.ui.Button) -> None:
        super().__init__(button)
        self.press = press

    @classmethod
    def of(cls, control: Control, row: int) -> ActionButton:
        button: discord.ui.Button = discord.ui.Button(
            label=control.label,
            emoji=control.emoji,
            style=STYLES[control.style],
            custom_id=control.custom_id,
            row=row,
        )
        return cls(Press(control.act, control.job_id, control.n), button)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> ActionButton:
        # An action this version does not know still gets an answer (in the callback).
        return cls(parse_custom_id(match.string), item)

    async def callback(self, interaction: discord.Interaction) -> None:
        await on_press(interaction, self.press)


def view_for(controls: Controls) -> discord.ui.View | None:
    """A view holding these buttons, for sending; ``None`` when there are none."""
    if not controls:
        return None
    view = discord.ui.View(timeout=None)
    for row, line in enumerate(controls):
        for control in line:
            view.add_item(ActionButton.of(control, row))
    # Never stored: the registered DynamicItem answers every press.
    view.stop()
    return view


async def on_press(interaction: discord.Interaction, press: Press | None) -> None:
    client = interaction.client
    actor = Actor.of_interaction(interaction)
    if press is None:
        await interaction.response.send_message(
            "That button does nothing any more.", ephemeral=True
        )
        return
    actions = Actions.of(client)  # type: ignore[arg-type]
    refusal = actions.refusal(actor)
    if refusal is not None:
        # Every press, ✏️ Remix's modal included: a blocked user gets nothing but this.
        await interaction.response.send_message(refusal, ephemeral=True)
        return
    config = client.config.discord  # type: ignore[attr-defined]
    if not await channel_allowed_for(client, config, interaction.channel_id, interaction.channel):
        await interaction.response.send_message(channel_refusal(config), ephemeral=True)
        return
    if press.act is Act.REMIX:
        await open_remix(interaction, actions, press.job_id)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        answer = await actions.perform(press, actor)
        text = answer.text
    except Exception:
        log.exception("handling button %s of job %d failed", press.act.value, press.job_id)
        text = "Something went wrong on my side handling that button; try again."
    await followup(interaction, text)


async def followup(interaction: discord.Interaction, text: str) -> None:
    try:
        await interaction.followup.send(_sentence(text), ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer a button press: %s", exc)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# -- remix ---------------------------------------------------------------------------------


class RemixModal(discord.ui.Modal):
    """Its submit is handled statelessly (:func:`on_modal_submit`), not by this object."""

    def __init__(self, job_id: int, prompt: str, max_chars: int, results: int) -> None:
        super().__init__(
            title=f"Remix job #{job_id}", custom_id=f"fd:remix:{job_id}:0", timeout=None
        )
        self.add_item(
            discord.ui.TextInput(
                label="Prompt",
                custom_id=PROMPT_FIELD,
                style=discord.TextStyle.paragraph,
                default=prompt[:max_chars],
                max_length=min(max_chars, 4000),
                required=True,
            )
        )
        self.add_item(
            discord.ui.TextInput(
                label="Continue from result (empty: start afresh)",
                custom_id=RESULT_FIELD,
                style=discord.TextStyle.short,
                placeholder=f"1 to {results}, or leave empty" if results else "leave empty",
                required=False,
                max_length=4,
            )
        )


async def open_remix(interaction: discord.Interaction, actions: Actions, job_id: int) -> None:
    job = await actions.bot.store.get_job(job_id)
    if job is None:
        await interaction.response.send_message(_sentence(expired(job_id)), ephemeral=True)
        return
    actor = Actor.of_interaction(interaction)
    if not actions.may_continue(actor, job):
        await interaction.response.send_message(
            f"Only <@{job.request.user_id}> can remix this job.", ephemeral=True
        )
        return
    count = len(await actions.bot.store.results_for_job(job_id))
    kind = job.request.kind
    modal = RemixModal(
        job_id,
        str(job.request.params.get("prompt") or ""),
        actions.max_prompt_chars(kind if isinstance(kind, JobKind) else JobKind.IMAGINE),
        count,
    )
    await interaction.response.send_modal(modal)
    # The submit is answered from its custom_id alone, after a restart too: drop discord.py's
    # in-memory copy so only on_modal_submit handles it.
    modal.stop()


def submitted_values(components: list[dict[str, Any]]) -> dict[str, str]:
    """custom_id -> value of every text input in a modal submit (in action rows or labels)."""
    values: dict[str, str] = {}

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            if "value" in item and "custom_id" in item:
                values[str(item["custom_id"])] = str(item["value"] or "")
            walk(item.get("components") or [])
            if isinstance(item.get("component"), dict):
                walk([item["component"]])

    walk(components)
    return values


async def on_modal_submit(interaction: discord.Interaction) -> bool:
    """Answer a remix modal's submit; False when the modal is not ours."""
    data: dict[str, Any] = interaction.data or {}  # type: ignore[assignment]
    press = parse_custom_id(str(data.get("custom_id", "")))
    if press is None or press.act is not Act.REMIX:
        return False
    client = interaction.client
    await interaction.response.defer(ephemeral=True, thinking=True)
    values = submitted_values(list(data.get("components") or []))
    try:
        answer = await Actions.of(client).remix(  # type: ignore[arg-type]
            press.job_id,
            Actor.of_interaction(interaction),
            values.get(PROMPT_FIELD, ""),
            values.get(RESULT_FIELD, ""),
        )
        text = answer.text
    except Exception:
        log.exception("handling the remix of job %d failed", press.job_id)
        text = "Something went wrong on my side handling that remix; try again."
    await followup(interaction, text)
    return True
