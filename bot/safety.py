"""The image safety check as the bot applies it: where it runs, and what a flag does.

Results are checked on the safety check's own worker thread when a job's outcome comes back,
before anything is recorded or posted (whichever executor ran the job). A flagged result is
either blurred (and posted behind a spoiler) or withheld, as ``[safety] action`` says. Input
images (``init_image``, ``/edit``'s image) are checked before a job is queued, on the same
thread, so that a check never waits behind a long job; a flagged one is refused. In a channel
Discord marks age-restricted the check is skipped unless ``[safety] check_age_restricted`` is on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bot.config import SafetyConfig
from bot.files import png_bytes, write_atomic
from bot.store import NewResult
from bot.worker import WorkerThread
from pipelines.image_io import open_image
from pipelines.model_plan import ModelStep
from pipelines.settings import ModelSettings

if TYPE_CHECKING:  # pipelines.safety imports torch; the bot loads it only when it checks
    from pipelines.safety import SafetyChecker

log = logging.getLogger(__name__)

ALL_WITHHELD = "every result was withheld by the image safety check; try another prompt or seed"
INPUT_REFUSED = (
    "The {what} was refused by the image safety check, so nothing was queued. Try another picture."
)


T = TypeVar("T")


class ImageSafety:
    def __init__(
        self,
        config: SafetyConfig,
        models: ModelSettings,
        age_restricted: Callable[[int], bool | None],
    ) -> None:
        self.config = config
        self.models = models
        self.age_restricted = age_restricted
        self._thread = WorkerThread(name="faraday-safety")

    def wanted(self, channel_id: int) -> bool:
        """Whether images for this channel are checked (call on the event loop)."""
        if not self.config.image_check:
            return False
        # An unknown channel (not cached yet) is checked: the safe side.
        return self.config.check_age_restricted or not self.age_restricted(channel_id)

    def checker(self) -> SafetyChecker:
        """Loaded once per process (blocking: call it off the event loop)."""
        from pipelines.safety import load_safety_checker

        return load_safety_checker(self.models)

    def model_step(self) -> ModelStep:
        name = self.models.safety_checker if self.models.preset == "default" else "random"
        return ModelStep(f"{self.models.preset}:safety:{name}", "safety checker", self.checker)

    async def screen_results(
        self, results: Sequence[NewResult], path_for: Callable[[int], Path]
    ) -> tuple[list[NewResult], int]:
        """Check a finished job's results off the loop; returns those to record, and how many
        were withheld. Flagged files are blurred in place, or deleted and the rest renumbered
        (``path_for(rank)`` is where the result of that rank is kept)."""
        return await self.run(lambda: self._screen(list(results), path_for))

    def _screen(
        self, results: list[NewResult], path_for: Callable[[int], Path]
    ) -> tuple[list[NewResult], int]:
        from PIL import Image

        from pipelines.safety import blurred

        opened = []
        for result in results:
            with Image.open(result.path) as image:
                opened.append(image.convert("RGB"))
        flags = self.checker().flags(opened)
        if not any(flags):
            return results, 0
        log.info(
            "the image safety check flagged %d of %d result(s); action: %s",
            sum(flags),
            len(flags),
            self.config.action,
        )
        if self.config.action == "withhold":
            for result, flagged in zip(results, flags, strict=True):
                if flagged:
                    result.path.unlink(missing_ok=True)
            kept = [r for r, flagged in zip(results, flags, strict=True) if not flagged]
            # Numbered again from 1 (in rank order, so no file is overwritten), so the number
            # reactions match what is shown.
            renumbered = []
            for rank, result in enumerate(kept, start=1):
                path = path_for(rank)
                if path != result.path:
                    os.replace(result.path, path)
                renumbered.append(replace(result, rank=rank, path=path))
            return renumbered, len(results) - len(kept)
        out = []
        for result, image, flagged in zip(results, opened, flags, strict=True):
            if flagged:
                # Only the blurred image is kept: the original is never stored or posted.
                write_atomic(result.path, png_bytes(blurred(image)))
            out.append(replace(result, flagged=flagged))
        return out, 0

    async def run(self, work: Callable[[], T]) -> T:
        """On the safety check's own thread (never the event loop, never behind a long job)."""
        self._thread.start()  # once; later calls do nothing
        return await self._thread.run(work)

    async def refused_input(self, channel_id: int, images: dict[str, bytes]) -> str | None:
        """The refusal for the first flagged input image, or ``None`` when all may be used."""
        if not images or not self.wanted(channel_id):
            return None

        def check() -> list[bool]:
            opened = [
                open_image(data, what=name.replace("_", " ")) for name, data in images.items()
            ]
            return self.checker().flags(opened)

        flags = await self.run(check)
        for (name, _), flagged in zip(images.items(), flags, strict=True):
            if flagged:
                log.info("an input image (%s) was refused by the image safety check", name)
                return INPUT_REFUSED.format(what=name.replace("_", " "))
        return None

    def stop(self) -> None:
        self._thread.stop()
