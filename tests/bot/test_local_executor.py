"""The embedded executor with more than one device: one worker thread and one model set each."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from bot.config import ConfigError, parse_config
from bot.events import JobFinished, JobStarted
from bot.jobs import JobStatus
from bot.local_executor import LocalExecutor
from bot.scheduler import Scheduler
from bot.stand_in import StandInPipeline, StandInSource
from bot.store import Store
from tests.bot.conftest import EventLog, request, scheduler_config


class Overlap:
    """Wraps a pipeline and records how many calls were inside it at once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.inside = 0
        self.most_inside = 0
        self.lock = threading.Lock()
        self.threads: set[int] = set()

    def __call__(self, request: Any, on_progress: Any, should_cancel: Any) -> Any:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.get_ident())
        try:
            return self.inner(request, on_progress, should_cancel)
        finally:
            with self.lock:
                self.inside -= 1


async def test_two_cpu_devices_run_two_jobs_at_once_each_on_its_own_models(
    store: Store,
) -> None:
    # One pipeline object per device, as each device has models of its own.
    pipelines = [Overlap(StandInPipeline(0.02, 8, "sleep")) for _ in range(2)]
    executor = LocalExecutor(store, [StandInSource(p) for p in pipelines], devices=["cpu", "cpu"])
    log = EventLog()
    scheduler = Scheduler(store, None, scheduler_config(), executor=executor)
    scheduler.add_listener(log)
    await scheduler.start()
    try:
        jobs = [(await scheduler.submit(request(user=u, steps=10))).job_id for u in (1, 2, 3, 4)]
        # Both slots take a job at once; the snapshot shows two running and two waiting.
        for _ in range(200):
            if len(log.of(JobStarted)) >= 2:
                break
            await asyncio.sleep(0.01)
        snapshot = scheduler.snapshot()
        assert len(snapshot.all_running) == 2
        assert [e.position for e in snapshot.queued] == [3, 4]
        await asyncio.wait_for(scheduler.wait_idle(), 30)
    finally:
        await scheduler.shutdown(grace_seconds=5)
    assert sorted(e.job.job_id for e in log.of(JobFinished)) == sorted(jobs)
    assert all(e.status is JobStatus.DONE for e in log.of(JobFinished))
    # Each device's own pipeline ran jobs, on its own thread, and never two at once.
    assert all(p.inner.calls >= 1 for p in pipelines)
    assert sum(p.inner.calls for p in pipelines) == 4
    assert all(p.most_inside == 1 for p in pipelines)
    assert pipelines[0].threads.isdisjoint(pipelines[1].threads)


async def test_the_devices_setting_gives_one_slot_and_one_source_per_entry(store: Store) -> None:
    config = parse_config(
        '[models]\ndevices = ["cpu", "cpu"]\n[scheduler]\npipeline = "stand-in"\n'
    )
    assert config.models.device_list == ("cpu", "cpu")
    executor = LocalExecutor.from_config(store, config)
    assert executor.free_slots() == 2
    first, second = (slot.source for slot in executor.slots)
    assert first is not second
    assert first.pipeline is not second.pipeline  # type: ignore[attr-defined]
    # Without the setting: one slot on `device`, as before.
    single = LocalExecutor.from_config(store, parse_config(""))
    assert single.free_slots() == 1 and [s.device for s in single.slots] == ["auto"]


def test_two_slots_on_one_device_get_private_models() -> None:
    from bot.scheduler import make_source

    config = parse_config('[models]\ndevices = ["cpu", "cpu"]\n')
    source = make_source("real", config.models, config.scheduler.stand_in, private=True)
    assert source.private  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "models.devices = []: must be a non-empty list of devices"),
        ('"cuda:0"', "models.devices = 'cuda:0': must be a non-empty list"),
        ('["cpu", "tpu"]', "models.devices = ['cpu', 'tpu']: every entry must be auto, cpu"),
    ],
)
def test_bad_devices_are_one_clear_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(f"[models]\ndevices = {value}\n")
    assert any(line.startswith(message) for line in error.value.problems), error.value.problems
