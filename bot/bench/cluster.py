"""The cluster engine: jobs per minute on 1, 2, 4... GPU worker processes through PostgreSQL.

``python -m bot.bench cluster --workers 1,2,4 --jobs 40 [--database-url URL]``. Without a URL a
private PostgreSQL is started (as the tests do) and removed afterwards. Each N gets a fresh
database, N ``python -m bot.gpu_worker`` processes on the stand-in pipeline with a *sleeping*
step (so the figure measures the engine, not this machine's CPU), and this process as the bot:
the real Scheduler and PostgresExecutor. Four users submit the jobs at once.

- ``jobs_per_minute`` per N, and ``speedup`` against the first N;
- ``dispatch_ms``: from a worker finishing a job (procrastinate's event) to the next job starting
  on a free worker (its event), while jobs were waiting: p50 and p99 over every N;
- ``progress_ms``: from a worker writing a progress row to the bot's scheduler listener (where
  the publisher sits) receiving it: p50 and p99.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.config import ClusterConfig, SchedulerConfig
from bot.events import JobProgress, SchedulerEvent
from bot.jobs import JobKind, JobRequest

USERS = 4


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _worker_config(cluster: ClusterConfig, step_seconds: float) -> str:
    return (
        '[scheduler]\npipeline = "stand-in"\n'
        f'[scheduler.stand_in]\nwork = "sleep"\nstep_seconds = {step_seconds}\nimage_size = 32\n'
        f'[cluster]\ndatabase_url = "{cluster.database_url}"\nqueue = "{cluster.queue}"\n'
        f"stall_timeout_seconds = {cluster.stall_timeout_seconds}\n"
        f"progress_interval_seconds = {cluster.progress_interval_seconds}\n"
        f"poll_interval_seconds = {cluster.poll_interval_seconds}\n"
        '[logging]\nlevel = "WARNING"\n'
    )


def _fresh_database(server_url: str, name: str) -> str:
    import psycopg
    from procrastinate import SyncPsycopgConnector
    from procrastinate.schema import SchemaManager

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")  # type: ignore[arg-type]
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    connector = SyncPsycopgConnector(conninfo=url)
    connector.open()
    try:
        SchemaManager(connector).apply_schema()
    finally:
        connector.close()
    return url


async def _run_n(server_url: str, n: int, args: Any, folder: Path) -> dict:
    import psycopg

    from bot.cluster.executor import PostgresExecutor
    from bot.scheduler import Scheduler
    from bot.store import Store

    url = _fresh_database(server_url, f"faraday_bench_{n}")
    cluster = replace(ClusterConfig(), database_url=url, queue="bench",
                      progress_interval_seconds=args.progress_interval,
                      poll_interval_seconds=1.0)
    config_path = folder / f"worker-{n}.toml"
    config_path.write_text(_worker_config(cluster, args.step_seconds))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "bot.gpu_worker", "--config",
                               str(config_path), "--name", f"bench-{n}-{i}"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(n)]
    store = await Store.open(folder / f"bot-{n}" / "faraday.sqlite3", folder / f"bot-{n}")
    executor = PostgresExecutor(store, cluster)
    scheduler = Scheduler(store, None, SchedulerConfig(max_queued_per_user=10_000,
                                                       max_queued_total=100_000),
                          executor=executor)
    progress_ms: list[float] = []

    def listener(event: SchedulerEvent) -> None:
        if isinstance(event, JobProgress):
            sent = executor.progress_sent_at.get(event.job.job_id)
            if sent is not None:
                progress_ms.append(max(0.0, time.time() - sent) * 1000)

    scheduler.add_listener(listener)
    try:
        await scheduler.start()
        deadline = time.monotonic() + 180
        while executor.free_slots() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {executor.free_slots()} of {n} workers started")
            await asyncio.sleep(0.2)
        started = time.monotonic()
        for index in range(args.jobs):
            await scheduler.submit(JobRequest(JobKind.IMAGINE, index % USERS, 1, None,
                                              {"steps": args.steps, "seed": index}))
        await scheduler.wait_idle()
        wall = time.monotonic() - started
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT type::text, extract(epoch FROM at) FROM procrastinate_events"
                " WHERE type IN ('started', 'succeeded', 'failed', 'aborted') ORDER BY at"
            ).fetchall()
    finally:
        await scheduler.shutdown(grace_seconds=5)
        await store.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    starts = [float(at) for kind, at in rows if kind == "started"]
    frees = [float(at) for kind, at in rows if kind != "started"]
    # With jobs waiting, the i-th slot to free is taken by the (n + i)-th job to start.
    dispatch_ms = [(s - f) * 1000 for f, s in zip(frees, starts[n:], strict=False) if s >= f]
    return {"workers": n, "jobs_per_minute": round(args.jobs / wall * 60, 2),
            "dispatch": dispatch_ms, "progress": progress_ms}




async def _main(args: Any) -> dict:
    from bot.cluster.private_pg import create_cluster

    counts = [int(part) for part in args.workers.split(",") if part.strip()]
    server = None
    server_url = args.database_url
    if not server_url:
        server = create_cluster()
        server_url = server.url()
    try:
        with tempfile.TemporaryDirectory(prefix="faraday-bench-cluster-") as folder:
            runs = [await _run_n(server_url, n, args, Path(folder)) for n in counts]
    finally:
        if server is not None:
            server.remove()
    base = runs[0]["jobs_per_minute"]
    dispatch = [v for run in runs for v in run["dispatch"]]
    progress = [v for run in runs for v in run["progress"]]
    return {
        "bench": "cluster",
        "jobs": args.jobs,
        "job_seconds": args.steps * args.step_seconds,
        "jobs_per_minute": {str(r["workers"]): r["jobs_per_minute"] for r in runs},
        "speedup": {str(r["workers"]): round(r["jobs_per_minute"] / base, 2) for r in runs},
        "dispatch_ms": {"p50": _round(_percentile(dispatch, 50)),
                        "p99": _round(_percentile(dispatch, 99)), "samples": len(dispatch)},
        "progress_ms": {"p50": _round(_percentile(progress, 50)),
                        "p99": _round(_percentile(progress, 99)), "samples": len(progress)},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run(args: Any) -> int:
    try:
        figures = asyncio.run(_main(args))
    except Exception as exc:  # one line for the command line, not a traceback
        print(f"error: the cluster benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures))
    return 0


def add_parser(benches: Any) -> None:
    parser = benches.add_parser("cluster", help=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts, e.g. 1,2,4")
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--database-url", default="",
                        help="a PostgreSQL to use (default: start a private one)")
    parser.add_argument("--steps", type=int, default=20, help="steps per job")
    parser.add_argument("--step-seconds", type=float, default=0.05,
                        help="sleep per step on the workers")
    parser.add_argument("--progress-interval", type=float, default=0.2,
                        help="[cluster] progress_interval_seconds on the workers")
    parser.set_defaults(run=run)
