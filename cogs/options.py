"""Building slash commands whose bounds and choices come from config at load time.

discord.py reads a command's option types, ranges and choices from the callback's annotations
when the :class:`~discord.app_commands.Command` is built. Our bounds are only known once config is
loaded, so each cog builds its command in a factory: it defines the callback, then replaces the
annotations of the bounded options with ``app_commands.Range[...]`` objects made from config
before handing the callback to ``app_commands.Command``. (With postponed annotations the others
stay strings, which discord.py evaluates in the module as usual.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from discord import app_commands

from bot.config import FloatOption, IntOption
from pipelines.interface import InvalidRequest


def int_range(option: IntOption) -> Any:
    return app_commands.Range[int, option.min, option.max]


def float_range(option: FloatOption) -> Any:
    return app_commands.Range[float, option.min, option.max]


def text_range(max_chars: int) -> Any:
    return app_commands.Range[str, 1, max_chars]


def annotate(callback: Callable[..., Any], **annotations: Any) -> None:
    """Set the annotations of named parameters, refusing names the callback does not have."""
    names = set(inspect.signature(callback).parameters)
    unknown = set(annotations) - names
    if unknown:
        raise TypeError(f"{callback.__qualname__} has no parameter(s) {sorted(unknown)}")
    callback.__annotations__.update(annotations)


def check_within(name: str, value: float | None, option: IntOption | FloatOption) -> None:
    """Refuse a number outside the configured bounds.

    Discord's client enforces the ``Range`` it was given, but discord.py does not check it on
    arrival, and a registration made before ``config.toml`` was tightened (a global sync takes up
    to an hour to reach clients) still offers the old bounds.
    """
    if value is not None and not option.min <= value <= option.max:
        raise InvalidRequest(
            f"`{name}` must be between {option.min:g} and {option.max:g}, not {value:g}"
        )


def check_length(name: str, text: str | None, max_chars: int) -> None:
    """Refuse text longer than configured (the same reason as :func:`check_within`)."""
    if text is not None and len(text) > max_chars:
        raise InvalidRequest(
            f"`{name}` is {len(text)} characters long; at most {max_chars} are allowed"
        )


def check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    """Refuse a choice the server's config does not offer (the same reason as above)."""
    if value is not None and value not in choices:
        raise InvalidRequest(f"`{name}` must be one of {', '.join(choices)}, not {value!r}")


def hard_range(kind: type, limits: tuple[float, float]) -> Any:
    """The pipeline's own limits as an option range.

    Discord's client refuses a value outside the registered range before the bot sees it, and a
    registration is not redone when an admin changes a bound with /settings; so options that
    /settings governs register the widest range and :func:`check_within` applies the bounds in
    force where the command was used.
    """
    lo, hi = limits
    return app_commands.Range[kind, kind(lo), kind(hi)]


def default_text(option: IntOption | FloatOption) -> str:
    """' (default 200; admins may change it)' for an option /settings governs: its bounds and
    default are per channel, so quoting config.toml's would mislead."""
    return f" (default {option.default:g}; admins may change it)"


def bound_text(option: IntOption | FloatOption) -> str:
    """' (1–500, default 200)' for an option description."""
    return f" ({option.min:g}–{option.max:g}, default {option.default:g})"
