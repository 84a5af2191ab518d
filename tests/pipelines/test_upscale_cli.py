"""``python -m pipelines upscale``: writes the upscaled PNG and its JSON; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.__main__ import main


def write_image(path: Path, size: tuple[int, int] = (12, 10)) -> Path:
    Image.effect_noise(size, 60).convert("RGB").save(path)
    return path


def test_writes_the_upscaled_png_and_its_json(tmp_path: Path) -> None:
    image = write_image(tmp_path / "in.png")
    out = tmp_path / "big.png"
    code = main(["upscale", str(image), "--out", str(out), "--preset", "tiny", "--tile", "16"])
    assert code == 0
    assert Image.open(out).size == (48, 40)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["model_scale"] == 4 and report["settings"]["tile"] == 16
    assert report["settings"]["preset"] == "tiny"


def test_scale_sets_the_output_size(tmp_path: Path) -> None:
    image = write_image(tmp_path / "in.png")
    out = tmp_path / "big.png"
    assert main(["upscale", str(image), "--out", str(out), "--preset", "tiny", "--scale", "2"]) == 0
    assert Image.open(out).size == (24, 20)


def test_a_model_file_that_is_no_upscaler_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_image(tmp_path / "in.png")
    model = tmp_path / "model.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, model)
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\npreset = "default"\nupscaler_model = "{model}"\n')
    out = tmp_path / "out.png"
    code = main(["upscale", str(image), "--out", str(out), "--config", str(config)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models.upscaler_model" in err[0] and "spandrel" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing image", "cannot read the image"),
        ("not an image", "not an image"),
        ("scale zero", "scale must be above 0"),
        ("tile too small", "tile must be 0"),
        ("over the cap", "over the upscaling cap of 8 pixels"),
        ("out not png", "must be a .png file"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    case: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(write_image(tmp_path / "in.png"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    out = str(tmp_path / "out.png")
    argv = {
        "missing image": [str(tmp_path / "none.png"), "--out", out],
        "not an image": [str(junk), "--out", out],
        "scale zero": [image, "--out", out, "--scale", "0"],
        "tile too small": [image, "--out", out, "--tile", "4"],
        "over the cap": [image, "--out", out, "--max-input-side", "8"],
        "out not png": [image, "--out", str(tmp_path / "out.jpg")],
    }[case]
    assert main(["upscale", *argv, "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "out.png").exists()
