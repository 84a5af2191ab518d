"""Running a real discord.py client in the test's own event loop against the stand-in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import discord
import yarl

from .server import DiscordStandin


@contextlib.contextmanager
def discord_py_pointed_at(standin: DiscordStandin) -> Iterator[None]:
    """Point every discord.py client in this process at the stand-in, and restore after.

    These are class attributes, so this is process-wide: a bot run as a subprocess gets the
    same URLs from its config instead.
    """
    saved_base = discord.http.Route.BASE
    saved_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = standin.api_base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(standin.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = saved_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved_gateway


@contextlib.asynccontextmanager
async def running_client(
    client: discord.Client, standin: DiscordStandin, *, timeout: float = 20.0
) -> AsyncIterator[discord.Client]:
    """Start `client` against the stand-in, yield once it is ready, close it afterwards.

    A client that fails to log in or connect fails the test with its own exception rather
    than a timeout.
    """
    with discord_py_pointed_at(standin):
        task = asyncio.create_task(client.start(standin.token), name="standin-client")
        ready = asyncio.create_task(client.wait_until_ready())
        try:
            done, _ = await asyncio.wait(
                {task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                task.result()  # raises the client's own error
                raise AssertionError("the client stopped before it became ready")
            if ready not in done:
                raise AssertionError(
                    f"the client was not ready within {timeout}s\n  " + standin.describe_recent()
                )
            yield client
        finally:
            ready.cancel()
            await client.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)
