"""The 🎞 timelapse of an /imagine job: its preview frames kept while it runs, and the video
made from them on request.

Frames are recorded on the worker thread, from the pipeline's own progress callback, under
``data/frames/job-<id>/`` (deleted with the job by :meth:`bot.store.Store.prune`). A button asks
for the video with :func:`timelapse_file`, which encodes it off the event loop within the
channel's upload limit::

    made = await timelapse_file(bot.store, job_id, interaction.filesize_limit, bot.config.timelapse)
    await interaction.followup.send(made.note or None,
        file=discord.File(io.BytesIO(made.file.data), filename=made.file.filename))

:class:`TimelapseUnavailable` carries one sentence for an ephemeral reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bot.config import TimelapseConfig
from bot.files import write_atomic
from bot.jobs import JobKind
from bot.publisher import OutgoingFile
from bot.store import Store
from bot.uploads import upload_budget
from pipelines.timelapse import FrameRecorder, TimelapseError, encode_timelapse, frame_files

log = logging.getLogger(__name__)


class TimelapseUnavailable(Exception):
    """No timelapse for this job; ``str(exc)`` says why, for the user."""


class JobFrames:
    """A running job's frame recorder that never fails the job: a full disk stops recording
    (logged once), the image is made regardless."""

    def __init__(self, folder: Path, max_frames: int) -> None:
        self.recorder = FrameRecorder(folder, max_frames)
        self.broken = False

    def start(self) -> None:
        """Forget the frames of an earlier, interrupted run of the same job."""
        try:
            self.recorder.clear()
        except OSError as exc:
            self._give_up(exc)

    def __call__(self, step: int, total: int, preview: Image.Image) -> None:
        if self.broken:
            return
        try:
            self.recorder.add(step, preview, final=step >= total)
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        self.broken = True
        log.warning(
            "not keeping timelapse frames in %s: %s", self.recorder.folder, exc.strerror or exc
        )


def frames_for(
    store: Store, config: TimelapseConfig | None, kind: JobKind, job_id: int
) -> JobFrames | None:
    """The recorder for a job about to run, or None when its frames are not kept."""
    if config is None or not config.keep_frames or kind is not JobKind.IMAGINE:
        return None
    return JobFrames(store.paths.frames_dir(job_id), config.max_frames)


@dataclass(frozen=True)
class TimelapseFile:
    file: OutgoingFile
    note: str  # how it was made to fit or why it is a WebP, for the message; or ""
    frames: int


async def timelapse_file(
    store: Store, job_id: int, limit_bytes: int, config: TimelapseConfig
) -> TimelapseFile:
    """The job's timelapse as a file that fits an upload limit of ``limit_bytes``.

    Raises :class:`TimelapseUnavailable`: the job is gone ("this result has expired"), is not an
    /imagine, or kept no frames; or not even a small video fits the limit.
    """
    job = await store.get_job(job_id)
    if job is None:
        raise TimelapseUnavailable("this result has expired: its job and files were deleted.")
    if job.request.kind is not JobKind.IMAGINE:
        raise TimelapseUnavailable("only /imagine jobs have a timelapse.")
    folder = store.paths.frames_dir(job_id)
    budget = upload_budget(limit_bytes)
    # A finished job's frames never change, so its video for a given budget is made once.
    cache = folder / f"timelapse-{budget}.json" if job.status.finished else None
    if cache is not None:
        cached = await asyncio.to_thread(_read_cached, cache)
        if cached is not None:
            return cached
    frames = await asyncio.to_thread(frame_files, folder)
    if not frames:
        raise TimelapseUnavailable(
            f"job #{job_id} kept no frames for a timelapse (the bot's owner may have turned "
            "that off, or they were deleted)."
        )
    try:
        made = await asyncio.to_thread(encode_timelapse, frames, fps=config.fps, limit_bytes=budget)
    except TimelapseError as exc:
        raise TimelapseUnavailable(
            f"the timelapse of job #{job_id} cannot be sent: {exc}."
        ) from None
    name = f"job-{job_id}-timelapse.{made.extension}"
    result = TimelapseFile(OutgoingFile(name, made.data), made.note, made.frames)
    if cache is not None:
        await asyncio.to_thread(_write_cached, cache, result, store.sync_commits)
    return result


def _read_cached(cache: Path) -> TimelapseFile | None:
    try:
        meta = json.loads(cache.read_text(encoding="utf-8"))
        data = (cache.parent / meta["video"]).read_bytes()
        return TimelapseFile(OutgoingFile(meta["filename"], data), meta["note"], meta["frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: make it again


def _write_cached(cache: Path, made: TimelapseFile, durable: bool) -> None:
    video = cache.with_suffix("." + made.file.filename.rsplit(".", 1)[-1])
    meta = {
        "video": video.name,
        "filename": made.file.filename,
        "note": made.note,
        "frames": made.frames,
    }
    try:
        # The video first: the metadata that names it is the commit point.
        write_atomic(video, made.file.data, durable=durable)
        write_atomic(cache, json.dumps(meta).encode(), durable=durable)
    except OSError as exc:
        log.warning("could not keep the timelapse in %s: %s", cache.parent, exc.strerror or exc)
