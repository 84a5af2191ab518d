"""Shared pieces for the bot core's tests: real SQLite files in tmp dirs, the stand-in pipeline,
and a fake channel sink that records every call and fails on demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.config import RetryConfig, SchedulerConfig
from bot.controls import Controls
from bot.events import SchedulerEvent
from bot.jobs import JobKind, JobRequest
from bot.publisher import OutgoingFile, Publisher
from bot.scheduler import Scheduler
from bot.stand_in import StandInPipeline, StandInSource
from bot.store import Store


def request(
    user: int, steps: int = 3, kind: JobKind = JobKind.IMAGINE, **params: Any
) -> JobRequest:
    return JobRequest(kind, user, 1000 + user, 1, {"steps": steps, **params})


@dataclass
class SinkCall:
    op: str  # "send" | "edit" | "react"
    channel_id: int
    message_id: int
    content: str
    files: list[OutgoingFile] | None
    at: float
    emojis: list[str] = field(default_factory=list)
    controls: Controls | None = None
    ping_user: int | None = None


class FakeSink:
    """A ChannelSink: remembers messages, records calls, raises scripted errors, can be slow."""

    def __init__(self, delay: float = 0.0, limit: int = 10 * 1024 * 1024) -> None:
        self.delay = delay
        self.limit = limit
        self.calls: list[SinkCall] = []
        self.messages: dict[int, tuple[str, list[OutgoingFile]]] = {}
        self._next_id = 5000
        # Exceptions raised, in order, by the next calls of each operation.
        self.failures: dict[str, list[Exception]] = {"send": [], "edit": [], "react": []}
        self.deleted: set[int] = set()

    def _maybe_fail(self, op: str) -> None:
        if self.failures[op]:
            raise self.failures[op].pop(0)

    async def send(
        self,
        channel_id: int,
        content: str,
        files: list[OutgoingFile],
        *,
        controls: Controls = (),
        ping_user: int | None = None,
    ) -> int:
        if self.delay:
            await asyncio.sleep(self.delay)
        self._maybe_fail("send")
        self._next_id += 1
        self.messages[self._next_id] = (content, list(files))
        self.calls.append(SinkCall("send", channel_id, self._next_id, content, list(files),
                                   time.monotonic(), controls=controls, ping_user=ping_user))
        return self._next_id

    async def edit(
        self,
        channel_id: int,
        message_id: int,
        content: str,
        files: list[OutgoingFile] | None,
        *,
        controls: Controls | None = None,
    ) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if message_id in self.deleted:
            from bot.publisher import MessageGone

            raise MessageGone(f"message {message_id} was deleted")
        self._maybe_fail("edit")
        old_files = self.messages[message_id][1]
        self.messages[message_id] = (content, old_files if files is None else list(files))
        self.calls.append(SinkCall("edit", channel_id, message_id, content, files,
                                   time.monotonic(), controls=controls))

    async def add_reactions(self, channel_id: int, message_id: int, emojis: list[str]) -> None:
        self._maybe_fail("react")
        self.calls.append(SinkCall("react", channel_id, message_id, "", None, time.monotonic(),
                                   list(emojis)))

    def upload_limit(self, channel_id: int) -> int:
        return self.limit

    def of(self, op: str, message_id: int | None = None) -> list[SinkCall]:
        return [c for c in self.calls
                if c.op == op and (message_id is None or c.message_id == message_id)]


class EventLog:
    def __init__(self) -> None:
        self.events: list[SchedulerEvent] = []

    def __call__(self, event: SchedulerEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[Store]:
    opened = await Store.open(data_dir / "faraday.sqlite3", data_dir)
    yield opened
    await opened.close()


def scheduler_config(**overrides: Any) -> SchedulerConfig:
    values: dict[str, Any] = {
        "max_queued_per_user": 50,
        "max_queued_total": 500,
        "progress_interval_seconds": 0.05,
        "shutdown_grace_seconds": 5.0,
        "retry": RetryConfig(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.05),
    }
    values.update(overrides)
    return SchedulerConfig(**values)


SchedulerFactory = Callable[..., Awaitable[Scheduler]]


@pytest.fixture
async def make_scheduler(store: Store) -> AsyncIterator[SchedulerFactory]:
    """Build and start a scheduler on the stand-in; every one is shut down after the test."""
    made: list[Scheduler] = []

    async def factory(
        pipeline: Any = None,
        *,
        config: SchedulerConfig | None = None,
        listeners: tuple = (),
        start: bool = True,
        on_store: Store | None = None,
    ) -> Scheduler:
        source = StandInSource(pipeline or StandInPipeline(0.0, 16, "sleep"))
        scheduler = Scheduler(on_store or store, source, config or scheduler_config())
        for listener in listeners:
            scheduler.add_listener(listener)
        made.append(scheduler)
        if start:
            await scheduler.start()
        return scheduler

    yield factory
    for scheduler in made:
        await scheduler.shutdown(grace_seconds=5)


def make_publisher(store: Store, interval: float = 0.05, **retry: Any) -> Publisher:
    settings = {"max_attempts": 3, "base_delay_seconds": 0.01, "max_delay_seconds": 0.05}
    settings.update(retry)
    return Publisher(store, interval, RetryConfig(**settings))
