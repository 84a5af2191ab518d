"""The store's tables for server owners: settings overrides, the block lists, user preferences,
and deleting everything of one user (/purge).

It shares :class:`bot.store.Store`'s one connection and write lock, so its writes never
interleave with a job's transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from bot.blocklist import BlockedTerm, TermKind
from bot.runtime_settings import Scope
from bot.store import Store


@dataclass(frozen=True)
class PurgeReport:
    job_ids: list[int]
    messages: list[tuple[int, int]]  # (channel id, message id) to delete on Discord


class OwnerStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._db = store._db

    async def _write(self, sql: str, parameters: tuple | list = ()) -> int:
        cursor = await self.store._write(sql, parameters)
        return cursor.rowcount

    async def _rows(self, sql: str, parameters: tuple | list = ()) -> list[Any]:
        async with self._db.execute(sql, parameters) as cursor:
            return list(await cursor.fetchall())

    # -- settings ----------------------------------------------------------------------------

    async def all_settings(self) -> list[tuple[Scope, int, str, Any]]:
        rows = await self._rows("SELECT scope, scope_id, key, value_json FROM settings")
        return [(Scope(r[0]), int(r[1]), r[2], json.loads(r[3])) for r in rows]

    async def set_setting(self, scope: Scope, scope_id: int, key: str, value: Any, by: int) -> None:
        await self._write(
            "INSERT OR REPLACE INTO settings (scope, scope_id, key, value_json, updated_by,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (scope.value, scope_id, key, json.dumps(value), by, time.time()),
        )

    async def delete_settings(self, scope: Scope, scope_id: int, key: str | None) -> int:
        if key is None:
            return await self._write(
                "DELETE FROM settings WHERE scope = ? AND scope_id = ?", (scope.value, scope_id)
            )
        return await self._write(
            "DELETE FROM settings WHERE scope = ? AND scope_id = ? AND key = ?",
            (scope.value, scope_id, key),
        )

    # -- block lists -------------------------------------------------------------------------

    async def all_terms(self) -> list[tuple[Scope, int, BlockedTerm]]:
        rows = await self._rows(
            "SELECT scope, scope_id, kind, term FROM blocked_terms ORDER BY added_at"
        )
        return [(Scope(r[0]), int(r[1]), BlockedTerm(TermKind(r[2]), r[3])) for r in rows]

    async def add_term(self, scope: Scope, scope_id: int, term: BlockedTerm, by: int) -> None:
        await self._write(
            "INSERT OR REPLACE INTO blocked_terms (scope, scope_id, kind, term, added_by,"
            " added_at) VALUES (?, ?, ?, ?, ?, ?)",
            (scope.value, scope_id, term.kind.value, term.text, by, time.time()),
        )

    async def remove_term(self, scope: Scope, scope_id: int, text: str) -> int:
        return await self._write(
            "DELETE FROM blocked_terms WHERE scope = ? AND scope_id = ? AND term = ?",
            (scope.value, scope_id, text),
        )

    async def blocked_users(self) -> list[int]:
        return [int(r[0]) for r in await self._rows("SELECT user_id FROM blocked_users")]

    async def block_user(self, user_id: int, by: int) -> None:
        await self._write(
            "INSERT OR REPLACE INTO blocked_users (user_id, blocked_by, blocked_at)"
            " VALUES (?, ?, ?)",
            (user_id, by, time.time()),
        )

    async def unblock_user(self, user_id: int) -> bool:
        return await self._write("DELETE FROM blocked_users WHERE user_id = ?", (user_id,)) > 0

    # -- quotas ------------------------------------------------------------------------------

    async def jobs_since(self, user_id: int, guild_id: int | None, since: float) -> int:
        """Jobs the user submitted in the server (``None``: in direct messages) since ``since``
        (Unix time), whatever became of them: counted from the append-only submissions ledger,
        so deleting a job does not give it back."""
        rows = await self._rows(
            "SELECT COUNT(*) FROM submissions WHERE user_id = ? AND guild_id IS ?"
            " AND created_at >= ?",
            (user_id, guild_id, since),
        )
        return int(rows[0][0])

    async def oldest_job_since(
        self, user_id: int, guild_id: int | None, since: float
    ) -> float | None:
        rows = await self._rows(
            "SELECT MIN(created_at) FROM submissions WHERE user_id = ? AND guild_id IS ?"
            " AND created_at >= ?",
            (user_id, guild_id, since),
        )
        return rows[0][0]

    # -- purge -------------------------------------------------------------------------------

    async def purge_user(self, user_id: int) -> PurgeReport:
        """Delete every finished job of the user with its results, message links and files.

        Jobs still queued or running are left alone: the caller cancels them and waits first,
        so a worker never writes results for a row that is gone.
        """
        rows = await self._rows(
            "SELECT id FROM jobs WHERE user_id = ? AND status IN ('done', 'failed', 'cancelled')",
            (user_id,),
        )
        ids = [int(r[0]) for r in rows]
        if not ids:
            return PurgeReport([], [])
        marks = ",".join("?" * len(ids))
        messages = [
            (int(r[0]), int(r[1]))
            for r in await self._rows(
                f"SELECT channel_id, message_id FROM messages WHERE job_id IN ({marks})", ids
            )
        ]
        # The same deletion as retention and the 🗑 button: rows, results, frames, unused inputs.
        await self.store.delete_jobs(ids)
        return PurgeReport(ids, messages)
