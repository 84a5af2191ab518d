"""A loopback stand-in of the Discord API for end-to-end tests with the real discord.py client.

Start a `DiscordStandin`, point a bot at it (`discord_py_pointed_at` in-process, or
`write_bot_config` for `python -m bot`), then act as users and assert on what was recorded.
"""

from __future__ import annotations

from .config import write_bot_config
from .inprocess import discord_py_pointed_at, running_client
from .interactions import Callback, InteractionHandle, InvalidInvocation
from .model import MessageVersion, StandinUser, StoredAttachment, StoredMessage
from .recording import (
    MISSING_PERMISSIONS,
    UNKNOWN_MESSAGE,
    FaultRule,
    RecordedRequest,
    UploadedFile,
)
from .server import DiscordStandin

__all__ = [
    "MISSING_PERMISSIONS",
    "UNKNOWN_MESSAGE",
    "Callback",
    "DiscordStandin",
    "FaultRule",
    "InteractionHandle",
    "InvalidInvocation",
    "MessageVersion",
    "RecordedRequest",
    "StandinUser",
    "StoredAttachment",
    "StoredMessage",
    "UploadedFile",
    "discord_py_pointed_at",
    "running_client",
    "write_bot_config",
]
