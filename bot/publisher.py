"""Turns scheduler events into Discord messages, through a small sink the cogs implement.

One progress message per job, edited at most once every ``progress_interval`` seconds and always
with the newest state: events only overwrite the job's wanted state, and a per-job task renders
whatever is newest when the interval allows, so a stale backlog cannot form. When the job ends,
the progress message gets its final state and the results go out as one message (numbered grid,
scores, number reactions), whose id the store maps to the job.

Discord failures never reach the scheduler: a deleted message is replaced by a fresh one, a
missing permission is logged (results stay in the store), and 5xx errors are retried with
exponential backoff. The job's outcome is settled before any of this runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from PIL import Image

from bot.config import RetryConfig, UpscaleConfig
from bot.controls import Controls, progress_controls, result_controls
from bot.events import (
    JobFinished,
    JobInfo,
    JobProgress,
    JobQueued,
    JobRequeued,
    JobStarted,
    QueueMoved,
    SchedulerEvent,
)
from bot.files import png_bytes
from bot.grid import numbered_grid
from bot.jobs import JobKind, JobStatus
from bot.mask_overlay import shown_preview
from bot.progress_text import (
    MASK_LINE,
    NUMBER_EMOJIS,
    clip,
    describe_job,
    format_duration,
    progress_bar,
    prompt_reading,
    queued_line,
    results_content,
    running_lines,
)
from bot.store import MessageLink, ResultRecord, Store
from bot.uploads import FittedImage, fit_image, jpeg_qualities
from pipelines.interface import attached_mask

log = logging.getLogger(__name__)

T = TypeVar("T")

PROGRESS = "progress"
RESULTS = "results"
NOTICE = "notice"
# Discord hides an attachment whose name starts with this until it is clicked.
SPOILER_PREFIX = "SPOILER_"


def flagged_line(rank: int | None = None) -> str:
    """The warning beside an image the safety check flagged (one result, or an upscale of one)."""
    what = f"result {rank}" if rank is not None else "this image or the result it enlarges"
    return (f"⚠️ The image safety check flagged {what}: it is blurred, and hidden until "
            "clicked.")


@dataclass(frozen=True)
class OutgoingFile:
    filename: str
    data: bytes


class MessageGone(Exception):
    """404 / Unknown Message: the message was deleted; the publisher posts a fresh one."""


class NoPermission(Exception):
    """403: the bot may not post or edit there. Logged; the job completes regardless."""


class TransientSendError(Exception):
    """5xx or a network error: worth retrying after a pause."""


class ChannelSink(Protocol):
    """What the publisher needs from Discord. A cog implements it with discord.py."""

    async def send(
        self,
        channel_id: int,
        content: str,
        files: list[OutgoingFile],
        *,
        controls: Controls = (),
        ping_user: int | None = None,
    ) -> int:
        """Post a message with these buttons; returns its id. Mentions never ping anyone,
        except ``ping_user`` when given (that one user alone)."""

    async def edit(
        self,
        channel_id: int,
        message_id: int,
        content: str,
        files: list[OutgoingFile] | None,
        *,
        controls: Controls | None = None,
    ) -> None:
        """Replace a message's content; ``files=None`` keeps its attachments, a list replaces
        them; ``controls=None`` keeps its buttons, a tuple replaces them (``()`` removes them)."""

    async def add_reactions(self, channel_id: int, message_id: int, emojis: list[str]) -> None:
        """Add reactions in order."""

    def upload_limit(self, channel_id: int) -> int:
        """The channel's upload limit in bytes, as Discord says now (it changes over time)."""


@dataclass
class _Wanted:
    """What the job's progress message should show now."""

    phase: str  # "queued" | "running" | "done" | "failed" | "cancelled" | "requeued"
    position: int | None = None
    eta: float | None = None
    step: int = 0
    total: int | None = None
    started: float | None = None
    elapsed: float | None = None  # frozen once the job has ended
    preview: Image.Image | None = None
    preview_key: object = None  # changes whenever ``preview`` shows something new
    error: str | None = None
    results: list[ResultRecord] = field(default_factory=list)
    hide_preview: bool = False  # take the shown preview off (a flagged result's near-twin)

    @property
    def final(self) -> bool:
        return self.phase in ("done", "failed", "cancelled", "requeued")


@dataclass
class _JobView:
    info: JobInfo
    wanted: _Wanted
    version: int = 1
    shown_version: int = 0
    message_id: int | None = None
    shown_preview_key: object = None
    last_shown: float | None = None
    retry_at: float = 0.0
    failures: int = 0
    muted: bool = False  # 403 on the progress message: stop editing it
    has_controls: bool = False  # the progress message shows its Cancel button
    # A message adopted after a restart: what buttons it shows is not known (a SIGKILL leaves
    # Cancel on it, a clean stop took it off), so the next edit sets them either way.
    controls_unknown: bool = False
    # The first preview that carries a mask is held until it has been shown once (newer
    # previews wait), so the user is sure to see the mask the run found.
    mask_pending: bool = False
    mask_shown: bool = False
    waiting_preview: tuple[Image.Image, object] | None = None  # newest, while the mask is held
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class Publisher:
    """A scheduler listener (call it with events) that keeps Discord messages up to date."""

    def __init__(
        self,
        store: Store,
        progress_interval: float = 4.0,
        retry: RetryConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        upscale: UpscaleConfig | None = None,
    ) -> None:
        self.store = store
        self.progress_interval = progress_interval
        self.retry = retry or RetryConfig()
        self.upscale = upscale or UpscaleConfig()
        self._clock = clock
        self._sink: ChannelSink | None = None
        self._sink_ready = asyncio.Event()
        self._views: dict[int, _JobView] = {}
        self._closing = False
        # Reactions offered for the controls a cog handles (e.g. ❌ to cancel a job, 🔁 to rerun
        # it): added under each new progress message, and after the numbers under each grid.
        # Set by that cog; empty by default.
        self.progress_reactions: tuple[str, ...] = ()
        self.results_reactions: tuple[str, ...] = ()
        # Who asked for a job's cancellation (set by the cogs just before they cancel), so the
        # requester is pinged only when someone else stopped their job.
        self._cancelled_by: dict[int, int] = {}
        # Waiters for a job's first progress message (the "queued" reply links to it).
        self._progress_waiters: dict[int, list[asyncio.Future[int]]] = {}

    # -- wiring ------------------------------------------------------------------------------

    def set_sink(self, sink: ChannelSink) -> None:
        """Called by the cog that talks to Discord; jobs wait for it before posting anything."""
        self._sink = sink
        self._sink_ready.set()

    @property
    def sink(self) -> ChannelSink | None:
        return self._sink

    def __call__(self, event: SchedulerEvent) -> None:
        if isinstance(event, QueueMoved):
            for job_id, (position, eta) in event.waiting.items():
                view = self._views.get(job_id)
                if view and view.wanted.phase == "queued" and view.wanted.position != position:
                    self._want(view, replace(view.wanted, position=position, eta=eta))
            return
        view = self._views.get(event.job.job_id)
        if isinstance(event, JobQueued):
            wanted = _Wanted("queued", position=event.position, eta=event.eta_seconds)
            if view is None:
                self._track(event.job, wanted)
            else:
                self._want(view, wanted)
            return
        if view is None:
            view = self._track(event.job, _Wanted("queued"))
        if isinstance(event, JobStarted):
            self._want(view, _Wanted("running", total=event.total_steps,
                                     started=event.started_monotonic))
        elif isinstance(event, JobProgress):
            preview, key = self._preview_to_show(view, event.preview, event.preview_step)
            self._want(view, replace(view.wanted, phase="running", step=event.step,
                                     total=event.total, eta=event.eta_seconds,
                                     started=event.started_monotonic, preview=preview,
                                     preview_key=key))
        elif isinstance(event, JobFinished):
            if view.mask_pending:
                self._release_mask_hold(view)  # the end shows the newest picture, not the mask
            previous = view.wanted
            started = event.started_monotonic or previous.started
            elapsed = None if started is None else self._clock() - started
            preview = event.last_preview if event.last_preview is not None else previous.preview
            key = previous.preview_key if preview is previous.preview else ("final", event.step)
            self._want(view, _Wanted(
                event.status.value,
                step=event.step if event.step is not None else previous.step,
                total=event.total if event.total is not None else previous.total,
                started=started,
                elapsed=elapsed,
                preview=preview if event.status is JobStatus.CANCELLED else previous.preview,
                preview_key=key if event.status is JobStatus.CANCELLED else previous.preview_key,
                error=event.error,
                results=list(event.results),
                hide_preview=event.hide_preview,
            ))
        elif isinstance(event, JobRequeued):
            self._want(view, replace(view.wanted, phase="requeued"))

    @staticmethod
    def _preview_to_show(
        view: _JobView, preview: Image.Image | None, key: object
    ) -> tuple[Image.Image | None, object]:
        """The newest preview, unless a preview with a mask is still waiting to be shown."""
        if view.mask_pending:
            if preview is not None:
                view.waiting_preview = (preview, key)
            return view.wanted.preview, view.wanted.preview_key
        if not view.mask_shown and attached_mask(preview) is not None:
            view.mask_pending = True
        return preview, key

    def _release_mask_hold(self, view: _JobView) -> None:
        """The mask has had its turn: show the newest preview that waited behind it, if any."""
        view.mask_pending = False
        view.mask_shown = True
        if view.waiting_preview is not None:
            preview, key = view.waiting_preview
            view.waiting_preview = None
            self._want(view, replace(view.wanted, preview=preview, preview_key=key))

    def _track(self, info: JobInfo, wanted: _Wanted) -> _JobView:
        view = _JobView(info, wanted)
        view.changed.set()
        self._views[info.job_id] = view
        view.task = asyncio.get_running_loop().create_task(
            self._drive(view), name=f"publish-job-{info.job_id}"
        )
        return view

    def _want(self, view: _JobView, wanted: _Wanted) -> None:
        if view.wanted.final:
            return  # nothing follows the end of a job
        view.wanted = wanted
        view.version += 1
        view.changed.set()

    def cancel_requested(self, job_id: int, user_id: int) -> None:
        """Note who is cancelling ``job_id``; call just before ``Scheduler.cancel``."""
        self._cancelled_by[job_id] = user_id

    def cancel_settled(self, job_id: int) -> None:
        """The cancellation did not stop a job (it had finished): forget who asked."""
        self._cancelled_by.pop(job_id, None)

    async def progress_message(self, job_id: int, timeout: float) -> MessageLink | None:
        """The job's progress message, waiting up to ``timeout`` seconds for it to be posted."""
        # Waiting before looking: a message posted while the store answers still wakes us.
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._progress_waiters.setdefault(job_id, []).append(future)
        try:
            link = await self.store.message_for_job(job_id, PROGRESS)
            if link is not None:
                return link
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            waiters = self._progress_waiters.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._progress_waiters.pop(job_id, None)
        return await self.store.message_for_job(job_id, PROGRESS)

    def _progress_posted(self, job_id: int, message_id: int) -> None:
        for future in self._progress_waiters.pop(job_id, []):
            if not future.done():
                future.set_result(message_id)

    async def announce_unposted(self, max_age_seconds: float = 86_400.0) -> list[int]:
        """Post the results of jobs that finished while no results message went out (the bot
        stopped in between). Older ones are left alone rather than surprising a channel."""
        announced = []
        for record in await self.store.unannounced_done_jobs(time.time() - max_age_seconds):
            if record.id in self._views:
                continue
            request = record.request
            info = JobInfo(record.id, request.kind, request.user_id, request.channel_id,
                           request.params)
            elapsed = None
            if record.started_at is not None and record.finished_at is not None:
                elapsed = record.finished_at - record.started_at
            results = await self.store.results_for_job(record.id)
            self._track(info, _Wanted("done", step=record.total_steps or 0,
                                      total=record.total_steps, elapsed=elapsed,
                                      results=results))
            announced.append(record.id)
        if announced:
            log.info("posting results that were not announced before the restart: jobs %s",
                     announced)
        return announced

    async def wait_settled(self) -> None:
        """Until every job's messages are in their final state (tests, shutdown)."""
        while True:
            tasks = [v.task for v in self._views.values() if v.task and not v.task.done()]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def close(self, timeout: float = 5.0) -> None:
        """Give pending final edits a moment, then stop every job's task."""
        self._closing = True
        tasks = [v.task for v in self._views.values() if v.task and not v.task.done()]
        finals = [v.task for v in self._views.values()
                  if v.task and not v.task.done() and v.wanted.final]
        if finals and self._sink is not None:
            await asyncio.wait(finals, timeout=timeout)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- one job's messages ------------------------------------------------------------------

    async def _drive(self, view: _JobView) -> None:
        try:
            await self._sink_ready.wait()
            existing = await self.store.message_for_job(view.info.job_id, PROGRESS)
            if existing is not None:  # a job from before a restart keeps its message
                view.message_id = existing.message_id
                view.has_controls = True
                view.controls_unknown = True
            while True:
                await view.changed.wait()
                now = self._clock()
                ready_at = max(view.retry_at, (view.last_shown or -1e18) + self.progress_interval)
                if now < ready_at:
                    await asyncio.sleep(ready_at - now)
                view.changed.clear()
                version, wanted = view.version, view.wanted
                if not view.muted:
                    await self._show(view, wanted, version)
                else:
                    view.shown_version = version
                if view.shown_version < view.version:
                    view.changed.set()  # newer state, or a retry of this one
                    continue
                if wanted.final:
                    if wanted.phase == "done":
                        self._cancelled_by.pop(view.info.job_id, None)
                        await self._post_results(view, wanted)
                    elif wanted.phase in ("failed", "cancelled"):
                        await self._tell_requester(view, wanted)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("publishing job %d failed; the job itself is unaffected",
                          view.info.job_id)
        finally:
            if self._views.get(view.info.job_id) is view:
                del self._views[view.info.job_id]

    def _content(self, view: _JobView, wanted: _Wanted) -> str:
        info = view.info
        header = describe_job(info.job_id, info.kind, info.user_id, info.params)
        elapsed = wanted.elapsed
        if elapsed is None and wanted.started is not None:
            elapsed = self._clock() - wanted.started
        if wanted.phase == "queued":
            body = queued_line(wanted.position, wanted.eta)
        elif wanted.phase == "running":
            body = running_lines(wanted.step, wanted.total, elapsed or 0.0, wanted.eta)
        elif wanted.phase == "done":
            steps = (f"step {wanted.total}/{wanted.total} {progress_bar(1, 1)}\n"
                     if wanted.total else "")
            body = f"{steps}✅ Done in {format_duration(elapsed)}; the results are below."
        elif wanted.phase == "cancelled":
            at = f" at step {wanted.step}/{wanted.total}" if wanted.total else ""
            kept = " The last preview is kept above." if wanted.preview is not None else ""
            body = f"🛑 Cancelled{at}.{kept}"
        elif wanted.phase == "requeued":
            body = "⏸️ Paused: the bot is restarting. This job continues after the restart."
        else:
            body = f"⚠️ Failed: {wanted.error or 'unknown error'}"
        lines = [header]
        reading = prompt_reading(info.kind, info.params)
        if reading:
            lines.append(reading)
        if wanted.phase == "running" and attached_mask(wanted.preview) is not None:
            lines.append(MASK_LINE)
        return clip("\n".join([*lines, body]))

    async def _show(self, view: _JobView, wanted: _Wanted, version: int) -> None:
        """One send or edit of the progress message. Never raises except on cancellation."""
        assert self._sink is not None
        sink = self._sink
        info = view.info
        content = self._content(view, wanted)
        new_preview = wanted.preview is not None and wanted.preview_key != view.shown_preview_key
        if wanted.hide_preview:
            new_preview = False
        encoded: list[OutgoingFile] = []

        async def preview_files() -> list[OutgoingFile]:
            # PNG encoding is CPU work: off the loop, and only when the image must be sent.
            if wanted.preview is not None and not encoded:
                preview = wanted.preview
                data = await asyncio.to_thread(lambda: png_bytes(shown_preview(preview)))
                encoded.append(OutgoingFile(f"job-{info.job_id}-preview.png", data))
            return encoded

        try:
            if view.message_id is not None:
                controls = self._edited_controls(view, wanted)
                try:
                    files = await preview_files() if new_preview else None
                    if wanted.hide_preview:
                        files = []  # an empty list takes the attachments off
                    await sink.edit(info.channel_id, view.message_id, content, files,
                                    controls=controls)
                    if controls is not None:
                        view.has_controls = bool(controls)
                        view.controls_unknown = False
                except MessageGone:
                    log.info("job %d: progress message %d was deleted; posting a fresh one",
                             info.job_id, view.message_id)
                    view.message_id = None
            if view.message_id is None:
                controls = () if wanted.final else progress_controls(info.job_id)
                view.message_id = await sink.send(
                    info.channel_id, content,
                    [] if wanted.hide_preview else await preview_files(), controls=controls)
                view.has_controls = bool(controls)
                await self.store.link_message(view.message_id, info.channel_id, info.job_id,
                                              PROGRESS)
                self._progress_posted(info.job_id, view.message_id)
                if self.progress_reactions and not wanted.final:
                    await self._offer_progress_reactions(info, view.message_id)
            view.shown_version = version
            shown = wanted.preview is not None and not wanted.hide_preview
            view.shown_preview_key = wanted.preview_key if shown else None
            view.failures = 0
        except NoPermission:
            log.warning("job %d: no permission to post progress in channel %d; the job goes on "
                        "and its results stay in the store", info.job_id, info.channel_id)
            view.muted = True
            view.shown_version = version
        except MessageGone:
            # Only a send gets here (an edit's is handled above): the channel itself is gone.
            log.warning("job %d: channel %d is gone; the job goes on and its results stay in "
                        "the store", info.job_id, info.channel_id)
            view.muted = True
            view.shown_version = version
        except TransientSendError as exc:
            view.failures += 1
            if view.failures >= self.retry.max_attempts:
                log.warning("job %d: giving up on a progress update after %d attempts (%s)",
                            info.job_id, view.failures, exc)
                view.shown_version = version
                view.failures = 0
            else:
                view.retry_at = self._clock() + self._backoff(view.failures)
        except Exception:
            log.exception("job %d: unexpected error updating the progress message", info.job_id)
            view.shown_version = version
        finally:
            view.last_shown = self._clock()
        if (view.mask_pending and view.shown_version == version
                and attached_mask(wanted.preview) is not None):
            # Shown (or given up on): newer previews may replace it from now on.
            self._release_mask_hold(view)

    @staticmethod
    def _edited_controls(view: _JobView, wanted: _Wanted) -> Controls | None:
        """The buttons an edit of the progress message sets; ``None`` leaves them as they are.

        A job that has ended cannot be cancelled: its Cancel button goes. A job that can still
        be cancelled gets it back (a resumed job whose message was adopted after a restart)."""
        if wanted.final:
            return () if view.has_controls else None
        if view.controls_unknown or not view.has_controls:
            return progress_controls(view.info.job_id)
        return None

    async def _offer_progress_reactions(self, info: JobInfo, message_id: int) -> None:
        """Best effort: the job and its message are fine without them."""
        assert self._sink is not None
        try:
            await self._sink.add_reactions(info.channel_id, message_id,
                                           list(self.progress_reactions))
        except (NoPermission, MessageGone, TransientSendError) as exc:
            log.info("job %d: could not add %s to its progress message (%s)", info.job_id,
                     "".join(self.progress_reactions), type(exc).__name__)

    def _backoff(self, failures: int) -> float:
        return min(self.retry.base_delay_seconds * 2 ** (failures - 1),
                   self.retry.max_delay_seconds)

    async def _retrying(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying TransientSendError with exponential backoff."""
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return await operation()
            except TransientSendError as exc:
                if attempt == self.retry.max_attempts:
                    raise
                delay = self._backoff(attempt)
                log.info("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post_results(self, view: _JobView, wanted: _Wanted) -> None:
        assert self._sink is not None
        sink = self._sink
        info = view.info
        if info.kind is JobKind.UPSCALE:
            await self._post_upscaled(view, wanted)
            return
        results = wanted.results[: len(NUMBER_EMOJIS)]
        if not results:
            return
        try:
            grid = await asyncio.to_thread(_grid_png, results)
        except OSError:
            log.exception("job %d: its result files could not be read", info.job_id)
            return
        content = results_content(
            describe_job(info.job_id, info.kind, info.user_id, info.params),
            [r.score for r in results],
            [r.seed for r in results],
            reading=prompt_reading(info.kind, info.params),
        )
        name = f"job-{info.job_id}-results.png"
        flagged = [r.rank for r in results if r.flagged]
        if flagged:
            name = SPOILER_PREFIX + name
            shown = ", ".join(str(rank) for rank in flagged)
            content += (f"\n⚠️ The image safety check flagged result(s) {shown}: they are blurred, "
                        "and the grid is hidden until clicked.")
        withheld = await self.store.withheld_count(info.job_id)
        if withheld:
            content += (f"\n⚠️ {withheld} result(s) were withheld by the image safety check.")
        files = [OutgoingFile(name, grid)]
        controls = result_controls(info.job_id, info.kind, len(results))
        ping = await self._ping_target(info)
        message_id: int | None = None
        try:
            message_id = await self._retrying(
                f"posting results of job {info.job_id}",
                lambda: sink.send(info.channel_id, content, files, controls=controls,
                                  ping_user=ping),
            )
            await self.store.link_message(message_id, info.channel_id, info.job_id, RESULTS)
            posted = message_id
            await self._retrying(
                f"reacting to results of job {info.job_id}",
                lambda: sink.add_reactions(info.channel_id, posted,
                                           [*NUMBER_EMOJIS[: len(results)],
                                            *self.results_reactions]),
            )
        except NoPermission:
            log.warning("job %d: no permission to post results in channel %d; they stay in "
                        "the store", info.job_id, info.channel_id)
        except MessageGone:
            if message_id is None:
                log.warning("job %d: channel %d is gone; the results stay in the store",
                            info.job_id, info.channel_id)
            else:
                log.info("job %d: the results message was deleted before its reactions were "
                         "added", info.job_id)
        except TransientSendError as exc:
            log.error("job %d: Discord kept failing (%s); the results stay in the store",
                      info.job_id, exc)

    async def _post_upscaled(self, view: _JobView, wanted: _Wanted) -> None:
        """One upscaled image alone at full size: a PNG, or a JPEG when the PNG is over the
        channel's upload limit (read now), its quality stepped down until it fits. No number
        reactions: it is an end product, not a grid to continue from."""
        assert self._sink is not None
        sink = self._sink
        info = view.info
        if not wanted.results:
            return
        result = wanted.results[0]
        limit = sink.upload_limit(info.channel_id)
        config = self.upscale
        qualities = jpeg_qualities(
            config.jpeg_max_quality, config.jpeg_min_quality, config.jpeg_quality_step
        )
        try:
            png = await asyncio.to_thread(result.path.read_bytes)
            fitted = await asyncio.to_thread(fit_image, png, limit, qualities)
        except OSError:
            log.exception("job %d: its upscaled file could not be read", info.job_id)
            return
        if fitted.quality is not None:
            log.info("job %d: upscaled PNG of %d bytes over the %d-byte limit; sending a JPEG "
                     "at quality %d", info.job_id, len(png), limit, fitted.quality)
        content = clip(upscaled_content(
            describe_job(info.job_id, info.kind, info.user_id, info.params), fitted
        ))
        name = f"job-{info.job_id}-upscaled.{fitted.extension}"
        if result.flagged or await self._source_flagged(info):
            # An upscale of a flagged result is that result, larger: it stays hidden too.
            name = SPOILER_PREFIX + name
            content = clip(f"{content}\n{flagged_line()}")
        files = [OutgoingFile(name, fitted.data)]
        ping = await self._ping_target(info)
        try:
            message_id = await self._retrying(
                f"posting the upscaled image of job {info.job_id}",
                lambda: sink.send(info.channel_id, content, files, ping_user=ping),
            )
            await self.store.link_message(message_id, info.channel_id, info.job_id, RESULTS)
        except (NoPermission, MessageGone):
            log.warning("job %d: cannot post in channel %d; the upscaled image stays in the "
                        "store", info.job_id, info.channel_id)
        except TransientSendError as exc:
            log.error("job %d: Discord kept failing (%s); the upscaled image stays in the store",
                      info.job_id, exc)

    async def _source_flagged(self, info: JobInfo) -> bool:
        """Whether the result an upscale job started from was flagged by the safety check."""
        record = await self.store.get_job(info.job_id)
        if record is None or record.parent_result_id is None:
            return False
        source = await self.store.get_result(record.parent_result_id)
        return source is not None and source.flagged

    async def _ping_target(self, info: JobInfo) -> int | None:
        """The requester, unless they turned pings off (``/prefs ping:false``)."""
        try:
            prefs = await self.store.user_prefs(info.user_id)
        except Exception:
            log.exception("job %d: could not read user %d's preferences; not pinging",
                          info.job_id, info.user_id)
            return None
        return info.user_id if prefs.pings() else None

    async def _tell_requester(self, view: _JobView, wanted: _Wanted) -> None:
        """A failed job, or one cancelled by someone else, ends with a new message that pings
        the requester: an edit of the progress message would notify nobody."""
        assert self._sink is not None
        sink = self._sink
        info = view.info
        cancelled_by = self._cancelled_by.pop(info.job_id, None)
        if wanted.phase == "cancelled" and cancelled_by == info.user_id:
            return  # they stopped it themselves
        ping = await self._ping_target(info)
        if ping is None:
            return
        content = clip(notice_content(info, wanted.phase, wanted.error, cancelled_by))
        message_id: int | None = None
        try:
            message_id = await self._retrying(
                f"telling the requester of job {info.job_id}",
                lambda: sink.send(info.channel_id, content, [], ping_user=ping),
            )
            await self.store.link_message(message_id, info.channel_id, info.job_id, NOTICE)
        except (NoPermission, MessageGone, TransientSendError) as exc:
            log.warning("job %d: could not tell its requester it ended (%s)", info.job_id,
                        type(exc).__name__)


def upscaled_content(header: str, fitted: FittedImage) -> str:
    width, height = fitted.size
    line = f"✅ {header}: {width}×{height}"
    return f"{line}\n{fitted.note}" if fitted.note else line


def notice_content(info: JobInfo, phase: str, error: str | None, by: int | None) -> str:
    header = describe_job(info.job_id, info.kind, info.user_id, info.params)
    if phase == "cancelled":
        who = f" by <@{by}>" if by is not None else ""
        return f"{header}: 🛑 cancelled{who}."
    return f"{header}: ⚠️ failed: {error or 'unknown error'}"


def _grid_png(results: list[ResultRecord]) -> bytes:
    images = []
    for result in results:
        with Image.open(result.path) as image:
            images.append(image.convert("RGB"))
    return png_bytes(numbered_grid(images))
