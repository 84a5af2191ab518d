"""New jobs made from old ones: continuing from a result, and rerunning with a new seed.

Pure functions of stored requests, so they can be tested without Discord. The seed is cleared so
the scheduler draws (and persists) a fresh one.
"""

from __future__ import annotations

from dataclasses import replace

from bot.jobs import JobKind, JobRequest

# The image field a continuation replaces with the chosen result, per kind.
SOURCE_FIELD = {JobKind.IMAGINE: "init_image", JobKind.EDIT: "image"}


def continue_from(
    parent: JobRequest,
    result_png: bytes,
    result_id: int,
    *,
    user_id: int,
    channel_id: int,
    guild_id: int | None,
) -> JobRequest:
    """The parent's prompt and settings, starting from the chosen result, with a new seed.

    For /imagine the result becomes the init image (a mask, image prompts and mask_text stay);
    for /edit it becomes the source image, edited again under the same mask and prompt.
    """
    images = dict(parent.images)
    images[SOURCE_FIELD[parent.kind]] = result_png
    return JobRequest(
        kind=parent.kind,
        user_id=user_id,
        channel_id=channel_id,
        guild_id=guild_id,
        params={**parent.params, "seed": None},
        images=images,
        parent_result_id=result_id,
    )


def rerun(parent: JobRequest, *, user_id: int, channel_id: int, guild_id: int | None) -> JobRequest:
    """The same job again, same inputs and settings, with a new seed."""
    return replace(
        parent,
        user_id=user_id,
        channel_id=channel_id,
        guild_id=guild_id,
        params={**parent.params, "seed": None},
        images=dict(parent.images),
    )
