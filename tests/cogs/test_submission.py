"""The submit desk always answers a deferred command, even when queueing fails unexpectedly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bot.admission import Gatekeeper
from bot.config import Config
from bot.jobs import JobKind, JobRequest
from bot.runtime_settings import SettingsService
from bot.scheduler import SubmitRefused, Submitted
from cogs.replies import SOMETHING_WENT_WRONG
from cogs.submission import SubmitDesk


class DeferredInteraction:
    """The parts of a deferred discord.Interaction the desk uses."""

    def __init__(self) -> None:
        self.response = SimpleNamespace(is_done=lambda: True)
        self.user = SimpleNamespace(id=1, roles=[])
        self.answers: list[str] = []

    async def edit_original_response(self, *, content: str) -> None:
        self.answers.append(content)


class Scheduler:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    async def submit(self, request: JobRequest) -> Submitted:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def desk_with(outcome: Any) -> SubmitDesk:
    settings = SettingsService(Config())  # config.toml's values, nothing overridden
    bot = SimpleNamespace(config=Config(), scheduler=Scheduler(outcome), settings=settings,
                          gatekeeper=Gatekeeper(settings, None))
    return SubmitDesk(bot)  # type: ignore[arg-type]


REQUEST = JobRequest(kind=JobKind.IMAGINE, user_id=1, channel_id=2, guild_id=3,
                     params={"prompt": "a cat"})


async def test_every_outcome_of_queueing_is_answered() -> None:
    for outcome, expected in (
        (Submitted(5, 2, 30.0), "Job #5 queued, position 2"),
        (SubmitRefused("user_limit", "You already have 3 job(s) waiting"), "already have 3"),
        (RuntimeError("database is locked"), SOMETHING_WENT_WRONG),
    ):
        desk = desk_with(outcome)
        interaction = DeferredInteraction()
        await desk.submit_and_answer(interaction, REQUEST)  # type: ignore[arg-type]
        await desk.fetcher.close()
        assert len(interaction.answers) == 1 and expected in interaction.answers[0], outcome
