"""A real PostgreSQL for the cluster tests: the server CI started, or a private one started here.

Without PostgreSQL these tests fail loudly; they are never skipped. Deselect them with
``-m "not cluster"`` on a machine without it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.cluster.private_pg import URL_ENV, PostgresUnavailable, create_cluster
from bot.config import ClusterConfig
from bot.scheduler import Scheduler
from bot.stand_in import StandInPipeline, StandInSource
from bot.store import Store
from tests.bot.conftest import scheduler_config

pytestmark = pytest.mark.cluster

# Short enough for tests: a dead worker is noticed within 2 s, the poll runs every 0.1 s.
TEST_CLUSTER = ClusterConfig(
    database_url="",
    stall_timeout_seconds=2.0,
    progress_interval_seconds=0.05,
    poll_interval_seconds=0.1,
    reconnect_max_seconds=1.0,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    try:
        cluster = create_cluster()
    except PostgresUnavailable as exc:
        pytest.fail(f"the cluster tests need PostgreSQL: {exc}", pytrace=False)
    try:
        yield cluster.url()
    finally:
        cluster.remove()


def fresh_database(server_url: str) -> str:
    name = f"faraday_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    from procrastinate import SyncPsycopgConnector
    from procrastinate.schema import SchemaManager

    connector = SyncPsycopgConnector(conninfo=url)
    connector.open()
    try:
        SchemaManager(connector).apply_schema()
    finally:
        connector.close()
    return url


@pytest.fixture(scope="module")
def pg_url(pg_server_url: str) -> str:
    """A fresh database per test module, with procrastinate's schema applied."""
    return fresh_database(pg_server_url)


@pytest.fixture
def cluster_config(pg_url: str) -> ClusterConfig:
    # A queue per test, so one test's leftovers never reach another's bot.
    return replace(TEST_CLUSTER, database_url=pg_url, queue=f"q{uuid.uuid4().hex[:10]}")


class Workers:
    """In-process GPU workers (threads with their own loops) on given pipelines."""

    def __init__(self, cluster: ClusterConfig) -> None:
        self.cluster = cluster
        self.started: list[Any] = []

    def start(self, pipeline: Any = None, name: str | None = None) -> Any:
        from bot.cluster.worker_side import serve_in_thread

        source = StandInSource(pipeline or StandInPipeline(0.0, 16, "sleep"))
        worker, thread = serve_in_thread(self.cluster.database_url, self.cluster, source, name)
        assert worker.registered.wait(20), "the in-process GPU worker never registered"
        self.started.append((worker, thread))
        return worker

    def stop_all(self) -> None:
        for worker, _thread in self.started:
            worker.stop()
        for _worker, thread in self.started:
            thread.join(20)


@pytest.fixture
def workers(cluster_config: ClusterConfig) -> Iterator[Workers]:
    made = Workers(cluster_config)
    yield made
    made.stop_all()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "data" / "faraday.sqlite3", tmp_path / "data")
    yield opened
    await opened.close()


async def start_cluster_scheduler(store: Store, cluster: ClusterConfig, **config: Any) -> Scheduler:
    from bot.cluster.executor import PostgresExecutor

    scheduler = Scheduler(store, None, scheduler_config(**config),
                          executor=PostgresExecutor(store, cluster))
    await scheduler.start()
    return scheduler


def worker_config_text(cluster: ClusterConfig, step_seconds: float = 0.05) -> str:
    """A config.toml for a ``python -m bot.gpu_worker`` process on the sleeping stand-in."""
    return (
        '[scheduler]\npipeline = "stand-in"\n'
        f'[scheduler.stand_in]\nwork = "sleep"\nstep_seconds = {step_seconds}\nimage_size = 16\n'
        f'[cluster]\ndatabase_url = "{cluster.database_url}"\nqueue = "{cluster.queue}"\n'
        f"stall_timeout_seconds = {cluster.stall_timeout_seconds}\n"
        f"progress_interval_seconds = {cluster.progress_interval_seconds}\n"
        f"poll_interval_seconds = {cluster.poll_interval_seconds}\n"
        f"reconnect_max_seconds = {cluster.reconnect_max_seconds}\n"
    )


def start_worker_process(config_path: Path, name: str) -> Any:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    # The log goes to a file: an unread pipe would fill up and stall the worker.
    log_file = open(config_path.parent / f"{name}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "bot.gpu_worker", "--config", str(config_path), "--name", name],
        cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )
