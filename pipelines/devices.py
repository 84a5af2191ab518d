"""Device and precision choice. CUDA is used when present; nothing CUDA-only is imported."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} was asked for but CUDA is not available")
    return device


def pick_dtype(preference: str, device: torch.device) -> torch.dtype:
    """fp16 on CUDA by default; fp32 on CPU, where bf16 measured slower on this hardware."""
    if preference == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        preference
    ]


@contextlib.contextmanager
def autocast_for(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA, where it speeds up CLIP and the decoder; a no-op on CPU."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            yield
    else:
        yield
