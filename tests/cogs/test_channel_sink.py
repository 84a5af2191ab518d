"""discord.py's errors become the publisher's three; oversized uploads are shrunk, not refused."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import aiohttp
import discord
import numpy as np
import pytest
from PIL import Image

from bot.publisher import MessageGone, NoPermission, OutgoingFile, TransientSendError
from cogs.channel_sink import fit_files, translated


def http_error(cls: type[discord.HTTPException], status: int) -> discord.HTTPException:
    response = SimpleNamespace(status=status, reason="test")
    return cls(response, {"message": "test", "code": 0})  # type: ignore[arg-type]


async def raising(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (http_error(discord.NotFound, 404), MessageGone),
        (http_error(discord.Forbidden, 403), NoPermission),
        (http_error(discord.DiscordServerError, 503), TransientSendError),
        (discord.RateLimited(60.0), TransientSendError),
        (aiohttp.ClientConnectionError("reset"), TransientSendError),
        (asyncio.TimeoutError(), TransientSendError),
    ],
)
async def test_errors_are_translated(error: BaseException, expected: type[Exception]) -> None:
    with pytest.raises(expected):
        await translated(lambda: raising(error))


async def test_other_http_errors_pass_through_unchanged() -> None:
    error = http_error(discord.HTTPException, 400)
    with pytest.raises(discord.HTTPException) as caught:
        await translated(lambda: raising(error))
    assert caught.value is error


async def test_success_returns_the_value() -> None:
    async def value() -> int:
        return 5

    assert await translated(value) == 5


def noise_png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_small_files_are_sent_as_they_are() -> None:
    files = [OutgoingFile("a.png", b"x" * 1000)]
    assert fit_files(files, 10 * 1024 * 1024) is files


def test_files_over_the_upload_limit_are_reencoded_to_fit() -> None:
    big = OutgoingFile("grid.png", noise_png(512))
    assert len(big.data) > 700_000
    (fitted,) = fit_files([big], 200_000)
    assert fitted.filename == "grid.jpg"
    assert len(fitted.data) <= 200_000 - 64 * 1024
    assert Image.open(io.BytesIO(fitted.data)).format == "JPEG"
