"""The ``[models]`` precision settings reach the pipelines: TF32 once per process for both
pipelines, ``dtype``, ``deterministic`` and the VAE's ``force_upcast``, without a GPU.

"On CUDA" is simulated by making device selection answer ``cuda`` while the modules are built on
the CPU, so only the decisions are exercised, never a CUDA kernel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL

import pipelines.clip_models
import pipelines.devices
import pipelines.presets
from pipelines import diffusion_models, precision
from pipelines.blended import BlendedLatentDiffusionPipeline
from pipelines.precision import apply_tf32, decide_precision, forget_tf32_choice, set_tf32
from pipelines.settings import ModelSettings
from pipelines.vqgan_clip import VqganClipPipeline

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def switches() -> tuple[str, str]:
    """What torch's float32 matmuls and convolutions are set to use on CUDA."""
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


@pytest.fixture(autouse=True)
def restore_backends() -> Iterator[None]:
    """Each test starts with no TF32 choice made, and leaves torch's switches as it found them."""
    before = switches()
    benchmark = torch.backends.cudnn.benchmark
    deterministic = torch.are_deterministic_algorithms_enabled()
    forget_tf32_choice()
    yield
    forget_tf32_choice()
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
    torch.backends.cudnn.benchmark = benchmark
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@pytest.fixture
def on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device selection says cuda; the models are still built and kept on the CPU."""
    monkeypatch.setattr(pipelines.devices, "pick_device", lambda preference="auto": CUDA)
    monkeypatch.setattr(diffusion_models, "pick_device", lambda preference="auto": CUDA)
    monkeypatch.setattr(diffusion_models, "_cache", {})
    real_vqgan, real_clip = pipelines.presets.load_vqgan, pipelines.clip_models.load_clip
    monkeypatch.setattr(
        pipelines.presets, "load_vqgan", lambda settings, device: real_vqgan(settings, CPU)
    )
    monkeypatch.setattr(
        pipelines.clip_models,
        "load_clip",
        lambda spec, device, cache_dir=None: real_clip(spec, CPU, cache_dir=cache_dir),
    )
    real_assemble = diffusion_models.assemble

    def assemble_on_cpu(*args: Any, **kwargs: Any) -> diffusion_models.DiffusionComponents:
        args = list(args)
        args[6] = CPU  # the device argument
        return real_assemble(*args, **kwargs)

    monkeypatch.setattr(diffusion_models, "assemble", assemble_on_cpu)


def settings(tmp_path: Path, **overrides: Any) -> ModelSettings:
    return ModelSettings(preset="tiny", cache_dir=tmp_path, **overrides)


# --- TF32: one decision per process, for /imagine and /edit alike ------------------------------


@pytest.mark.parametrize(("dtype", "expected"), [("float32", "ieee"), ("auto", "tf32")])
def test_loading_imagine_on_cuda_sets_tf32_for_the_process(
    on_cuda: None, tmp_path: Path, dtype: str, expected: str
) -> None:
    set_tf32(expected != "tf32")  # the opposite, so only loading can make it right
    VqganClipPipeline.from_settings(settings(tmp_path, dtype=dtype))
    assert switches() == (expected, expected)


@pytest.mark.parametrize(("dtype", "expected"), [("float32", "ieee"), ("auto", "tf32")])
def test_loading_edit_on_cuda_sets_tf32_for_the_process(
    on_cuda: None, tmp_path: Path, dtype: str, expected: str
) -> None:
    set_tf32(expected != "tf32")
    pipeline = BlendedLatentDiffusionPipeline.from_settings(settings(tmp_path, dtype=dtype))
    assert pipeline.components.device == CPU  # nothing ran on a (missing) GPU
    assert switches() == (expected, expected)


def test_a_job_does_not_touch_the_switches(on_cuda: None, tmp_path: Path) -> None:
    from tests.pipelines.test_vqgan_clip import tiny_request

    pipeline = VqganClipPipeline.from_settings(settings(tmp_path, dtype="float32"))
    assert switches() == ("ieee", "ieee")
    # Another thread's job, or anything else, may have set them since: a job leaves them alone.
    set_tf32(True)
    seen: list[tuple[str, str]] = []
    pipeline(tiny_request(steps=2, preview_every=1), on_progress=lambda *_: seen.append(switches()))
    assert seen and set(seen) == {("tf32", "tf32")}
    assert switches() == ("tf32", "tf32")


def test_two_pipelines_that_disagree_get_the_stricter_choice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert apply_tf32(decide_precision("imagine", "cuda", "auto")) is True
    assert switches() == ("tf32", "tf32")
    assert apply_tf32(decide_precision("edit", "cuda", "float32")) is False
    assert switches() == ("ieee", "ieee")
    assert "stricter" in caplog.text
    # Once strict, a later pipeline asking for TF32 does not loosen it.
    assert apply_tf32(decide_precision("edit", "cuda", "auto")) is False
    assert switches() == ("ieee", "ieee")


def test_the_cpu_changes_nothing() -> None:
    before = switches()
    assert apply_tf32(decide_precision("edit", "cpu", "float32")) is None
    assert switches() == before


def test_torch_without_fp32_precision_gets_the_older_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Torch before 2.9 has only ``allow_tf32``; pyproject allows those versions."""
    matmul = SimpleNamespace(allow_tf32=None)
    cudnn = SimpleNamespace(allow_tf32=None)  # no ``conv`` attribute at all
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    apply_tf32(decide_precision("edit", "cuda", "auto"))
    assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
    forget_tf32_choice()
    apply_tf32(decide_precision("imagine", "cuda", "float32"))
    assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
    assert not hasattr(matmul, "fp32_precision")


# --- dtype, deterministic and force_upcast reach the models -------------------------------------


def test_imagine_honours_the_configured_dtype(tmp_path: Path) -> None:
    built = VqganClipPipeline.from_settings(settings(tmp_path, dtype="bfloat16"))
    assert built.precision.autocast == torch.bfloat16


@pytest.mark.parametrize("pipeline", ["imagine", "edit"])
def test_deterministic_loading_turns_on_deterministic_algorithms(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pipeline: str
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    monkeypatch.setattr(diffusion_models, "_cache", {})
    chosen = settings(tmp_path, deterministic=True)
    if pipeline == "imagine":
        VqganClipPipeline.from_settings(chosen)
    else:
        BlendedLatentDiffusionPipeline.from_settings(chosen)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == precision.CUBLAS_WORKSPACE


@pytest.mark.parametrize("force_upcast", [True, False])
def test_the_vae_decodes_in_float32_when_its_config_asks(
    on_cuda: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, force_upcast: bool
) -> None:
    real_vae = diffusion_models.tiny_vae

    def vae() -> AutoencoderKL:
        model = real_vae()
        model.register_to_config(force_upcast=force_upcast)
        return model

    monkeypatch.setattr(diffusion_models, "tiny_vae", vae)
    components = diffusion_models.load_diffusion(settings(tmp_path))
    assert components.dtype == torch.float16  # auto on CUDA
    assert components.vae_dtype == (torch.float32 if force_upcast else torch.float16)
    assert components.vae.dtype == components.vae_dtype
