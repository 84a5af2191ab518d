"""Fixtures for end-to-end tests against the local Discord stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import discord
import pytest

from tests.e2e.standin import DiscordStandin, running_client


@pytest.fixture
async def standin() -> AsyncIterator[DiscordStandin]:
    """A fresh stand-in on an ephemeral 127.0.0.1 port, stopped after the test."""
    server = DiscordStandin()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def run_client(
    standin: DiscordStandin,
) -> Callable[..., AbstractAsyncContextManager[discord.Client]]:
    """`async with run_client(bot): ...` runs a real discord.py client against `standin`."""

    def start(
        client: discord.Client, *, timeout: float = 20.0
    ) -> AbstractAsyncContextManager[discord.Client]:
        return running_client(client, standin, timeout=timeout)

    return start
