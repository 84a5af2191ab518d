"""Upscaling one stored result: the job request the buttons submit, refused early when it cannot
run.

The upscale runs as a job of its own kind (``upscale``) through the same fair scheduler as every
other job; its result is posted by the publisher at full size (as a JPEG when the PNG is over the
channel's upload limit). Usage from a cog::

    request = await upscale_request(bot.store, bot.config.upscale, job_id=..., rank=...,
                                    user_id=..., channel_id=..., guild_id=...)
    submitted = await SubmitDesk.of(bot).submit(request)   # cooldown and queue caps apply

:class:`UpscaleUnavailable` carries one sentence for an ephemeral reply.
"""

from __future__ import annotations

import asyncio
import io
import logging

from PIL import Image, UnidentifiedImageError

from bot.config import UpscaleConfig
from bot.jobs import JobKind, JobRequest
from bot.store import Store
from pipelines.interface import InvalidRequest
from pipelines.upscale import check_input_size, tile_count

log = logging.getLogger(__name__)

EXPIRED = "this result has expired: its job and files were deleted."


class UpscaleUnavailable(Exception):
    """The result cannot be upscaled; ``str(exc)`` says why, for the user."""


def _image_size(data: bytes) -> tuple[int, int]:
    # Only the header is parsed: the size is all the cap needs.
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def upscale_request(
    store: Store,
    config: UpscaleConfig,
    *,
    job_id: int,
    rank: int,
    user_id: int,
    channel_id: int,
    guild_id: int | None,
    scale: float | None = None,
) -> JobRequest:
    """The ``upscale`` job for result ``rank`` of job ``job_id``, asked by ``user_id``.

    Raises :class:`UpscaleUnavailable` when the result no longer exists ("this result has
    expired") or is over ``[upscale] max_input_side`` (the cap is named). ``scale`` is the
    output's size over the input's; ``None`` is the model's own factor (×4 for Real-ESRGAN).
    """
    results = await store.results_for_job(job_id)
    chosen = next((r for r in results if r.rank == rank), None)
    if chosen is None:
        raise UpscaleUnavailable(EXPIRED)
    try:
        data = await asyncio.to_thread(chosen.path.read_bytes)
        size = await asyncio.to_thread(_image_size, data)
    except (OSError, UnidentifiedImageError):
        log.warning("job %d: result %d cannot be read for upscaling", job_id, rank, exc_info=True)
        raise UpscaleUnavailable(EXPIRED) from None
    try:
        check_input_size(size, config.max_input_side)
    except InvalidRequest as exc:
        raise UpscaleUnavailable(
            f"result {rank} of job #{job_id} cannot be upscaled: {exc}."
        ) from None
    return JobRequest(
        kind=JobKind.UPSCALE,
        user_id=user_id,
        channel_id=channel_id,
        guild_id=guild_id,
        params={
            "scale": scale,
            "tile": config.tile_size,
            "overlap": config.tile_overlap,
            "max_input_side": config.max_input_side,
            "source_job_id": job_id,
            "source_rank": rank,
            # Every job carries a seed; the upscaler is deterministic and ignores it.
            "seed": 0,
            # Progress counts tiles, so ETAs are learnt per tile.
            "steps": tile_count(size, config.tile_size),
        },
        images={"image": data},
        parent_result_id=chosen.id,
    )
