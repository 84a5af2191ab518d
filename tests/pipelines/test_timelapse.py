"""Timelapse frames kept within their cap, and videos that decode, fall back and fit."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipelines import timelapse
from pipelines.timelapse import (
    FrameRecorder,
    TimelapseError,
    encode_timelapse,
    even_size,
    frame_files,
)


def frame(step: int, size: tuple[int, int] = (33, 31)) -> Image.Image:
    """A frame whose colour says its step, with noise so it does not compress to nothing."""
    rng = np.random.default_rng(step)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    array[: size[1] // 2] = (step * 7) % 256
    return Image.fromarray(array, "RGB")


def record(folder: Path, count: int, size: tuple[int, int] = (33, 31)) -> list[Path]:
    recorder = FrameRecorder(folder)
    for step in range(count):
        recorder.add(step, frame(step, size))
    return frame_files(folder)


def decoded_frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_every_offered_frame_is_kept_up_to_the_cap(tmp_path: Path) -> None:
    recorder = FrameRecorder(tmp_path / "f", max_frames=10)
    for step in range(0, 100, 10):
        assert recorder.add(step, frame(step))
    assert recorder.steps == list(range(0, 100, 10))
    assert [p.name for p in frame_files(tmp_path / "f")] == [
        f"frame-{s:06d}.png" for s in range(0, 100, 10)
    ]


def test_past_the_cap_frames_thin_out_evenly_over_the_whole_run(tmp_path: Path) -> None:
    recorder = FrameRecorder(tmp_path / "f", max_frames=10)
    for step in range(100):
        recorder.add(step, frame(step, (8, 8)))
    recorder.add(100, frame(100, (8, 8)), final=True)
    steps = recorder.steps
    assert len(steps) <= 10 + 1
    assert steps[0] == 0 and steps[-1] == 100  # the start and the finished image
    gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
    assert gaps == {recorder.stride}  # evenly spread, not the first ten
    assert recorder.stride == 16
    assert len(frame_files(tmp_path / "f")) == len(steps)  # dropped frames are deleted


def test_the_final_image_replaces_a_preview_of_the_same_step(tmp_path: Path) -> None:
    recorder = FrameRecorder(tmp_path / "f")
    recorder.add(5, frame(1))
    recorder.add(5, frame(2), final=True)
    [only] = frame_files(tmp_path / "f")
    assert np.array_equal(np.asarray(Image.open(only)), np.asarray(frame(2)))


def test_the_mp4_decodes_with_pyav_with_one_frame_per_kept_frame(tmp_path: Path) -> None:
    frames = record(tmp_path / "f", 12)
    made = encode_timelapse(frames, fps=10)
    assert made.extension == "mp4" and made.note == ""
    assert made.size == (32, 30)  # yuv420p needs even sides
    decoded = decoded_frames(made.data)
    assert len(decoded) == 12 == made.frames
    assert decoded[0].shape == (30, 32, 3)
    with av.open(io.BytesIO(made.data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    # The frames are in order: the top half's grey level follows the step.
    tops = [int(f[:10].mean()) for f in decoded]
    assert all(abs(t - (s * 7) % 256) <= 12 for s, t in enumerate(tops))


def test_when_pyav_cannot_encode_an_animated_webp_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = record(tmp_path / "f", 6)
    # A codec PyAV does not have fails in add_stream, as a build without H.264 would.
    monkeypatch.setattr(timelapse, "MP4_CODEC", "no-such-encoder")
    made = encode_timelapse(frames, fps=5)
    assert made.extension == "webp"
    assert "animated WebP" in made.note
    with Image.open(io.BytesIO(made.data)) as webp:
        assert webp.format == "WEBP" and webp.n_frames == 6
        webp.seek(1)
        webp.load()
        assert webp.info["duration"] == 200


def test_a_video_over_the_limit_is_scaled_down_until_it_fits(tmp_path: Path) -> None:
    frames = record(tmp_path / "f", 10, size=(128, 96))
    full = encode_timelapse(frames, fps=10)
    limit = len(full.data) // 3
    fitted = encode_timelapse(frames, fps=10, limit_bytes=limit)
    assert len(fitted.data) <= limit
    assert fitted.size[0] < 128 and fitted.size == even_size(*fitted.size)
    assert "scaled down from 128×96" in fitted.note
    assert len(decoded_frames(fitted.data)) == 10


def test_a_limit_nothing_fits_is_a_clear_error(tmp_path: Path) -> None:
    frames = record(tmp_path / "f", 4, size=(64, 64))
    with pytest.raises(TimelapseError, match="upload limit"):
        encode_timelapse(frames, limit_bytes=50)
    with pytest.raises(TimelapseError, match="no frames"):
        encode_timelapse([])
