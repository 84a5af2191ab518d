"""How many candidates go through a model at once: ``[models] candidate_batch``.

- ``"auto"``: on CUDA, the first chunk is one candidate, and the peak memory it took is the cost
  per candidate; the next chunks are as large as the free memory holds at that cost (with
  headroom), and an out-of-memory error halves the chunk and retries it, so the job goes on. On
  a CPU, one at a time: batching measured no gain there and multiplies peak memory.
- a whole number ``N``: at most ``N`` at once.

Work is split along the first dimension only and each candidate's result does not depend on the
others in its chunk, so the results are the same whatever the chunk size (to fp32 rounding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

# Keep this share of the free memory in reserve for the allocator's fragmentation and whatever
# else the step allocates.
AUTO_HEADROOM = 0.8


def auto_chunk(count: int, bytes_per_candidate: int, free_bytes: int) -> int:
    """The largest chunk, at most ``count``, whose estimated peak fits the free memory."""
    if bytes_per_candidate <= 0:
        return count
    return max(1, min(count, int(free_bytes * AUTO_HEADROOM) // bytes_per_candidate))


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


class CudaMemory:
    """The CUDA memory counters "auto" reads (tests give a stand-in with the same methods)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def allocated(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def free(self) -> int:
        return torch.cuda.mem_get_info(self.device)[0]

    def release(self) -> None:
        torch.cuda.empty_cache()


class CandidateChunks:
    """Runs ``work(start, stop)`` over ``count`` candidates in chunks, as the setting says.

    ``chosen`` is the chunk size last used (what "auto" picked, after any halving), for the
    benchmark and the logs.
    """

    def __init__(
        self, setting: int | str, device: torch.device, memory: CudaMemory | None = None
    ) -> None:
        if setting != "auto" and (isinstance(setting, bool) or not isinstance(setting, int)):
            raise ValueError(f'candidate_batch must be "auto" or a whole number, not {setting!r}')
        if isinstance(setting, int) and setting < 1:
            raise ValueError(f"candidate_batch must be at least 1, not {setting}")
        self.setting = setting
        self.device = device
        if memory is None and device.type == "cuda":
            memory = CudaMemory(device)
        self.memory = memory
        self.chosen: int | None = None
        # Measuring resets CUDA's peak-memory counter; the peak it had before is kept here so a
        # benchmark can still report the job's true peak.
        self.prior_peak_bytes = 0

    def run(
        self,
        count: int,
        work: Callable[[int, int], torch.Tensor],
        before_chunk: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """``torch.cat`` of ``work(start, stop)`` over consecutive chunks covering ``count``.

        ``before_chunk`` is called before each chunk (a cancel check may raise there).
        """
        # "auto" starts with one: on CUDA that first chunk measures the cost per candidate.
        chunk = min(self.setting, count) if isinstance(self.setting, int) else 1
        outputs: list[torch.Tensor] = []
        start = 0
        measured = False
        while start < count:
            stop = min(count, start + chunk)
            if before_chunk is not None:
                before_chunk()
            try:
                if self.memory is not None and self.setting == "auto" and not measured:
                    out, cost = self._measured(self.memory, work, start, stop)
                    measured = True
                    free = self.memory.free()
                    chunk = auto_chunk(count, cost, free)
                    log.info(
                        "candidate_batch auto: %.0f MB per candidate, %.0f MB free: chunks of %d",
                        cost / 2**20,
                        free / 2**20,
                        chunk,
                    )
                else:
                    out = work(start, stop)
            except Exception as exc:
                if not (_is_out_of_memory(exc) and self.setting == "auto" and stop - start > 1):
                    raise
                chunk = max(1, (stop - start) // 2)
                log.warning(
                    "out of memory with %d candidates at once; retrying with %d",
                    stop - start,
                    chunk,
                )
                if self.memory is not None:
                    self.memory.release()
                continue
            outputs.append(out)
            start = stop
        self.chosen = chunk
        return torch.cat(outputs)

    def _measured(
        self, memory: CudaMemory, work: Callable[[int, int], torch.Tensor], start: int, stop: int
    ) -> tuple[torch.Tensor, int]:
        before = memory.allocated()
        self.prior_peak_bytes = max(self.prior_peak_bytes, memory.peak())
        memory.reset_peak()
        out = work(start, stop)
        cost = memory.peak() - before
        return out, max(1, cost // (stop - start))
