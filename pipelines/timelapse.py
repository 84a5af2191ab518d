"""The timelapse of a run: its preview frames kept on disk, then made into a video that fits.

:class:`FrameRecorder` keeps at most ``max_frames`` frames of one run in a folder. Past the cap it
drops every other frame it holds and from then on keeps every other preview it is offered (the
stride doubles), so the frames stay evenly spread over the whole run instead of stopping early.

:func:`encode_timelapse` makes an H.264 MP4 (yuv420p, so every player and Discord's preview can
show it) with PyAV; if PyAV cannot encode, an animated WebP with Pillow. When the file is over the
byte limit it is encoded again smaller until it fits. Frames are read from disk one at a time for
the MP4, so memory does not grow with the number of frames.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

MAX_FRAMES = 400
# PyAV's name for the H.264 encoder (libx264 in its wheels).
MP4_CODEC = "h264"
FRAME_SUFFIX = ".png"
# Smallest side a shrunk timelapse may have before giving up: below it nothing is recognisable.
MIN_SIDE = 32


class TimelapseError(Exception):
    """No timelapse can be made; ``str(exc)`` says why, in one line for a user."""


class FrameRecorder:
    """Keeps one run's preview frames as ``<folder>/frame-<step>.png``. Not thread-safe: one
    run's progress callback (a single thread) drives it."""

    def __init__(self, folder: Path, max_frames: int = MAX_FRAMES) -> None:
        if max_frames < 2:
            raise ValueError("max_frames must be at least 2")
        self.folder = Path(folder)
        self.max_frames = max_frames
        self.stride = 1
        self._offered = 0
        self._steps: list[int] = []

    def clear(self) -> None:
        """Start over (a job that runs again after a restart records its frames afresh)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.stride = 1
        self._offered = 0
        self._steps = []

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    def add(self, step: int, image: Image.Image, *, final: bool = False) -> bool:
        """Offer the preview of ``step``; true if it was kept. ``final`` (the finished image) is
        always kept, so the video ends on the result."""
        offered = self._offered
        self._offered += 1
        if not final and offered % self.stride:
            return False
        if self._steps and step <= self._steps[-1]:
            if not (final and step == self._steps[-1]):
                return False
            # The finished image of the last step replaces its preview.
            _save_atomic(image.convert("RGB"), self.path_for(step))
            return True
        if len(self._steps) >= self.max_frames:
            self._thin()
            if not final and offered % self.stride:
                return False
        self.folder.mkdir(parents=True, exist_ok=True)
        _save_atomic(image.convert("RGB"), self.path_for(step))
        self._steps.append(step)
        return True

    def path_for(self, step: int) -> Path:
        return self.folder / f"frame-{step:06d}{FRAME_SUFFIX}"

    def _thin(self) -> None:
        # Drop every other frame, keeping the first; later previews are kept half as often.
        dropped = self._steps[1::2]
        self._steps = self._steps[0::2]
        for step in dropped:
            self.path_for(step).unlink(missing_ok=True)
        self.stride *= 2


def _save_atomic(image: Image.Image, path: Path) -> None:
    # A reader (the timelapse button while the job runs) never sees half a frame.
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", compress_level=1)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def frame_files(folder: Path) -> list[Path]:
    """The kept frames in step order (empty when the folder does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"frame-*{FRAME_SUFFIX}"))


# -- encoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timelapse:
    data: bytes
    extension: str  # "mp4" or "webp"
    size: tuple[int, int]  # of the video
    frames: int
    fps: int
    note: str  # what was changed to make it (fallback, scaling), for the message; or ""


def even_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p halves the chroma planes, so both sides must be even."""
    return max(2, width - width % 2), max(2, height - height % 2)


def _frames(paths: list[Path], size: tuple[int, int]) -> Iterator[Image.Image]:
    for path in paths:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        yield image


def encode_mp4(paths: list[Path], size: tuple[int, int], fps: int) -> bytes:
    """H.264 in MP4, yuv420p; ``size`` must be even on both sides."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(MP4_CODEC, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for image in _frames(paths, size):
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def encode_webp(paths: list[Path], size: tuple[int, int], fps: int) -> bytes:
    """An animated WebP (Pillow), looping forever."""
    images = list(_frames(paths, size))
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
        quality=80,
    )
    return buffer.getvalue()


def _mp4_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (ImportError, OSError, ValueError, RuntimeError)
    try:
        import av

        return (*errors, av.error.FFmpegError)
    except ImportError:
        return errors


def encode_timelapse(
    paths: list[Path], *, fps: int = 10, limit_bytes: int | None = None, webp: bool = False
) -> Timelapse:
    """The frames as an MP4 (or, when PyAV cannot encode or ``webp`` asks, an animated WebP) of
    at most ``limit_bytes``, scaled down as far as needed. Raises :class:`TimelapseError` when
    there are no frames or not even a tiny video fits. Blocking: run it off the event loop."""
    if not paths:
        raise TimelapseError("there are no frames to make a timelapse from")
    with Image.open(paths[-1]) as last:
        full = even_size(*last.size)
    notes: list[str] = []
    extension = "webp" if webp else "mp4"
    size = full
    while True:
        if extension == "mp4":
            try:
                data = encode_mp4(paths, size, fps)
            except _mp4_errors() as exc:
                log.warning("PyAV cannot encode the MP4 (%s); making an animated WebP", exc)
                notes.append("as an animated WebP, because the MP4 encoder failed here")
                extension = "webp"
                continue
        else:
            data = encode_webp(paths, size, fps)
        if limit_bytes is None or len(data) <= limit_bytes:
            break
        # File size grows roughly with the pixel count: aim a little under the limit.
        factor = min(0.9, max(0.25, math.sqrt(limit_bytes / len(data)) * 0.9))
        smaller = even_size(int(size[0] * factor), int(size[1] * factor))
        if min(smaller) < MIN_SIDE:
            raise TimelapseError(
                f"even at {size[0]}×{size[1]} the timelapse is {len(data):,} bytes, over the "
                f"{limit_bytes:,}-byte upload limit"
            )
        log.info(
            "timelapse of %d bytes is over %d; encoding at %s", len(data), limit_bytes, smaller
        )
        size = smaller
    if size != full:
        notes.append(
            f"scaled down from {full[0]}×{full[1]} to {size[0]}×{size[1]} to fit the upload limit"
        )
    note = ("Sent " + "; ".join(notes) + ".") if notes else ""
    return Timelapse(data, extension, size, len(paths), fps, note)
