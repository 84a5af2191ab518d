"""How many VQGAN-CLIP candidates one forward/backward pass carries (``[models] candidate_batch``).

Batching candidates changes no result: each candidate keeps its own random stream and its own
loss, so only the sizes of the decoder's and CLIP's batches change (and with them the order of
floating-point sums, within fp32 rounding). What limits the chunk is memory:

- ``1``: one candidate at a time (the behaviour before batching);
- ``N``: chunks of ``N``, never changed: an out-of-memory error fails the job as with ``1``, so an
  owner or a benchmark that sets ``N`` gets ``N``;
- ``"auto"``: on CUDA the first step runs one candidate at a time and measures what one costs
  (the allocator's peak above what was allocated before it); from then on the chunk is the largest
  that fits in free memory (free on the device plus what the allocator caches unused) with some
  headroom. An out-of-memory error halves the chunk and redoes the step (see
  ``VqganClipRun.step``). On the CPU memory is not the limit and a chunk measured no faster (the
  work is compute-bound there), so "auto" is 1.

Blended LD's decode and ranking follow the same rules with this module's probe and chunk rule
(:mod:`pipelines.candidate_chunks`).
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch

log = logging.getLogger(__name__)

# Leave a fifth of free memory for fragmentation and the allocator's rounding.
MEMORY_HEADROOM = 0.8


def auto_candidate_batch(
    free_bytes: int, per_candidate_bytes: int, candidates: int, headroom: float = MEMORY_HEADROOM
) -> int:
    """The largest chunk, 1..candidates, whose measured cost fits in ``headroom`` of free memory."""
    if per_candidate_bytes <= 0:
        return candidates
    fits = int(free_bytes * headroom // per_candidate_bytes)
    return max(1, min(candidates, fits))


def fixed_candidate_batch(setting: int | str, candidates: int) -> int | None:
    """The chunk a fixed setting gives, or None for "auto" (decided from memory)."""
    if setting == "auto":
        return None
    return max(1, min(int(setting), candidates))


class MemoryProbe(Protocol):
    """What "auto" needs to know about a device's memory."""

    def start(self) -> None:
        """Begin measuring the peak of one candidate's work."""

    def peak_bytes(self) -> int:
        """Peak bytes allocated since ``start`` above what was allocated at ``start``."""

    def free_bytes(self) -> int:
        """Bytes that could still be allocated now."""

    def release(self) -> None:
        """Give cached blocks back after an out-of-memory error."""


class CudaMemory:
    """The CUDA caching allocator's figures for one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base = 0

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)

    def peak_bytes(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self._base

    def free_bytes(self) -> int:
        free, _total = torch.cuda.mem_get_info(self.device)
        # Blocks the allocator holds but does not use are free to this process too.
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + cached)

    def release(self) -> None:
        torch.cuda.empty_cache()


def memory_probe_for(device: torch.device) -> MemoryProbe | None:
    """A probe on CUDA; None elsewhere, where "auto" means one candidate at a time."""
    return CudaMemory(device) if device.type == "cuda" else None
