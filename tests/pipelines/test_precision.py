"""The one precision decision, for every device x dtype x pipeline, without a GPU."""

from __future__ import annotations

import os

import pytest
import torch

from pipelines.precision import (
    DTYPE_CHOICES,
    apply_determinism,
    autocast,
    decide_precision,
)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (pipeline, device, dtype) -> (weights, autocast, decoder, allow_tf32, a note is given),
# written out by hand from the rules in config.toml, not computed.
EXPECTED = {
    ("imagine", "cpu", "auto"): (F32, None, F32, False, False),
    ("imagine", "cpu", "float32"): (F32, None, F32, False, False),
    ("imagine", "cpu", "float16"): (F32, None, F32, False, True),
    ("imagine", "cpu", "bfloat16"): (F32, BF16, F32, False, False),
    ("imagine", "cuda", "auto"): (F32, None, F32, True, False),
    ("imagine", "cuda", "float32"): (F32, None, F32, False, False),
    ("imagine", "cuda", "float16"): (F32, F16, F32, True, False),
    ("imagine", "cuda", "bfloat16"): (F32, BF16, F32, True, False),
    ("edit", "cpu", "auto"): (F32, None, F32, False, False),
    ("edit", "cpu", "float32"): (F32, None, F32, False, False),
    ("edit", "cpu", "float16"): (F32, None, F32, False, True),
    ("edit", "cpu", "bfloat16"): (BF16, None, BF16, False, False),
    ("edit", "cuda", "auto"): (F16, None, F16, True, False),
    ("edit", "cuda", "float32"): (F32, None, F32, False, False),
    ("edit", "cuda", "float16"): (F16, None, F16, True, False),
    ("edit", "cuda", "bfloat16"): (BF16, None, BF16, True, False),
}


def test_the_table_covers_every_combination() -> None:
    assert set(EXPECTED) == {
        (p, d, t) for p in ("imagine", "edit") for d in ("cpu", "cuda") for t in DTYPE_CHOICES
    }


@pytest.mark.parametrize(("pipeline", "device", "dtype"), sorted(EXPECTED))
def test_each_combination(pipeline: str, device: str, dtype: str) -> None:
    weights, mixed, decoder, tf32, noted = EXPECTED[(pipeline, device, dtype)]
    precision = decide_precision(pipeline, device, dtype)
    assert precision.weights == weights
    assert precision.autocast == mixed
    assert precision.decoder == decoder
    assert precision.allow_tf32 is tf32
    assert bool(precision.note) is noted


def test_the_vqgan_never_runs_below_float32() -> None:
    for device in ("cpu", "cuda"):
        for dtype in DTYPE_CHOICES:
            precision = decide_precision("imagine", device, dtype)
            assert precision.decoder == F32 and precision.weights == F32


@pytest.mark.parametrize("dtype", DTYPE_CHOICES)
def test_force_upcast_decodes_float16_weights_in_float32_only(dtype: str) -> None:
    for device in ("cpu", "cuda"):
        plain = decide_precision("edit", device, dtype)
        upcast = decide_precision("edit", device, dtype, vae_force_upcast=True)
        assert upcast.weights == plain.weights
        assert upcast.decoder == (F32 if plain.weights == F16 else plain.weights)
    # The flag has no effect on /imagine, whose decoder is float32 already.
    assert decide_precision("imagine", "cuda", dtype, vae_force_upcast=True).decoder == F32


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="pipeline"):
        decide_precision("upscale", "cpu")
    with pytest.raises(ValueError, match="device"):
        decide_precision("edit", "mps")
    with pytest.raises(ValueError, match="dtype"):
        decide_precision("edit", "cpu", "int8")


def test_cpu_autocast_runs_clip_style_matmuls_in_bfloat16() -> None:
    x = torch.randn(4, 8)
    with autocast(decide_precision("imagine", "cpu", "bfloat16")):
        assert (x @ x.T).dtype == BF16
    with autocast(decide_precision("imagine", "cpu", "auto")):
        assert (x @ x.T).dtype == F32


def test_determinism_switches_torch_and_cublas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        apply_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert not torch.backends.cudnn.benchmark
    finally:
        apply_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()
