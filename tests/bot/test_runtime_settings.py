"""Runtime settings, the block list and the owners' store tables, without Discord.

Precedence (channel > server > config.toml), typed parsing with the pipeline's hard limits named,
bounds that stay consistent, regular expressions refused before they reach the matcher (also at
start-up), preferences capped by the channel, the daily quota, and the settings surviving a
SIGKILL of the process that wrote them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from bot.__main__ import main
from bot.admission import BLOCKED_PROMPT, Gatekeeper
from bot.blocklist import BadTerm, BlockedTerm, PromptFilter, TermKind, compile_term
from bot.config import Config, ConfigError, IntOption, ModerationConfig, parse_config
from bot.jobs import JobKind, JobRequest
from bot.owner_store import OwnerStore
from bot.runtime_settings import BadSetting, Scope, SettingsService, apply_prefs
from bot.store import Store

REPO = Path(__file__).resolve().parents[2]
GUILD, CHANNEL, OTHER_CHANNEL = 10, 20, 21


async def service(store: Store, config: Config | None = None) -> SettingsService:
    settings = SettingsService(config or Config(), OwnerStore(store))
    await settings.load()
    return settings


def test_words_match_whole_words_and_patterns_search_ignoring_case() -> None:
    prompt_filter = PromptFilter(
        [
            BlockedTerm(TermKind.WORD, "ogre"),
            BlockedTerm(TermKind.WORD, "c++"),
            BlockedTerm(TermKind.PATTERN, r"dr[a4]gons?\b"),
        ]
    )
    assert prompt_filter.blocked_term("an OGRE, sleeping") == BlockedTerm(TermKind.WORD, "ogre")
    assert prompt_filter.blocked_term("ogres and ogreish things") is None
    assert prompt_filter.blocked_term("learn C++ today") is not None
    assert prompt_filter.blocked_term(None, "two DR4GONS") is not None
    assert prompt_filter.blocked_term("a dragonfly") is None


@pytest.mark.parametrize(
    "text, why",
    [
        ("([", "does not compile"),
        ("a|", "matches an empty prompt"),
        ("   ", "empty term"),
        ("x" * 201, "at most 200 characters"),
    ],
)
def test_a_term_that_cannot_work_is_refused(text: str, why: str) -> None:
    with pytest.raises(BadTerm, match=why):
        compile_term(BlockedTerm(TermKind.PATTERN, text))


async def test_a_bad_pattern_is_refused_when_added_and_never_reaches_the_matcher(
    store: Store,
) -> None:
    settings = await service(store)
    with pytest.raises(BadTerm, match="does not compile"):
        await settings.add_term(Scope.CHANNEL, CHANNEL, BlockedTerm(TermKind.PATTERN, "(["), 1)
    assert await settings.store.all_terms() == []
    assert len(settings.effective(GUILD, CHANNEL).prompt_filter) == 0
    # Even a row written behind the bot's back is dropped when loading, not matched.
    await settings.store.add_term(Scope.CHANNEL, CHANNEL, BlockedTerm(TermKind.PATTERN, "(["), 1)
    await settings.store.add_term(Scope.CHANNEL, CHANNEL, BlockedTerm(TermKind.WORD, "ogre"), 1)
    reloaded = await service(store)
    assert [t.text for t, _ in reloaded.terms(GUILD, CHANNEL)] == ["ogre"]


def test_a_pattern_that_does_not_compile_in_config_is_one_problem_line() -> None:
    text = '[moderation]\nblocked_words = ["ogre"]\nblocked_patterns = ["ok+", "(["]\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.problems == [
        "moderation.blocked_patterns = '([': the regular expression does not compile: "
        "unterminated character set at position 1"
    ]
    config = parse_config('[moderation]\nblocked_patterns = ["ok+"]\ndaily_job_quota = 3\n')
    assert config.moderation == ModerationConfig(blocked_patterns=("ok+",), daily_job_quota=3)


def test_a_bad_pattern_in_config_stops_start_up_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[moderation]\nblocked_patterns = ["(["]\n')
    monkeypatch.setenv("DISCORD_TOKEN", "x")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "blocked_patterns" in err[0] and "does not compile" in err[0]


async def test_channel_beats_server_beats_config_and_show_says_where_from(store: Store) -> None:
    settings = await service(store)
    base = settings.effective(GUILD, CHANNEL)
    assert base.imagine.steps == Config().imagine.steps
    assert base.sources["imagine.steps.max"] == "config.toml"

    await settings.set(
        Scope.GUILD, "imagine.steps.max", "300", 1, guild_id=GUILD, channel_id=CHANNEL
    )
    await settings.set(
        Scope.CHANNEL, "imagine.steps.max", "250", 1, guild_id=GUILD, channel_id=CHANNEL
    )
    here = settings.effective(GUILD, CHANNEL)
    there = settings.effective(GUILD, OTHER_CHANNEL)
    elsewhere = settings.effective(GUILD + 1, OTHER_CHANNEL)
    assert (here.imagine.steps.max, here.sources["imagine.steps.max"]) == (250, "channel")
    assert (there.imagine.steps.max, there.sources["imagine.steps.max"]) == (300, "server")
    assert elsewhere.imagine.steps.max == Config().imagine.steps.max

    assert await settings.reset(Scope.CHANNEL, CHANNEL, "imagine.steps.max")
    assert settings.effective(GUILD, CHANNEL).imagine.steps.max == 300


async def test_values_are_typed_and_bounded_by_the_pipelines_hard_limits(store: Store) -> None:
    settings = await service(store)

    async def refused(key: str, value: str) -> str:
        with pytest.raises(BadSetting) as caught:
            await settings.set(Scope.CHANNEL, key, value, 1, guild_id=GUILD, channel_id=CHANNEL)
        return str(caught.value)

    assert "takes a whole number, not 'ten'" in await refused("imagine.steps.max", "ten")
    assert "takes a number, not 'x'" in await refused("edit.guidance.max", "x")
    assert "between 1 and 2000 (the limits the pipeline accepts), not 2001" in await refused(
        "imagine.steps.max", "2001"
    )
    assert "between 1 and 128" in await refused("imagine.cutn.max", "129")
    assert "between 0 and 0.99" in await refused("edit.blend_start.max", "1")
    assert "is on or off" in await refused("enabled.imagine", "perhaps")
    assert "must be one of 256x256" in await refused("imagine.max_size", "4096x4096")
    assert "would fall outside 1..100" in await refused("imagine.steps.max", "100")
    assert await settings.store.all_settings() == []

    _spec, value = await settings.set(
        Scope.CHANNEL, "edit.shrink", "off", 1, guild_id=GUILD, channel_id=CHANNEL
    )
    assert value is False and not settings.effective(GUILD, CHANNEL).edit.shrink


async def test_bounds_set_at_different_scopes_never_cross(store: Store) -> None:
    settings = await service(store)
    await settings.set(
        Scope.CHANNEL, "imagine.steps.default", "50", 1, guild_id=GUILD, channel_id=CHANNEL
    )
    await settings.set(
        Scope.CHANNEL, "imagine.steps.min", "40", 1, guild_id=GUILD, channel_id=CHANNEL
    )
    # The server's max, set later and checked as the server sees it, is below the channel's min.
    await settings.set(
        Scope.GUILD, "imagine.steps.default", "20", 1, guild_id=GUILD, channel_id=CHANNEL
    )
    await settings.set(
        Scope.GUILD, "imagine.steps.max", "30", 1, guild_id=GUILD, channel_id=CHANNEL
    )
    steps = settings.effective(GUILD, CHANNEL).imagine.steps
    assert steps.min <= steps.default <= steps.max


async def test_max_size_narrows_the_sizes_and_the_default_follows(store: Store) -> None:
    settings = await service(store)
    await settings.set(
        Scope.GUILD, "imagine.default_size", "256x384", 1, guild_id=GUILD, channel_id=None
    )
    with pytest.raises(BadSetting, match="larger than the largest allowed"):
        await settings.set(
            Scope.GUILD, "imagine.max_size", "256x256", 1, guild_id=GUILD, channel_id=None
        )
    await settings.set(
        Scope.GUILD, "imagine.max_size", "384x256", 1, guild_id=GUILD, channel_id=None
    )
    imagine = settings.effective(GUILD, CHANNEL).imagine
    assert imagine.sizes == ((256, 256), (384, 256), (256, 384))
    assert imagine.default_size == (256, 384)


def test_preferences_beat_the_default_and_are_capped_by_the_bounds_with_a_note() -> None:
    config = Config()
    imagine = replace(config.imagine, steps=IntOption(20, 5, 40), candidates=3)
    imagine2, edit, notes = apply_prefs(
        imagine,
        config.edit,
        {
            "imagine.steps": 30,
            "imagine.candidates": 9,
            "edit.steps": 5,
        },
    )
    assert imagine2.steps == IntOption(30, 5, 40)
    assert imagine2.candidates == 3
    assert edit.steps.default == config.edit.steps.min
    texts = [text for _, _, text in notes]
    assert texts == [
        "Your preferred /imagine candidates (9) is above this channel's limit, so 3 is used.",
        f"Your preferred /edit steps (5) is below this channel's minimum, so "
        f"{config.edit.steps.min} is used.",
    ]
    capped, _, notes = apply_prefs(imagine, config.edit, {"imagine.steps": 400})
    assert capped.steps.default == 40 and "above this channel's limit, so 40" in notes[0][2]


def job(user: int, prompt: str = "a cat", **params: object) -> JobRequest:
    return JobRequest(JobKind.IMAGINE, user, CHANNEL, GUILD, {"prompt": prompt, **params})


async def test_the_gate_refuses_blocked_prompts_paused_blocked_users_and_spent_quotas(
    store: Store,
) -> None:
    config = replace(
        Config(), moderation=ModerationConfig(blocked_words=("ogre",), daily_job_quota=2)
    )
    settings = await service(store, config)
    gate = Gatekeeper(settings, settings.store)
    assert await gate.submit_refusal(job(1, "an Ogre")) == BLOCKED_PROMPT
    assert await gate.submit_refusal(job(1, "a cat", mask_text="the ogre")) == BLOCKED_PROMPT
    assert await gate.submit_refusal(job(1)) is None
    inserted = [(await store.insert_job(job(1), 0)).id for _ in range(2)]
    assert "used your 2 job(s) in this server" in (await gate.submit_refusal(job(1)) or "")
    assert await gate.submit_refusal(job(1), admin=True) is None
    assert await gate.submit_refusal(job(2)) is None
    # Deleting the jobs (🗑, retention, /purge) does not give the submissions back.
    assert await store.delete_jobs(inserted) == 2
    assert "used your 2 job(s)" in (await gate.submit_refusal(job(1)) or "")
    # The quota counts per server: the same user elsewhere has theirs untouched.
    elsewhere = JobRequest(JobKind.IMAGINE, 1, CHANNEL + 1, GUILD + 1, {"prompt": "a cat"})
    assert await gate.submit_refusal(elsewhere) is None

    await settings.set_paused(True, 99)
    assert "paused" in (await gate.submit_refusal(job(2)) or "")
    await settings.set_paused(False, 99)
    await settings.block_user(2, 99)
    assert "cannot use" in (await gate.submit_refusal(job(2)) or "")
    await settings.set(
        Scope.CHANNEL, "enabled.imagine", "off", 99, guild_id=GUILD, channel_id=CHANNEL
    )
    assert "switched off" in (await gate.submit_refusal(job(3)) or "")


async def test_everything_set_is_read_back_after_reopening(store: Store, data_dir: Path) -> None:
    settings = await service(store)
    await settings.set(
        Scope.CHANNEL, "cooldown_seconds", "2.5", 1, guild_id=GUILD, channel_id=CHANNEL
    )
    await settings.add_term(Scope.GUILD, GUILD, BlockedTerm(TermKind.PATTERN, "og(re)?"), 1)
    await settings.block_user(7, 1)
    await settings.set_paused(True, 1)
    reopened_store = await Store.open(data_dir / "faraday.sqlite3", data_dir)
    try:
        again = await service(reopened_store)
        effective = again.effective(GUILD, CHANNEL)
        assert effective.cooldown_seconds == 2.5
        assert [(t.text, where) for t, where in effective.terms] == [("og(re)?", "server")]
        assert again.is_blocked(7) and again.paused
    finally:
        await reopened_store.close()


WRITER = textwrap.dedent("""
    import asyncio, os, sys, traceback
    from pathlib import Path
    from bot.blocklist import BlockedTerm, TermKind
    from bot.config import Config
    from bot.owner_store import OwnerStore
    from bot.runtime_settings import Scope, SettingsService
    from bot.store import Store

    async def write():
        data = Path(sys.argv[1])
        store = await Store.open(data / "faraday.sqlite3", data)
        settings = SettingsService(Config(), OwnerStore(store))
        await settings.load()
        await settings.set(Scope.CHANNEL, "imagine.steps.max", "777", 1, guild_id=10,
                           channel_id=20)
        await settings.add_term(Scope.CHANNEL, 20, BlockedTerm(TermKind.WORD, "ogre"), 1)
        await settings.block_user(5, 1)
        await settings.set_paused(True, 1)
        print("written", flush=True)
        await asyncio.sleep(3600)

    try:
        asyncio.run(write())
    except BaseException:
        traceback.print_exc()
        os._exit(1)  # aiosqlite's thread would keep the process alive
""")


async def test_settings_survive_a_sigkill_of_the_process_that_wrote_them(data_dir: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 120)
        assert line.strip() == "written", process.stderr.read() if process.poll() else line
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)
        assert process.returncode == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    store = await Store.open(data_dir / "faraday.sqlite3", data_dir)
    try:
        settings = await service(store)
        effective = settings.effective(10, 20)
        assert effective.imagine.steps.max == 777
        assert effective.sources["imagine.steps.max"] == "channel"
        assert [t.text for t, _ in effective.terms] == ["ogre"]
        assert settings.is_blocked(5) and settings.paused
    finally:
        await store.close()


async def test_a_thread_takes_its_parent_channels_settings(store: Store) -> None:
    settings = await service(store)
    cached_thread, unseen_thread = 30, 31
    settings.thread_parent = lambda channel_id: CHANNEL if channel_id == cached_thread else None
    settings.note_thread(unseen_thread, CHANNEL)
    # Set from inside a thread: stored for the parent channel.
    for key, value in (("imagine.steps.default", "4"), ("imagine.steps.max", "5")):
        await settings.set(
            Scope.CHANNEL, key, value, 99, guild_id=GUILD, channel_id=cached_thread
        )
    await settings.add_term(Scope.CHANNEL, CHANNEL, BlockedTerm(TermKind.WORD, "ogre"), 99)
    assert {(scope, scope_id) for scope, scope_id, _, _ in await settings.store.all_settings()} == {
        (Scope.CHANNEL, CHANNEL)
    }
    for where in (CHANNEL, cached_thread, unseen_thread):
        effective = settings.effective(GUILD, where)
        assert effective.imagine.steps.max == 5, where
        assert effective.prompt_filter.blocked_term("an ogre", None) is not None, where
    assert settings.effective(GUILD, OTHER_CHANNEL).imagine.steps.max == Config().imagine.steps.max
