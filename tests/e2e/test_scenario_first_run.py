"""The first start: the bot is online while its models load, and jobs sent meanwhile wait and run.

The real FaradayBot (tiny presets) runs against the Discord stand-in; the first model's load is
held on a gate the test opens, standing in for a download that takes minutes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from bot.app import FaradayBot
from bot.jobs import JobKind, JobStatus
from bot.model_loading import LOAD_TIMES_FILE
from pipelines.model_plan import ModelStep
from tests.e2e.bot_harness import WAIT, finished_job, job_id_in, running_bot, write_test_config
from tests.e2e.standin import DiscordStandin

OP_IDENTIFY, OP_PRESENCE_UPDATE = 2, 3


def presences(standin: DiscordStandin) -> list[str | None]:
    """Every status text the bot announced, in order; ``None`` for "no activity"."""
    shown: list[str | None] = []
    for frame in standin.gateway.received:
        data = frame.get("d") or {}
        if frame.get("op") == OP_IDENTIFY:
            data = data.get("presence") or {"activities": []}
        elif frame.get("op") != OP_PRESENCE_UPDATE:
            continue
        activities: list[dict[str, Any]] = data.get("activities") or []
        shown.append(
            activities[0].get("state") or activities[0].get("name") if activities else None
        )
    return shown


class Gate:
    """Holds the first model's load until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.step_labels: list[str] = []

    def __call__(self, bot: FaradayBot) -> None:
        source = bot.scheduler.executor.slots[0].source  # type: ignore[attr-defined]
        real = source.model_steps

        def gated(kinds: Any) -> list[ModelStep]:
            first, *rest = real(kinds)
            self.step_labels = [first.label, *(step.label for step in rest)]

            def held() -> object:
                self.entered.set()
                self.release.wait(120)
                return first.load()

            return [ModelStep(first.key, first.label, held), *rest]

        source.model_steps = gated  # type: ignore[method-assign]


async def test_a_command_sent_while_the_models_load_is_queued_told_why_and_then_runs(
    standin: DiscordStandin, tmp_path
) -> None:
    gate = Gate()
    config = write_test_config(tmp_path, standin)
    async with running_bot(standin, config, wait_for_models=False, prepare=gate) as bot:
        # Connected and answering while the first model is still loading.
        assert await asyncio.to_thread(gate.entered.wait, WAIT), "loading never started"
        assert bot.scheduler.models_loading
        # tiny: VQGAN, one CLIP shared by guide and ranker, the diffusion model; and then the
        # safety checker, which the bot adds.
        assert gate.step_labels == [
            "VQGAN",
            "CLIP faraday-tiny-clip (random weights)",
            "diffusion model tiny",
        ], gate.step_labels
        await standin.wait_for(
            lambda: "loading models (1 of 4)…" in presences(standin),
            timeout=WAIT,
            description="the loading presence",
        )

        handle = await standin.send_slash_command(
            "imagine", {"prompt": "a lighthouse"}, user="alice"
        )
        reply = await handle.wait_for_reply(lambda m: "Job #" in m.content, timeout=WAIT)
        assert reply.ephemeral
        assert "The models are loading; your job starts when they are ready." in reply.content
        assert "starting now" not in reply.content
        # Nothing is known of load times on a first start, and the reply says why.
        assert "ETA not known yet (the models are still loading)" in reply.content
        job_id = job_id_in(reply.content)

        await asyncio.sleep(1.0)  # time enough to start it, were it not held
        record = await bot.store.get_job(job_id)
        assert record is not None and record.status is JobStatus.QUEUED

        gate.release.set()
        record = await finished_job(bot, job_id)
        assert record.status is JobStatus.DONE, record.error
        assert len(await bot.store.results_for_job(job_id)) == 2
        await standin.wait_for(
            lambda: presences(standin)[-1] is None,
            timeout=WAIT,
            description="the loading presence to be cleared",
        )
        shown = [p for p in presences(standin) if p]
        assert shown[:4] == [f"loading models ({n} of 4)…" for n in (1, 2, 3, 4)], shown
    # Every model's load time was kept, for the next start's ETAs.
    times = (tmp_path / "data" / LOAD_TIMES_FILE).read_text()
    assert times.count("tiny:") == 4


async def test_after_one_start_the_queued_eta_includes_the_load_time_still_to_come(
    standin: DiscordStandin, tmp_path
) -> None:
    config = write_test_config(tmp_path, standin)
    # A first start measures each model's load time and one job's time per step.
    async with running_bot(standin, config) as bot:
        handle = await standin.send_slash_command("imagine", {"prompt": "a castle"}, user="bob")
        reply = await handle.wait_for_reply(lambda m: "Job #" in m.content, timeout=WAIT)
        assert "models are loading" not in reply.content  # they were loaded before connecting
        await finished_job(bot, job_id_in(reply.content))
    times_file = tmp_path / "data" / LOAD_TIMES_FILE
    times = json.loads(times_file.read_text())
    assert sorted(times) == [
        "tiny:clip:faraday-tiny-clip:",
        "tiny:diffusion:tiny",
        "tiny:safety:random",
        "tiny:vqgan",
    ]
    times_file.write_text(json.dumps({key: 400.0 for key in times}))  # as if long downloads

    gate = Gate()
    async with running_bot(standin, config, wait_for_models=False, prepare=gate) as bot:
        assert await asyncio.to_thread(gate.entered.wait, WAIT)
        handle = await standin.send_slash_command("imagine", {"prompt": "a castle"}, user="bob")
        reply = await handle.wait_for_reply(lambda m: "Job #" in m.content, timeout=WAIT)
        job_id = job_id_in(reply.content)
        [entry] = bot.scheduler.snapshot().queued
        assert entry.job_id == job_id and entry.kind is JobKind.IMAGINE
        # Four models of 400 s still to load (less what the first has had), then the job's own
        # few seconds.
        assert entry.eta_seconds is not None and 1500 < entry.eta_seconds < 1700, entry
        assert "ETA about 2" in reply.content and "min" in reply.content, reply.content
        gate.release.set()
        record = await finished_job(bot, job_id)
        assert record.status is JobStatus.DONE
