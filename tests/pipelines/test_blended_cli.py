"""``python -m pipelines edit``: files written, and every bad input refused with exit code 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from pipelines import blended_cli
from tests.pipelines.blended_helpers import SIZE, mask_image, source_image


def main(argv: list[str]) -> int:
    """The dispatcher's job for this one subcommand: parse, then run."""
    parser = argparse.ArgumentParser(prog="python -m pipelines")
    blended_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "image": tmp_path / "image.png",
        "mask": tmp_path / "mask.png",
        "config": tmp_path / "config.toml",
        "out": tmp_path / "out",
    }
    source_image().save(paths["image"])
    mask_image().save(paths["mask"])
    cache = (tmp_path / "models").as_posix()
    paths["config"].write_text(f'[models]\npreset = "tiny"\ncache_dir = "{cache}"\n')
    return paths


def edit_args(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "edit",
        "a bowl of oranges",
        "--image",
        str(files["image"]),
        "--mask",
        str(files["mask"]),
        "--out-dir",
        str(files["out"]),
        "--config",
        str(files["config"]),
        *extra,
    ]


def test_an_edit_writes_ranked_images_and_results_json(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(edit_args(files, "--candidates", "3", "--steps", "4", "--seed", "9", "--no-shrink"))
    assert code == 0
    report = json.loads((files["out"] / "results.json").read_text())
    assert [entry["file"] for entry in report["images"]] == ["1.png", "2.png", "3.png"]
    scores = [entry["score"] for entry in report["images"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(entry["seed"] for entry in report["images"]) == [9, 10, 11]
    for entry in report["images"]:
        with Image.open(files["out"] / entry["file"]) as image:
            assert image.size == (SIZE, SIZE)
    settings = report["settings"]
    assert settings["preset"] == "tiny"
    assert settings["candidates"] == 3 and settings["steps"] == 4 and settings["seed"] == 9
    assert settings["shrink"] is False and settings["background"] == "none"
    assert settings["guidance"] == 7.5 and settings["blend_start"] == 0.25
    assert settings["working_size"] == [SIZE, SIZE]
    assert "results.json" in capsys.readouterr().out


@pytest.mark.parametrize(("width", "height"), [(300, 200), (1920, 1080), (1000, 1000)])
def test_results_keep_the_input_aspect_ratio(
    files: dict[str, Path], width: int, height: int
) -> None:
    source_image(width, height).save(files["image"])
    mask_image(width, height).save(files["mask"])
    options = ("--candidates", "1", "--steps", "2", "--max-side", "96", "--start", "noise")
    code = main(edit_args(files, *options))
    assert code == 0
    report = json.loads((files["out"] / "results.json").read_text())
    with Image.open(files["out"] / "1.png") as image:
        out_w, out_h = image.size
    assert max(out_w, out_h) == 96
    assert abs((out_w / out_h) / (width / height) - 1) < 0.01, (out_w, out_h)
    assert report["settings"]["output_size"] == [out_w, out_h]
    assert report["settings"]["start"] == "noise"
    work_w, work_h = report["settings"]["working_size"]
    assert work_w * work_h <= 96 * 96


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": "missing.png"}, "cannot read the image file"),
        ({"mask": "missing.png"}, "cannot read the mask file"),
        ({"image": "notes.txt"}, "the image is not an image Pillow can read"),
        ({"mask": "notes.txt"}, "the mask is not an image Pillow can read"),
        ({"mask": "black.png"}, "the mask selects nothing"),
        ({"image": "animated.gif"}, "animated.gif' is animated; give a still image"),
        ({"mask": "animated.gif"}, "animated.gif' is animated; give a still image"),
        ({"mask": "wide.png"}, "the mask is 64×32 but the image is 64×64"),
        ({"args": ["--candidates", "0"]}, "candidates must be a whole number from 1 to 8"),
        ({"args": ["--candidates", "9"]}, "candidates must be a whole number from 1 to 8"),
        ({"args": ["--steps", "0"]}, "steps must be a whole number from 1 to 200"),
        ({"args": ["--steps", "500"]}, "steps must be a whole number from 1 to 200"),
        ({"args": ["--guidance", "-1"]}, "guidance must be a number from 0 to 30"),
        ({"args": ["--guidance", "31"]}, "guidance must be a number from 0 to 30"),
        ({"args": ["--blend-start", "1"]}, "blend_start must be below 1"),
        ({"args": ["--candidates", "two"]}, "argument --candidates: invalid int value: 'two'"),
        ({"args": ["--background", "blur"]}, "argument --background: invalid choice: 'blur'"),
        ({"args": ["--start", "blank"]}, "argument --start: invalid choice: 'blank'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, object],
    message: str,
) -> None:
    folder = files["image"].parent
    write_text(folder / "notes.txt", "not an image")
    Image.new("L", (SIZE, SIZE), 0).save(folder / "black.png")
    Image.new("L", (SIZE, SIZE // 2), 255).save(folder / "wide.png")
    frames = [Image.new("L", (SIZE, SIZE), shade) for shade in (255, 128)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    for key in ("image", "mask"):
        if key in change:
            files[key] = folder / str(change[key])
    argv = edit_args(files, *change.get("args", []))  # type: ignore[misc]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert not files["out"].exists() or not any(files["out"].iterdir())


def test_a_broken_config_is_bad_input(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["config"].write_text('[models]\npreset = "huge"\n')
    assert main(edit_args(files)) == 2
    assert "models.preset = 'huge'" in capsys.readouterr().err
