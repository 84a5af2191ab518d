"""Event-loop lag while a pipeline burns the CPU on the worker thread.

The loop is sampled every ``--interval`` seconds: each sample is how much later than asked an
``asyncio.sleep(interval)`` returned. Meanwhile the scheduler runs stand-in jobs back to back on
its worker thread and the publisher renders their progress to a sink that discards it, as the bot
does in production.

``--work cpu`` burns CPU in torch matrix products, which release the GIL the way the real
pipelines' convolutions and attention do; ``--work python`` burns it in a pure-Python loop that
holds the GIL, to show what a pipeline written that way would do to the loop; ``--work none``
measures the idle loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bot.config import SchedulerConfig
from bot.jobs import JobKind, JobRequest
from bot.publisher import OutgoingFile, Publisher
from bot.scheduler import Scheduler
from bot.stand_in import StandInPipeline, StandInSource
from bot.store import Store
from bot.worker import GIL_SWITCH_INTERVAL_SECONDS


class PythonBurnPipeline(StandInPipeline):
    """The stand-in, but spending each step in Python bytecode (holding the GIL)."""

    def _spend(self, seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        total = 0
        while time.perf_counter() < deadline:
            for i in range(1000):
                total += i * i


class DiscardingSink:
    def __init__(self) -> None:
        self.calls = 0

    async def send(self, channel_id: int, content: str, files: list[OutgoingFile]) -> int:
        self.calls += 1
        return self.calls

    async def edit(self, channel_id: int, message_id: int, content: str,
                   files: list[OutgoingFile] | None) -> None:
        self.calls += 1

    async def add_reactions(self, channel_id: int, message_id: int, emojis: list[str]) -> None:
        self.calls += 1


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    sys.setswitchinterval(args.switch_interval)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        store = await Store.open(data / "bench.sqlite3", data)
        pipeline_class = PythonBurnPipeline if args.work == "python" else StandInPipeline
        pipeline = pipeline_class(args.step_seconds, args.image_size, "cpu")
        config = SchedulerConfig(progress_interval_seconds=args.progress_interval,
                                 max_queued_per_user=100, max_queued_total=100,
                                 worker_niceness=args.worker_niceness)
        scheduler = Scheduler(store, StandInSource(pipeline), config)
        publisher = Publisher(store, args.progress_interval)
        sink = DiscardingSink()
        publisher.set_sink(sink)
        scheduler.add_listener(publisher)
        await scheduler.start()
        if args.work != "none":
            steps = max(1, int(args.seconds / args.step_seconds) + 20)
            for user in range(2):  # a second job queued behind, as in real use
                await scheduler.submit(JobRequest(JobKind.IMAGINE, user, 1, None,
                                                  {"steps": steps, "preview_every": 5}))
            while scheduler.snapshot().running is None:
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)  # past start-up, into steady work
        lags: list[float] = []
        loop_start = time.perf_counter()
        while time.perf_counter() - loop_start < args.seconds:
            before = time.perf_counter()
            await asyncio.sleep(args.interval)
            lags.append(time.perf_counter() - before - args.interval)
        running = scheduler.snapshot().running
        await scheduler.shutdown(grace_seconds=30)
        await publisher.close(timeout=1)
        await store.close()
    return {
        "bench": "loop-lag",
        "work": args.work,
        "seconds": args.seconds,
        "interval_ms": args.interval * 1000,
        "samples": len(lags),
        "p50_ms": round(statistics.median(lags) * 1000, 3),
        "p99_ms": round(percentile(lags, 0.99) * 1000, 3),
        "max_ms": round(max(lags) * 1000, 3),
        "worker_steps_done": running.step if running else None,
        "step_seconds": args.step_seconds,
        "switch_interval_s": sys.getswitchinterval(),
        "torch_threads": _torch_threads(),
        "worker_niceness": args.worker_niceness,
        "sink_calls": sink.calls,
        # Other work on the machine inflates every figure here; the 1-minute load average at the
        # end says how busy it was (2 would saturate this 2-core machine).
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(measure(args))))
    return 0


def add_parser(benches: Any) -> None:
    parser = benches.add_parser("loop-lag", help=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--work", choices=("cpu", "python", "none"), default="cpu")
    parser.add_argument("--step-seconds", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--progress-interval", type=float, default=4.0)
    parser.add_argument("--switch-interval", type=float, default=GIL_SWITCH_INTERVAL_SECONDS,
                        help="sys.setswitchinterval value; the bot's is %(default)s, Python's "
                        "default 0.005")
    parser.add_argument("--worker-niceness", type=int, default=10,
                        help="how much lower than the loop's the worker thread's priority is "
                        "(scheduler.worker_niceness; default %(default)s)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads (0: torch's default)")
    parser.set_defaults(run=run)
