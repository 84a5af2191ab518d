"""``python -m pipelines imagine``: writes the PNG and its JSON; bad input exits 2 in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.__main__ import main

TINY = ["--preset", "tiny", "--size", "64x64", "--cutn", "4", "--lr", "0.005"]


def write_image(path: Path, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(), mode).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int]) -> Path:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    mask.save(path)
    return path


def test_writes_the_png_and_its_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "castle.png"
    code = main(
        ["imagine", "a castle | oil painting:0.5", "--out", str(out), "--steps", "3",
         "--seed", "7", "--candidates", "2", *TINY]
    )
    assert code == 0
    best, second = Image.open(out), Image.open(tmp_path / "castle-2.png")
    assert best.size == (64, 64) and second.size == (64, 64)
    report = json.loads((tmp_path / "castle.json").read_text())
    settings = report["settings"]
    assert settings["seed"] == 7
    assert (settings["steps"], settings["cutn"], settings["lr"]) == (3, 4, 0.005)
    assert (settings["width"], settings["height"], settings["candidates"]) == (64, 64, 2)
    assert settings["prompts"] == [
        {"text": "a castle", "weight": 1.0, "stop": None},
        {"text": "oil painting", "weight": 0.5, "stop": None},
    ]
    assert settings["models"]["preset"] == "tiny"
    assert settings["models"]["clip_model"] == "faraday-tiny-clip"
    assert "vqgan" in settings["models"]
    assert [o["file"] for o in report["outputs"]] == ["castle.png", "castle-2.png"]
    assert [o["rank"] for o in report["outputs"]] == [1, 2]
    assert report["outputs"][0]["score"] >= report["outputs"][1]["score"]
    assert sorted(o["seed"] for o in report["outputs"]) == [7, 8]
    assert "castle.json" in capsys.readouterr().out


def test_candidate_batch_reaches_the_run_and_its_json(tmp_path: Path) -> None:
    out = tmp_path / "batched.png"
    code = main(
        ["imagine", "a castle", "--out", str(out), "--steps", "1", "--seed", "2",
         "--candidates", "2", "--candidate-batch", "2", *TINY]
    )
    assert code == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["candidate_batch"] == 2


def test_edits_with_a_mask_of_the_same_shape_resized(tmp_path: Path) -> None:
    init = write_image(tmp_path / "init.png", (64, 64))
    mask = write_mask(tmp_path / "mask.png", (128, 128))
    out = tmp_path / "edit.png"
    code = main(
        ["imagine", "a red door", "--out", str(out), "--steps", "2", "--seed", "1",
         "--init", str(init), "--mask", str(mask), *TINY]
    )
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["inputs"]["mask"] == str(mask)
    assert report["settings"]["mask"] == {"width": 128, "height": 128, "mode": "L"}


def bad_input_cases(tmp_path: Path) -> dict[str, list[str]]:
    init = write_image(tmp_path / "init.png", (64, 64))
    wide_mask = write_mask(tmp_path / "wide.png", (128, 64))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not a picture")
    animated = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (64, 64), (80 * i, 0, 0)) for i in range(3)]
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[models\npreset = 'tiny'")
    out = str(tmp_path / "out.png")
    return {
        "unreadable image": ["x", "--out", out, "--init", str(not_an_image)],
        "missing image": ["x", "--out", out, "--image-prompt", str(tmp_path / "gone.png")],
        "animated image": ["x", "--out", out, "--image-prompt", str(animated)],
        "mask shape differs": ["x", "--out", out, "--init", str(init), "--mask", str(wide_mask)],
        "mask without init": ["x", "--out", out, "--mask", str(wide_mask)],
        "size too big": ["x", "--out", out, "--size", "2048x64"],
        "size not a multiple": ["x", "--out", out, "--size", "72x64"],
        "size not a size": ["x", "--out", out, "--size", "big"],
        "steps zero": ["x", "--out", out, "--steps", "0"],
        "steps too many": ["x", "--out", out, "--steps", "5000"],
        "steps not a number": ["x", "--out", out, "--steps", "many"],
        "empty prompt part": ["a || b", "--out", out],
        "bad weight": ["cat:0.5x", "--out", out],
        "zero weights": ["a:0 | b:0", "--out", out],
        "weight too small": ["a | b:1e-9", "--out", out],
        "image weight too small": ["x", "--out", out, "--image-prompt", f"{init}:0"],
        "zero text weight beside an image": [
            "a castle:0", "--out", out, "--image-prompt", f"{init}:1"
        ],
        "only zero weights": ["", "--out", out, "--image-prompt", f"{init}:0"],
        "image weight not finite": ["x", "--out", out, "--image-prompt", f"{init}:1e999"],
        "out folder missing": ["x", "--out", str(tmp_path / "nowhere" / "out.png")],
        "out not png": ["x", "--out", str(tmp_path / "out.jpg")],
        "bad config": ["x", "--out", out, "--config", str(bad_config)],
        "unknown preset": ["x", "--out", out, "--preset", "huge"],
        "candidate batch zero": ["x", "--out", out, "--candidate-batch", "0"],
        "candidate batch not a number": ["x", "--out", out, "--candidate-batch", "many"],
    }


CASES = [
    "unreadable image", "missing image", "animated image", "mask shape differs",
    "mask without init",
    "size too big", "size not a multiple", "size not a size", "steps zero", "steps too many",
    "steps not a number", "empty prompt part", "bad weight", "zero weights", "weight too small",
    "image weight too small", "image weight not finite", "zero text weight beside an image",
    "only zero weights",
    "out folder missing", "out not png", "bad config", "unknown preset",
    "candidate batch zero", "candidate batch not a number",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = bad_input_cases(tmp_path)[case]
    preset = [] if "--preset" in argv else ["--preset", "tiny"]
    try:
        code = main(["imagine", *argv, *preset])
    except SystemExit as exit_:  # argparse's own checks
        code = exit_.code
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert not (tmp_path / "out.png").exists()


def test_the_messages_say_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = bad_input_cases(tmp_path)
    expected = {
        "unreadable image": "not an image",
        "animated image": "is animated; give a still image",
        "mask shape differs": "the mask is 128x64 but the init image is 64x64",
        "size too big": "width must be between 64 and 1024",
        "size not a multiple": "multiple of 16",
        "steps too many": "steps must be between 1 and 2000",
        "empty prompt part": "prompt 2 of 3 is empty",
        "candidate batch zero": "--candidate-batch must be auto or a whole number of at least 1",
        "candidate batch not a number": "--candidate-batch must be auto or a whole number",
        # The image prompt guides, so "every weight is 0" would be false: the text's weight is
        # what is wrong.
        "zero text weight beside an image": "('a castle') has a weight that is too small",
        "only zero weights": "every prompt weight is 0",
    }
    for case, fragment in expected.items():
        assert main(["imagine", *cases[case], "--preset", "tiny"]) == 2
        assert fragment in capsys.readouterr().err, case


def test_runs_as_a_module(tmp_path: Path) -> None:
    out = tmp_path / "module.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "pipelines", "imagine", "a lighthouse", "--out", str(out),
         "--steps", "2", "--seed", "3", *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert Image.open(out).size == (64, 64)
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["seed"] == 3


def test_shows_how_the_prompts_were_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    style = write_image(tmp_path / "a:style.png", (96, 48))
    out = tmp_path / "read.png"
    code = main(
        ["imagine", "year 1999\\:2:0.5 | blurry:-1", "--out", str(out), "--steps", "1",
         "--seed", "1", "--image-prompt", f"{style}:0.25", *TINY]
    )
    assert code == 0
    reading = "year 1999:2 (0.5) · blurry (\u22121) · image prompt 1 (0.25)"
    assert capsys.readouterr().out.splitlines()[0] == f"prompts: {reading}"
    report = json.loads((tmp_path / "read.json").read_text())
    assert report["settings"]["reading"] == reading
    assert report["settings"]["image_prompt_weights"] == [0.25]
    assert report["inputs"]["image_prompts"] == [str(style)]
    assert report["mask_file"] is None
    assert not (tmp_path / "read.mask.png").exists()


def test_mask_text_writes_the_mask_beside_the_result(tmp_path: Path) -> None:
    init = write_image(tmp_path / "init.png", (64, 64))
    out = tmp_path / "edit.png"
    code = main(
        ["imagine", "a red door", "--out", str(out), "--steps", "1", "--seed", "1",
         "--init", str(init), "--mask-text", "the door", *TINY]
    )
    assert code == 0
    mask = Image.open(tmp_path / "edit.mask.png")
    assert mask.size == (64, 64) and mask.mode == "L"
    report = json.loads((tmp_path / "edit.json").read_text())
    assert report["mask_file"] == "edit.mask.png"


def test_video_writes_a_timelapse_mp4_with_a_frame_per_step(tmp_path: Path) -> None:
    import av

    out, video = tmp_path / "lake.png", tmp_path / "lake.mp4"
    code = main(["imagine", "a lake", "--out", str(out), "--steps", "5", "--seed", "1",
                 "--video", str(video), *TINY])
    assert code == 0
    with av.open(str(video)) as container:
        frames = list(container.decode(video=0))
    # Steps 0..4 and the finished image.
    assert len(frames) == 6
    assert (frames[0].width, frames[0].height) == (64, 64)
    assert Image.open(out).size == (64, 64)


@pytest.mark.parametrize(
    ("video", "fragment"),
    [("lake.gif", "must be a .mp4 or .webp file"), ("nowhere/lake.mp4", "does not exist")],
)
def test_a_bad_video_path_exits_2_before_running(
    video: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code = main(["imagine", "x", "--out", str(out), "--video", str(tmp_path / video), *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    assert not out.exists()
