"""Who may do what, continuation requests, and the words of the replies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bot.config import DiscordConfig
from bot.jobs import JobKind, JobRequest
from bot.scheduler import QueueEntry, QueueSnapshot, RunningEntry, Submitted
from cogs.checks import SubmitCooldown, channel_allowed, is_admin, role_ids_of
from cogs.continuations import continue_from, rerun
from cogs.queue import HELP_TEXT, QueueCog, describe_queue
from cogs.replies import format_eta, queued_text
from cogs.results import number_of


def test_channels_are_all_allowed_unless_listed() -> None:
    assert channel_allowed(DiscordConfig(), 5)
    limited = DiscordConfig(allowed_channel_ids=(7, 8))
    assert channel_allowed(limited, 8)
    assert not channel_allowed(limited, 5)
    assert not channel_allowed(limited, None)


def test_admins_are_owners_or_hold_an_admin_role() -> None:
    config = DiscordConfig(admin_role_ids=(100,), owner_ids=(1,))
    assert is_admin(config, 1, [])
    assert is_admin(config, 2, [55, 100])
    assert not is_admin(config, 2, [55])
    assert not is_admin(DiscordConfig(), 2, [100])  # no admin roles configured: nobody by role
    member = SimpleNamespace(roles=[SimpleNamespace(id=100), SimpleNamespace(id=3)])
    assert role_ids_of(member) == [100, 3]
    assert role_ids_of(SimpleNamespace()) == []


def test_cooldown_counts_only_submitted_jobs_per_user() -> None:
    cooldown = SubmitCooldown(10.0)
    assert cooldown.retry_after(1, now=1000.0) == 0.0
    cooldown.consume(1, now=1000.0)
    assert cooldown.retry_after(1, now=1004.0) == pytest.approx(6.0)
    assert cooldown.retry_after(2, now=1004.0) == 0.0  # another user is not held up
    assert cooldown.retry_after(1, now=1010.5) == 0.0
    assert "in 6 s" in cooldown.refusal(5.2)
    off = SubmitCooldown(0.0)
    off.consume(1)
    assert off.retry_after(1) == 0.0


def imagine_request() -> JobRequest:
    return JobRequest(
        kind=JobKind.IMAGINE,
        user_id=1,
        channel_id=2,
        guild_id=3,
        params={"prompt": "a cat", "seed": 42, "steps": 5, "width": 64, "height": 64},
        images={"mask": b"mask-png", "image_prompts": [b"style-png"]},
    )


def test_imagine_continuation_starts_from_the_result_with_a_new_seed() -> None:
    parent = imagine_request()
    child = continue_from(parent, b"result-2", 77, user_id=9, channel_id=2, guild_id=3)
    assert child.kind is JobKind.IMAGINE
    assert child.images["init_image"] == b"result-2"
    assert child.images["mask"] == b"mask-png"
    assert child.images["image_prompts"] == [b"style-png"]
    assert child.params == {**parent.params, "seed": None}
    assert child.parent_result_id == 77 and child.user_id == 9
    assert "init_image" not in parent.images  # the parent is untouched


def test_edit_continuation_edits_the_result_under_the_same_mask() -> None:
    parent = JobRequest(
        kind=JobKind.EDIT, user_id=1, channel_id=2, guild_id=None,
        params={"prompt": "a red door", "seed": 5, "candidates": 2},
        images={"image": b"source", "mask": b"mask"},
    )
    child = continue_from(parent, b"result-1", 12, user_id=1, channel_id=2, guild_id=None)
    assert child.images == {"image": b"result-1", "mask": b"mask"}
    assert child.params["prompt"] == "a red door" and child.params["seed"] is None
    assert child.params["candidates"] == 2


def test_rerun_keeps_everything_but_the_seed() -> None:
    parent = imagine_request()
    again = rerun(parent, user_id=4, channel_id=2, guild_id=3)
    assert again.images == parent.images and again.params["seed"] is None
    assert {k: v for k, v in again.params.items() if k != "seed"} == {
        k: v for k, v in parent.params.items() if k != "seed"
    }
    assert again.parent_result_id is None and again.user_id == 4


def test_number_emojis() -> None:
    assert number_of("1️⃣") == 1
    assert number_of("🔟") == 10
    assert number_of("🔁") is None


def test_eta_and_queued_text() -> None:
    assert format_eta(4.2) == "about 4 s"
    assert format_eta(150) == "about 2 min"
    assert format_eta(3 * 3600) == "about 3.0 h"
    assert "not known yet" in format_eta(None)
    waiting = queued_text(Submitted(7, 3, 95.0), ("note one",))
    assert waiting.startswith("Job #7 queued, position 3, ETA about 2 min.")
    assert waiting.endswith("\nnote one")
    assert queued_text(Submitted(8, 1, 5.0)).startswith("Job #8 is starting now")


def snapshot() -> QueueSnapshot:
    running = RunningEntry(1, 10, 5, JobKind.IMAGINE, 3, 20, 4.0, 30.0, False)
    queued = [
        QueueEntry(2, 11, 5, JobKind.EDIT, 2, 60.0),
        QueueEntry(3, 10, 5, JobKind.IMAGINE, 3, None),
    ]
    return QueueSnapshot(running, queued)


def test_queue_description_shows_own_jobs_running_job_and_length() -> None:
    text = describe_queue(snapshot(), 10)
    assert "Running: job #1 (imagine, yours), step 3/20" in text
    assert "Queue length: 3" in text
    assert "job #3 (imagine): position 3" in text
    assert "job #2" not in text  # someone else's waiting job is not listed
    other = describe_queue(snapshot(), 11)
    assert "<@10>'s" in other and "job #2 (edit): position 2, ETA about 1 min" in other
    empty = describe_queue(QueueSnapshot(None, []), 10)
    assert "Nothing is running" in empty and "no jobs waiting" in empty


def test_cancel_without_a_number_picks_the_running_then_the_next_own_job() -> None:
    assert QueueCog.own_job(snapshot(), 10) == 1
    assert QueueCog.own_job(snapshot(), 11) == 2
    assert QueueCog.own_job(snapshot(), 99) is None


def test_help_fits_one_discord_message() -> None:
    assert len(HELP_TEXT) <= 2000
    for command in ("/imagine", "/edit", "/queue", "/cancel", "1️⃣", "🔁", "❌", "|"):
        assert command in HELP_TEXT
