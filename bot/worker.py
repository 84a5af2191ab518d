"""The dedicated worker thread, and the hand-off that carries progress from it to the event loop.

The pipeline runs only on :class:`WorkerThread`; the event loop awaits its result. Progress comes
back through :class:`LatestOnlyMailbox`: the worker overwrites one slot and schedules at most one
wake-up on the loop at a time, so a pipeline faster than the loop can never build a backlog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a thread may hold the GIL before another waiting thread gets it (Python's default is
# 5 ms). The pipelines' Python glue between torch ops holds the GIL; at 1 ms the event loop waits
# far less for it (docs/benchmarks-parts/bot.md: loop lag with a GIL-holding worker). The bot's
# entry point sets it for the whole process.
GIL_SWITCH_INTERVAL_SECONDS = 0.001


def _settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled (shutdown); nobody wants the answer
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WorkerThread:
    """One daemon thread running blocking callables one at a time, in submission order.

    Daemon, so a pipeline that ignores cancellation cannot keep the process alive at shutdown.
    """

    def __init__(self, name: str = "faraday-worker", niceness: int = 0) -> None:
        self.niceness = niceness
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = False

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    @property
    def name(self) -> str:
        return self._thread.name

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        """Ask the thread to exit after whatever it is running now."""
        if self._started:
            self._tasks.put(None)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    async def run(self, work: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._tasks.put((work, loop, future))
        return await future

    def _lower_priority(self) -> None:
        """Make the OS prefer the event loop's thread over this one when the CPU is contended.

        On Linux a thread has its own nice value, and the threads torch's OpenMP pool starts from
        this thread inherit it. Elsewhere setpriority would apply to the whole process, so it is
        left alone.
        """
        if self.niceness <= 0 or not sys.platform.startswith("linux"):
            return
        try:
            current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), current + self.niceness)
        except OSError as exc:
            log.debug("could not lower the worker thread's priority: %s", exc)

    def _main(self) -> None:
        self._lower_priority()
        while True:
            item = self._tasks.get()
            if item is None:
                return
            work, loop, future = item
            result: object = None
            error: BaseException | None = None
            try:
                result = work()
            except BaseException as exc:  # handed to the awaiting coroutine, not swallowed
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:
                log.debug("event loop closed before the worker's result could be delivered")


class LatestOnlyMailbox(Generic[T]):
    """Thread-safe hand-off keeping only the newest item; delivers on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[T], None]) -> None:
        self._loop = loop
        self._deliver = deliver
        self._lock = threading.Lock()
        self._pending: T | None = None
        self._wakeup_scheduled = False
        self.posted = 0
        self.delivered = 0

    def post(self, item: T) -> None:
        """Called from the worker thread. Never blocks on the loop."""
        with self._lock:
            self._pending = item
            self.posted += 1
            if self._wakeup_scheduled:
                return  # the scheduled drain will pick up this newer item instead
            self._wakeup_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            log.debug("event loop closed; progress dropped")

    def _drain(self) -> None:
        with self._lock:
            item = self._pending
            self._pending = None
            self._wakeup_scheduled = False
        if item is None:
            return
        self.delivered += 1
        self._deliver(item)
