"""The [upscale] and [timelapse] sections: read into typed values, mistakes refused by name."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, TimelapseConfig, UpscaleConfig, load_config, parse_config


def test_the_shipped_config_has_the_documented_defaults() -> None:
    config = load_config("config.toml")
    assert config.upscale == UpscaleConfig()
    assert config.timelapse == TimelapseConfig()
    assert config.models.upscaler_model.endswith("/RealESRGAN_x4plus.pth")


def test_values_are_read() -> None:
    config = parse_config(
        "[upscale]\ntile_size = 0\ntile_overlap = 8\nmax_input_side = 512\n"
        "jpeg_max_quality = 90\njpeg_min_quality = 40\njpeg_quality_step = 10\n"
        "[timelapse]\nkeep_frames = false\nmax_frames = 100\nfps = 24\n"
    )
    assert config.upscale == UpscaleConfig(0, 8, 512, 90, 40, 10)
    assert config.timelapse == TimelapseConfig(False, 100, 24)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[upscale]\ntile_size = 8", "upscale.tile_size = 8: must be 0 (no tiling) or from 16"),
        ("[upscale]\ntile_overlap = -1", "upscale.tile_overlap = -1"),
        ("[upscale]\njpeg_min_quality = 96", "upscale.jpeg_min_quality = 96: must not exceed"),
        ("[upscale]\nmax_input_side = 'big'", "upscale.max_input_side = 'big'"),
        ("[upscale]\ntile = 64", "upscale.tile = 64: unknown key"),
        ("[timelapse]\nmax_frames = 500", "timelapse.max_frames = 500"),
        ("[timelapse]\nfps = 0", "timelapse.fps = 0"),
        ("[timelapse]\nkeep_frames = 'yes'", "keep_frames = 'yes': must be true or false"),
        ("[models]\nupscaler_model = 4", "models.upscaler_model = 4: must be a string"),
    ],
)
def test_mistakes_are_one_line_each(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert len(caught.value.problems) == 1
    assert fragment in caught.value.problems[0]
