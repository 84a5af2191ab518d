"""Which precision each part of each pipeline runs in: one pure decision for both pipelines.

``decide_precision(pipeline, device_type, dtype)`` is the only place that turns the ``[models]
dtype`` setting into torch dtypes and autocast choices; both pipelines and their benchmarks ask it,
and its tests cover every combination without a GPU. Applying the decision (TF32 switches, the
deterministic mode) is done by the small side-effecting helpers below it, once per process when
the models load.

The rules, and why:

- ``imagine`` (VQGAN-CLIP) keeps the VQGAN (decoder and the quantiser's nearest-code search) and
  the stored weights in float32 whatever is asked. The reference code ran the VQGAN in float32,
  Adam updates ``z`` with no loss scaling, and the nearest-code search compares squared distances
  of 256-wide vectors, which float16 rounds into ties. ``float16``/``bfloat16`` therefore apply
  only to the guiding CLIP's forward pass, through autocast (float16 only on CUDA: CPUs have no
  fast float16 kernels).
- ``edit`` (Blended Latent Diffusion) stores UNet, VAE and text encoder in the chosen dtype:
  ``auto`` is float16 on CUDA and float32 on CPU; float16 asked for on a CPU becomes float32 (a
  3x3 convolution measured ~250x slower in float16 there). The VAE decodes in float32 when the
  model's config sets ``force_upcast`` and the weights are float16, as diffusers' own pipelines do.
- On CUDA, ``auto`` (and the reduced-precision choices) allow TF32 for float32 matmuls and
  convolutions; an explicit ``float32`` asks for strict IEEE float32 everywhere. The switches are
  process-wide, so :func:`apply_tf32` sets them once, at model load, for both pipelines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

PIPELINES = ("imagine", "edit")
DEVICE_TYPES = ("cpu", "cuda")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
_NAMED = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# cuBLAS reuses workspaces across streams unless told their size; a fixed config makes its
# matmuls reproducible (NVIDIA's cuBLAS docs, "Results reproducibility").
CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class Precision:
    """What one pipeline runs in on one kind of device.

    - ``weights``: the dtype the pipeline's modules are stored and run in (imagine: VQGAN and
      CLIP; edit: UNet, VAE and text encoder).
    - ``autocast``: the dtype of mixed precision around the guiding CLIP's forward pass (imagine
      only), or ``None`` for none.
    - ``decoder``: the dtype the image decoder runs in (imagine: the VQGAN decoder and quantiser;
      edit: the VAE decode, float32 when the model asks for ``force_upcast``).
    - ``allow_tf32``: TF32 for float32 matmuls and convolutions (CUDA only; False on CPU).
    - ``note``: why the configured dtype was not followed as written, or "".
    """

    pipeline: str
    device_type: str
    weights: torch.dtype
    autocast: torch.dtype | None
    decoder: torch.dtype
    allow_tf32: bool
    note: str = ""


def decide_precision(
    pipeline: str, device_type: str, dtype: str = "auto", *, vae_force_upcast: bool = False
) -> Precision:
    """The precision of ``pipeline`` ("imagine" or "edit") on ``device_type`` ("cpu"/"cuda")."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device type must be one of {DEVICE_TYPES}, got {device_type!r}")
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    cuda = device_type == "cuda"
    allow_tf32 = cuda and dtype != "float32"
    note = ""
    if dtype == "float16" and not cuda:
        note = "models.dtype float16 needs CUDA; float32 is used on the CPU"
    if pipeline == "imagine":
        autocast: torch.dtype | None = None
        if dtype == "bfloat16" or (dtype == "float16" and cuda):
            autocast = _NAMED[dtype]
        return Precision(
            pipeline, device_type, torch.float32, autocast, torch.float32, allow_tf32, note
        )
    if dtype == "auto":
        weights = torch.float16 if cuda else torch.float32
    elif note:
        weights = torch.float32
    else:
        weights = _NAMED[dtype]
    decoder = torch.float32 if weights == torch.float16 and vae_force_upcast else weights
    return Precision(pipeline, device_type, weights, None, decoder, allow_tf32, note)


def autocast(precision: Precision) -> contextlib.AbstractContextManager[None]:
    """Mixed precision as ``precision`` asks (a no-op when it asks for none)."""
    if precision.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(precision.device_type, dtype=precision.autocast)


# The TF32 choice this process made, or None before a CUDA pipeline has loaded.
_tf32_choice: bool | None = None
_tf32_lock = threading.Lock()


def apply_tf32(precision: Precision) -> bool | None:
    """Set TF32 for CUDA float32 matmuls and convolutions once per process, when models load.

    The switches are process-wide and worker threads on different devices run jobs at the same
    time, so a per-job setting would flip them under another job. TF32 depends only on the
    device type and ``[models] dtype``, so one choice at load time serves every job. Should two
    pipelines of one process ask differently, the stricter choice (IEEE float32) wins and is
    logged. Nothing changes on the CPU. Returns the process's choice (None while it has none).
    """
    global _tf32_choice
    if precision.device_type != "cuda":
        return _tf32_choice
    with _tf32_lock:
        wanted = precision.allow_tf32
        if _tf32_choice is None:
            chosen = wanted
        else:
            chosen = _tf32_choice and wanted
            if wanted != _tf32_choice:
                log.warning(
                    "%s asks for %s but this process already chose %s for another pipeline; "
                    "both use the stricter, IEEE float32 (no TF32)",
                    precision.pipeline,
                    "TF32" if wanted else "IEEE float32",
                    "TF32" if _tf32_choice else "IEEE float32",
                )
        if chosen != _tf32_choice:
            set_tf32(chosen)
            log.info("CUDA float32 matmuls and convolutions: %s", "TF32" if chosen else "IEEE")
        _tf32_choice = chosen
        return chosen


def forget_tf32_choice() -> None:
    """Let the next :func:`apply_tf32` choose afresh (tests, which load many pipelines)."""
    global _tf32_choice
    with _tf32_lock:
        _tf32_choice = None


def set_tf32(allow: bool) -> None:
    """The torch switches themselves: ``fp32_precision`` where torch has it (2.9 and later),
    else the older ``allow_tf32`` flags, which torch 2.9 deprecates."""
    wanted = "tf32" if allow else "ieee"
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = wanted
    else:
        matmul.allow_tf32 = allow
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = wanted
    else:
        cudnn.allow_tf32 = allow


def apply_determinism(deterministic: bool) -> None:
    """``[models] deterministic``: deterministic kernels where torch has them, or torch's default.

    True sets ``CUBLAS_WORKSPACE_CONFIG`` (needed before the first cuBLAS call, so call this before
    any model runs) and ``torch.use_deterministic_algorithms(True, warn_only=True)``: an operation
    with no deterministic kernel warns instead of failing the job. On CUDA, VQGAN-CLIP's backward
    pass through its cutouts (grid sampling, adaptive pooling, bilinear resizing) has none, nor
    may /edit's decoder fine-tuning, which is why docs/models.md promises neither of them
    bit-identical on CUDA.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
