"""How many candidates go through a model at once: ``[models] candidate_batch``.

- ``"auto"``: on CUDA, the first chunk ever run for a kind of work is one candidate, and the peak
  memory it took is the cost per candidate. That cost is kept, so every later call (the next
  job's decode too) starts with chunks as large as the free memory holds at that cost (with
  headroom). An out-of-memory error halves the chunk and retries it, so the job goes on, and the
  halved size stays the limit from then on. On a CPU, one at a time: batching measured no gain
  there and multiplies peak memory.
- a whole number ``N``: chunks of ``N`` (the last may be smaller). A fixed number is never
  changed, so an out-of-memory error fails the job as it would with ``1``: a benchmark or an
  owner who sets ``N`` gets ``N``.

The same rules as VQGAN-CLIP's (:mod:`pipelines.candidate_batching`, whose memory probe and chunk
rule this uses). Work is split along the first dimension only and each candidate's result does
not depend on the others in its chunk, so the results are the same whatever the chunk size (to
fp32 rounding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch

from pipelines.candidate_batching import (
    MemoryProbe,
    auto_candidate_batch,
    fixed_candidate_batch,
    memory_probe_for,
)

log = logging.getLogger(__name__)


class CandidateChunks:
    """Runs ``work(start, stop)`` over ``count`` candidates in chunks, as the setting says.

    ``chosen`` is the largest chunk the last call actually ran (what "auto" picked, after any
    halving), for the benchmark and the logs.
    """

    def __init__(
        self, setting: int | str, device: torch.device, memory: MemoryProbe | None = None
    ) -> None:
        if setting != "auto" and (isinstance(setting, bool) or not isinstance(setting, int)):
            raise ValueError(f'candidate_batch must be "auto" or a whole number, not {setting!r}')
        if isinstance(setting, int) and setting < 1:
            raise ValueError(f"candidate_batch must be at least 1, not {setting}")
        self.setting = setting
        self.device = device
        self.memory = memory if memory is not None else memory_probe_for(device)
        self.chosen: int | None = None
        # Per kind of work (``key``): the measured bytes per candidate, and the chunk an
        # out-of-memory error halved "auto" down to. Both outlive a call.
        self.per_candidate: dict[Hashable, int] = {}
        self.limit: dict[Hashable, int] = {}

    def run(
        self,
        count: int,
        work: Callable[[int, int], torch.Tensor],
        before_chunk: Callable[[], None] | None = None,
        key: Hashable = None,
    ) -> torch.Tensor:
        """``torch.cat`` of ``work(start, stop)`` over consecutive chunks covering ``count``.

        ``before_chunk`` is called before each chunk (a cancel check may raise there). ``key``
        names the kind of work (e.g. its image size) whose measured cost may be reused.
        """
        auto = self.setting == "auto"
        fixed = fixed_candidate_batch(self.setting, count)
        chunk = fixed if fixed is not None else self._auto_chunk(count, key)
        outputs: list[torch.Tensor] = []
        largest = 0
        start = 0
        while start < count:
            measuring = auto and self.memory is not None and key not in self.per_candidate
            stop = min(count, start + (1 if measuring else chunk))
            if before_chunk is not None:
                before_chunk()
            try:
                if measuring:
                    assert self.memory is not None
                    self.memory.start()
                out = work(start, stop)
            except torch.OutOfMemoryError:
                if not auto or stop - start == 1:
                    raise
                chunk = (stop - start) // 2
                self.limit[key] = chunk
                log.warning(
                    "out of memory with %d candidates at once; retrying with %d",
                    stop - start,
                    chunk,
                )
                if self.memory is not None:
                    self.memory.release()
                continue
            if measuring:
                assert self.memory is not None
                self.per_candidate[key] = max(1, self.memory.peak_bytes())
                chunk = self._auto_chunk(count, key)
            outputs.append(out)
            largest = max(largest, stop - start)
            start = stop
        self.chosen = largest or None
        return torch.cat(outputs)

    def _auto_chunk(self, count: int, key: Hashable) -> int:
        """ "auto"'s chunk for ``count`` candidates: from the kept cost and the free memory now."""
        cost = self.per_candidate.get(key)
        if self.memory is None or cost is None:
            return 1
        free = self.memory.free_bytes()
        chunk = auto_candidate_batch(free, cost, count)
        chunk = min(chunk, self.limit.get(key, chunk))
        log.info(
            "candidate_batch auto: %.0f MB per candidate, %.0f MB free: chunks of %d",
            cost / 2**20,
            free / 2**20,
            chunk,
        )
        return chunk
