"""What the store says about past jobs: one user's history (/history) and the figures for admins
(/stats). Read-only queries on the jobs, results and messages tables.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from bot.jobs import JobKind, JobStatus
from bot.store import Store

DAY = 86_400.0
STATS_DAYS = 7
BUSIEST_USERS = 5
REASON_CHARS = 80


@dataclass(frozen=True)
class HistoryEntry:
    job_id: int
    kind: JobKind
    status: JobStatus
    prompt: str
    seed: int | None
    created_at: float
    guild_id: int | None
    channel_id: int
    # The message that shows the job (its results, else its progress), if one was posted.
    message: tuple[int, int] | None  # (channel id, message id)


@dataclass(frozen=True)
class HistoryPage:
    entries: list[HistoryEntry]
    page: int  # 0-based
    pages: int  # at least 1
    total: int


async def history_page(store: Store, user_id: int, page: int, per_page: int) -> HistoryPage:
    """The user's jobs, newest first; a page past the end shows the last one."""
    async with store._db.execute(
        "SELECT COUNT(*) FROM jobs WHERE user_id = ?", (user_id,)
    ) as cursor:
        row = await cursor.fetchone()
    total = int(row[0]) if row else 0
    pages = max(1, -(-total // per_page))
    page = min(max(page, 0), pages - 1)
    async with store._db.execute(
        "SELECT j.id, j.kind, j.status, j.request_json, j.created_at, j.guild_id, j.channel_id,"
        " (SELECT m.channel_id || ':' || m.message_id FROM messages m WHERE m.job_id = j.id"
        "  ORDER BY m.role = 'results' DESC, m.created_at DESC LIMIT 1) AS shown"
        " FROM jobs j WHERE j.user_id = ? ORDER BY j.id DESC LIMIT ? OFFSET ?",
        (user_id, per_page, page * per_page),
    ) as cursor:
        rows = await cursor.fetchall()
    entries = []
    for r in rows:
        params = json.loads(r["request_json"]).get("params", {})
        shown = r["shown"]
        message = tuple(int(p) for p in shown.split(":")) if shown else None
        entries.append(
            HistoryEntry(
                job_id=r["id"],
                kind=JobKind(r["kind"]),
                status=JobStatus(r["status"]),
                prompt=str(params.get("prompt", "")),
                seed=params.get("seed"),
                created_at=r["created_at"],
                guild_id=r["guild_id"],
                channel_id=r["channel_id"],
                message=message,  # type: ignore[arg-type]
            )
        )
    return HistoryPage(entries, page, pages, total)


@dataclass(frozen=True)
class KindTimes:
    kind: str
    jobs: int
    median_wait_seconds: float | None
    median_run_seconds: float | None


@dataclass(frozen=True)
class Stats:
    days: list[tuple[str, int]]  # (YYYY-MM-DD, jobs submitted), oldest first, STATS_DAYS of them
    times: list[KindTimes]
    failures: list[tuple[str, int]]  # (reason, count), most first
    queue_length: int  # waiting or running now
    busiest: list[tuple[int, int]]  # (user id, jobs) over the period, most first


async def stats(store: Store, now: float | None = None) -> Stats:
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, timezone.utc).date()
    first_day = today - timedelta(days=STATS_DAYS - 1)
    since = datetime(
        first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc
    ).timestamp()
    db = store._db

    async def rows(sql: str, parameters: tuple = ()) -> list:
        async with db.execute(sql, parameters) as cursor:
            return list(await cursor.fetchall())

    per_day = dict(
        await rows(
            "SELECT date(created_at, 'unixepoch'), COUNT(*) FROM jobs WHERE created_at >= ?"
            " GROUP BY 1",
            (since,),
        )
    )
    days = [
        (
            (first_day + timedelta(days=i)).isoformat(),
            int(per_day.get((first_day + timedelta(days=i)).isoformat(), 0)),
        )
        for i in range(STATS_DAYS)
    ]
    waits: dict[str, list[float]] = {}
    runs: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for kind, created, started, finished, status in await rows(
        "SELECT kind, created_at, started_at, finished_at, status FROM jobs WHERE created_at >= ?",
        (since,),
    ):
        counts[kind] = counts.get(kind, 0) + 1
        if started is not None:
            waits.setdefault(kind, []).append(started - created)
            if finished is not None and status == JobStatus.DONE.value:
                runs.setdefault(kind, []).append(finished - started)
    times = [
        KindTimes(
            kind,
            counts[kind],
            statistics.median(waits[kind]) if waits.get(kind) else None,
            statistics.median(runs[kind]) if runs.get(kind) else None,
        )
        for kind in sorted(counts)
    ]
    failures: dict[str, int] = {}
    for (error,) in await rows(
        "SELECT error FROM jobs WHERE status = 'failed' AND created_at >= ?", (since,)
    ):
        reason = (error or "no reason recorded").splitlines()[0]
        reason = reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"
        failures[reason] = failures.get(reason, 0) + 1
    queue = await rows("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")
    busiest = [
        (int(u), int(n))
        for u, n in await rows(
            "SELECT user_id, COUNT(*) AS n FROM jobs WHERE created_at >= ? GROUP BY user_id"
            " ORDER BY n DESC, user_id LIMIT ?",
            (since, BUSIEST_USERS),
        )
    ]
    return Stats(
        days=days,
        times=times,
        failures=sorted(failures.items(), key=lambda item: (-item[1], item[0])),
        queue_length=int(queue[0][0]),
        busiest=busiest,
    )
