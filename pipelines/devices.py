"""Device choice. CUDA is used when present; nothing CUDA-only is imported.

Precision (dtypes, autocast, TF32) is decided in :mod:`pipelines.precision`.
"""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} was asked for but CUDA is not available")
    return device
