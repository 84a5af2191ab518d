"""The discord.py side of the buttons: views that are never stored, modal submits read in either
of Discord's layouts, and reactions mapped onto the same presses as buttons."""

from __future__ import annotations

import discord

from bot.controls import Act, Press, result_controls
from bot.jobs import JobKind
from bot.store import MessageLink
from cogs.components import ActionButton, RemixModal, submitted_values, view_for
from cogs.results import reaction_press


async def test_a_sent_view_is_finished_so_discord_py_never_stores_it() -> None:
    # A stored view would drop the DynamicItem registration when it timed out.
    view = view_for(result_controls(12, JobKind.IMAGINE, 4))
    assert view is not None and view.is_finished()
    rows = view.to_components()
    assert [len(row["components"]) for row in rows] == [4, 4, 5]
    assert all(isinstance(item, ActionButton) for item in view.children)
    assert rows[0]["components"][0]["custom_id"] == "fd:continue:12:1"
    assert view_for(()) is None


async def test_the_remix_modal_prefills_the_prompt_within_discords_limits() -> None:
    modal = RemixModal(3, "a cat " * 200, 500, 4)
    payload = modal.to_dict()
    assert len(payload["title"]) <= 45 and payload["custom_id"] == "fd:remix:3:0"
    prompt = payload["components"][0]["components"][0]
    assert prompt["max_length"] == 500 and len(prompt["value"]) == 500
    assert all(len(row["components"][0]["label"]) <= 45 for row in payload["components"])


def test_modal_values_are_read_from_action_rows_and_from_labels() -> None:
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": "prompt", "value": "a"}]},
            {"type": 1, "components": [{"type": 4, "custom_id": "result", "value": ""}]}]
    labels = [{"type": 18, "component": {"type": 4, "custom_id": "prompt", "value": "b"}}]
    assert submitted_values(rows) == {"prompt": "a", "result": ""}
    assert submitted_values(labels) == {"prompt": "b"}


def test_reactions_map_onto_the_same_presses_as_buttons() -> None:
    results = MessageLink(1, 2, 7, "results")
    progress = MessageLink(1, 2, 7, "progress")
    assert reaction_press("2️⃣", results) == Press(Act.CONTINUE, 7, 2)
    assert reaction_press("🔟", results) == Press(Act.CONTINUE, 7, 10)
    assert reaction_press("🔁", results) == Press(Act.REROLL, 7, 0)
    assert reaction_press("❌", progress) == Press(Act.CANCEL, 7, 0)
    assert reaction_press("❌", results) is None
    assert reaction_press("1️⃣", progress) is None
    assert reaction_press("1️⃣", MessageLink(1, 2, 7, "single")) is None
    assert discord.ui.DynamicItem in ActionButton.__mro__
