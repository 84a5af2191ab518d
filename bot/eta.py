"""Estimated times: a moving average of recent seconds-per-step, per pipeline kind and size.

A job's "size" is what changes the cost of one step: the output size and, for edits, how many
candidates run in one batch, plus cutouts for VQGAN-CLIP. Jobs of a size never seen yet borrow the
average of their kind; with no history at all the ETA is unknown (``None``), which is more honest
than a made-up number.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from bot.jobs import JobKind

_SIZE_PARAMS = ("size", "width", "height", "max_side", "candidates", "cutn")


def size_key(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_hashable(params.get(name)) for name in _SIZE_PARAMS)


def steps_of(params: dict[str, Any]) -> int | None:
    for name in ("steps", "iterations", "max_iterations"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


class EtaEstimator:
    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._by_size: dict[tuple[JobKind, tuple[Any, ...]], deque[float]] = {}
        self._by_kind: dict[JobKind, deque[float]] = {}

    def record(self, kind: JobKind, params: dict[str, Any], seconds_per_step: float) -> None:
        if not seconds_per_step >= 0:  # also rejects NaN
            return
        key = (kind, size_key(params))
        self._by_size.setdefault(key, deque(maxlen=self.window)).append(seconds_per_step)
        self._by_kind.setdefault(kind, deque(maxlen=self.window)).append(seconds_per_step)

    def seed(self, history: Iterable[tuple[JobKind, dict[str, Any], float]]) -> None:
        for kind, params, seconds in history:
            self.record(kind, params, seconds)

    def seconds_per_step(self, kind: JobKind, params: dict[str, Any]) -> float | None:
        samples = self._by_size.get((kind, size_key(params))) or self._by_kind.get(kind)
        if not samples:
            return None
        return sum(samples) / len(samples)

    def job_seconds(self, kind: JobKind, params: dict[str, Any]) -> float | None:
        """How long a whole job of this kind and size should take."""
        per_step = self.seconds_per_step(kind, params)
        steps = steps_of(params)
        if per_step is None or steps is None:
            return None
        return per_step * steps

    def remaining_seconds(
        self,
        kind: JobKind,
        params: dict[str, Any],
        step: int,
        total: int,
        elapsed: float,
    ) -> float | None:
        """Time left for the running job: its own pace once it has one, else the history."""
        left = max(total - step, 0)
        if step > 0 and elapsed > 0:
            return elapsed / step * left
        per_step = self.seconds_per_step(kind, params)
        return None if per_step is None else per_step * left
