"""Fair order for waiting jobs: round-robin between users, first-in first-out within a user.

Each job gets a *round* when it is submitted: one more than its user's previous job's round, but
never earlier than the round now running. Jobs run in (round, arrival) order. That is round-robin
(every user with work gets one job per round, in order of arrival within the round) and FIFO per
user, and because the round is a number stored with the job, the exact order survives a restart.

A job removed before it ran (cancelled) gives its round back: the user's "previous job" is then
their latest job still waiting or already run, so cancelling and resubmitting does not push them
behind everyone else's queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(order=True)
class _Entry(Generic[T]):
    fair_round: int
    job_id: int
    user_id: int = field(compare=False)
    item: T = field(compare=False)


class FairQueue(Generic[T]):
    """Waiting jobs in run order. Sizes are small (hundreds), so a sorted list is plenty."""

    def __init__(
        self, current_round: int = 0, last_run_round_by_user: dict[int, int] | None = None
    ) -> None:
        self._entries: list[_Entry[T]] = []
        self._per_user: dict[int, int] = {}
        self.current_round = current_round
        # The round of each user's latest job that has started (it had its turn there).
        self._last_run_round = dict(last_run_round_by_user or {})
        # The round of each user's latest job, started or waiting.
        self._last_round = dict(self._last_run_round)

    def assign_round(self, user_id: int) -> int:
        """The round a new job of ``user_id`` goes into (not yet recorded)."""
        previous = self._last_round.get(user_id)
        if previous is None:
            return self.current_round
        return max(self.current_round, previous + 1)

    def push(self, job_id: int, user_id: int, fair_round: int, item: T) -> None:
        entry = _Entry(fair_round, job_id, user_id, item)
        # Insert keeping order; new jobs nearly always go at the end.
        index = len(self._entries)
        while index > 0 and self._entries[index - 1] > entry:
            index -= 1
        self._entries.insert(index, entry)
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        self._last_round[user_id] = max(self._last_round.get(user_id, fair_round), fair_round)

    def pop(self) -> tuple[int, T] | None:
        """Take the next job to run, moving the current round to its round."""
        if not self._entries:
            return None
        entry = self._entries.pop(0)
        self._per_user[entry.user_id] -= 1
        self.current_round = max(self.current_round, entry.fair_round)
        self._last_run_round[entry.user_id] = max(
            self._last_run_round.get(entry.user_id, entry.fair_round), entry.fair_round
        )
        return entry.job_id, entry.item

    def remove(self, job_id: int) -> T | None:
        for index, entry in enumerate(self._entries):
            if entry.job_id == job_id:
                del self._entries[index]
                self._per_user[entry.user_id] -= 1
                self._forget_round(entry.user_id)
                return entry.item
        return None

    def _forget_round(self, user_id: int) -> None:
        """Recompute the user's latest round from what is left (a removed job never ran)."""
        rounds = [entry.fair_round for entry in self._entries if entry.user_id == user_id]
        if user_id in self._last_run_round:
            rounds.append(self._last_run_round[user_id])
        if rounds:
            self._last_round[user_id] = max(rounds)
        else:
            self._last_round.pop(user_id, None)

    def __contains__(self, job_id: object) -> bool:
        return any(entry.job_id == job_id for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[int, int, T]]:
        """(job_id, user_id, item) in run order."""
        for entry in self._entries:
            yield entry.job_id, entry.user_id, entry.item

    def ahead_of_new(self, user_id: int) -> int:
        """How many waiting jobs a new job of ``user_id`` would run after."""
        fair_round = self.assign_round(user_id)
        return sum(1 for entry in self._entries if entry.fair_round <= fair_round)

    def count_for_user(self, user_id: int) -> int:
        return self._per_user.get(user_id, 0)
