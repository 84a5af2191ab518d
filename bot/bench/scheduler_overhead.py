"""Scheduler overhead and fairness: 1,000 no-op jobs from 50 users, submit to done.

Every user submits all their jobs in one burst, user after user: the arrival order a plain FIFO
queue would serve one user at a time. A gate job holds the worker until every job is submitted,
so the figures show the order the scheduler chose, not the order jobs happened to arrive in.

- ``submit_ms_per_job``: mean time of ``Scheduler.submit`` (persisting the job included).
- ``run_overhead_ms_per_job``: from releasing the gate until the queue is empty, minus the time
  spent inside the pipeline, per job: dispatch, store updates, writing the one result file
  (temp file, fsync, rename), events.
- ``overhead_ms_per_job``: the sum of the two.
- ``run_cpu_ms_per_job``: CPU time of the whole process (every thread) in the run phase, per job,
  pipeline included; less sensitive than wall time to other work sharing the machine.
- Jain's fairness index over the completion order. For every prefix of the completion order
  whose length k is a multiple of the number of users U, while every user still has jobs left,
  x_i is the number of user i's jobs among the first k completions and
  J_k = (Σ x_i)² / (U · Σ x_i²). 1 means every user got exactly the same share. We report the
  minimum and the mean of J_k, and the same minimum for the arrival (FIFO) order as a reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bot.config import SchedulerConfig
from bot.events import JobFinished, SchedulerEvent
from bot.jobs import JobKind, JobRequest
from bot.scheduler import Scheduler
from bot.stand_in import StandInPipeline, StandInSource
from bot.store import Store


class TimedNoOp:
    """The stand-in with no work per step; records the time spent inside it."""

    def __init__(self, gate: threading.Event) -> None:
        self.inner = StandInPipeline(0.0, 8, "sleep")
        self.gate = gate
        self.seconds = 0.0
        self.first = True

    def __call__(self, request: Any, on_progress: Any, should_cancel: Any) -> Any:
        if self.first:
            self.first = False
            self.gate.wait()
            return self.inner(request, on_progress, should_cancel)
        started = time.perf_counter()
        try:
            return self.inner(request, on_progress, should_cancel)
        finally:
            self.seconds += time.perf_counter() - started


def jain(counts: list[int]) -> float:
    total = sum(counts)
    squares = sum(c * c for c in counts)
    return (total * total) / (len(counts) * squares) if squares else 1.0


def prefix_fairness(order: list[int], users: int, per_user: int) -> list[float]:
    """J_k for k = U, 2U, ... while every user still has jobs left (k ≤ U·(per_user − 1))."""
    values = []
    counts = dict.fromkeys(range(users), 0)
    for k, user in enumerate(order, start=1):
        counts[user] += 1
        if k % users == 0 and k <= users * (per_user - 1):
            values.append(jain(list(counts.values())))
    return values


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    users, per_user = args.users, args.jobs // args.users
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        store = await Store.open(data / "bench.sqlite3", data, sync_commits=args.sync_commits)
        gate = threading.Event()
        pipeline = TimedNoOp(gate)
        config = SchedulerConfig(max_queued_per_user=per_user + 1,
                                 max_queued_total=users * per_user + 1,
                                 worker_niceness=args.worker_niceness)
        scheduler = Scheduler(store, StandInSource(pipeline), config)
        completed: list[int] = []

        def listen(event: SchedulerEvent) -> None:
            if isinstance(event, JobFinished) and event.job.user_id >= 0:
                completed.append(event.job.user_id)

        scheduler.add_listener(listen)
        await scheduler.start()
        await scheduler.submit(JobRequest(JobKind.IMAGINE, -1, 1, None, {"steps": 1}))
        arrival: list[int] = []
        submit_started = time.perf_counter()
        for user in range(users):
            for _ in range(per_user):
                await scheduler.submit(JobRequest(JobKind.IMAGINE, user, 1, None,
                                                  {"steps": 1, "seed": 1}))
                arrival.append(user)
        submit_seconds = time.perf_counter() - submit_started
        run_started = time.perf_counter()
        cpu_started = time.process_time()
        gate.set()
        await scheduler.wait_idle()
        run_seconds = time.perf_counter() - run_started
        run_cpu = time.process_time() - cpu_started
        await scheduler.shutdown()
        await store.close()
    jobs = users * per_user
    fair = prefix_fairness(completed, users, per_user)
    fifo = prefix_fairness(arrival, users, per_user)
    submit_ms = submit_seconds / jobs * 1000
    run_ms = (run_seconds - pipeline.seconds) / jobs * 1000
    return {
        "bench": "scheduler",
        "jobs": jobs,
        "users": users,
        "submit_ms_per_job": round(submit_ms, 3),
        "run_overhead_ms_per_job": round(run_ms, 3),
        "overhead_ms_per_job": round(submit_ms + run_ms, 3),
        "pipeline_ms_per_job": round(pipeline.seconds / jobs * 1000, 3),
        "run_cpu_ms_per_job": round(run_cpu / jobs * 1000, 3),
        "sync_commits": args.sync_commits,
        "worker_niceness": args.worker_niceness,
        "jain_min": round(min(fair), 6),
        "jain_mean": round(sum(fair) / len(fair), 6),
        "jain_min_fifo_reference": round(min(fifo), 6),
        "prefixes": len(fair),
        "completed": len(completed),
        # Other work on the machine inflates every figure here; the 1-minute load average at the
        # end says how busy it was (2 would saturate this 2-core machine).
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def run(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(measure(args))))
    return 0


def add_parser(benches: Any) -> None:
    parser = benches.add_parser("scheduler", help=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--worker-niceness", type=int, default=10,
                        help="scheduler.worker_niceness (default %(default)s, as the bot's); on "
                        "a machine shared with other work, 0 keeps them from starving the worker")
    parser.add_argument("--sync-commits", action="store_true",
                        help="fsync every commit and result file (storage.sync_commits)")
    parser.set_defaults(run=run)
