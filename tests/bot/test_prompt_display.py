"""What the user is shown about their prompt and mask: how the prompt was read (progress and
result messages), and the self-mask as an overlay on the first progress snapshot."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable

from PIL import Image

from bot.events import JobInfo, JobProgress, JobQueued, JobStarted
from bot.jobs import JobKind
from bot.mask_overlay import TINT, mask_overlay
from bot.progress_text import MASK_LINE, MAX_CONTENT, prompt_reading, results_content
from bot.store import Store
from pipelines.interface import attach_mask
from tests.bot.conftest import FakeSink, SinkCall, make_publisher, request

MINUS = "\u2212"


def test_the_reading_of_an_imagine_prompt() -> None:
    params = {"prompt": "a red apple | blurry:-1 | year 1999\\:2:0.5"}
    assert prompt_reading(JobKind.IMAGINE, params) == (
        f"📝 read as: a red apple (1) · blurry ({MINUS}1) · year 1999:2 (0.5)"
    )
    with_image = {"prompt": "a cat", "image_prompt_weights": [-0.5]}
    assert prompt_reading(JobKind.IMAGINE, with_image) == (
        f"📝 read as: a cat (1) · image prompt 1 ({MINUS}0.5)"
    )
    image_only = {"prompt": "", "image_prompt_weights": [1.0]}
    assert prompt_reading(JobKind.IMAGINE, image_only) == "📝 read as: image prompt 1 (1)"
    assert prompt_reading(JobKind.EDIT, {"prompt": "a hat"}) is None


def test_the_reading_stays_short_and_pings_nobody() -> None:
    long = " | ".join(f"@everyone word{i}:0.5" for i in range(200))
    reading = prompt_reading(JobKind.IMAGINE, {"prompt": long})
    assert reading is not None and len(reading) < 330
    assert "@everyone" not in reading
    content = results_content("header", [0.5] * 9, list(range(9)), reading=reading)
    assert len(content) <= MAX_CONTENT and reading in content


def test_results_show_the_reading_under_the_header() -> None:
    content = results_content("**/imagine #1**", [0.3], [7], reading="📝 read as: cat (1)")
    assert content.splitlines()[:2] == ["✅ **/imagine #1**: results, best first",
                                       "📝 read as: cat (1)"]


def test_the_overlay_tints_where_the_mask_is_white() -> None:
    preview = Image.new("RGB", (8, 4), (100, 100, 100))
    mask = Image.new("L", (8, 4), 0)
    mask.paste(255, (0, 0, 4, 4))
    shown = mask_overlay(preview, mask)
    red, green, _ = shown.getpixel((1, 1))
    assert red > 100 + 60 and green < 100  # tinted toward TINT
    assert shown.getpixel((6, 1)) == (100, 100, 100)  # untouched where the mask is black
    assert TINT[0] > TINT[1]


async def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _decoded(call: SinkCall) -> Image.Image:
    assert call.files
    return Image.open(io.BytesIO(call.files[0].data)).convert("RGB")


async def test_the_mask_is_shown_once_over_the_first_preview_even_when_newer_ones_wait(
    store: Store,
) -> None:
    record = await store.insert_job(request(user=1, steps=10, prompt="a cat | blurry:-1"), 0)
    info = JobInfo(record.id, JobKind.IMAGINE, 1, 1001, record.request.params)
    sink = FakeSink()
    publisher = make_publisher(store, 0.2)
    publisher.set_sink(sink)
    started = time.monotonic()
    first = Image.new("RGB", (8, 8), (100, 100, 100))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))
    attach_mask(first, mask)
    # Everything arrives before the first message goes out: without holding it, the mask
    # preview would be dropped for the newest one.
    publisher(JobQueued(info, 1, None))
    publisher(JobStarted(info, 10, started))
    publisher(JobProgress(info, 1, 10, first, 0, 1.0, started))
    for step in (1, 2):
        newer = Image.new("RGB", (8, 8), (0, 0, 200))
        publisher(JobProgress(info, step + 1, 10, newer, step, 1.0, started))
    await _wait_for(lambda: any(c.files for c in sink.calls))
    [masked] = [c for c in sink.calls if c.files]
    shown = _decoded(masked)
    assert shown.getpixel((1, 1))[0] > 160  # the left half is tinted red
    assert shown.getpixel((6, 1)) == (100, 100, 100)  # the preview itself, not a newer one
    assert MASK_LINE in masked.content
    assert f"📝 read as: a cat (1) · blurry ({MINUS}1)" in masked.content
    # Once shown, the newest preview takes over, without the mask.
    latest = Image.new("RGB", (8, 8), (0, 200, 0))
    publisher(JobProgress(info, 5, 10, latest, 4, 1.0, started))
    await _wait_for(lambda: len([c for c in sink.calls if c.files]) >= 2)
    later = [c for c in sink.calls if c.files][1]
    assert _decoded(later).getpixel((1, 1)) == (0, 200, 0)
    assert MASK_LINE not in later.content
    await publisher.close()


async def test_a_preview_that_arrives_while_the_mask_is_being_sent_is_shown_next(
    store: Store,
) -> None:
    record = await store.insert_job(request(user=1, steps=10, prompt="a cat"), 0)
    info = JobInfo(record.id, JobKind.IMAGINE, 1, 1001, record.request.params)
    sink = FakeSink(delay=0.3)  # the mask's send is still in flight when the next one comes
    publisher = make_publisher(store, 0.05)
    publisher.set_sink(sink)
    started = time.monotonic()
    first = Image.new("RGB", (8, 8), (100, 100, 100))
    attach_mask(first, Image.new("L", (8, 8), 255))
    publisher(JobQueued(info, 1, None))
    publisher(JobStarted(info, 10, started))
    publisher(JobProgress(info, 1, 10, first, 0, 1.0, started))
    await asyncio.sleep(0.1)
    assert not sink.calls
    publisher(JobProgress(info, 2, 10, Image.new("RGB", (8, 8), (0, 200, 0)), 1, 1.0, started))
    await _wait_for(lambda: len([c for c in sink.calls if c.files]) >= 2)
    masked, newest = [c for c in sink.calls if c.files][:2]
    assert MASK_LINE in masked.content and MASK_LINE not in newest.content
    assert _decoded(newest).getpixel((1, 1)) == (0, 200, 0)
    await publisher.close()


async def test_previews_without_a_mask_are_shown_newest_first(store: Store) -> None:
    record = await store.insert_job(request(user=1, steps=10, prompt="a cat"), 0)
    info = JobInfo(record.id, JobKind.IMAGINE, 1, 1001, record.request.params)
    sink = FakeSink()
    publisher = make_publisher(store, 0.2)
    publisher.set_sink(sink)
    started = time.monotonic()
    publisher(JobQueued(info, 1, None))
    publisher(JobStarted(info, 10, started))
    for step, colour in enumerate([(100, 100, 100), (0, 0, 200)]):
        publisher(JobProgress(info, step + 1, 10, Image.new("RGB", (8, 8), colour), step, 1.0,
                              started))
    await _wait_for(lambda: any(c.files for c in sink.calls))
    [shown] = [c for c in sink.calls if c.files]
    assert _decoded(shown).getpixel((1, 1)) == (0, 0, 200)
    assert MASK_LINE not in shown.content
    await publisher.close()
