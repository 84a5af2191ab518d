"""``make models`` (``python -m pipelines.fetch_models``): every model file the config names is
fetched once from a real HTTP server on 127.0.0.1, checked by loading it, and reported; after it,
loading needs no server at all.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.ESRGAN import ESRGAN

from pipelines import clip_models, presets
from pipelines.clip_models import TINY_CLIP
from pipelines.fetch_models import MANIFEST_NAME, human_size, main, models_are_local
from pipelines.settings import ModelSettings
from pipelines.vqgan import VqganConfig
from tests.pipelines.test_clip_loading import trained_looking_tiny_clip
from tests.pipelines.test_diffusion_models import save_tiny_diffusers_folder
from tests.pipelines.test_downloads import HTML_BYTES, FakeHost, dead_url, host  # noqa: F401
from tests.pipelines.test_safety import write_released_layout
from tests.pipelines.test_vqgan_loading import (
    assert_same_weights,
    lightning_checkpoint,
    random_vqgan,
    save_with_fake_module,
    yaml_for,
)


@pytest.fixture(autouse=True)
def fresh_caches():
    presets.clear_caches()
    clip_models.clear_cache()
    yield
    presets.clear_caches()
    clip_models.clear_cache()


def write_config(path: Path, models: dict[str, object]) -> Path:
    lines = ["[models]"]
    for key, value in models.items():
        if isinstance(value, list):
            shown = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        else:
            shown = f'"{value}"'
        lines.append(f"{key} = {shown}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_make_models_fetches_checks_and_reports_every_file_then_needs_no_server(
    host: FakeHost,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vqgan = random_vqgan(VqganConfig.tiny(), seed=5)
    ckpt = tmp_path / "upload.ckpt"
    save_with_fake_module(lightning_checkpoint(vqgan, pickled_class=True), ckpt)
    # The first mirror answers with an HTML page; the files are on the second.
    host.routes["/dead/model.yaml"] = (200, "text/html", HTML_BYTES)
    host.routes["/vqgan/model.yaml"] = (200, "text/plain", yaml_for(vqgan.config).encode())
    host.routes["/vqgan/last.ckpt"] = (200, "application/octet-stream", ckpt.read_bytes())
    clip_file = tmp_path / "clip.safetensors"
    clip = trained_looking_tiny_clip()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_file))
    diffusers_folder = tmp_path / "sd"
    save_tiny_diffusers_folder(diffusers_folder, tmp_path / "tokenizer")
    upscaler = tmp_path / "x4.pth"
    torch.save(ESRGAN(num_filters=16, num_blocks=2, scale=4).state_dict(), upscaler)
    host.routes["/esrgan/x4.pth"] = (200, "application/octet-stream", upscaler.read_bytes())
    checker_folder = tmp_path / "safety"
    write_released_layout(checker_folder, flag_like=Image.new("RGB", (32, 32)))
    cache = tmp_path / "models"
    models = {
        "preset": "default",
        "device": "cpu",
        "cache_dir": str(cache),
        "vqgan_config": [host.url("/dead/model.yaml"), host.url("/vqgan/model.yaml")],
        "vqgan_checkpoint": host.url("/vqgan/last.ckpt"),
        "vqgan_checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        "clip_model": TINY_CLIP,
        "clip_pretrained": str(clip_file),
        "ranker_clip_model": TINY_CLIP,
        "ranker_clip_pretrained": str(clip_file),
        "diffusion_model": str(diffusers_folder),
        "safety_checker": str(checker_folder),
        "upscaler_model": host.url("/esrgan/x4.pth"),
        "upscaler_model_sha256": hashlib.sha256(upscaler.read_bytes()).hexdigest(),
    }
    config = write_config(tmp_path / "config.toml", models)

    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr()
    # (taming's quantizer prints a line of its own when a VQGAN is built)
    lines = [line for line in out.out.splitlines() if not line.startswith("Working with z")]
    yaml_line, ckpt_line, clip_line, sd_line, checker_line, upscaler_line, done = lines
    size = len(ckpt.read_bytes())
    assert re.fullmatch(
        rf"fetched  models\.vqgan_config: {re.escape(host.url('/vqgan/model.yaml'))} "
        rf"\(\d+ B\) -> {re.escape(str(cache))}/model-\w+\.yaml",
        yaml_line,
    ), yaml_line
    assert ckpt_line.startswith(
        f"fetched  models.vqgan_checkpoint: {host.url('/vqgan/last.ckpt')} ("
    )
    # The download and the safetensors copy the bot will read.
    assert f"{cache}/last-" in ckpt_line and ".weights.safetensors" in ckpt_line
    files = [Path(p) for p in ckpt_line.split(" -> ")[1].split(", ")]
    assert files[0].read_bytes() == ckpt.read_bytes()
    assert f"({human_size(size + files[1].stat().st_size)})" in ckpt_line
    assert clip_line.startswith(f"present  models.clip_pretrained: {clip_file} (")
    assert sd_line.startswith(f"present  models.diffusion_model: {diffusers_folder} (")
    assert checker_line.startswith(f"present  models.safety_checker: {checker_folder} (")
    assert upscaler_line.startswith(
        f"fetched  models.upscaler_model: {host.url('/esrgan/x4.pth')} ("
    )
    assert done.startswith("done: 6 model file(s) checked, 3 downloaded now, ")
    assert "it/s" in out.err or "B/s" in out.err or "%" in out.err  # tqdm's progress bars
    assert host.hits["/dead/model.yaml"] == 1 and host.hits["/vqgan/last.ckpt"] == 1
    assert (cache / MANIFEST_NAME).is_file()
    assert models_are_local(ModelSettings.from_mapping(models))

    # Run again: nothing is downloaded, everything is still checked.
    assert main(["--config", str(config)]) == 0
    again = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("fetched", "present"))
    ]
    assert [line.split()[0] for line in again] == ["present"] * 6, again
    assert host.hits["/vqgan/last.ckpt"] == 1 and host.hits["/vqgan/model.yaml"] == 1
    assert host.hits["/esrgan/x4.pth"] == 1

    # What the bot loads afterwards comes from the cache alone, with every mirror gone, the one
    # listed first included.
    host.routes.clear()
    hits = sum(host.hits.values())
    settings = ModelSettings.from_mapping(
        {
            **models,
            "vqgan_config": [
                dead_url("/model.yaml"),
                host.url("/dead/model.yaml"),
                host.url("/vqgan/model.yaml"),
            ],
        }
    )
    assert_same_weights(presets.load_vqgan(settings, torch.device("cpu")), vqgan)
    assert sum(host.hits.values()) == hits


def test_a_model_file_that_cannot_be_fetched_is_one_line_and_exit_2(
    host: FakeHost,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host.routes["/vqgan/model.yaml"] = (200, "text/html", HTML_BYTES)
    config = write_config(
        tmp_path / "config.toml",
        {
            "preset": "default",
            "cache_dir": str(tmp_path / "models"),
            "vqgan_config": host.url("/vqgan/model.yaml"),
        },
    )
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: models.vqgan_config: {host.url('/vqgan/model.yaml')} is an HTML page, "
        "not the file (some mirrors answer a dead link with a 'Link does not exist' "
        "page); check the URL, or download the file yourself and set a local path in "
        "config.toml"
    ]
    assert not (tmp_path / "models" / MANIFEST_NAME).exists()


def test_random_presets_need_nothing_fetched(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "config.toml", {"preset": "tiny"})
    assert main(["--config", str(config)]) == 0
    assert "nothing to download" in capsys.readouterr().out
