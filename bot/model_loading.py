"""Loading the models after the bot has connected, one model at a time on the worker thread.

The bot connects to Discord first and loads meanwhile, so a first start that downloads gigabytes
shows "loading models (2 of 3)…" instead of an offline bot. Jobs that arrive meanwhile wait in the
queue; their ETAs include the load time still to come, predicted from how long each model took to
load last time (kept in ``model-load-times.json`` in the data folder). Before the first load ever
finishes that time is not known, and ETAs say so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.files import write_atomic
from pipelines.model_plan import ModelStep

log = logging.getLogger(__name__)

LOAD_TIMES_FILE = "model-load-times.json"

# Runs a blocking load somewhere off the event loop (a worker thread's ``run``).
Runner = Callable[[Callable[[], object]], Awaitable[object]]


class LoadTimes:
    """Seconds each model took to load last time, by step key, kept across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seconds: dict[str, float] = {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            raw = {}
        if isinstance(raw, dict):
            self._seconds = {
                str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and v >= 0
            }

    def get(self, key: str) -> float | None:
        return self._seconds.get(key)

    def record(self, key: str, seconds: float) -> None:
        self._seconds[key] = round(seconds, 3)
        try:
            write_atomic(self.path, json.dumps(self._seconds, indent=1, sort_keys=True).encode())
        except OSError as exc:  # only a prediction is lost; loading itself went fine
            log.warning("could not save model load times to %s: %s", self.path, exc)


@dataclass(frozen=True)
class LoadingState:
    """Where loading stands: ``current`` is the 1-based number of the model loading now."""

    current: int
    total: int
    label: str
    done: bool = False

    @property
    def text(self) -> str:
        return f"loading models ({self.current} of {self.total})…"


class ModelLoader:
    """Runs the model steps in order on the worker thread and says how far it has got."""

    def __init__(
        self,
        steps: Sequence[tuple[ModelStep, Runner]],
        times: LoadTimes,
        on_change: Callable[[LoadingState], None] = lambda state: None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.steps = [step for step, _ in steps]
        self._runners = [runner for _, runner in steps]
        self.times = times
        self.on_change = on_change
        self._clock = clock
        self._index = 0  # the step loading now (== len(steps) once done)
        self._step_started: float | None = None
        self.finished = not self.steps

    @property
    def state(self) -> LoadingState:
        total = len(self.steps)
        if self.finished:
            return LoadingState(total, total, "", done=True)
        return LoadingState(self._index + 1, total, self.steps[self._index].label)

    def remaining_seconds(self) -> float | None:
        """Predicted seconds until every model is loaded; ``None`` when some has no history."""
        if self.finished:
            return 0.0
        total = 0.0
        for position, step in enumerate(self.steps[self._index :]):
            seconds = self.times.get(step.key)
            if seconds is None:
                return None
            if position == 0 and self._step_started is not None:
                seconds = max(0.0, seconds - (self._clock() - self._step_started))
            total += seconds
        return total

    async def run(self) -> None:
        """Load every model, each on its runner's thread; a failure propagates (the caller
        decides whether to stop)."""
        for index, (step, runner) in enumerate(zip(self.steps, self._runners, strict=True)):
            self._index = index
            self._step_started = self._clock()
            state = self.state
            log.info("%s: %s", state.text, step.label)
            self.on_change(state)
            await runner(step.load)
            seconds = self._clock() - self._step_started
            self.times.record(step.key, seconds)
            log.info("loaded %s in %.1f s", step.label, seconds)
        self._index = len(self.steps)
        self._step_started = None
        self.finished = True
        self.on_change(self.state)
