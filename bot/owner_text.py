"""The words of the owners' commands: /settings show, /history pages and /stats, as plain text.

Pure functions of the values in :mod:`bot.runtime_settings` and :mod:`bot.history`, so they can
be tested without Discord. Discord caps a message at 2,000 characters; :func:`chunks` splits
longer text at line ends.
"""

from __future__ import annotations

from datetime import datetime, timezone

from bot.history import HistoryPage, Stats
from bot.runtime_settings import BOUNDED_OPTIONS, CONFIG_SOURCE, Effective, SettingSpec

MESSAGE_LIMIT = 2000
PROMPT_CHARS = 80


def chunks(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    out: list[str] = []
    current = ""
    for line in text.splitlines():
        line = line if len(line) <= limit else line[: limit - 1] + "…"
        if current and len(current) + 1 + len(line) > limit:
            out.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        out.append(current)
    return out


def _value(spec: SettingSpec, effective: Effective) -> str:
    key = spec.key
    shown = f"`{spec.show(effective.values[key])}`"
    source = effective.sources[key]
    return shown if source == CONFIG_SOURCE else f"{shown} ({source})"


def settings_text(effective: Effective, specs: dict[str, SettingSpec], paused: bool) -> str:
    """Every setting in force in this channel, and where each comes from when not config.toml."""
    lines = [
        "**Settings in this channel** (a value without a note comes from config.toml; "
        "(server) or (channel) marks an override made with /settings set)"
    ]
    if paused:
        lines.append("⏸ **Paused**: no new jobs are taken (/resume).")
    grouped = {f"{section}.{name}" for section, name, _ in BOUNDED_OPTIONS}
    for section, name, _kind in BOUNDED_OPTIONS:
        parts = ", ".join(
            f"{part} {_value(specs[f'{section}.{name}.{part}'], effective)}"
            for part in ("default", "min", "max")
        )
        lines.append(f"• `{section}.{name}`: {parts}")
    for key, spec in specs.items():
        if key.rsplit(".", 1)[0] in grouped:
            continue
        lines.append(f"• `{key}`: {_value(spec, effective)}")
    if effective.terms:
        lines.append(f"**Blocked terms** ({len(effective.terms)}):")
        lines.extend(
            f"• {term.kind.value} `{term.text}` ({source})" for term, source in effective.terms
        )
    else:
        lines.append("**Blocked terms**: none.")
    return "\n".join(lines)


def _when(timestamp: float) -> str:
    return f"<t:{int(timestamp)}:R>"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PROMPT_CHARS else text[: PROMPT_CHARS - 1] + "…"


def history_text(page: HistoryPage, whose: str) -> str:
    if page.total == 0:
        return f"{whose} no jobs yet."
    lines = [f"**{whose} jobs** — page {page.page + 1} of {page.pages} ({page.total} in all)"]
    for entry in page.entries:
        where = (
            f"https://discord.com/channels/{entry.guild_id or '@me'}/{entry.message[0]}/"
            f"{entry.message[1]}"
            if entry.message
            else "no message"
        )
        seed = "?" if entry.seed is None else str(entry.seed)
        lines.append(
            f"**#{entry.job_id}** {entry.kind.value}, {entry.status.value}, "
            f"{_when(entry.created_at)} — “{_short(entry.prompt)}” — seed `{seed}` — {where}"
        )
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def stats_text(stats: Stats) -> str:
    lines = [
        "**Jobs per day** (UTC, last 7 days): "
        + ", ".join(f"{day[5:]}: {count}" for day, count in stats.days)
    ]
    lines.append("**Median time waiting / running** (last 7 days):")
    if stats.times:
        lines.extend(
            f"• {t.kind}: {_seconds(t.median_wait_seconds)} / "
            f"{_seconds(t.median_run_seconds)} ({t.jobs} jobs)"
            for t in stats.times
        )
    else:
        lines.append("• no jobs yet")
    lines.append("**Failures by reason** (last 7 days):")
    if stats.failures:
        lines.extend(f"• {count} × {reason}" for reason, count in stats.failures)
    else:
        lines.append("• none")
    lines.append(f"**Queue now**: {stats.queue_length} job(s) waiting or running.")
    if stats.busiest:
        lines.append(
            "**Busiest users** (last 7 days): "
            + ", ".join(f"<@{user}> {count}" for user, count in stats.busiest)
        )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"_(from the store, {generated})_")
    return "\n".join(lines)
