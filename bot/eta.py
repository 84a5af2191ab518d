"""Estimated times: a moving average of recent seconds-per-step, per pipeline kind and size.

A job's "size" is what changes the cost of one step: the output size and, for edits, how many
candidates run in one batch, plus cutouts for VQGAN-CLIP. Jobs of a size never seen yet borrow the
average of their kind; with no history at all the ETA is unknown (``None``), which is more honest
than a made-up number.

A "step" here is one of the steps the job *asked for* (its ``steps`` parameter): a job's whole
duration divided by them. A pipeline may report progress over a different count (an edit skips
the first ``blend_start`` of its steps), so the running job's own count is used only as a
fraction of the way through.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bot.jobs import JobKind

_SIZE_PARAMS = ("size", "width", "height", "max_side", "candidates", "cutn")


@dataclass(frozen=True)
class WorkKey:
    """What decides a job's duration, computed once per job (the queue asks often)."""

    kind: JobKind
    size: tuple[Any, ...]
    steps: int | None


def work_key(kind: JobKind, params: dict[str, Any]) -> WorkKey:
    return WorkKey(kind, size_key(params), steps_of(params))


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
        # Averages are asked for once per waiting job on every queue change; they only change
        # when a job finishes, so they are cached until then.
        self._averages: dict[tuple[JobKind, tuple[Any, ...]], float | None] = {}

    def record(self, kind: JobKind, params: dict[str, Any], seconds_per_step: float) -> None:
        if not seconds_per_step >= 0:  # also rejects NaN
            return
        key = (kind, size_key(params))
        self._by_size.setdefault(key, deque(maxlen=self.window)).append(seconds_per_step)
        self._by_kind.setdefault(kind, deque(maxlen=self.window)).append(seconds_per_step)
        self._averages.clear()

    def seed(self, history: Iterable[tuple[JobKind, dict[str, Any], float]]) -> None:
        for kind, params, seconds in history:
            self.record(kind, params, seconds)

    def _average(self, kind: JobKind, size: tuple[Any, ...]) -> float | None:
        key = (kind, size)
        if key not in self._averages:
            samples = self._by_size.get(key) or self._by_kind.get(kind)
            self._averages[key] = sum(samples) / len(samples) if samples else None
        return self._averages[key]

    def seconds_per_step(self, kind: JobKind, params: dict[str, Any]) -> float | None:
        return self._average(kind, size_key(params))

    def job_seconds(self, kind: JobKind, params: dict[str, Any]) -> float | None:
        """How long a whole job of this kind and size should take."""
        return self.key_seconds(work_key(kind, params))

    def key_seconds(self, key: WorkKey) -> float | None:
        per_step = self._average(key.kind, key.size)
        if per_step is None or key.steps is None:
            return None
        return per_step * key.steps

    def remaining_seconds(
        self,
        kind: JobKind,
        params: dict[str, Any],
        step: int,
        total: int,
        elapsed: float,
    ) -> float | None:
        """Time left for the running job: its own pace once it has one, else the history.

        ``step`` and ``total`` are the pipeline's progress count, which need not be the job's
        ``steps`` parameter that the history is measured in.
        """
        left = max(total - step, 0)
        if step > 0 and elapsed > 0:
            return elapsed / step * left
        whole = self.job_seconds(kind, params)
        if whole is not None and total > 0:
            return whole * left / total
        per_step = self.seconds_per_step(kind, params)
        return None if per_step is None else per_step * left
