"""A model file that is missing or wrong is the user's to fix: exit code 2 and one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipelines.__main__ import main


def write_config(tmp_path: Path, **models: str) -> Path:
    lines = ['[models]', 'preset = "default"', f'cache_dir = "{(tmp_path / "models").as_posix()}"']
    lines += [f'{key} = "{value}"' for key, value in models.items()]
    config = tmp_path / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def only_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_imagine_with_a_missing_vqgan_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "model.yaml"
    config = write_config(
        tmp_path, vqgan_config=missing.as_posix(), vqgan_checkpoint=(tmp_path / "x.ckpt").as_posix()
    )
    code = main(["imagine", "a cat", "--out", str(tmp_path / "cat.png"), "--config", str(config)])
    assert code == 2
    line = only_error_line(capsys)
    assert "models.vqgan_config" in line and str(missing) in line
    assert not (tmp_path / "cat.png").exists()


@pytest.fixture
def edit_inputs(tmp_path: Path) -> list[str]:
    Image.new("RGB", (64, 64), "gray").save(tmp_path / "image.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    return [
        "--image", str(tmp_path / "image.png"),
        "--mask", str(tmp_path / "mask.png"),
        "--out-dir", str(tmp_path / "out"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("make_model", "expected"),
    [
        (lambda root: (root / "no-such-folder").as_posix(), "does not exist"),
        (lambda root: (root / "empty").as_posix(), "is not a complete diffusers model folder"),
        (lambda root: "someone/some-model", "downloads are off (HF_HUB_OFFLINE is set)"),
    ],
    ids=["missing-folder", "incomplete-folder", "hub-id-offline"],
)
def test_edit_with_an_unloadable_diffusion_model_exits_2(
    tmp_path: Path,
    edit_inputs: list[str],
    capsys: pytest.CaptureFixture[str],
    make_model: object,
    expected: str,
) -> None:
    (tmp_path / "empty").mkdir()
    model = make_model(tmp_path)  # type: ignore[operator]
    config = write_config(tmp_path, diffusion_model=model)
    code = main(["edit", "a cat", *edit_inputs, "--config", str(config)])
    assert code == 2
    line = only_error_line(capsys)
    assert line.startswith("error: models.diffusion_model:")
    assert expected in line
    assert not (tmp_path / "out" / "results.json").exists()
