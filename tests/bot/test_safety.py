"""The bot's side of the image safety check, on a real checker that flags one kind of picture:
blurred in place, or withheld with the rest renumbered; input images refused; channels skipped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bot.config import SafetyConfig
from bot.safety import ImageSafety
from bot.store import NewResult
from pipelines import safety as pipeline_safety
from pipelines.settings import ModelSettings
from tests.pipelines.test_safety import images, write_released_layout


@pytest.fixture(scope="module")
def checker_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checker")
    _red, stripes = images()
    write_released_layout(folder, flag_like=stripes)  # flags the stripes, not the flat red
    return folder


@pytest.fixture
def fresh() -> Iterator[None]:
    pipeline_safety.clear_cache()
    yield
    pipeline_safety.clear_cache()


def service(folder: Path, action: str = "blur", **config: bool) -> ImageSafety:
    models = ModelSettings(preset="default", device="cpu", safety_checker=str(folder))
    return ImageSafety(SafetyConfig(action=action, **config), models, lambda channel: False)


def write_results(folder: Path) -> list[NewResult]:
    red, stripes = images()
    out = []
    for rank, image in enumerate([stripes, red, stripes], start=1):
        path = folder / f"job-7-{rank}.png"
        image.save(path)
        out.append(NewResult(rank, 1.0 - rank / 10, 100 + rank, path))
    return out


async def test_blur_keeps_every_result_and_replaces_the_flagged_ones_by_a_blur(
    tmp_path: Path, checker_folder: Path, fresh: None
) -> None:
    results = write_results(tmp_path)
    originals = [Image.open(r.path).convert("RGB").tobytes() for r in results]
    safety = service(checker_folder, "blur")
    try:
        kept, withheld = await safety.screen_results(results, lambda rank: tmp_path / f"{rank}")
    finally:
        safety.stop()
    assert withheld == 0
    assert [(r.rank, r.flagged) for r in kept] == [(1, True), (2, False), (3, True)]
    after = [Image.open(r.path).convert("RGB") for r in kept]
    assert after[1].tobytes() == originals[1]
    for index in (0, 2):
        # Only the blurred image is kept; the stripes are gone.
        assert after[index].tobytes() != originals[index]
        assert after[index].getextrema()[2][1] - after[index].getextrema()[2][0] < 100


async def test_withhold_deletes_the_flagged_ones_and_numbers_the_rest_from_1(
    tmp_path: Path, checker_folder: Path, fresh: None
) -> None:
    results = write_results(tmp_path)
    red = Image.open(results[1].path).convert("RGB").tobytes()
    safety = service(checker_folder, "withhold")
    try:
        kept, withheld = await safety.screen_results(
            results, lambda rank: tmp_path / f"job-7-{rank}.png"
        )
    finally:
        safety.stop()
    assert withheld == 2
    [only] = kept
    assert (only.rank, only.seed, only.flagged) == (1, 102, False)
    assert only.path == tmp_path / "job-7-1.png"
    assert Image.open(only.path).convert("RGB").tobytes() == red
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-7-1.png"]


async def test_an_input_image_is_refused_by_name_and_a_clean_one_passes(
    checker_folder: Path, fresh: None
) -> None:
    red, stripes = images()

    def png(image: Image.Image) -> bytes:
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    safety = service(checker_folder)
    try:
        assert await safety.refused_input(1, {"image": png(red)}) is None
        refusal = await safety.refused_input(1, {"init_image": png(stripes)})
    finally:
        safety.stop()
    assert refusal == (
        "The init image was refused by the image safety check, so nothing was queued. Try "
        "another picture."
    )


def test_age_restricted_channels_are_skipped_unless_asked_and_unknown_ones_are_checked(
    checker_folder: Path,
) -> None:
    models = ModelSettings(preset="default", device="cpu", safety_checker=str(checker_folder))
    restricted = {1: True, 2: False}

    def make(**config: bool) -> ImageSafety:
        return ImageSafety(SafetyConfig(**config), models, restricted.get)

    assert [make().wanted(c) for c in (1, 2, 3)] == [False, True, True]
    assert [make(check_age_restricted=True).wanted(c) for c in (1, 2, 3)] == [True, True, True]
    assert [make(image_check=False).wanted(c) for c in (1, 2, 3)] == [False, False, False]
