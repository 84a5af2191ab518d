"""Where the bot keeps files under the data folder, and how it writes them without tearing.

A file is written to a temporary name in the same folder, flushed to disk, then renamed over its
final name. A reader (or a restart after a crash) sees either the old file or the whole new one,
never half of one; the store commits a row that names a file only after that rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class DataPaths:
    """The layout of the data folder. Paths stored in SQLite are relative to ``root``."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    @property
    def frames(self) -> Path:
        return self.root / "frames"

    def make_dirs(self) -> None:
        for folder in (self.root, self.inputs, self.results, self.previews, self.frames):
            folder.mkdir(parents=True, exist_ok=True)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def absolute(self, stored: str) -> Path:
        return self.root / stored

    def input_path(self, data: bytes) -> Path:
        # Content-addressed, so a continuation that reuses an image stores it once.
        return self.inputs / f"{hashlib.sha256(data).hexdigest()}.img"

    def result_path(self, job_id: int, rank: int) -> Path:
        return self.results / f"job-{job_id}-{rank}.png"

    def preview_path(self, job_id: int) -> Path:
        return self.previews / f"job-{job_id}.png"

    def frames_dir(self, job_id: int) -> Path:
        """A job's kept preview frames, for its timelapse (deleted with the job)."""
        return self.frames / f"job-{job_id}"


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename.

    Readers, and the bot after a crash of its process, see the old file or the whole new one.
    ``durable`` also fsyncs the data before the rename and the folder after it, so that holds
    after power loss too, and a row committed afterwards never names a file the disk forgot.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    if durable:
        _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Persist a rename: on POSIX the new name lives in the folder's own data."""
    if os.name != "posix":
        return  # Windows cannot open a folder for fsync; its renames go through the journal
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
