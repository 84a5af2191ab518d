"""``python -m bot``: the missing-token line, bad config lines, and a clean SIGTERM shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot.__main__ import main
from bot.config import MISSING_TOKEN_MESSAGE
from bot.jobs import JobKind, JobRequest
from bot.store import Store

REPO = Path(__file__).resolve().parents[2]


def bot_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def test_a_missing_token_stops_start_up_with_one_line_saying_how_to_set_it() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(REPO / "config.toml")],
        cwd=REPO,
        env=bot_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 2
    assert finished.stdout == ""
    assert finished.stderr.splitlines() == [MISSING_TOKEN_MESSAGE]
    assert "DISCORD_TOKEN" in MISSING_TOKEN_MESSAGE


def test_a_bad_config_prints_one_line_per_problem_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[scheduler]\npipeline = "fake"\n[discord]\ncontinue_by = "nobody"\n')
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert main(["--config", str(config)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "config error: discord.continue_by = 'nobody': must be one of 'anyone', 'requester'",
        "config error: scheduler.pipeline = 'fake': must be one of 'real', 'stand-in'",
        MISSING_TOKEN_MESSAGE,
    ]


@pytest.mark.parametrize("broken", ["data folder is a file", "database is not SQLite"])
def test_storage_that_cannot_be_used_stops_start_up_with_one_line(
    broken: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    if broken == "data folder is a file":
        data.write_text("not a folder")
        expected = f"error: cannot open the storage: the data folder {str(data)!r} cannot be "
    else:
        data.mkdir()
        (data / "faraday.sqlite3").write_bytes(b"this is not a database" * 100)
        expected = (f"error: cannot open the storage: the database "
                    f"{str(data / 'faraday.sqlite3')!r} cannot be used: file is not a database")
    config = tmp_path / "config.toml"
    config.write_text(f'[scheduler]\npipeline = "stand-in"\n[storage]\ndata_dir = '
                      f'"{data.as_posix()}"\n')
    monkeypatch.setenv("DISCORD_TOKEN", "never-used-because-start-up-stops-first")
    switch_interval = sys.getswitchinterval()
    try:
        assert main(["--config", str(config)]) == 2
    finally:
        sys.setswitchinterval(switch_interval)
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(expected), line


def test_a_model_file_that_cannot_load_stops_start_up_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.yaml"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[models]\npreset = "default"\nvqgan_config = "{missing.as_posix()}"\n'
        f'cache_dir = "{(tmp_path / "models").as_posix()}"\n'
        f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n'
    )
    finished = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(config)],
        cwd=REPO,
        env=bot_env(DISCORD_TOKEN="never-used-because-start-up-stops-first"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 2
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot load the models: models.vqgan_config: local file {missing} does not exist"
    ]
    assert "Traceback" not in finished.stderr


async def test_a_signal_while_the_models_load_stops_start_up_without_waiting_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.__main__ import run
    from bot.config import load_config
    from bot.stand_in import StandInSource

    standin_module = pytest.importorskip("tests.e2e.standin")
    loading, release = threading.Event(), threading.Event()

    def slow_preload(self: StandInSource, kinds: object) -> None:  # a first download, say
        loading.set()
        release.wait(120)

    monkeypatch.setattr(StandInSource, "preload", slow_preload)
    data = tmp_path / "data"
    standin = standin_module.DiscordStandin()
    await standin.start()
    switch_interval = sys.getswitchinterval()
    try:
        # The bot connects while its models load, so it gets a Discord to connect to.
        config = load_config(standin_module.write_bot_config(
            tmp_path / "config.toml", standin, base=REPO / "config.toml",
            overrides={"models": {"preset": "tiny"},
                       "scheduler": {"pipeline": "stand-in"},
                       "storage": {"data_dir": str(data)}},
        ))
        running = asyncio.create_task(run(config, standin.token))
        assert await asyncio.to_thread(loading.wait, 60), "the models never started loading"
        await standin.wait_until_connected()  # online before the models are ready
        os.kill(os.getpid(), signal.SIGINT)  # run() handles it on this loop
        assert await asyncio.wait_for(running, 60) == 0
    finally:
        release.set()
        sys.setswitchinterval(switch_interval)
        await standin.stop()
    # The store was closed: SQLite removes the write-ahead log when its last connection closes.
    assert (data / "faraday.sqlite3").is_file()
    assert not (data / "faraday.sqlite3-wal").exists()


def _job_row(database: Path, job_id: int) -> tuple[str, int]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as raw:
        row = raw.execute("SELECT status, interruptions FROM jobs WHERE id = ?", (job_id,))
        return row.fetchone()


async def test_sigterm_stops_the_running_job_requeues_it_and_exits_cleanly(
    tmp_path: Path,
) -> None:
    standin_module = pytest.importorskip("tests.e2e.standin")
    standin = standin_module.DiscordStandin()
    await standin.start()
    try:
        data = tmp_path / "data"
        store = await Store.open(data / "faraday.sqlite3", data)
        seeded = await store.insert_job(
            JobRequest(JobKind.IMAGINE, standin.owner.id, standin.channel_id, standin.guild_id,
                       {"prompt": "a lighthouse", "steps": 5000, "seed": 3}),
            0,
        )
        await store.close()
        config = standin_module.write_bot_config(
            tmp_path / "config.toml",
            standin,
            base=REPO / "config.toml",
            overrides={
                "models": {"preset": "tiny"},
                "scheduler": {
                    "pipeline": "stand-in",
                    "progress_interval_seconds": 0.2,
                    "stand_in": {"step_seconds": 0.05, "work": "sleep"},
                },
                "storage": {"data_dir": str(data)},
            },
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--config", str(config),
            cwd=REPO,
            env=bot_env(DISCORD_TOKEN=standin.token),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 240
            progress = None
            while time.monotonic() < deadline:
                assert process.returncode is None, "the bot exited before it was stopped"
                status, _ = await asyncio.to_thread(_job_row, data / "faraday.sqlite3", seeded.id)
                posted = [m for m in standin.bot_messages() if "Step" in m.content]
                if status == "running" and posted:
                    progress = posted[0]
                    break
                await asyncio.sleep(0.2)
            assert progress is not None, "the recovered job never showed progress"
            process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        log = output.decode(errors="replace")
        assert process.returncode == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert standin.token not in log, "the bot token reached the log"
        # Stopped at a step and put back in line, not counted as a crash.
        assert await asyncio.to_thread(_job_row, data / "faraday.sqlite3", seeded.id) == (
            "queued", 0
        )
        assert "Paused" in standin.message(progress.id).content
    finally:
        await standin.stop()


async def test_a_model_that_fails_to_load_after_connecting_stops_the_bot_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from bot.__main__ import run
    from bot.config import load_config

    standin_module = pytest.importorskip("tests.e2e.standin")
    with socket.socket() as s:  # a port nobody listens on: a model host that is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    standin = standin_module.DiscordStandin()
    await standin.start()
    switch_interval = sys.getswitchinterval()
    try:
        config = load_config(standin_module.write_bot_config(
            tmp_path / "config.toml", standin, base=REPO / "config.toml",
            overrides={"models": {"preset": "default", "device": "cpu",
                                  "cache_dir": str(tmp_path / "models"),
                                  "vqgan_config": f"{dead}/model.yaml",
                                  "vqgan_checkpoint": f"{dead}/last.ckpt"},
                       "storage": {"data_dir": str(tmp_path / "data")}},
        ))
        assert await asyncio.wait_for(run(config, standin.token), 120) == 2
    finally:
        sys.setswitchinterval(switch_interval)
        await standin.stop()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: cannot load the models: models.vqgan_config: could not reach "
                      f"{dead}/model.yaml ([Errno 111] Connection refused); on a machine without "
                      "internet, fetch the file elsewhere and set a local path in config.toml"]
