"""Operations whose backward pass is not the derivative of their forward pass.

VQGAN-CLIP optimises through two non-differentiable steps: the codebook lookup (taming's
quantizer already passes its gradient straight through to the continuous latent) and the clamp of
decoded pixels to [0, 1], here.
"""

from __future__ import annotations

from typing import Any

import torch


class _ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(values)
        return values.clamp(low, high)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (values,) = ctx.saved_tensors
        overshoot = values - values.clamp(ctx.low, ctx.high)
        # Inside the range the gradient passes unchanged. Outside it passes only when a descent
        # step (against the gradient) would move the value back toward the range; a plain clamp
        # would give zero there and leave saturated pixels stuck for good.
        return grad * (grad * overshoot >= 0), None, None


def clamp_with_grad(values: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """``values.clamp(low, high)`` in the forward pass; see :class:`_ClampWithGrad` for backward."""
    return _ClampWithGrad.apply(values, low, high)
