"""The bot's configuration: config.toml read with tomllib and validated into frozen dataclasses.

Every problem in the file is collected, not just the first, and each becomes one line naming the
key, the value found and what is allowed; :class:`ConfigError` carries them all so the entry point
can print them and exit 2. The Discord token is never read from the file: only from the
``DISCORD_TOKEN`` environment variable (:func:`discord_token`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bot.blocklist import BadTerm, BlockedTerm, TermKind, compile_term
from pipelines.augmentation_sets import AUGMENTATION_SETS, DEFAULT_AUGMENTATIONS
from pipelines.settings import SOURCE_LIST_KEYS, ModelSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

TOKEN_ENV = "DISCORD_TOKEN"
DEFAULT_CONFIG_PATH = Path("config.toml")

# Discord ids are 64-bit snowflakes.
_MAX_SNOWFLAKE = 2**64 - 1
# The largest seed both pipelines accept (torch generators take 64-bit seeds; we keep to 32 bits so
# seeds stay short in messages and portable across numpy/torch).
MAX_SEED = 2**32 - 1


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class IntOption:
    """A slash-command number option: what it is when not given, and the bounds users may pick."""

    default: int
    min: int
    max: int


@dataclass(frozen=True)
class FloatOption:
    default: float
    min: float
    max: float


@dataclass(frozen=True)
class DiscordConfig:
    guild_ids: tuple[int, ...] = ()
    allowed_channel_ids: tuple[int, ...] = ()
    admin_role_ids: tuple[int, ...] = ()
    owner_ids: tuple[int, ...] = ()
    # Empty means Discord's own; tests point these at a local stand-in.
    api_base_url: str = ""
    gateway_url: str = ""
    cdn_hosts: tuple[str, ...] = ("cdn.discordapp.com", "media.discordapp.net")
    max_attachment_bytes: int = 8 * 1024 * 1024
    download_timeout_seconds: float = 20.0
    continue_by: str = "anyone"
    submit_cooldown_seconds: float = 10.0
    # Seconds a user must wait between two images the buttons post in public (U n, 🎞).
    post_cooldown_seconds: float = 10.0
    thread_per_job: bool = False


@dataclass(frozen=True)
class ImagineConfig:
    steps: IntOption = IntOption(200, 1, 1000)
    cutn: IntOption = IntOption(32, 1, 128)
    sizes: tuple[tuple[int, int], ...] = ((256, 256), (384, 256), (256, 384), (384, 384))
    default_size: tuple[int, int] = (256, 256)
    preview_every: int = 10
    max_prompt_chars: int = 500
    # Images made per /imagine, ranked by CLIP; each gets a number reaction to continue from.
    candidates: int = 4
    # The cutouts' augmentation strengths, a name in pipelines.cutouts.AUGMENTATION_SETS.
    augmentations: str = DEFAULT_AUGMENTATIONS
    # The weight of an attached image_prompt, as a text prompt's ":weight" (negative = away).
    image_prompt_weight: FloatOption = FloatOption(1.0, -2.0, 2.0)


@dataclass(frozen=True)
class EditConfig:
    steps: IntOption = IntOption(50, 10, 150)
    candidates: IntOption = IntOption(4, 1, 8)
    blend_start: FloatOption = FloatOption(0.25, 0.0, 0.9)
    guidance: FloatOption = FloatOption(7.5, 1.0, 20.0)
    backgrounds: tuple[str, ...] = ("none", "paste", "finetune")
    default_background: str = "none"
    shrink: bool = True
    # What the masked region starts from when the user picks nothing (pipelines.blended).
    start: str = "noised-source"
    max_side: int = 512
    preview_every: int = 5
    max_prompt_chars: int = 500


@dataclass(frozen=True)
class UpscaleConfig:
    """The upscaler behind "Upscale ×4" (the model itself is [models] upscaler_model)."""

    # Input pixels per tile core, and of context around each core (0: no tiling).
    tile_size: int = 256
    tile_overlap: int = 16
    # Images with a longer side are refused before they are queued.
    max_input_side: int = 1024
    # An upscaled PNG over the channel's upload limit goes out as a JPEG, its quality stepped
    # down from the first to the last in steps of the third until it fits.
    jpeg_max_quality: int = 95
    jpeg_min_quality: int = 50
    jpeg_quality_step: int = 5


@dataclass(frozen=True)
class TimelapseConfig:
    """The 🎞 timelapse of every /imagine: its preview frames, kept and turned into a video."""

    # Keep the job's preview frames (one per [imagine] preview_every steps) for a timelapse.
    keep_frames: bool = True
    # At most this many frames per job; past it every other frame is dropped (so the whole run
    # stays covered at half the frame rate). The issue caps it at 400.
    max_frames: int = 400
    # Frames per second of the video.
    fps: int = 10


@dataclass(frozen=True)
class RetryConfig:
    """How Discord sends that fail with 5xx or a network error are retried."""

    max_attempts: int = 5
    base_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0


@dataclass(frozen=True)
class StandInConfig:
    """The deterministic CPU stand-in pipeline (testing only)."""

    step_seconds: float = 0.05
    image_size: int = 64
    work: str = "cpu"  # "cpu": burn CPU in torch ops like a real pipeline; "sleep": just wait


@dataclass(frozen=True)
class SchedulerConfig:
    max_queued_per_user: int = 3
    max_queued_total: int = 50
    progress_interval_seconds: float = 4.0
    shutdown_grace_seconds: float = 30.0
    eta_window: int = 20
    worker_niceness: int = 10
    pipeline: str = "real"
    retry: RetryConfig = RetryConfig()
    stand_in: StandInConfig = StandInConfig()


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("data")
    database: str = "faraday.sqlite3"
    result_retention_days: int = 30
    sync_commits: bool = False

    @property
    def database_path(self) -> Path:
        return self.data_dir / self.database


SAFETY_ACTIONS = ("blur", "withhold")


@dataclass(frozen=True)
class SafetyConfig:
    image_check: bool = True
    action: str = "blur"  # "blur" | "withhold"
    check_age_restricted: bool = False


@dataclass(frozen=True)
class ModerationConfig:
    """What admins may later override per server or channel with /settings (the defaults here)."""

    # Whole words (case-insensitive) and regular expressions refused in every prompt.
    blocked_words: tuple[str, ...] = ()
    blocked_patterns: tuple[str, ...] = ()
    # Jobs one user may submit per rolling 24 hours; 0 means no limit.
    daily_job_quota: int = 0
    # Job commands switched off everywhere unless a server or channel turns them back on.
    disabled_commands: tuple[str, ...] = ()


# The commands /settings can switch on and off (the ones that queue work).
JOB_COMMANDS: tuple[str, ...] = ("imagine", "edit")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class ClusterConfig:
    """GPU workers through PostgreSQL and procrastinate; empty ``database_url`` = local only."""

    database_url: str = ""
    queue: str = "faraday"
    stall_timeout_seconds: float = 30.0
    progress_interval_seconds: float = 1.0
    poll_interval_seconds: float = 1.0
    reconnect_max_seconds: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.database_url)

    @property
    def heartbeat_seconds(self) -> float:
        # Several heartbeats fit in the stall timeout, so one late beat is not a death.
        return self.stall_timeout_seconds / 4


@dataclass(frozen=True)
class Config:
    discord: DiscordConfig = DiscordConfig()
    models: ModelSettings = field(default_factory=ModelSettings)
    imagine: ImagineConfig = ImagineConfig()
    edit: EditConfig = EditConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    storage: StorageConfig = StorageConfig()
    moderation: ModerationConfig = ModerationConfig()
    logging: LoggingConfig = LoggingConfig()
    upscale: UpscaleConfig = UpscaleConfig()
    timelapse: TimelapseConfig = TimelapseConfig()
    safety: SafetyConfig = SafetyConfig()
    cluster: ClusterConfig = ClusterConfig()


def discord_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The bot token from the environment, or ``None`` when it is missing or blank."""
    value = (environ if environ is not None else os.environ).get(TOKEN_ENV, "").strip()
    return value or None


MISSING_TOKEN_MESSAGE = (
    f"error: no Discord token: set the {TOKEN_ENV} environment variable to your bot's token "
    f"(e.g. `{TOKEN_ENV}=... python -m bot`); it is never read from config.toml"
)


def load_config(path: str | Path = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate ``path``. Raises :class:`ConfigError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file {str(path)!r} does not exist"]) from None
    except OSError as exc:
        raise ConfigError([f"config file {str(path)!r} cannot be read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config file {str(path)!r} is not UTF-8 text"]) from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "config.toml") -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source} is not valid TOML: {exc}"]) from None
    return config_from_mapping(document)


def config_from_mapping(document: Mapping[str, Any]) -> Config:
    problems: list[str] = []
    known_sections = ("discord", "models", "imagine", "edit", "scheduler", "storage", "logging",
                      "upscale", "timelapse", "moderation", "safety", "cluster")
    for name in sorted(set(document) - set(known_sections)):
        problems.append(
            f"[{name}]: unknown section (allowed: {', '.join(f'[{s}]' for s in known_sections)})"
        )

    def section(name: str) -> _Table:
        return _Table(name, document.get(name, {}), problems)

    imagine_limits, edit_limits = pipeline_hard_limits()
    config = Config(
        discord=_discord(section("discord")),
        models=_models(document.get("models", {}), problems),
        imagine=_imagine(section("imagine"), imagine_limits),
        edit=_edit(section("edit"), edit_limits),
        scheduler=_scheduler(section("scheduler")),
        storage=_storage(section("storage")),
        moderation=_moderation(section("moderation")),
        logging=_logging(section("logging")),
        upscale=_upscale(section("upscale")),
        timelapse=_timelapse(section("timelapse")),
        safety=_safety(section("safety")),
        cluster=_cluster(section("cluster")),
    )
    if problems:
        raise ConfigError(problems)
    return config


class _Table:
    """Typed reads from one TOML table; every bad value is recorded and the default returned."""

    def __init__(self, path: str, raw: Any, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()
        if not isinstance(raw, dict):
            problems.append(f"{path} = {_show(raw)}: must be a table ([{path}])")
            raw = {}
        self.raw: dict[str, Any] = raw

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def problem(self, name: str, value: Any, allowed: str) -> None:
        self.problems.append(f"{self.key(name)} = {_show(value)}: {allowed}")

    def _get(self, name: str) -> tuple[bool, Any]:
        self.seen.add(name)
        if name in self.raw:
            return True, self.raw[name]
        return False, None

    def integer(self, name: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        present, value = self._get(name)
        if not present:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(name, value, f"must be a whole number{_range_text(lo, hi)}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.problem(name, value, f"must be a whole number{_range_text(lo, hi)}")
            return default
        return value

    def number(
        self, name: str, default: float, lo: float | None = None, hi: float | None = None
    ) -> float:
        present, value = self._get(name)
        if not present:
            return default
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and (not math.isfinite(value) or (lo is not None and value < lo)):
            ok = False
        if ok and hi is not None and value > hi:
            ok = False
        if not ok:
            self.problem(name, value, f"must be a number{_range_text(lo, hi)}")
            return default
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        present, value = self._get(name)
        if not present:
            return default
        if not isinstance(value, bool):
            self.problem(name, value, "must be true or false")
            return default
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        present, value = self._get(name)
        if not present:
            return default
        if value not in allowed:
            self.problem(name, value, f"must be one of {', '.join(repr(a) for a in allowed)}")
            return default
        return value

    def string(
        self,
        name: str,
        default: str,
        check: Callable[[str], str | None] | None = None,
    ) -> str:
        present, value = self._get(name)
        if not present:
            return default
        if not isinstance(value, str):
            self.problem(name, value, "must be a string")
            return default
        reason = check(value) if check else None
        if reason:
            self.problem(name, value, reason)
            return default
        return value

    def id_list(self, name: str) -> tuple[int, ...]:
        present, value = self._get(name)
        if not present:
            return ()
        allowed = "must be a list of Discord ids (whole numbers), e.g. [123456789012345678]"
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _MAX_SNOWFLAKE
            for v in value
        ):
            self.problem(name, value, allowed)
            return ()
        return tuple(value)

    def string_list(
        self, name: str, default: tuple[str, ...], allowed: tuple[str, ...] | None = None
    ) -> tuple[str, ...]:
        present, value = self._get(name)
        if not present:
            return default
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            self.problem(name, value, "must be a non-empty list of strings")
            return default
        if allowed is not None:
            bad = [v for v in value if v not in allowed]
            if bad:
                self.problem(
                    name, value, f"every entry must be one of {', '.join(repr(a) for a in allowed)}"
                )
                return default
        return tuple(value)

    def sub(self, name: str) -> _Table:
        present, value = self._get(name)
        return _Table(self.key(name), value if present else {}, self.problems)

    def finish(self) -> None:
        for name in sorted(set(self.raw) - self.seen):
            allowed = ", ".join(sorted(self.seen))
            self.problems.append(
                f"{self.key(name)} = {_show(self.raw[name])}: unknown key (allowed in "
                f"[{self.path}]: {allowed})"
            )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" ≥ {lo}"
    if hi is not None:
        return f" ≤ {hi}"
    return ""


def _url_check(schemes: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value == "":
            return None
        parsed = urlparse(value)
        if parsed.scheme not in schemes or not parsed.netloc:
            return f"must be empty (Discord's own) or a {' or '.join(schemes)} URL"
        return None

    return check


def _int_option(table: _Table, name: str, default: IntOption, lo: int, hi: int) -> IntOption:
    """``[section.name]`` with default/min/max, each within the pipeline's hard limits lo..hi."""
    sub = table.sub(name)
    return IntOption(*_checked_bounds(table, sub, sub.integer, default, lo, hi))


def _float_option(
    table: _Table, name: str, default: FloatOption, lo: float, hi: float
) -> FloatOption:
    sub = table.sub(name)
    return FloatOption(*_checked_bounds(table, sub, sub.number, default, lo, hi))


def _checked_bounds(
    table: _Table,
    sub: _Table,
    read: Callable[[str, Any, Any, Any], Any],
    default: IntOption | FloatOption,
    lo: float,
    hi: float,
) -> tuple[Any, Any, Any]:
    """(default, min, max) read with ``read``; min <= default <= max, or a problem is noted."""
    minimum = read("min", default.min, lo, hi)
    maximum = read("max", default.max, lo, hi)
    value = read("default", default.default, lo, hi)
    sub.finish()
    if minimum > maximum:
        table.problems.append(
            f"{sub.path}.min = {minimum}: must not exceed {sub.path}.max = {maximum}"
        )
    elif not minimum <= value <= maximum:
        table.problems.append(
            f"{sub.path}.default = {value}: must lie between min {minimum} and max {maximum}"
        )
    return value, minimum, maximum


def pipeline_hard_limits() -> tuple[dict[str, Any], dict[str, Any]]:
    """The outermost bounds each pipeline accepts, read from the pipeline modules themselves.

    Config may narrow them, never widen them. Imported here, lazily, because the pipeline
    modules pull in torch and diffusers.
    """
    from pipelines import blended, prompts, vqgan_clip

    imagine = {
        "steps": (vqgan_clip.MIN_STEPS, vqgan_clip.MAX_STEPS),
        "cutn": (vqgan_clip.MIN_CUTN, vqgan_clip.MAX_CUTN),
        "candidates": (vqgan_clip.MIN_CANDIDATES, vqgan_clip.MAX_CANDIDATES),
        "side": (vqgan_clip.MIN_SIDE, vqgan_clip.MAX_SIDE),
        "size_multiple": vqgan_clip.SIZE_MULTIPLE,
        "max_pixels": vqgan_clip.MAX_PIXELS,
        "image_prompt_weight": (-prompts.MAX_ABS_WEIGHT, prompts.MAX_ABS_WEIGHT),
        "min_abs_weight": prompts.MIN_ABS_WEIGHT,
    }
    edit = {
        "steps": (2, blended.MAX_STEPS),
        "candidates": (1, blended.MAX_CANDIDATES),
        # blend_start is the fraction of steps skipped; 1 would skip them all.
        "blend_start": (0.0, 0.99),
        "guidance": (1.0, blended.MAX_GUIDANCE),
        "side": (blended.MIN_SIDE, blended.MAX_SIDE),
        "prompt_chars": blended.MAX_PROMPT_CHARS,
        "starts": blended.START_MODES,
    }
    return imagine, edit


def _parse_size(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str):
        return None
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _sizes(
    table: _Table, default: ImagineConfig, limits: dict[str, Any]
) -> tuple[tuple[tuple[int, int], ...], tuple[int, int]]:
    lo, hi = limits["side"]
    multiple, max_pixels = limits["size_multiple"], limits["max_pixels"]
    rule = (
        f"\"WIDTHxHEIGHT\" with each side a multiple of {multiple} from {lo} to {hi} "
        f"and at most {max_pixels:,} pixels"
    )

    def valid(size: tuple[int, int] | None) -> bool:
        return (
            size is not None
            and all(lo <= s <= hi and s % multiple == 0 for s in size)
            and size[0] * size[1] <= max_pixels
        )

    present, raw = table._get("sizes")
    sizes = default.sizes
    if present:
        parsed = [_parse_size(v) for v in raw] if isinstance(raw, list) else []
        if not parsed or not all(valid(p) for p in parsed):
            table.problem("sizes", raw, f"must be a non-empty list; each entry {rule}")
        else:
            sizes = tuple(p for p in parsed if p is not None)
    present, raw = table._get("default_size")
    default_size = default.default_size
    if present:
        parsed_one = _parse_size(raw)
        if parsed_one is None or not valid(parsed_one):
            table.problem("default_size", raw, f"must be {rule}")
        elif parsed_one not in sizes:
            table.problem(
                "default_size",
                raw,
                "must be one of imagine.sizes: " + ", ".join(f"{w}x{h}" for w, h in sizes),
            )
        else:
            default_size = parsed_one
    return sizes, default_size


def _discord(t: _Table) -> DiscordConfig:
    d = DiscordConfig()
    out = DiscordConfig(
        guild_ids=t.id_list("guild_ids"),
        allowed_channel_ids=t.id_list("allowed_channel_ids"),
        admin_role_ids=t.id_list("admin_role_ids"),
        owner_ids=t.id_list("owner_ids"),
        api_base_url=t.string("api_base_url", d.api_base_url, _url_check(("http", "https"))),
        gateway_url=t.string("gateway_url", d.gateway_url, _url_check(("ws", "wss"))),
        cdn_hosts=t.string_list("cdn_hosts", d.cdn_hosts),
        max_attachment_bytes=t.integer("max_attachment_bytes", d.max_attachment_bytes, 1024,
                                       500 * 1024 * 1024),
        download_timeout_seconds=t.number("download_timeout_seconds", d.download_timeout_seconds,
                                          0.1, 600),
        continue_by=t.choice("continue_by", d.continue_by, ("anyone", "requester")),
        submit_cooldown_seconds=t.number("submit_cooldown_seconds", d.submit_cooldown_seconds,
                                         0, 3600),
        post_cooldown_seconds=t.number("post_cooldown_seconds", d.post_cooldown_seconds, 0, 3600),
        thread_per_job=t.boolean("thread_per_job", d.thread_per_job),
    )
    t.finish()
    return out


_MIXED_MODEL_KEYS = ("candidate_batch", "channels_last")


def _models(raw: Any, problems: list[str]) -> ModelSettings:
    if not isinstance(raw, dict):
        problems.append(f"models = {_show(raw)}: must be a table ([models])")
        return Config().models
    defaults = ModelSettings()
    known = {f.name: getattr(defaults, f.name) for f in fields(ModelSettings)}
    table: dict[str, Any] = {}
    before = len(problems)
    for key, value in raw.items():
        if key not in known:
            problems.append(
                f"models.{key} = {_show(value)}: unknown key (allowed in [models]: "
                f"{', '.join(sorted(known))})"
            )
        elif key in _MIXED_MODEL_KEYS:
            # "auto" or a number/boolean: ModelSettings.problems() checks the value itself.
            table[key] = value
        elif isinstance(known[key], bool):
            if not isinstance(value, bool):
                problems.append(f"models.{key} = {_show(value)}: must be true or false")
            else:
                table[key] = value
        elif key == "devices":
            if (not isinstance(value, list) or not value
                    or not all(isinstance(v, str) and v.strip() for v in value)):
                problems.append(f"models.devices = {_show(value)}: must be a non-empty list of "
                                'devices, e.g. ["cuda:0", "cuda:1"]')
            else:
                table[key] = value
        elif key in SOURCE_LIST_KEYS and isinstance(value, list):
            if value and all(isinstance(v, str) and v for v in value):
                table[key] = value
            else:
                problems.append(f"models.{key} = {_show(value)}: must be a path or URL, or a "
                                "non-empty list of them (tried in order)")
        elif not isinstance(value, str):
            what = "a folder path" if key == "cache_dir" else "a string"
            problems.append(f"models.{key} = {_show(value)}: must be {what}")
        else:
            table[key] = value
    try:
        settings = ModelSettings.from_mapping(table)
    except ValueError as exc:
        # ModelSettings joins its problems with "; "; keep them one per line.
        problems.extend(str(exc).split("; "))
        return defaults
    return settings if len(problems) == before else defaults


def _imagine(t: _Table, limits: dict[str, Any]) -> ImagineConfig:
    d = ImagineConfig()
    sizes, default_size = _sizes(t, d, limits)
    out = ImagineConfig(
        steps=_int_option(t, "steps", d.steps, *limits["steps"]),
        cutn=_int_option(t, "cutn", d.cutn, *limits["cutn"]),
        sizes=sizes,
        default_size=default_size,
        preview_every=t.integer("preview_every", d.preview_every, 1, 1000),
        max_prompt_chars=t.integer("max_prompt_chars", d.max_prompt_chars, 1, 4000),
        candidates=t.integer("candidates", d.candidates, *limits["candidates"]),
        augmentations=t.choice("augmentations", d.augmentations, tuple(AUGMENTATION_SETS)),
        image_prompt_weight=_float_option(
            t, "image_prompt_weight", d.image_prompt_weight, *limits["image_prompt_weight"]
        ),
    )
    if abs(out.image_prompt_weight.default) < limits["min_abs_weight"]:
        t.problem(
            "image_prompt_weight.default",
            out.image_prompt_weight.default,
            f"must have a magnitude of at least {limits['min_abs_weight']:g}, or the image "
            "would guide nothing",
        )
    t.finish()
    return out


def _edit(t: _Table, limits: dict[str, Any]) -> EditConfig:
    d = EditConfig()
    backgrounds = t.string_list("backgrounds", d.backgrounds, ("none", "paste", "finetune"))
    out = EditConfig(
        steps=_int_option(t, "steps", d.steps, *limits["steps"]),
        candidates=_int_option(t, "candidates", d.candidates, *limits["candidates"]),
        blend_start=_float_option(t, "blend_start", d.blend_start, *limits["blend_start"]),
        guidance=_float_option(t, "guidance", d.guidance, *limits["guidance"]),
        backgrounds=backgrounds,
        default_background=t.choice("default_background", d.default_background, backgrounds),
        shrink=t.boolean("shrink", d.shrink),
        start=t.choice("start", d.start, limits["starts"]),
        max_side=t.integer("max_side", d.max_side, *limits["side"]),
        preview_every=t.integer("preview_every", d.preview_every, 1, 1000),
        max_prompt_chars=t.integer("max_prompt_chars", d.max_prompt_chars, 1,
                                   limits["prompt_chars"]),
    )
    if out.max_side % 8:
        t.problem("max_side", out.max_side, "must be a multiple of 8")
    t.finish()
    return out


def _scheduler(t: _Table) -> SchedulerConfig:
    d = SchedulerConfig()
    retry_table = t.sub("retry")
    retry = RetryConfig(
        max_attempts=retry_table.integer("max_attempts", d.retry.max_attempts, 1, 100),
        base_delay_seconds=retry_table.number("base_delay_seconds", d.retry.base_delay_seconds,
                                              0, 600),
        max_delay_seconds=retry_table.number("max_delay_seconds", d.retry.max_delay_seconds,
                                             0, 3600),
    )
    retry_table.finish()
    if retry.base_delay_seconds > retry.max_delay_seconds:
        t.problems.append(
            f"scheduler.retry.base_delay_seconds = {retry.base_delay_seconds}: must not exceed "
            f"scheduler.retry.max_delay_seconds = {retry.max_delay_seconds}"
        )
    stand_in_table = t.sub("stand_in")
    stand_in = StandInConfig(
        step_seconds=stand_in_table.number("step_seconds", d.stand_in.step_seconds, 0, 60),
        image_size=stand_in_table.integer("image_size", d.stand_in.image_size, 8, 1024),
        work=stand_in_table.choice("work", d.stand_in.work, ("cpu", "sleep")),
    )
    stand_in_table.finish()
    out = SchedulerConfig(
        max_queued_per_user=t.integer("max_queued_per_user", d.max_queued_per_user, 1, 10_000),
        max_queued_total=t.integer("max_queued_total", d.max_queued_total, 1, 100_000),
        progress_interval_seconds=t.number(
            "progress_interval_seconds", d.progress_interval_seconds, 0.01, 3600
        ),
        shutdown_grace_seconds=t.number("shutdown_grace_seconds", d.shutdown_grace_seconds,
                                        0, 3600),
        eta_window=t.integer("eta_window", d.eta_window, 1, 1000),
        worker_niceness=t.integer("worker_niceness", d.worker_niceness, 0, 19),
        pipeline=t.choice("pipeline", d.pipeline, ("real", "stand-in")),
        retry=retry,
        stand_in=stand_in,
    )
    if out.max_queued_per_user > out.max_queued_total:
        t.problems.append(
            f"scheduler.max_queued_per_user = {out.max_queued_per_user}: must not exceed "
            f"scheduler.max_queued_total = {out.max_queued_total}"
        )
    t.finish()
    return out


def _storage(t: _Table) -> StorageConfig:
    d = StorageConfig()

    def file_name(value: str) -> str | None:
        if not value or "/" in value or "\\" in value or value in (".", ".."):
            return "must be a plain file name inside storage.data_dir"
        return None

    def folder(value: str) -> str | None:
        return "must be a folder path" if not value.strip() else None

    out = StorageConfig(
        data_dir=Path(t.string("data_dir", str(d.data_dir), folder)),
        database=t.string("database", d.database, file_name),
        result_retention_days=t.integer("result_retention_days", d.result_retention_days, 0,
                                        100_000),
        sync_commits=t.boolean("sync_commits", d.sync_commits),
    )
    t.finish()
    return out


def _moderation(t: _Table) -> ModerationConfig:
    d = ModerationConfig()
    terms: dict[str, tuple[str, ...]] = {}
    for name, kind in (("blocked_words", TermKind.WORD), ("blocked_patterns", TermKind.PATTERN)):
        present, value = t._get(name)
        terms[name] = ()
        if not present:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            t.problem(name, value, "must be a list of strings")
            continue
        good = True
        for text in value:
            try:
                compile_term(BlockedTerm(kind, text))
            except BadTerm as exc:
                t.problem(name, text, str(exc))
                good = False
        if good:
            terms[name] = tuple(value)
    present, value = t._get("disabled_commands")
    disabled: tuple[str, ...] = ()
    if present:
        if not isinstance(value, list) or not all(v in JOB_COMMANDS for v in value):
            t.problem("disabled_commands", value,
                      f"must be a list of command names from {', '.join(JOB_COMMANDS)}")
        else:
            disabled = tuple(value)
    out = ModerationConfig(
        blocked_words=terms["blocked_words"],
        blocked_patterns=terms["blocked_patterns"],
        daily_job_quota=t.integer("daily_job_quota", d.daily_job_quota, 0, 100_000),
        disabled_commands=disabled,
    )
    t.finish()
    return out


def _safety(t: _Table) -> SafetyConfig:
    d = SafetyConfig()
    out = SafetyConfig(
        image_check=t.boolean("image_check", d.image_check),
        action=t.choice("action", d.action, SAFETY_ACTIONS),
        check_age_restricted=t.boolean("check_age_restricted", d.check_age_restricted),
    )
    t.finish()
    return out


def _logging(t: _Table) -> LoggingConfig:
    out = LoggingConfig(
        level=t.choice("level", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
    )
    t.finish()
    return out


def _upscale(t: _Table) -> UpscaleConfig:
    d = UpscaleConfig()
    tile_size = t.integer("tile_size", d.tile_size, 0, 4096)
    if 0 < tile_size < 16:
        t.problem("tile_size", tile_size, "must be 0 (no tiling) or from 16 to 4096")
        tile_size = d.tile_size
    out = UpscaleConfig(
        tile_size=tile_size,
        tile_overlap=t.integer("tile_overlap", d.tile_overlap, 0, 256),
        max_input_side=t.integer("max_input_side", d.max_input_side, 16, 8192),
        jpeg_max_quality=t.integer("jpeg_max_quality", d.jpeg_max_quality, 1, 100),
        jpeg_min_quality=t.integer("jpeg_min_quality", d.jpeg_min_quality, 1, 100),
        jpeg_quality_step=t.integer("jpeg_quality_step", d.jpeg_quality_step, 1, 99),
    )
    if out.jpeg_min_quality > out.jpeg_max_quality:
        t.problems.append(
            f"upscale.jpeg_min_quality = {out.jpeg_min_quality}: must not exceed "
            f"upscale.jpeg_max_quality = {out.jpeg_max_quality}"
        )
    t.finish()
    return out


def _timelapse(t: _Table) -> TimelapseConfig:
    d = TimelapseConfig()
    out = TimelapseConfig(
        keep_frames=t.boolean("keep_frames", d.keep_frames),
        max_frames=t.integer("max_frames", d.max_frames, 2, 400),
        fps=t.integer("fps", d.fps, 1, 60),
    )
    t.finish()
    return out


def _cluster(t: _Table) -> ClusterConfig:
    d = ClusterConfig()

    def postgres_url(value: str) -> str | None:
        if value and urlparse(value).scheme not in ("postgresql", "postgres"):
            return "must be empty or a postgresql:// URL, e.g. postgresql://faraday@db-host/faraday"
        return None

    def queue_name(value: str) -> str | None:
        ok = value and len(value) <= 40 and all(c.isalnum() or c in "_-" for c in value)
        return None if ok else "must be 1-40 letters, digits, '_' or '-'"

    out = ClusterConfig(
        database_url=t.string("database_url", d.database_url, postgres_url),
        queue=t.string("queue", d.queue, queue_name),
        stall_timeout_seconds=t.number("stall_timeout_seconds", d.stall_timeout_seconds, 1, 3600),
        progress_interval_seconds=t.number("progress_interval_seconds",
                                           d.progress_interval_seconds, 0.05, 60),
        poll_interval_seconds=t.number("poll_interval_seconds", d.poll_interval_seconds, 0.05,
                                       60),
        reconnect_max_seconds=t.number("reconnect_max_seconds", d.reconnect_max_seconds, 0.1,
                                       600),
    )
    t.finish()
    return out
