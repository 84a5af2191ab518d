"""The buttons under the bot's messages, as plain data: what each does and where it sits.

Every button's ``custom_id`` is ``fd:<act>:<job>:<n>``: the action, the job it acts on and the
result number (0 when the action is about the whole job). Nothing else is needed to answer a
press, so a button on a message posted weeks ago, before any number of restarts, is resolved from
the store alone (the cogs register one ``DynamicItem`` for the pattern; no per-message state).

The layouts respect Discord's limits (at most 5 rows of 5 buttons, ``custom_id`` at most 100
characters). For n results the grid gets ``ceil(n/5)`` rows of numbered buttons (continue from
that result), the same number of rows of U buttons (that result alone, at full size), then one
row of tools: 🔁 reroll, ✏️ remix, ℹ️ info, 🎞 timelapse (/imagine only), 🗑 delete. Up to 5
results that is 3 rows; 6 to 10 results fill exactly 5, numbers above their U twins, so the
columns line up and result 7 is always in the same place.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

from bot.jobs import JobKind

PREFIX = "fd"
# What ``discord.ui.DynamicItem`` matches (fullmatch) against a pressed button's custom_id.
CUSTOM_ID_TEMPLATE = rf"{PREFIX}:(?P<act>[a-z]+):(?P<job>[0-9]+):(?P<n>[0-9]+)"
MAX_CUSTOM_ID = 100
MAX_ROWS = 5
MAX_PER_ROW = 5
# The most results one grid can offer buttons for with the layout above.
MAX_RESULTS = (MAX_ROWS - 1) // 2 * MAX_PER_ROW


class Act(str, Enum):
    """Everything a button or a reaction can ask for. One handler (cogs.actions) decides."""

    CONTINUE = "continue"  # numbered button / number reaction: continue from result n
    SINGLE = "single"  # U n: result n alone at full size, with an Upscale button
    UPSCALE = "upscale"  # Upscale ×4 of result n
    REROLL = "reroll"  # 🔁: the same job with a new seed
    REMIX = "remix"  # ✏️: a modal to change the prompt, then continue or rerun
    INFO = "info"  # ℹ️: every setting, seed, models and timings, and a command to copy
    DELETE = "delete"  # 🗑: the job's messages and files
    CANCEL = "cancel"  # Cancel / ❌ on a progress message
    TIMELAPSE = "timelapse"  # 🎞: an MP4 of the /imagine forming


@dataclass(frozen=True)
class Control:
    act: Act
    job_id: int
    n: int = 0
    label: str | None = None
    emoji: str | None = None
    style: str = "secondary"  # "primary" | "secondary" | "success" | "danger"

    @property
    def custom_id(self) -> str:
        return custom_id(self.act, self.job_id, self.n)


Controls = tuple[tuple[Control, ...], ...]


def custom_id(act: Act, job_id: int, n: int = 0) -> str:
    value = f"{PREFIX}:{act.value}:{job_id}:{n}"
    if len(value) > MAX_CUSTOM_ID:
        raise ValueError(f"custom_id {value!r} is longer than Discord allows")
    return value


@dataclass(frozen=True)
class Press:
    """A parsed custom_id."""

    act: Act
    job_id: int
    n: int


def parse_custom_id(value: str) -> Press | None:
    """The press a custom_id stands for; None when it is not ours or names no known action."""
    match = re.fullmatch(CUSTOM_ID_TEMPLATE, value)
    if match is None:
        return None
    try:
        act = Act(match["act"])
    except ValueError:
        return None
    return Press(act, int(match["job"]), int(match["n"]))


def _rows(controls: list[Control]) -> list[tuple[Control, ...]]:
    return [
        tuple(controls[start : start + MAX_PER_ROW])
        for start in range(0, len(controls), MAX_PER_ROW)
    ]


def result_controls(job_id: int, kind: JobKind, count: int) -> Controls:
    """The buttons under a results grid of ``count`` results (at most :data:`MAX_RESULTS`)."""
    count = min(count, MAX_RESULTS)
    numbers = [
        Control(Act.CONTINUE, job_id, n, label=str(n), style="primary") for n in range(1, count + 1)
    ]
    singles = [Control(Act.SINGLE, job_id, n, label=f"U{n}") for n in range(1, count + 1)]
    tools = [
        Control(Act.REROLL, job_id, emoji="🔁"),
        Control(Act.REMIX, job_id, label="Remix", emoji="✏️"),
        Control(Act.INFO, job_id, emoji="ℹ️"),
    ]
    if kind is JobKind.IMAGINE:
        tools.append(Control(Act.TIMELAPSE, job_id, label="Timelapse", emoji="🎞️"))
    tools.append(Control(Act.DELETE, job_id, emoji="🗑️", style="danger"))
    rows = [*_rows(numbers), *_rows(singles), tuple(tools)]
    assert len(rows) <= MAX_ROWS and all(len(row) <= MAX_PER_ROW for row in rows)
    return tuple(rows)


def progress_controls(job_id: int) -> Controls:
    return ((Control(Act.CANCEL, job_id, label="Cancel", emoji="✖️", style="danger"),),)


def single_controls(job_id: int, n: int, scale: int) -> Controls:
    """Under a result posted alone: offer the upscaler."""
    return (
        (Control(Act.UPSCALE, job_id, n, label=f"Upscale ×{scale}", emoji="🔍", style="primary"),),
    )


def row_count(count: int) -> int:
    """Rows :func:`result_controls` uses for ``count`` results."""
    return 2 * math.ceil(min(count, MAX_RESULTS) / MAX_PER_ROW) + 1
