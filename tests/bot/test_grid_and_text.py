"""The numbered results grid and the words of progress messages."""

from __future__ import annotations

from PIL import Image, ImageChops

from bot.eta import EtaEstimator
from bot.grid import GAP, grid_shape, numbered_grid
from bot.jobs import JobKind
from bot.progress_text import describe_job, format_duration, progress_bar


def test_grid_places_tiles_best_first_and_draws_a_number_on_each() -> None:
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    tiles = [Image.new("RGB", (64, 64), colour) for colour in colours]
    grid = numbered_grid(tiles)
    assert grid_shape(4) == (2, 2)
    assert grid.size == (2 * 64 + 3 * GAP, 2 * 64 + 3 * GAP)
    for index, colour in enumerate(colours):
        left = GAP + (index % 2) * (64 + GAP)
        top = GAP + (index // 2) * (64 + GAP)
        tile = grid.crop((left, top, left + 64, top + 64))
        # The bottom-right corner is the plain tile, in rank order...
        assert tile.getpixel((60, 60)) == colour
        # ...and the top-left corner carries a drawn badge that differs from the tile.
        badge = tile.crop((0, 0, 24, 24))
        plain = Image.new("RGB", badge.size, colour)
        assert ImageChops.difference(badge, plain).getbbox() is not None


def test_each_number_is_drawn_differently() -> None:
    tiles = [Image.new("RGB", (64, 64), (90, 90, 90)) for _ in range(3)]
    grid = numbered_grid(tiles)
    badges = [grid.crop((GAP + i * (64 + GAP), GAP, GAP + i * (64 + GAP) + 24, GAP + 24))
              for i in range(3)]
    assert ImageChops.difference(badges[0], badges[1]).getbbox() is not None
    assert ImageChops.difference(badges[1], badges[2]).getbbox() is not None


def test_grid_shapes() -> None:
    assert [grid_shape(n) for n in (1, 2, 3, 5, 9, 10)] == [
        (1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3)
    ]


def test_progress_words() -> None:
    assert progress_bar(5, 10, width=10) == "`█████░░░░░` 50%"
    assert progress_bar(0, 0, width=4) == "`░░░░` 0%"
    assert format_duration(None) == "unknown"
    assert [format_duration(s) for s in (4.4, 65, 3723)] == ["4s", "1m 05s", "1h 02m"]


def test_prompts_cannot_ping_anyone() -> None:
    text = describe_job(3, JobKind.EDIT, 42, {"prompt": "@everyone look `here`"})
    assert "@everyone" not in text and "`" not in text.split("**")[-1]
    assert text.startswith("**/edit #3**") and text.endswith("for <@42>")


def test_eta_averages_recent_steps_per_kind_and_size() -> None:
    eta = EtaEstimator(window=2)
    small = {"steps": 10, "width": 128, "height": 128}
    large = {"steps": 10, "width": 256, "height": 256}
    assert eta.job_seconds(JobKind.IMAGINE, small) is None
    for seconds in (9.0, 1.0, 2.0):  # the window keeps the last two
        eta.record(JobKind.IMAGINE, small, seconds)
    assert eta.seconds_per_step(JobKind.IMAGINE, small) == 1.5
    assert eta.job_seconds(JobKind.IMAGINE, {**small, "steps": 4}) == 6.0
    # An unseen size borrows its kind's average; another kind knows nothing.
    assert eta.seconds_per_step(JobKind.IMAGINE, large) == 1.5
    eta.record(JobKind.IMAGINE, large, 5.0)
    assert eta.seconds_per_step(JobKind.IMAGINE, large) == 5.0
    assert eta.seconds_per_step(JobKind.EDIT, small) is None
    # A running job's own pace wins once it has one.
    assert eta.remaining_seconds(JobKind.IMAGINE, small, step=5, total=10, elapsed=20.0) == 20.0
    assert eta.remaining_seconds(JobKind.IMAGINE, small, step=0, total=10, elapsed=0.0) == 15.0


def test_eta_counts_the_steps_a_job_asked_for_not_the_pipelines_own_count() -> None:
    eta = EtaEstimator()
    edit = {"steps": 20, "blend_start": 0.25}
    eta.record(JobKind.EDIT, edit, 1.0)  # a 20 s job that asked for 20 steps
    assert eta.job_seconds(JobKind.EDIT, edit) == 20.0
    # The pipeline reports progress over the 15 steps it runs after skipping the first quarter:
    # before it has a pace of its own, the running job still has the whole 20 s ahead.
    assert eta.remaining_seconds(JobKind.EDIT, edit, step=0, total=15, elapsed=0.0) == 20.0

