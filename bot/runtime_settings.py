"""Settings admins change at run time, per server and per channel, on top of config.toml.

Every setting has one spec here: its type, the pipeline's hard limits (or the choices config.toml
offers) and where config.toml holds its default. Overrides live in the store
(:mod:`bot.owner_store`) and in a cache here, written through, so a change applies to the very
next command with no restart and survives one. Precedence: channel, then server, then config.toml.

:meth:`SettingsService.effective` resolves the values for one channel into the same
:class:`~bot.config.ImagineConfig` / :class:`~bot.config.EditConfig` shapes the cogs already read
config from, so the cogs stay unaware of where a value came from.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from bot.blocklist import BadTerm, BlockedTerm, PromptFilter, TermKind, compile_term
from bot.config import (
    JOB_COMMANDS,
    Config,
    EditConfig,
    FloatOption,
    ImagineConfig,
    IntOption,
    pipeline_hard_limits,
)

if TYPE_CHECKING:
    from bot.owner_store import OwnerStore

log = logging.getLogger(__name__)


class Scope(str, Enum):
    GLOBAL = "global"  # bot-wide state such as the pause switch (scope id 0)
    GUILD = "server"
    CHANNEL = "channel"


CONFIG_SOURCE = "config.toml"


class BadSetting(ValueError):
    """A value /settings will not store; ``str(exc)`` says why, naming the limits."""


@dataclass(frozen=True)
class SettingSpec:
    key: str
    kind: type  # int, float, bool or str (a choice)
    help: str
    from_config: Callable[[Config], Any]
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, text: str) -> Any:
        """The typed value of ``text``, or :class:`BadSetting` naming type or limits."""
        raw = text.strip()
        if self.kind is bool:
            lowered = raw.lower()
            if lowered in ("on", "true", "yes", "1", "enabled"):
                return True
            if lowered in ("off", "false", "no", "0", "disabled"):
                return False
            raise BadSetting(f"`{self.key}` is on or off, not {text!r}")
        if self.kind is int:
            if not re.fullmatch(r"[+-]?\d+", raw):
                raise BadSetting(f"`{self.key}` takes a whole number, not {text!r}")
            value: Any = int(raw)
        elif self.kind is float:
            try:
                value = float(raw)
            except ValueError:
                raise BadSetting(f"`{self.key}` takes a number, not {text!r}") from None
            if not math.isfinite(value):
                raise BadSetting(f"`{self.key}` takes a finite number, not {text!r}")
        else:
            if raw not in self.choices:
                raise BadSetting(
                    f"`{self.key}` must be one of {', '.join(self.choices)}, not {text!r}"
                )
            return raw
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise BadSetting(
                f"`{self.key}` must be between {self.lo:g} and {self.hi:g} (the limits the "
                f"pipeline accepts), not {value:g}"
            )
        return value

    def show(self, value: Any) -> str:
        if self.kind is bool:
            return "on" if value else "off"
        if self.kind is float:
            return f"{value:g}"
        return str(value)


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _area(text: str) -> int:
    width, height = (int(part) for part in text.split("x"))
    return width * height


# Numeric options with default/min/max, as config.toml has them: (section, name, type).
BOUNDED_OPTIONS: tuple[tuple[str, str, type], ...] = (
    ("imagine", "steps", int),
    ("imagine", "cutn", int),
    ("edit", "steps", int),
    ("edit", "candidates", int),
    ("edit", "blend_start", float),
    ("edit", "guidance", float),
)


def build_specs(config: Config) -> dict[str, SettingSpec]:
    """Every setting /settings knows, keyed by name, in display order."""
    imagine_limits, edit_limits = pipeline_hard_limits()
    limits = {"imagine": imagine_limits, "edit": edit_limits}
    specs: list[SettingSpec] = []
    for section, name, kind in BOUNDED_OPTIONS:
        lo, hi = limits[section][name]
        for part in ("default", "min", "max"):
            specs.append(
                SettingSpec(
                    f"{section}.{name}.{part}",
                    kind,
                    f"/{section} {name}: {part}",
                    lambda c, s=section, n=name, p=part: getattr(getattr(getattr(c, s), n), p),
                    lo,
                    hi,
                )
            )
    sizes = tuple(size_text(s) for s in config.imagine.sizes)
    largest = max(sizes, key=_area)
    specs += [
        SettingSpec(
            "imagine.candidates",
            int,
            "/imagine: images made and ranked (the most a user may prefer)",
            lambda c: c.imagine.candidates,
            *imagine_limits["candidates"],
        ),
        SettingSpec(
            "imagine.default_size",
            str,
            "/imagine: size when none is picked",
            lambda c: size_text(c.imagine.default_size),
            choices=sizes,
        ),
        SettingSpec(
            "imagine.max_size",
            str,
            "/imagine: the largest size allowed (by pixels)",
            lambda c, largest=largest: largest,
            choices=sizes,
        ),
        SettingSpec(
            "edit.background",
            str,
            "/edit: background handling when none is picked",
            lambda c: c.edit.default_background,
            choices=config.edit.backgrounds,
        ),
        SettingSpec(
            "edit.shrink",
            bool,
            "/edit: progressive mask shrinking by default",
            lambda c: c.edit.shrink,
        ),
    ]
    for command in JOB_COMMANDS:
        specs.append(
            SettingSpec(
                f"enabled.{command}",
                bool,
                f"whether /{command} takes jobs",
                lambda c, command=command: command not in c.moderation.disabled_commands,
            )
        )
    specs += [
        SettingSpec(
            "cooldown_seconds",
            float,
            "seconds a user waits between two submissions",
            lambda c: c.discord.submit_cooldown_seconds,
            0,
            3600,
        ),
        SettingSpec(
            "daily_job_quota",
            int,
            "jobs a user may submit per 24 h (0: no limit; admins are not limited)",
            lambda c: c.moderation.daily_job_quota,
            0,
            100_000,
        ),
    ]
    return {spec.key: spec for spec in specs}


@dataclass(frozen=True)
class Effective:
    """The settings in force in one channel, and where each came from."""

    values: dict[str, Any]
    sources: dict[str, str]
    imagine: ImagineConfig
    edit: EditConfig
    prompt_filter: PromptFilter
    terms: list[tuple[BlockedTerm, str]]  # each term with where it comes from
    # What was adjusted for the user's preferences: (command, option, text for the user).
    notes: tuple[tuple[str, str, str], ...] = ()

    @property
    def cooldown_seconds(self) -> float:
        return float(self.values["cooldown_seconds"])

    @property
    def daily_job_quota(self) -> int:
        return int(self.values["daily_job_quota"])

    def enabled(self, command: str) -> bool:
        return bool(self.values.get(f"enabled.{command}", True))

    def notes_for(self, command: str, given: set[str]) -> tuple[str, ...]:
        """Notes on preferences adjusted for ``command``, except for options the user gave."""
        return tuple(
            text for cmd, option, text in self.notes if cmd == command and option not in given
        )


@dataclass
class _Cache:
    overrides: dict[tuple[Scope, int], dict[str, Any]] = field(default_factory=dict)
    terms: dict[tuple[Scope, int], list[BlockedTerm]] = field(default_factory=dict)
    blocked_users: set[int] = field(default_factory=set)
    paused: bool = False


PAUSED_KEY = "paused"


class SettingsService:
    """Reads are synchronous (from the cache); writes go to the store first, then the cache."""

    def __init__(self, config: Config, store: OwnerStore | None = None) -> None:
        self.config = config
        self.store = store
        self.specs = build_specs(config)
        self._cache = _Cache()
        # A thread has no settings of its own: it takes its parent channel's. The bot sets
        # ``thread_parent`` to a lookup in discord.py's cache; threads it has not cached (one a
        # user opened before the bot saw it) are remembered from their interactions.
        self.thread_parent: Callable[[int], int | None] = lambda _channel_id: None
        self._parents: dict[int, int] = {}

    def note_thread(self, thread_id: int, parent_id: int | None) -> None:
        if parent_id:
            self._parents[thread_id] = parent_id

    def channel_scope(self, channel_id: int | None) -> int | None:
        """The channel whose settings apply in ``channel_id``: a thread's parent, else itself."""
        if not channel_id:
            return channel_id
        parent = self._parents.get(channel_id) or self.thread_parent(channel_id)
        return parent or channel_id

    async def load(self) -> None:
        """Fill the cache from the store; rows naming settings this version no longer has, or
        values config.toml no longer allows (e.g. a size removed from the list), are skipped."""
        if self.store is None:
            return
        cache = _Cache()
        for scope, scope_id, key, value in await self.store.all_settings():
            if scope is Scope.GLOBAL:
                if key == PAUSED_KEY:
                    cache.paused = bool(value)
                continue
            spec = self.specs.get(key)
            try:
                if spec is None:
                    raise BadSetting("unknown")
                spec.parse(spec.show(value))
            except BadSetting:
                log.warning(
                    "ignoring stored setting %s=%r for %s %d: no longer valid",
                    key,
                    value,
                    scope.value,
                    scope_id,
                )
                continue
            cache.overrides.setdefault((scope, scope_id), {})[key] = value
        for scope, scope_id, term in await self.store.all_terms():
            try:
                compile_term(term)
            except BadTerm:
                log.warning(
                    "ignoring stored block-list term for %s %d: no longer valid",
                    scope.value,
                    scope_id,
                )
                continue
            cache.terms.setdefault((scope, scope_id), []).append(term)
        cache.blocked_users = set(await self.store.blocked_users())
        self._cache = cache

    # -- reading -----------------------------------------------------------------------------

    def _layers(self, guild_id: int | None, channel_id: int | None) -> list[tuple[str, Scope, int]]:
        """Scopes from the most specific to the least."""
        layers: list[tuple[str, Scope, int]] = []
        channel = self.channel_scope(channel_id)
        if channel:
            layers.append(("channel", Scope.CHANNEL, channel))
        if guild_id:
            layers.append(("server", Scope.GUILD, guild_id))
        return layers

    def _raw(
        self, guild_id: int | None, channel_id: int | None, extra: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        layers = self._layers(guild_id, channel_id)
        for key, spec in self.specs.items():
            if extra is not None and key in extra:
                values[key], sources[key] = extra[key], "(this change)"
                continue
            for name, scope, scope_id in layers:
                override = self._cache.overrides.get((scope, scope_id), {})
                if key in override:
                    values[key], sources[key] = override[key], name
                    break
            else:
                values[key], sources[key] = spec.from_config(self.config), CONFIG_SOURCE
        return values, sources

    def effective(
        self, guild_id: int | None, channel_id: int | None, prefs: dict[str, Any] | None = None
    ) -> Effective:
        values, sources = self._raw(guild_id, channel_id)
        notes: list[tuple[str, str, str]] = []
        imagine, edit = self._configs(values)
        if prefs:
            imagine, edit, notes = apply_prefs(imagine, edit, prefs)
        terms = self.terms(guild_id, channel_id)
        return Effective(
            values=values,
            sources=sources,
            imagine=imagine,
            edit=edit,
            prompt_filter=PromptFilter(term for term, _ in terms),
            terms=terms,
            notes=tuple(notes),
        )

    async def for_user(
        self, guild_id: int | None, channel_id: int | None, user_id: int
    ) -> Effective:
        """:meth:`effective` with the user's preferred defaults applied within the bounds."""
        if self.store is None:
            return self.effective(guild_id, channel_id)
        prefs = await self.store.store.user_prefs(user_id)
        return self.effective(guild_id, channel_id, prefs.option_prefs())

    def terms(self, guild_id: int | None, channel_id: int | None) -> list[tuple[BlockedTerm, str]]:
        """Every blocked term that applies in the channel: config.toml's, the server's and the
        channel's together (a block list only ever grows toward the channel)."""
        moderation = self.config.moderation
        out = [(BlockedTerm(TermKind.WORD, w), CONFIG_SOURCE) for w in moderation.blocked_words]
        out += [
            (BlockedTerm(TermKind.PATTERN, p), CONFIG_SOURCE) for p in moderation.blocked_patterns
        ]
        for name, scope, scope_id in reversed(self._layers(guild_id, channel_id)):
            out += [(term, name) for term in self._cache.terms.get((scope, scope_id), [])]
        return out

    def _configs(self, values: dict[str, Any]) -> tuple[ImagineConfig, EditConfig]:
        def option(section: str, name: str, kind: type) -> IntOption | FloatOption:
            lo, hi, default = (values[f"{section}.{name}.{p}"] for p in ("min", "max", "default"))
            # Layers set separately (the server's max, a channel's min) can cross; the narrower
            # end wins and the default is kept inside, so a command never sees min > max.
            hi = max(hi, lo)
            default = min(max(default, lo), hi)
            return (IntOption if kind is int else FloatOption)(default, lo, hi)

        max_area = _area(values["imagine.max_size"])
        sizes = tuple(s for s in self.config.imagine.sizes if s[0] * s[1] <= max_area)
        default_size = tuple(int(p) for p in values["imagine.default_size"].split("x"))
        if default_size not in sizes:
            default_size = max(sizes, key=lambda s: s[0] * s[1])
        imagine = replace(
            self.config.imagine,
            steps=option("imagine", "steps", int),
            cutn=option("imagine", "cutn", int),
            candidates=values["imagine.candidates"],
            sizes=sizes,
            default_size=default_size,
        )
        edit = replace(
            self.config.edit,
            steps=option("edit", "steps", int),
            candidates=option("edit", "candidates", int),
            blend_start=option("edit", "blend_start", float),
            guidance=option("edit", "guidance", float),
            default_background=values["edit.background"],
            shrink=values["edit.shrink"],
        )
        return imagine, edit

    @property
    def paused(self) -> bool:
        return self._cache.paused

    def is_blocked(self, user_id: int) -> bool:
        return user_id in self._cache.blocked_users

    # -- writing -----------------------------------------------------------------------------

    def _require_store(self) -> OwnerStore:
        if self.store is None:
            raise RuntimeError("settings cannot be changed without a store")
        return self.store

    async def set(
        self,
        scope: Scope,
        key: str,
        text: str,
        by: int,
        *,
        guild_id: int | None,
        channel_id: int | None,
    ) -> tuple[SettingSpec, Any]:
        """Parse, check and store one override at the channel's or its server's scope.

        :class:`BadSetting` when the value has the wrong type, lies outside the pipeline's hard
        limits, or would leave a default outside its own bounds where it applies.
        """
        spec = self.specs.get(key)
        if spec is None:
            raise BadSetting(f"there is no setting `{key}`; `/settings show` lists them all")
        scope_id = self.channel_scope(channel_id) if scope is Scope.CHANNEL else guild_id
        if not scope_id:
            raise BadSetting(f"there is no {scope.value} here to change settings for")
        value = spec.parse(text)
        # Checked as the channel sees it; a server-wide change is checked as the server sees it.
        self._check_consistent(key, value, guild_id, channel_id if scope is Scope.CHANNEL else None)
        await self._require_store().set_setting(scope, scope_id, key, value, by)
        self._cache.overrides.setdefault((scope, scope_id), {})[key] = value
        return spec, value

    def _check_consistent(
        self, key: str, value: Any, guild_id: int | None, channel_id: int | None
    ) -> None:
        values, _ = self._raw(guild_id, channel_id, extra={key: value})
        for section, name, _kind in BOUNDED_OPTIONS:
            prefix = f"{section}.{name}."
            if not key.startswith(prefix):
                continue
            lo, hi, default = (values[prefix + p] for p in ("min", "max", "default"))
            if lo > hi:
                raise BadSetting(
                    f"`{prefix}min` ({lo:g}) would exceed `{prefix}max` ({hi:g}) "
                    "here; change the other bound first"
                )
            if not lo <= default <= hi:
                raise BadSetting(
                    f"`{prefix}default` ({default:g}) would fall outside "
                    f"{lo:g}..{hi:g} here; change the default first"
                )
        if key in ("imagine.default_size", "imagine.max_size") and _area(
            values["imagine.default_size"]
        ) > _area(values["imagine.max_size"]):
            raise BadSetting(
                f"the default size {values['imagine.default_size']} would be larger "
                f"than the largest allowed, {values['imagine.max_size']}"
            )

    async def reset(self, scope: Scope, scope_id: int, key: str) -> bool:
        """Drop one override (``key`` "all": every one at that scope). True if any was there."""
        if key != "all" and key not in self.specs:
            raise BadSetting(f"there is no setting `{key}`; `/settings show` lists them all")
        removed = await self._require_store().delete_settings(
            scope, scope_id, None if key == "all" else key
        )
        layer = self._cache.overrides.get((scope, scope_id), {})
        if key == "all":
            layer.clear()
        else:
            layer.pop(key, None)
        return removed > 0

    async def add_term(self, scope: Scope, scope_id: int, term: BlockedTerm, by: int) -> None:
        """Compile first: a term that does not compile is refused and never stored or matched."""
        compile_term(term)
        await self._require_store().add_term(scope, scope_id, term, by)
        layer = self._cache.terms.setdefault((scope, scope_id), [])
        if term not in layer:
            layer.append(term)

    async def remove_term(self, scope: Scope, scope_id: int, text: str) -> bool:
        removed = await self._require_store().remove_term(scope, scope_id, text)
        layer = self._cache.terms.get((scope, scope_id), [])
        layer[:] = [term for term in layer if term.text != text]
        return removed > 0

    async def set_paused(self, paused: bool, by: int) -> None:
        await self._require_store().set_setting(Scope.GLOBAL, 0, PAUSED_KEY, paused, by)
        self._cache.paused = paused

    async def block_user(self, user_id: int, by: int) -> None:
        await self._require_store().block_user(user_id, by)
        self._cache.blocked_users.add(user_id)

    async def unblock_user(self, user_id: int) -> bool:
        removed = await self._require_store().unblock_user(user_id)
        self._cache.blocked_users.discard(user_id)
        return removed


# -- user preferences ------------------------------------------------------------------------


def apply_prefs(
    imagine: ImagineConfig, edit: EditConfig, prefs: dict[str, Any]
) -> tuple[ImagineConfig, EditConfig, list[tuple[str, str, str]]]:
    """A user's preferred defaults, within the channel's bounds: a preference beats the channel's
    default; one outside the bounds is brought inside and the user told (``notes``)."""
    notes: list[tuple[str, str, str]] = []

    def within(label: str, wanted: int, lo: int, hi: int) -> int:
        command, option = label.lstrip("/").split()
        if wanted > hi:
            notes.append(
                (
                    command,
                    option,
                    f"Your preferred {label} ({wanted}) is above this "
                    f"channel's limit, so {hi} is used.",
                )
            )
            return hi
        if wanted < lo:
            notes.append(
                (
                    command,
                    option,
                    f"Your preferred {label} ({wanted}) is below this "
                    f"channel's minimum, so {lo} is used.",
                )
            )
            return lo
        return wanted

    if "imagine.steps" in prefs:
        o = imagine.steps
        imagine = replace(
            imagine,
            steps=IntOption(
                within("/imagine steps", int(prefs["imagine.steps"]), o.min, o.max), o.min, o.max
            ),
        )
    if "imagine.candidates" in prefs:
        imagine = replace(
            imagine,
            candidates=within(
                "/imagine candidates", int(prefs["imagine.candidates"]), 1, imagine.candidates
            ),
        )
    if "imagine.size" in prefs:
        wanted = tuple(int(p) for p in str(prefs["imagine.size"]).split("x"))
        if wanted in imagine.sizes:
            imagine = replace(imagine, default_size=wanted)
        else:
            fitting = [s for s in imagine.sizes if s[0] * s[1] <= wanted[0] * wanted[1]]
            chosen = max(fitting or imagine.sizes, key=lambda s: s[0] * s[1])
            notes.append(
                (
                    "imagine",
                    "size",
                    f"Your preferred size ({prefs['imagine.size']}) is "
                    f"not allowed in this channel, so {size_text(chosen)} is used.",
                )
            )
            imagine = replace(imagine, default_size=chosen)
    if "edit.steps" in prefs:
        o = edit.steps
        edit = replace(
            edit,
            steps=IntOption(
                within("/edit steps", int(prefs["edit.steps"]), o.min, o.max), o.min, o.max
            ),
        )
    if "edit.candidates" in prefs:
        o = edit.candidates
        edit = replace(
            edit,
            candidates=IntOption(
                within("/edit candidates", int(prefs["edit.candidates"]), o.min, o.max),
                o.min,
                o.max,
            ),
        )
    return imagine, edit, notes
