"""The calling convention every pipeline follows (DESIGN.md, "How a request flows", step 4).

A pipeline is a plain callable::

    results = pipeline(request, on_progress, should_cancel)

- ``request`` is the pipeline's own validated dataclass (``ImagineRequest``, ``EditRequest``).
- ``on_progress(step, total, preview)`` is called every ``preview_every`` steps and once at the
  end; ``preview`` is a PIL image or ``None``. A preview may carry a mask the run found for
  itself (:func:`attach_mask`; VQGAN-CLIP's self-mask, on its first preview): a viewer shows it
  once over that preview. It rides in ``preview.info``, so it costs a caller that ignores it
  nothing.
- ``should_cancel()`` is polled once per step. When it returns true the pipeline raises
  :class:`Cancelled` carrying the newest image it has, without finishing the step after.
- The return value is a :class:`PipelineResult` whose images are ranked best first, with any
  extra pictures worth saving (``artifacts``, e.g. ``"mask"``).

Nothing here knows about Discord, SQLite or asyncio, so the same callable serves the bot's worker
thread, the command line and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

ProgressCallback = Callable[[int, int, "Image.Image | None"], None]
CancelCheck = Callable[[], bool]


MASK_INFO_KEY = "faraday.mask"


def attach_mask(preview: Image.Image, mask: Image.Image) -> None:
    """Hand ``mask`` (grey-scale, the preview's size; white = changes) along with ``preview``."""
    preview.info[MASK_INFO_KEY] = mask


def attached_mask(preview: Image.Image | None) -> Image.Image | None:
    """The mask handed with ``preview``, if any."""
    if preview is None:
        return None
    mask = preview.info.get(MASK_INFO_KEY)
    return mask if isinstance(mask, Image.Image) else None


def no_progress(step: int, total: int, preview: Image.Image | None) -> None:
    """A progress callback that ignores everything, for callers that do not watch."""


def never_cancel() -> bool:
    """A cancellation check that never fires."""
    return False


class InvalidRequest(ValueError):
    """Bad user input. ``str(exc)`` is one human-readable line, safe to show to the user."""


class Cancelled(Exception):
    """Raised by a pipeline when ``should_cancel()`` returned true.

    ``latest`` is the newest image the run had produced (possibly ``None`` if it was cancelled
    before the first decode), so a cancelled job can still show where it got to.
    """

    def __init__(self, step: int, total: int, latest: Image.Image | None) -> None:
        super().__init__(f"cancelled at step {step}/{total}")
        self.step = step
        self.total = total
        self.latest = latest


@dataclass(frozen=True)
class RankedImage:
    """One output image. ``rank`` is 1-based; ``score`` is higher-is-better within one result."""

    image: Image.Image
    rank: int
    score: float
    seed: int


@dataclass
class PipelineResult:
    """What a pipeline returns: images best first, and every setting it actually used."""

    images: list[RankedImage]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Extra pictures a caller may save beside the results, by name (e.g. "mask": the self-mask).
    artifacts: dict[str, Image.Image] = field(default_factory=dict)


class Pipeline(Protocol):
    """Anything callable with the convention above."""

    def __call__(
        self,
        request: Any,
        on_progress: ProgressCallback = no_progress,
        should_cancel: CancelCheck = never_cancel,
    ) -> PipelineResult: ...
