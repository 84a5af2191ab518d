"""The words of progress and result messages: bar, durations, scores. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.jobs import JobKind
from pipelines.interface import InvalidRequest
from pipelines.prompts import (
    SHOWN_SEPARATOR,
    describe_image_prompts,
    describe_prompts,
    read_prompts,
)

NUMBER_EMOJIS = ("1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣", "6️⃣", "7️⃣", "8️⃣", "9️⃣", "🔟")
# Discord refuses message content above 2,000 characters.
MAX_CONTENT = 2000
MAX_PROMPT_SHOWN = 300
MAX_READING_SHOWN = 300
MASK_LINE = "🎭 The picture shows the self-mask: tinted red where the edit may change it."


def progress_bar(step: int, total: int, width: int = 20) -> str:
    fraction = 0.0 if total <= 0 else min(max(step / total, 0.0), 1.0)
    filled = round(fraction * width)
    return f"`{'█' * filled}{'░' * (width - filled)}` {fraction:.0%}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def quiet(text: str) -> str:
    """User text made inert in a message: no mentions, no code-block escapes."""
    return text.replace("@", "@\u200b").replace("`", "'")


def describe_job(job_id: int, kind: JobKind, user_id: int, params: dict[str, Any]) -> str:
    if kind is JobKind.UPSCALE:
        source = params.get("source_job_id")
        of = f" of result {params.get('source_rank')} of #{source}" if source is not None else ""
        return f"**upscale #{job_id}**{of} for <@{user_id}>"
    verb = "imagine" if kind is JobKind.IMAGINE else "edit"
    prompt = str(params.get("prompt") or "").strip()
    if len(prompt) > MAX_PROMPT_SHOWN:
        prompt = prompt[: MAX_PROMPT_SHOWN - 1] + "…"
    shown = f" “{quiet(prompt)}”" if prompt else ""
    return f"**/{verb} #{job_id}**{shown} for <@{user_id}>"


def prompt_reading(kind: JobKind, params: dict[str, Any]) -> str | None:
    """``📝 read as: a red apple (1) · blurry (−1)``: how an /imagine prompt was read, so the
    user can see the colon and weight rules at work. None for other kinds (or a prompt that no
    longer parses, which the cog would have refused)."""
    if kind is not JobKind.IMAGINE:
        return None
    parts: list[str] = []
    prompt = str(params.get("prompt") or "")
    if prompt.strip():
        try:
            parts.append(describe_prompts(read_prompts(prompt)))
        except InvalidRequest:
            return None
    weights = list(params.get("image_prompt_weights") or [])
    stops = list(params.get("image_prompt_stops") or [None] * len(weights))
    if len(stops) == len(weights):
        parts += describe_image_prompts(weights, stops)
    if not parts:
        return None
    reading = SHOWN_SEPARATOR.join(parts)
    if len(reading) > MAX_READING_SHOWN:
        reading = reading[: MAX_READING_SHOWN - 1] + "…"
    return f"📝 read as: {quiet(reading)}"


def clip(content: str) -> str:
    return content if len(content) <= MAX_CONTENT else content[: MAX_CONTENT - 1] + "…"


def queued_line(position: int | None, eta: float | None) -> str:
    where = f"position {position}" if position is not None else "waiting"
    return f"⏳ Queued, {where} · ETA {format_duration(eta)}"


def running_lines(step: int, total: int | None, elapsed: float, eta: float | None) -> str:
    if not total:
        return f"🎨 Starting… · elapsed {format_duration(elapsed)}"
    return (
        f"🎨 Step {step}/{total} {progress_bar(step, total)}\n"
        f"elapsed {format_duration(elapsed)} · ETA {format_duration(eta)}"
    )


def results_content(
    header: str,
    scores: Sequence[float],
    seeds: Sequence[int],
    can_continue: bool = True,
    reading: str | None = None,
) -> str:
    lines = [f"✅ {header}: results, best first"]
    if reading:
        lines.append(reading)
    for index, (score, seed) in enumerate(zip(scores, seeds, strict=True)):
        lines.append(f"{NUMBER_EMOJIS[index]} score {score:.3f} · seed {seed}")
    if can_continue:
        lines.append("React with a number to continue from that image.")
    return clip("\n".join(lines))
