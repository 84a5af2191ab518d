"""The bot's durable state: jobs, their results and the Discord messages that show them.

SQLite through aiosqlite, in WAL mode so readers never wait for the writer. The schema is
versioned with ``PRAGMA user_version`` and migrated forward at start-up.

Input images are not stored in the rows. Each is written (atomically, content-addressed) to
``data/inputs/`` and the job's JSON names the file. Attachments can be megabytes; kept out of the
rows they do not bloat the WAL, the recovery scan over queued jobs stays cheap, and a continuation
that reuses a result image stores nothing new. Files are always written before the row that names
them commits, so a committed row never points at a missing or partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiosqlite

from bot.files import DataPaths, write_atomic
from bot.jobs import JobKind, JobRequest, JobStatus

log = logging.getLogger(__name__)

INTERRUPTED_TWICE = "interrupted twice (the bot stopped while this job ran, two times)"

# Each entry moves the schema from version i to i + 1. Never edit a shipped entry; append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        user_id INTEGER NOT NULL,
        channel_id INTEGER NOT NULL,
        guild_id INTEGER,
        request_json TEXT NOT NULL,
        status TEXT NOT NULL,
        fair_round INTEGER NOT NULL,
        interruptions INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        error TEXT,
        preview_path TEXT,
        parent_result_id INTEGER REFERENCES results(id) ON DELETE SET NULL
    );
    CREATE INDEX jobs_status_order ON jobs(status, fair_round, id);
    CREATE INDEX jobs_user ON jobs(user_id);
    CREATE TABLE results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        rank INTEGER NOT NULL,
        score REAL NOT NULL,
        seed INTEGER NOT NULL,
        path TEXT NOT NULL,
        UNIQUE (job_id, rank)
    );
    CREATE TABLE messages (
        message_id INTEGER PRIMARY KEY,
        channel_id INTEGER NOT NULL,
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('progress', 'results')),
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_job ON messages(job_id, role);
    """,
    # Runtime settings (/settings, per server or channel), the prompt block list and blocked
    # users (bot.owner_store).
    """
    CREATE TABLE settings (
        scope TEXT NOT NULL CHECK (scope IN ('global', 'server', 'channel')),
        scope_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        value_json TEXT NOT NULL,
        updated_by INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (scope, scope_id, key)
    );
    CREATE TABLE blocked_terms (
        scope TEXT NOT NULL CHECK (scope IN ('server', 'channel')),
        scope_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('word', 'pattern')),
        term TEXT NOT NULL,
        added_by INTEGER,
        added_at REAL NOT NULL,
        PRIMARY KEY (scope, scope_id, term)
    );
    CREATE TABLE blocked_users (
        user_id INTEGER PRIMARY KEY,
        blocked_by INTEGER,
        blocked_at REAL NOT NULL
    );
    CREATE INDEX jobs_user_created ON jobs(user_id, created_at);
    """,
    # Per-user preferences (one row per user who changed one; a NULL column means "the server's
    # default"), and two more message roles: a result posted alone ("single", from a U button)
    # and a short notice that pings the requester when a job ends without a results message.
    """
    CREATE TABLE user_prefs (
        user_id INTEGER PRIMARY KEY,
        ping INTEGER CHECK (ping IN (0, 1)),
        updated_at REAL NOT NULL
    );
    CREATE TABLE messages_new (
        message_id INTEGER PRIMARY KEY,
        channel_id INTEGER NOT NULL,
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('progress', 'results', 'single', 'notice')),
        created_at REAL NOT NULL
    );
    INSERT INTO messages_new SELECT message_id, channel_id, job_id, role, created_at FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_new RENAME TO messages;
    CREATE INDEX messages_job ON messages(job_id, role);
    """,
    # The image safety check: a result posted blurred, and how many results were withheld.
    """
    ALTER TABLE results ADD COLUMN flagged INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN withheld INTEGER NOT NULL DEFAULT 0;
    """,
    # /prefs: a user's preferred defaults (kept within each channel's bounds when used) and
    # whether to get a copy of their results by direct message.
    """
    ALTER TABLE user_prefs ADD COLUMN imagine_steps INTEGER;
    ALTER TABLE user_prefs ADD COLUMN imagine_candidates INTEGER;
    ALTER TABLE user_prefs ADD COLUMN imagine_size TEXT;
    ALTER TABLE user_prefs ADD COLUMN edit_steps INTEGER;
    ALTER TABLE user_prefs ADD COLUMN edit_candidates INTEGER;
    ALTER TABLE user_prefs ADD COLUMN dm INTEGER CHECK (dm IN (0, 1));
    """,
    # The daily quota's ledger: one row per job ever submitted, never deleted with the job (🗑,
    # /purge and retention delete jobs rows), so deleting a job does not give a submission back.
    # A trigger writes it in the job's own INSERT, so no path can queue a job without a row.
    """
    CREATE TABLE submissions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL,
        guild_id INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX submissions_user_created ON submissions(user_id, created_at);
    INSERT INTO submissions (user_id, guild_id, created_at)
        SELECT user_id, guild_id, created_at FROM jobs;
    CREATE TRIGGER jobs_submission_ledger AFTER INSERT ON jobs BEGIN
        INSERT INTO submissions (user_id, guild_id, created_at)
            VALUES (NEW.user_id, NEW.guild_id, NEW.created_at);
    END;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreUnusable(RuntimeError):
    """The data folder or the database cannot be used; ``str(exc)`` says which and why, in one
    line for the server owner."""


@dataclass(frozen=True)
class JobRecord:
    id: int
    request: JobRequest
    status: JobStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    parent_result_id: int | None
    fair_round: int
    interruptions: int
    total_steps: int | None
    preview_path: Path | None  # the last preview of a cancelled job, when there was one
    # The input files' stored names (relative to the data folder), by request field.
    stored_images: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueuedJob:
    """A job's scheduling facts without its input images (what the queue needs to order it)."""

    id: int
    kind: JobKind
    user_id: int
    channel_id: int
    fair_round: int
    params: dict[str, Any]
    status: JobStatus
    guild_id: int | None = None
    parent_result_id: int | None = None
    stored_images: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultRecord:
    id: int
    job_id: int
    rank: int
    score: float
    seed: int
    path: Path  # absolute; a PNG under data/results/
    flagged: bool = False  # by the image safety check; the file is the blurred image


@dataclass(frozen=True)
class NewResult:
    """A result whose image file is already on disk, waiting for its row."""

    rank: int
    score: float
    seed: int
    path: Path
    flagged: bool = False


@dataclass(frozen=True)
class MessageLink:
    message_id: int
    channel_id: int
    job_id: int
    role: str  # "progress" | "results" | "single" | "notice"


@dataclass(frozen=True)
class UserPrefs:
    """A user's own choices. ``None`` means they never chose: the server's default applies.

    One column of ``user_prefs`` per field; a new preference is a migration adding a nullable
    column plus a field here.
    """

    ping: bool | None = None
    # Preferred defaults, used within the channel's bounds (bot.runtime_settings.apply_prefs).
    imagine_steps: int | None = None
    imagine_candidates: int | None = None
    imagine_size: str | None = None  # "WIDTHxHEIGHT"
    edit_steps: int | None = None
    edit_candidates: int | None = None
    # A copy of each finished job's results by direct message (bot.dm_copies).
    dm: bool | None = None

    def option_prefs(self) -> dict[str, Any]:
        """The preferred defaults that are set, keyed "command.option"."""
        chosen = {
            "imagine.steps": self.imagine_steps,
            "imagine.candidates": self.imagine_candidates,
            "imagine.size": self.imagine_size,
            "edit.steps": self.edit_steps,
            "edit.candidates": self.edit_candidates,
        }
        return {key: value for key, value in chosen.items() if value is not None}

    def pings(self) -> bool:
        """Whether to ping this user when their job ends (on unless they turned it off)."""
        return self.ping is not False


@dataclass(frozen=True)
class RecoveryReport:
    requeued: list[int]
    failed: list[int]
    queued: list[int]  # every job now waiting, in run order


@dataclass(frozen=True)
class StepTiming:
    kind: JobKind
    params: dict[str, Any]
    seconds_per_step: float


class Store:
    def __init__(
        self, db: aiosqlite.Connection, paths: DataPaths, *, sync_commits: bool = False
    ) -> None:
        self._db = db
        self.paths = paths
        # Files named by rows follow the same durability as the rows themselves.
        self.sync_commits = sync_commits
        # One connection serves every coroutine: writes take this lock so that no statement
        # can slip into (or be rolled back with) another coroutine's transaction.
        self._write_lock = asyncio.Lock()

    async def _write(self, sql: str, parameters: tuple | list = ()) -> aiosqlite.Cursor:
        async with self._write_lock:
            return await self._db.execute(sql, parameters)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    @classmethod
    async def open(cls, database: Path, data_dir: Path, *, sync_commits: bool = False) -> Store:
        """Open (creating and migrating) the database.

        In WAL mode every commit survives a crash of the bot's process. ``sync_commits`` also
        flushes each commit to the disk, so it survives power loss too, at about one fsync per
        commit (three per job).
        """
        paths = DataPaths(Path(data_dir))

        def make_dirs() -> None:
            paths.make_dirs()
            database.parent.mkdir(parents=True, exist_ok=True)

        try:
            await asyncio.to_thread(make_dirs)
        except OSError as exc:
            raise StoreUnusable(
                f"the data folder {str(data_dir)!r} cannot be created or written: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            # Autocommit: each single-statement write commits by itself (one hop to the
            # connection's thread, not two); multi-statement changes use explicit transactions.
            db = await aiosqlite.connect(database, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnusable(f"the database {str(database)!r} cannot be opened: {exc}") from exc
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute(f"PRAGMA synchronous={'FULL' if sync_commits else 'NORMAL'}")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            store = cls(db, paths, sync_commits=sync_commits)
            await store._migrate()
        except sqlite3.Error as exc:
            await db.close()
            raise StoreUnusable(f"the database {str(database)!r} cannot be used: {exc}") from exc
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreUnusable(
                f"the database schema is version {version}, newer than this bot knows "
                f"({SCHEMA_VERSION}); upgrade the bot or use another storage.database"
            )
        for index in range(version, SCHEMA_VERSION):
            log.info("migrating the database schema to version %d", index + 1)
            await self._db.executescript(
                f"BEGIN; {MIGRATIONS[index]} PRAGMA user_version = {index + 1}; COMMIT;"
            )

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # -- jobs --------------------------------------------------------------------------------

    async def insert_job(self, request: JobRequest, fair_round: int) -> JobRecord:
        """Persist a new queued job; its input images are on disk before the row commits."""
        images_json = await asyncio.to_thread(self._write_inputs, request.images)
        document = {
            "kind": request.kind.value,
            "user_id": request.user_id,
            "channel_id": request.channel_id,
            "guild_id": request.guild_id,
            "params": request.params,
            "images": images_json,
            "parent_result_id": request.parent_result_id,
        }
        now = time.time()
        cursor = await self._write(
            "INSERT INTO jobs (kind, user_id, channel_id, guild_id, request_json, status,"
            " fair_round, created_at, parent_result_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request.kind.value,
                request.user_id,
                request.channel_id,
                request.guild_id,
                json.dumps(document),
                JobStatus.QUEUED.value,
                fair_round,
                now,
                request.parent_result_id,
            ),
        )
        job_id = cursor.lastrowid
        assert job_id is not None
        return JobRecord(
            id=job_id,
            request=request,
            status=JobStatus.QUEUED,
            created_at=now,
            started_at=None,
            finished_at=None,
            error=None,
            parent_result_id=request.parent_result_id,
            fair_round=fair_round,
            interruptions=0,
            total_steps=None,
            preview_path=None,
            stored_images=images_json,
        )

    def _write_inputs(self, images: dict[str, bytes | list[bytes]]) -> dict[str, Any]:
        def one(data: bytes) -> str:
            path = self.paths.input_path(data)
            if not path.exists():
                write_atomic(path, data, durable=self.sync_commits)
            return self.paths.relative(path)

        return {
            name: [one(d) for d in value] if isinstance(value, list) else one(value)
            for name, value in images.items()
        }

    def load_request(self, job: QueuedJob) -> JobRequest:
        """The full request of a waiting job, input images read from disk. Blocking: it runs on
        the worker thread, so the event loop never reads the (possibly large) files."""
        return JobRequest(
            kind=job.kind,
            user_id=job.user_id,
            channel_id=job.channel_id,
            guild_id=job.guild_id,
            params=job.params,
            images=self._read_inputs(job.stored_images),
            parent_result_id=job.parent_result_id,
        )

    def _read_inputs(self, images: dict[str, Any]) -> dict[str, bytes | list[bytes]]:
        def one(stored: str) -> bytes:
            return self.paths.absolute(stored).read_bytes()

        return {
            name: [one(s) for s in value] if isinstance(value, list) else one(value)
            for name, value in images.items()
        }

    async def get_job(self, job_id: int) -> JobRecord | None:
        async with self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        document = json.loads(row["request_json"])
        stored_images = document.get("images", {})
        images = await asyncio.to_thread(self._read_inputs, stored_images) if stored_images else {}
        request = JobRequest(
            kind=JobKind(document["kind"]),
            user_id=document["user_id"],
            channel_id=document["channel_id"],
            guild_id=document["guild_id"],
            params=document["params"],
            images=images,
            parent_result_id=document.get("parent_result_id"),
        )
        preview = row["preview_path"]
        return JobRecord(
            id=row["id"],
            request=request,
            status=JobStatus(row["status"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
            parent_result_id=row["parent_result_id"],
            fair_round=row["fair_round"],
            interruptions=row["interruptions"],
            total_steps=row["total_steps"],
            preview_path=self.paths.absolute(preview) if preview else None,
            stored_images=stored_images,
        )

    async def job_status(self, job_id: int) -> JobStatus | None:
        async with self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return JobStatus(row[0]) if row else None

    async def pending_jobs(self) -> list[QueuedJob]:
        """Queued and running jobs, in run order (fair round, then arrival)."""
        async with self._db.execute(
            "SELECT id, kind, user_id, channel_id, fair_round, request_json, status FROM jobs"
            " WHERE status IN ('queued', 'running') ORDER BY fair_round, id"
        ) as cursor:
            rows = await cursor.fetchall()
        jobs = []
        for row in rows:
            document = json.loads(row["request_json"])
            jobs.append(QueuedJob(
                id=row["id"],
                kind=JobKind(row["kind"]),
                user_id=row["user_id"],
                channel_id=row["channel_id"],
                fair_round=row["fair_round"],
                params=document["params"],
                status=JobStatus(row["status"]),
                guild_id=document.get("guild_id"),
                parent_result_id=document.get("parent_result_id"),
                stored_images=document.get("images", {}),
            ))
        return jobs

    async def last_run_round_by_user(self) -> dict[int, int]:
        """Each user's latest round that one of their jobs started in. Jobs cancelled before
        they ran are left out: they never took their turn, so they must not delay the next."""
        async with self._db.execute(
            "SELECT user_id, MAX(fair_round) FROM jobs WHERE started_at IS NOT NULL"
            " GROUP BY user_id"
        ) as cursor:
            rows = await cursor.fetchall()
        return {int(row[0]): int(row[1]) for row in rows}

    async def last_started_round(self) -> int:
        async with self._db.execute(
            "SELECT MAX(fair_round) FROM jobs WHERE started_at IS NOT NULL"
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def mark_running(self, job_id: int, total_steps: int | None) -> None:
        await self._write(
            "UPDATE jobs SET status = 'running', started_at = ?, total_steps = ? WHERE id = ?",
            (time.time(), total_steps, job_id),
        )

    async def requeue(self, job_id: int) -> None:
        """Put a running job back in the queue after a clean shutdown (not an interruption)."""
        await self._write(
            "UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'running'", (job_id,)
        )

    async def finish_job(
        self,
        job_id: int,
        status: JobStatus,
        error: str | None = None,
        preview_path: Path | None = None,
    ) -> bool:
        """Mark a queued or running job failed or cancelled. False if it had already finished."""
        assert status in (JobStatus.FAILED, JobStatus.CANCELLED)
        cursor = await self._write(
            "UPDATE jobs SET status = ?, finished_at = ?, error = ?, preview_path = ?"
            " WHERE id = ? AND status IN ('queued', 'running')",
            (
                status.value,
                time.time(),
                error,
                self.paths.relative(preview_path) if preview_path else None,
                job_id,
            ),
        )
        return cursor.rowcount > 0

    async def complete_job(
        self, job_id: int, results: Iterable[NewResult], withheld: int = 0
    ) -> list[ResultRecord]:
        """Record a job's results (files already written) and mark it done, in one transaction.

        ``withheld`` counts results the image safety check held back (they have no row).
        """
        rows: list[ResultRecord] = []
        async with self._transaction() as db:
            # A job that ran again after a crash replaces its rows rather than duplicating them.
            await db.execute("DELETE FROM results WHERE job_id = ?", (job_id,))
            for result in results:
                cursor = await db.execute(
                    "INSERT INTO results (job_id, rank, score, seed, path, flagged)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, result.rank, result.score, result.seed,
                     self.paths.relative(result.path), int(result.flagged)),
                )
                assert cursor.lastrowid is not None
                rows.append(
                    ResultRecord(cursor.lastrowid, job_id, result.rank, result.score, result.seed,
                                 result.path, result.flagged)
                )
            await db.execute(
                "UPDATE jobs SET status = 'done', finished_at = ?, error = NULL, withheld = ?"
                " WHERE id = ?",
                (time.time(), withheld, job_id),
            )
        return rows

    async def recover(self, keep_running: Collection[int] = ()) -> RecoveryReport:
        """After a crash: jobs left running are re-queued once, then failed (interrupted twice).

        Jobs in ``keep_running`` are still running elsewhere (a GPU worker outlives the bot) and
        are left as they are.
        """
        async with self._db.execute(
            "SELECT id, interruptions FROM jobs WHERE status = 'running' ORDER BY id"
        ) as cursor:
            rows = [row for row in await cursor.fetchall() if row["id"] not in keep_running]
        requeued: list[int] = []
        failed: list[int] = []
        now = time.time()
        async with self._transaction() as db:
            for row in rows:
                if row["interruptions"] >= 1:
                    failed.append(row["id"])
                    await db.execute(
                        "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?,"
                        " interruptions = interruptions + 1 WHERE id = ?",
                        (INTERRUPTED_TWICE, now, row["id"]),
                    )
                else:
                    requeued.append(row["id"])
                    await db.execute(
                        "UPDATE jobs SET status = 'queued', interruptions = interruptions + 1"
                        " WHERE id = ?",
                        (row["id"],),
                    )
        queued = [job.id for job in await self.pending_jobs()]
        return RecoveryReport(requeued=requeued, failed=failed, queued=queued)

    async def interrupt(self, job_id: int) -> bool:
        """A running job's worker died: re-queue it (True) the first time, fail it the second.

        Counts like a crash of the bot does, with the same "interrupted twice" message.
        """
        async with self._db.execute(
            "SELECT interruptions FROM jobs WHERE id = ? AND status = 'running'", (job_id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return False
        if row["interruptions"] >= 1:
            await self._write(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?,"
                " interruptions = interruptions + 1 WHERE id = ? AND status = 'running'",
                (INTERRUPTED_TWICE, time.time(), job_id),
            )
            return False
        await self._write(
            "UPDATE jobs SET status = 'queued', interruptions = interruptions + 1"
            " WHERE id = ? AND status = 'running'",
            (job_id,),
        )
        return True

    async def recent_step_timings(self, limit: int) -> list[StepTiming]:
        """Seconds per step of the latest finished jobs, to seed ETAs after a restart."""
        async with self._db.execute(
            "SELECT kind, request_json, started_at, finished_at, total_steps FROM jobs"
            " WHERE status = 'done' AND total_steps > 0 AND started_at IS NOT NULL"
            " ORDER BY finished_at DESC LIMIT ?",
            (limit,),
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            StepTiming(
                kind=JobKind(row["kind"]),
                params=json.loads(row["request_json"])["params"],
                seconds_per_step=(row["finished_at"] - row["started_at"]) / row["total_steps"],
            )
            for row in reversed(rows)
        ]

    async def unannounced_done_jobs(self, finished_since: float) -> list[JobRecord]:
        """Jobs that finished (after ``finished_since``, a Unix time) without a results message:
        the bot stopped between committing their results and posting them."""
        async with self._db.execute(
            "SELECT id FROM jobs j WHERE status = 'done' AND finished_at >= ? AND NOT EXISTS"
            " (SELECT 1 FROM messages m WHERE m.job_id = j.id AND m.role = 'results')"
            " ORDER BY finished_at, id",
            (finished_since,),
        ) as cursor:
            ids = [row[0] for row in await cursor.fetchall()]
        records = [await self.get_job(job_id) for job_id in ids]
        return [record for record in records if record is not None]

    async def count_jobs(self, status: JobStatus | None = None) -> int:
        query = "SELECT COUNT(*) FROM jobs" + (" WHERE status = ?" if status else "")
        async with self._db.execute(query, (status.value,) if status else ()) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # -- results -----------------------------------------------------------------------------

    def _result(self, row: aiosqlite.Row) -> ResultRecord:
        return ResultRecord(
            id=row["id"],
            job_id=row["job_id"],
            rank=row["rank"],
            score=row["score"],
            seed=row["seed"],
            path=self.paths.absolute(row["path"]),
            flagged=bool(row["flagged"]),
        )

    async def results_for_job(self, job_id: int) -> list[ResultRecord]:
        async with self._db.execute(
            "SELECT * FROM results WHERE job_id = ? ORDER BY rank", (job_id,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [self._result(row) for row in rows]

    async def withheld_count(self, job_id: int) -> int:
        """Results of the job the image safety check held back."""
        async with self._db.execute("SELECT withheld FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return int(row["withheld"]) if row else 0

    async def get_result(self, result_id: int) -> ResultRecord | None:
        async with self._db.execute("SELECT * FROM results WHERE id = ?", (result_id,)) as cursor:
            row = await cursor.fetchone()
        return self._result(row) if row else None

    # -- messages ----------------------------------------------------------------------------

    async def link_message(self, message_id: int, channel_id: int, job_id: int, role: str) -> None:
        await self._write(
            "INSERT OR REPLACE INTO messages (message_id, channel_id, job_id, role, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (message_id, channel_id, job_id, role, time.time()),
        )

    async def message_role(self, message_id: int) -> MessageLink | None:
        async with self._db.execute(
            "SELECT * FROM messages WHERE message_id = ?", (message_id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return MessageLink(row["message_id"], row["channel_id"], row["job_id"], row["role"])

    async def message_for_job(self, job_id: int, role: str) -> MessageLink | None:
        """The newest message showing ``job_id`` in ``role``."""
        async with self._db.execute(
            "SELECT * FROM messages WHERE job_id = ? AND role = ?"
            " ORDER BY created_at DESC, message_id DESC LIMIT 1",
            (job_id, role),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return MessageLink(row["message_id"], row["channel_id"], row["job_id"], row["role"])

    async def messages_for_job(self, job_id: int) -> list[MessageLink]:
        """Every message that shows ``job_id``, oldest first."""
        async with self._db.execute(
            "SELECT * FROM messages WHERE job_id = ? ORDER BY created_at, message_id", (job_id,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [MessageLink(r["message_id"], r["channel_id"], r["job_id"], r["role"]) for r in rows]

    async def derived_jobs(self, job_id: int, kind: JobKind) -> list[int]:
        """Jobs of ``kind`` made from one of ``job_id``'s results (its upscales, say)."""
        async with self._db.execute(
            "SELECT jobs.id FROM jobs JOIN results ON jobs.parent_result_id = results.id"
            " WHERE results.job_id = ? AND jobs.kind = ? ORDER BY jobs.id",
            (job_id, kind.value),
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def jobs_in_channel(self, channel_id: int) -> list[int]:
        """Every stored job whose messages go to ``channel_id``, oldest first."""
        async with self._db.execute(
            "SELECT id FROM jobs WHERE channel_id = ? ORDER BY id", (channel_id,)
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    # -- user preferences --------------------------------------------------------------------

    async def user_prefs(self, user_id: int) -> UserPrefs:
        async with self._db.execute(
            "SELECT * FROM user_prefs WHERE user_id = ?", (user_id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return UserPrefs()
        values: dict[str, Any] = {}
        for item in fields(UserPrefs):
            value = row[item.name]
            # SQLite keeps booleans as 0/1.
            is_flag = str(item.type).startswith("bool")
            values[item.name] = bool(value) if is_flag and value is not None else value
        return UserPrefs(**values)

    async def set_user_prefs(self, user_id: int, **changes: Any) -> UserPrefs:
        """Store the given preferences (``None`` resets one to the server's default)."""
        known = {item.name for item in fields(UserPrefs)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown preference(s): {', '.join(sorted(unknown))}")
        if changes:
            names = sorted(changes)
            columns = ", ".join(names)
            marks = ", ".join("?" * len(names))
            updates = ", ".join(f"{name} = excluded.{name}" for name in names)
            await self._write(
                f"INSERT INTO user_prefs (user_id, {columns}, updated_at) VALUES (?, {marks}, ?)"
                f" ON CONFLICT(user_id) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
                (user_id, *(changes[name] for name in names), time.time()),
            )
        return await self.user_prefs(user_id)

    # -- retention ---------------------------------------------------------------------------

    async def prune(self, older_than_days: int) -> int:
        """Delete finished jobs (with their results, messages and files) older than the limit.

        Returns how many jobs were removed. ``0`` days keeps everything.
        """
        if older_than_days <= 0:
            return 0
        cutoff = time.time() - older_than_days * 86_400
        async with self._db.execute(
            "SELECT id FROM jobs WHERE status IN ('done', 'failed', 'cancelled')"
            " AND finished_at < ?",
            (cutoff,),
        ) as cursor:
            ids = [row["id"] for row in await cursor.fetchall()]
        return await self.delete_jobs(ids)

    async def delete_jobs(self, ids: list[int]) -> int:
        """Delete these jobs with their results, message links and files; how many existed."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        async with self._db.execute(
            f"SELECT id, preview_path FROM jobs WHERE id IN ({marks})", ids
        ) as cursor:
            jobs = await cursor.fetchall()
        if not jobs:
            return 0
        ids = [row["id"] for row in jobs]
        marks = ",".join("?" * len(ids))
        async with self._db.execute(
            f"SELECT path FROM results WHERE job_id IN ({marks})", ids
        ) as cursor:
            files = [row["path"] for row in await cursor.fetchall()]
        files += [row["preview_path"] for row in jobs if row["preview_path"]]
        await self._write(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
        # Inputs are shared by content; keep those any remaining job still names.
        async with self._db.execute("SELECT request_json FROM jobs") as cursor:
            still_used = {
                stored
                for row in await cursor.fetchall()
                for stored in _stored_inputs(json.loads(row[0]).get("images", {}))
            }
        await asyncio.to_thread(self._delete_files, files, still_used, ids)
        return len(ids)

    def _delete_files(self, files: list[str], inputs_in_use: set[str], job_ids: list[int]) -> None:
        for stored in files:
            self.paths.absolute(stored).unlink(missing_ok=True)
        for job_id in job_ids:
            shutil.rmtree(self.paths.frames_dir(job_id), ignore_errors=True)
        for path in self.paths.inputs.glob("*.img"):
            if self.paths.relative(path) not in inputs_in_use:
                path.unlink(missing_ok=True)


def _stored_inputs(images: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for value in images.values():
        out.extend(value if isinstance(value, list) else [value])
    return out
