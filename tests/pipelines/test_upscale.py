"""The upscaler: spandrel loading of real-format files, presets, tiling, the size cap."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from pipelines import upscale
from pipelines.downloads import ModelFileError
from pipelines.image_io import pil_to_tensor
from pipelines.interface import Cancelled, InvalidRequest
from pipelines.settings import ModelSettings
from pipelines.upscale import (
    UpscalePipeline,
    UpscaleRequest,
    load_descriptor_from_file,
    load_upscaler,
    tile_spans,
    upscale_tiled,
)

CPU = torch.device("cpu")


def real_esrgan_x4plus_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Real-ESRGAN x4plus as its authors release it: basicsr's RRDBNet key names and shapes
    (num_feat 64, num_block 23, num_grow_ch 32), random values."""
    feat, grow, blocks = 64, 32, 23
    shapes: dict[str, tuple[int, ...]] = {
        "conv_first.weight": (feat, 3, 3, 3),
        "conv_first.bias": (feat,),
    }
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                out = feat if c == 5 else grow
                shapes[f"body.{b}.rdb{r}.conv{c}.weight"] = (out, feat + (c - 1) * grow, 3, 3)
                shapes[f"body.{b}.rdb{r}.conv{c}.bias"] = (out,)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[f"{name}.weight"] = (feat, feat, 3, 3)
        shapes[f"{name}.bias"] = (feat,)
    shapes["conv_last.weight"] = (3, feat, 3, 3)
    shapes["conv_last.bias"] = (3,)
    return {k: torch.randn(s, generator=generator) * 0.02 for k, s in shapes.items()}


@pytest.fixture(scope="module")
def x4plus_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    weights = real_esrgan_x4plus_state_dict(torch.Generator().manual_seed(3))
    path = tmp_path_factory.mktemp("models") / "RealESRGAN_x4plus.pth"
    # The released file wraps the weights in {"params_ema": ...}.
    torch.save({"params_ema": weights}, path)
    return path, weights


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    upscale.clear_cache()


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, height // 8), max(2, width // 8), generator=generator)
    pixels = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear")
    array = pixels[0].permute(1, 2, 0).mul(255).round().byte().numpy()
    return Image.fromarray(array, "RGB")


def test_spandrel_loads_a_real_esrgan_x4plus_file(x4plus_file: tuple[Path, Any]) -> None:
    path, weights = x4plus_file
    descriptor = load_descriptor_from_file(path)
    assert descriptor.architecture.name == "ESRGAN"
    assert descriptor.scale == 4
    parameters = sum(p.numel() for p in descriptor.model.parameters())
    assert parameters == sum(w.numel() for w in weights.values())
    # The file's weights, not fresh ones, are in the model (first and last convolutions).
    loaded = sorted((p for p in descriptor.model.state_dict().values()), key=lambda t: t.numel())
    assert any(torch.equal(t, weights["conv_last.weight"]) for t in loaded)
    assert any(torch.equal(t, weights["conv_first.weight"]) for t in loaded)


def test_the_default_preset_runs_a_local_x4plus_file_end_to_end(
    x4plus_file: tuple[Path, Any],
) -> None:
    path, _ = x4plus_file
    settings = ModelSettings(preset="default", device="cpu", upscaler_model=str(path))
    pipeline = UpscalePipeline.from_settings(settings)
    result = pipeline(UpscaleRequest(smooth_image(12, 8), tile=0))
    assert result.images[0].image.size == (48, 32)
    assert result.settings["upscaler_model"] == str(path)
    assert result.settings["architecture"] == "ESRGAN"


def test_random_full_builds_the_x4plus_architecture(x4plus_file: tuple[Path, Any]) -> None:
    path, _ = x4plus_file
    real = load_descriptor_from_file(path)
    full = load_upscaler(ModelSettings(preset="random-full", device="cpu"), CPU)
    shapes = {k: tuple(v.shape) for k, v in full.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in real.model.state_dict().items()}
    tiny = load_upscaler(ModelSettings(preset="tiny", device="cpu"), CPU)
    assert tiny.scale == 4
    assert (
        sum(p.numel() for p in tiny.model.parameters())
        < sum(p.numel() for p in full.model.parameters()) / 10
    )


def test_tiny_weights_are_the_same_in_every_build_and_leave_the_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = load_upscaler(ModelSettings(preset="tiny", device="cpu"), CPU)
    assert torch.equal(torch.random.get_rng_state(), before)
    upscale.clear_cache()
    second = load_upscaler(ModelSettings(preset="tiny", device="cpu"), CPU)
    assert first is not second
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"<!DOCTYPE html><html><body>Link does not exist</body></html>", "HTML page"),
        (b"\x00\x01 not a model at all", "cannot be read as a model file"),
    ],
)
def test_a_file_that_is_no_model_is_one_clear_line(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    settings = ModelSettings(preset="default", device="cpu", upscaler_model=str(path))
    with pytest.raises(ModelFileError, match=expected) as caught:
        UpscalePipeline.from_settings(settings)
    assert "\n" not in str(caught.value)
    assert "models.upscaler_model" in str(caught.value)


def test_a_model_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(ModelFileError, match="not a model architecture spandrel knows"):
        load_descriptor_from_file(path)


def test_a_download_is_checked_by_its_contents_before_it_is_kept(
    x4plus_file: tuple[Path, Any], tmp_path: Path
) -> None:
    # The downloader checks the file under a temporary ".part" name.
    part = tmp_path / "RealESRGAN_x4plus.pth.abc.part"
    part.write_bytes(x4plus_file[0].read_bytes())
    upscale.check_upscaler_file(part, "https://example.invalid/RealESRGAN_x4plus.pth")
    part.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        upscale.check_upscaler_file(part, "https://example.invalid/RealESRGAN_x4plus.pth")


# -- tiling --------------------------------------------------------------------------------------


def tiny_model() -> Any:
    return load_upscaler(ModelSettings(preset="tiny", device="cpu"), CPU)


def test_tiles_cover_the_image_exactly_once() -> None:
    spans = tile_spans(70, 32, 8)
    assert [(s.start, s.end) for s in spans] == [(0, 32), (32, 64), (64, 70)]
    assert [(s.lo, s.hi) for s in spans] == [(0, 40), (24, 70), (56, 70)]
    assert tile_spans(20, 32, 8) == [upscale.TileSpan(0, 20, 0, 20)]


def test_tiling_matches_the_untiled_result_away_from_seams() -> None:
    tiny = tiny_model()

    def model(pixels: torch.Tensor) -> torch.Tensor:
        # Random weights give dark images (0..28 of 255); stretched, a difference shows.
        return (tiny(pixels) * 8).clamp(0, 1)

    pixels = pil_to_tensor(smooth_image(48, 40))
    whole = upscale_tiled(model, pixels, 4, 0, 0).float()
    assert whole.std() > 20
    tiled = upscale_tiled(model, pixels, 4, 16, 8).float()
    no_overlap = upscale_tiled(model, pixels, 4, 16, 0).float()
    difference = (whole - tiled).abs()
    # Away from the seams (input rows/columns 16 and 32, so output 64 and 128) ...
    keep = torch.ones(whole.shape[-2:], dtype=torch.bool)
    for seam in (64, 128):
        keep[max(seam - 8, 0) : seam + 8, :] = False
        keep[:, max(seam - 8, 0) : seam + 8] = False
    assert difference[..., keep].max() <= 1  # of 255: rounding of nearly equal values
    # ... and at the seams too, the overlap keeps it close; without overlap it is visibly not.
    assert difference.mean() < 0.05
    assert (whole - no_overlap).abs().max() > 20


def test_memory_stays_bounded_the_model_never_sees_more_than_a_padded_tile() -> None:
    model = tiny_model()
    seen: list[tuple[int, int]] = []

    def recording(piece: torch.Tensor) -> torch.Tensor:
        seen.append((piece.shape[-2], piece.shape[-1]))
        return model(piece)

    pixels = torch.rand(1, 3, 50, 70)
    out = upscale_tiled(recording, pixels, 4, 16, 4)
    assert out.shape == (1, 3, 200, 280) and out.dtype == torch.uint8
    assert len(seen) == 4 * 5
    assert max(h for h, _ in seen) <= 16 + 2 * 4 and max(w for _, w in seen) <= 16 + 2 * 4


def test_progress_counts_tiles_and_cancellation_stops_between_them() -> None:
    pipeline = UpscalePipeline(tiny_model(), CPU)
    calls: list[tuple[int, int]] = []
    stop = threading.Event()

    def on_progress(step: int, total: int, preview: Any) -> None:
        calls.append((step, total))
        assert preview is None
        if step == 2:
            stop.set()

    with pytest.raises(Cancelled) as caught:
        pipeline(UpscaleRequest(smooth_image(40, 20), tile=16, overlap=2), on_progress, stop.is_set)
    assert calls == [(1, 6), (2, 6)]
    assert caught.value.step == 2 and caught.value.total == 6


def test_scale_resizes_the_models_output() -> None:
    pipeline = UpscalePipeline(tiny_model(), CPU)
    result = pipeline(UpscaleRequest(smooth_image(10, 6), scale=2, tile=0))
    assert result.images[0].image.size == (20, 12)
    assert result.settings["scale"] == 2 and result.settings["model_scale"] == 4


def test_an_image_over_the_cap_is_refused_with_the_cap_named() -> None:
    with pytest.raises(InvalidRequest, match=r"2000×10 pixels.*cap of 1024 pixels a side"):
        UpscaleRequest(Image.new("RGB", (2000, 10)), max_input_side=1024)
    UpscaleRequest(Image.new("RGB", (1024, 10)), max_input_side=1024)


@pytest.mark.parametrize(
    "fields", [{"scale": 0}, {"scale": 9}, {"tile": 8}, {"tile": -1}, {"overlap": -1}]
)
def test_bad_settings_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        UpscaleRequest(Image.new("RGB", (8, 8)), **fields)


def test_the_compute_dtype_follows_the_config_on_cuda_within_what_the_model_supports() -> None:
    from types import SimpleNamespace

    from pipelines.upscale import compute_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    both = SimpleNamespace(supports_half=True, supports_bfloat16=True)
    neither = SimpleNamespace(supports_half=False, supports_bfloat16=False)
    assert compute_dtype(both, "auto", cuda) == torch.float16
    assert compute_dtype(both, "bfloat16", cuda) == torch.bfloat16
    assert compute_dtype(both, "float32", cuda) == torch.float32
    assert compute_dtype(neither, "auto", cuda) == torch.float32
    assert compute_dtype(neither, "bfloat16", cuda) == torch.float32
    for preference in ("auto", "float16", "bfloat16", "float32"):
        assert compute_dtype(both, preference, cpu) == torch.float32
