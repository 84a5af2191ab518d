"""[cluster] in config.toml: off by default (jobs run locally), and checked like every section."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, parse_config
from bot.local_executor import LocalExecutor
from bot.scheduler import make_executor
from bot.store import Store


def test_without_a_database_url_the_bot_runs_jobs_itself(store: Store) -> None:
    config = parse_config("")
    assert not config.cluster.enabled
    assert isinstance(make_executor(store, config), LocalExecutor)


def test_a_database_url_turns_the_cluster_on(store: Store) -> None:
    config = parse_config('[cluster]\ndatabase_url = "postgresql://faraday@db/faraday"\n'
                          'queue = "second-bot"\nstall_timeout_seconds = 2\n')
    assert config.cluster.enabled and config.cluster.queue == "second-bot"
    assert config.cluster.heartbeat_seconds == 0.5
    from bot.cluster.executor import PostgresExecutor

    assert isinstance(make_executor(store, config), PostgresExecutor)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('database_url = "mysql://x"', "cluster.database_url = 'mysql://x': must be empty or a "
         "postgresql:// URL"),
        ('queue = "a b"', "cluster.queue = 'a b': must be 1-40 letters, digits"),
        ("stall_timeout_seconds = 0", "cluster.stall_timeout_seconds = 0: must be a number"),
        ("workers = 3", "cluster.workers = 3: unknown key"),
    ],
)
def test_bad_cluster_settings_are_one_clear_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(f"[cluster]\n{line}\n")
    assert any(p.startswith(message) for p in error.value.problems), error.value.problems
