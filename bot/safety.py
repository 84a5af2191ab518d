"""The image safety check as the bot applies it: where it runs, and what a flag does.

Results are checked on the worker thread, right after the pipeline returns and before anything
is saved or posted. A flagged result is either blurred (and posted behind a spoiler) or withheld,
as ``[safety] action`` says. Input images (``init_image``, ``/edit``'s image) are checked before a
job is queued, on a thread of their own so that a check never waits behind a long job; a flagged
one is refused. In a channel Discord marks age-restricted the check is skipped unless
``[safety] check_age_restricted`` is on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot.config import SafetyConfig
from bot.worker import WorkerThread
from pipelines.image_io import open_image
from pipelines.interface import RankedImage
from pipelines.model_plan import ModelStep
from pipelines.settings import ModelSettings

if TYPE_CHECKING:  # pipelines.safety imports torch; the bot loads it only when it checks
    from pipelines.safety import SafetyChecker

log = logging.getLogger(__name__)

ALL_WITHHELD = (
    "every result was withheld by the image safety check; try another prompt or seed"
)
INPUT_REFUSED = (
    "The {what} was refused by the image safety check, so nothing was queued. Try another "
    "picture."
)


@dataclass(frozen=True)
class Screened:
    """The results to keep, best first and numbered from 1, each with its flag."""

    images: list[tuple[RankedImage, bool]]
    withheld: int = 0


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
        self._input_thread = WorkerThread(name="faraday-safety")

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

    def screen(self, images: Sequence[RankedImage]) -> Screened:
        """Runs on the worker thread: check every result and apply the configured action."""
        from pipelines.safety import blurred

        flags = self.checker().flags([ranked.image for ranked in images])
        if not any(flags):
            return Screened([(ranked, False) for ranked in images])
        log.info("the image safety check flagged %d of %d result(s); action: %s",
                 sum(flags), len(flags), self.config.action)
        if self.config.action == "withhold":
            kept = [ranked for ranked, flagged in zip(images, flags, strict=True) if not flagged]
            # Numbered again from 1, so the number reactions match what is shown.
            return Screened(
                [(replace(ranked, rank=index), False) for index, ranked in enumerate(kept, 1)],
                withheld=len(images) - len(kept),
            )
        return Screened([
            (replace(ranked, image=blurred(ranked.image)) if flagged else ranked, flagged)
            for ranked, flagged in zip(images, flags, strict=True)
        ])

    async def refused_input(self, channel_id: int, images: dict[str, bytes]) -> str | None:
        """The refusal for the first flagged input image, or ``None`` when all may be used."""
        if not images or not self.wanted(channel_id):
            return None
        self._input_thread.start()  # once; later calls do nothing

        def check() -> list[bool]:
            opened = [open_image(data, what=name.replace("_", " ")) for name, data in
                      images.items()]
            return self.checker().flags(opened)

        flags = await self._input_thread.run(check)
        for (name, _), flagged in zip(images.items(), flags, strict=True):
            if flagged:
                log.info("an input image (%s) was refused by the image safety check", name)
                return INPUT_REFUSED.format(what=name.replace("_", " "))
        return None

    def stop(self) -> None:
        self._input_thread.stop()
