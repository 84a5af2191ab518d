"""``[models] channels_last`` and ``[models] compile``: faster paths that compute the same thing.

Both change only how the arithmetic is laid out or scheduled, not what is computed; tests hold
each to the plain path within fp32 rounding on the CPU.

- Channels-last stores NHWC instead of NCHW so cuDNN (and oneDNN on a CPU) can pick convolution
  kernels that need no transposes. "auto" turns it on for CUDA, where tensor-core kernels want it,
  and on a CPU only for a model whose CPU benchmark showed a gain (each caller says which).
- ``torch.compile`` fuses the elementwise work between convolutions. It costs a compilation on
  the first call of each new shape, so it is off by default. Every compiled model (the VQGAN
  decoder here, the UNet and VAE decoder in :mod:`pipelines.diffusion_models`) uses
  ``COMPILE_BACKEND``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# torch.compile's backend for every compiled model, read when a model is compiled. Tests swap in
# a quick one (Dynamo's "eager", or a CompileCounter that also shows compilation took place):
# Inductor needs a C++ compiler and minutes per model on a CPU.
COMPILE_BACKEND: str | Callable[..., Any] = "inductor"


def channels_last_enabled(setting: bool | str, device_type: str, *, cpu_gain: bool) -> bool:
    """Whether a model uses channels-last: the setting, or for "auto" the device's rule."""
    if setting == "auto":
        return device_type == "cuda" or cpu_gain
    return bool(setting)


class FastModule:
    """Calls ``forward`` of ``modules`` (which it may convert to channels-last), compiled or not.

    ``forward`` takes and returns 4-d tensors; with channels-last its input is converted too, so
    the first convolution does not pay a layout change per call.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        modules: list[nn.Module],
        *,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        self.channels_last = channels_last
        self.compiled = compile
        if channels_last:
            for module in modules:
                module.to(memory_format=torch.channels_last)
        # dynamic=None: compile for the first shape, then once more with symbolic sizes when the
        # batch or image size changes, instead of once per size.
        self._forward = (
            torch.compile(forward, backend=COMPILE_BACKEND, dynamic=None) if compile else forward
        )

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self._forward(inputs)


def layout_changed(module: FastModule) -> bool:
    """Whether ``module`` differs from calling its forward plainly."""
    return module.channels_last or module.compiled
