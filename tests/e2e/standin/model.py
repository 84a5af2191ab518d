"""The stand-in's world: one guild, its users and roles, channels, messages and attachments.

Each object knows how to render itself as the JSON shape Discord's API uses, close enough for
discord.py to parse it exactly as it parses Discord's own answers.
"""

from __future__ import annotations

import itertools
import mimetypes
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import discord

# Discord counts snowflake milliseconds from the first second of 2015.
DISCORD_EPOCH_MS = 1_420_070_400_000

EPHEMERAL_FLAG = 1 << 6
LOADING_FLAG = 1 << 7

MESSAGE_TYPE_DEFAULT = 0
MESSAGE_TYPE_CHAT_INPUT_COMMAND = 20


class SnowflakeFactory:
    """Hands out increasing snowflakes whose timestamp part is the current time."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        candidate = now_ms << 22
        # Several ids in one millisecond: keep them strictly increasing.
        self._last = max(candidate, self._last + 1)
        return self._last


def iso_timestamp(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).isoformat()


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass
class StandinUser:
    """A Discord account in the stand-in guild (a test user, an admin, or the bot itself)."""

    id: int
    name: str
    bot: bool = False
    role_ids: list[int] = field(default_factory=list)
    joined_at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }

    def member_payload(self, permissions: int | None = None) -> dict[str, Any]:
        member: dict[str, Any] = {
            "user": self.payload(),
            "nick": None,
            "avatar": None,
            "roles": [str(role_id) for role_id in self.role_ids],
            "joined_at": iso_timestamp(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if permissions is not None:
            # Interactions carry the member's computed permissions in the channel.
            member["permissions"] = str(permissions)
        return member


CHANNEL_TYPE_TEXT = 0
CHANNEL_TYPE_PUBLIC_THREAD = 11
CHANNEL_TYPE_PRIVATE_THREAD = 12
THREAD_TYPES = (CHANNEL_TYPE_PUBLIC_THREAD, CHANNEL_TYPE_PRIVATE_THREAD)


@dataclass
class TextChannel:
    """A text channel, or a thread (type 11/12) living in ``parent_id``."""

    id: int
    guild_id: int
    name: str
    position: int
    type: int = CHANNEL_TYPE_TEXT
    parent_id: int | None = None
    owner_id: int | None = None
    created_at: float = field(default_factory=time.time)

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES
    nsfw: bool = False  # "age-restricted" in Discord's client

    def payload(self) -> dict[str, Any]:
        if self.is_thread:
            return {
                "id": str(self.id),
                "type": self.type,
                "guild_id": str(self.guild_id),
                "parent_id": str(self.parent_id),
                "owner_id": str(self.owner_id) if self.owner_id else None,
                "name": self.name,
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "message_count": 0,
                "member_count": 1,
                "total_message_sent": 0,
                "flags": 0,
                "applied_tags": [],
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": iso_timestamp(self.created_at),
                    "locked": False,
                    "create_timestamp": iso_timestamp(self.created_at),
                },
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, TextChannel] = field(default_factory=dict)
    members: dict[int, StandinUser] = field(default_factory=dict)

    @property
    def everyone_role(self) -> Role:
        # Discord gives @everyone the guild's own id.
        return self.roles[self.id]

    def permissions_of(self, user: StandinUser) -> int:
        if user.id == self.owner_id:
            return discord.Permissions.all().value
        value = self.everyone_role.permissions
        for role_id in user.role_ids:
            role = self.roles.get(role_id)
            if role is not None:
                value |= role.permissions
        if value & discord.Permissions(administrator=True).value:
            return discord.Permissions.all().value
        return value

    def member_payloads(self) -> list[dict[str, Any]]:
        return [member.member_payload() for member in self.members.values()]

    def payload(self) -> dict[str, Any]:
        """The full guild, as GUILD_CREATE delivers it."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [role.payload() for role in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": iso_timestamp(time.time()),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": self.member_payloads(),
            "channels": [c.payload() for c in self.channels.values() if not c.is_thread],
            "threads": [c.payload() for c in self.channels.values() if c.is_thread],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass
class StoredAttachment:
    """A file as Discord keeps it: bytes served from the stand-in's CDN route."""

    id: int
    filename: str
    content_type: str
    data: bytes
    url: str
    description: str | None = None
    # Lets a test claim a size different from the bytes (Discord reports the stored size).
    declared_size: int | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.declared_size is None else self.declared_size

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            payload["description"] = self.description
        dimensions = image_dimensions(self.data)
        if dimensions is not None:
            payload["width"], payload["height"] = dimensions
        return payload


def guess_content_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height when the bytes are an image Pillow can identify, else None."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


@dataclass(frozen=True)
class MessageVersion:
    """One state of a message: its creation or an edit, with when it happened."""

    at: float
    content: str
    attachments: tuple[StoredAttachment, ...]
    embeds: tuple[dict[str, Any], ...]
    flags: int

    @property
    def files(self) -> dict[str, bytes]:
        return {attachment.filename: attachment.data for attachment in self.attachments}


@dataclass
class StoredMessage:
    """The stand-in's current view of one message, plus its history of versions."""

    id: int
    channel_id: int
    guild_id: int
    author: StandinUser
    content: str
    attachments: list[StoredAttachment]
    embeds: list[dict[str, Any]]
    flags: int
    created_at: float
    type: int = MESSAGE_TYPE_DEFAULT
    # "channel" (REST post or a user's message), "interaction" (callback or @original),
    # "followup" (webhook execute on an interaction token).
    origin: str = "channel"
    interaction_id: int | None = None
    interaction_user: StandinUser | None = None
    application_id: int | None = None
    edited_at: float | None = None
    deleted: bool = False
    # Emoji -> user ids in the order they reacted.
    reactions: dict[str, list[int]] = field(default_factory=dict)
    # Action rows as the bot sent them (buttons users can press).
    components: list[dict[str, Any]] = field(default_factory=list)
    history: list[MessageVersion] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.history:
            self.history.append(self._version(self.created_at))

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL_FLAG)

    @property
    def loading(self) -> bool:
        """True for a deferred interaction response still showing "thinking..."."""
        return bool(self.flags & LOADING_FLAG)

    @property
    def files(self) -> dict[str, bytes]:
        return {attachment.filename: attachment.data for attachment in self.attachments}

    @property
    def edits(self) -> list[MessageVersion]:
        return self.history[1:]

    def buttons(self) -> list[dict[str, Any]]:
        """Every button on the message, row by row."""
        found: list[dict[str, Any]] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if item.get("type") == 2:
                    found.append(item)
                walk(item.get("components") or [])

        walk(self.components)
        return found

    def button(self, custom_id: str) -> dict[str, Any] | None:
        return next((b for b in self.buttons() if b.get("custom_id") == custom_id), None)

    def reactors(self, emoji: str) -> list[int]:
        return list(self.reactions.get(emoji, []))

    def _version(self, at: float) -> MessageVersion:
        return MessageVersion(
            at=at,
            content=self.content,
            attachments=tuple(self.attachments),
            embeds=tuple(self.embeds),
            flags=self.flags,
        )

    def record_edit(self, at: float) -> None:
        self.edited_at = at
        self.history.append(self._version(at))

    def payload(self, viewer_id: int) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "guild_id": str(self.guild_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": iso_timestamp(self.created_at),
            "edited_timestamp": None if self.edited_at is None else iso_timestamp(self.edited_at),
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "mention_channels": [],
            "attachments": [attachment.payload() for attachment in self.attachments],
            "embeds": list(self.embeds),
            "reactions": [
                reaction_payload(emoji, users, viewer_id)
                for emoji, users in self.reactions.items()
                if users
            ],
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
            "components": [dict(row) for row in self.components],
        }
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
            payload["webhook_id"] = str(self.application_id)
        if self.interaction_id is not None:
            payload["interaction_metadata"] = {
                "id": str(self.interaction_id),
                "type": 2,
                "user": (self.interaction_user or self.author).payload(),
                "authorizing_integration_owners": {},
            }
        return payload


def emoji_payload(emoji: str) -> dict[str, Any]:
    """Unicode emoji are sent as-is; custom ones as "name:id" (discord.py's reaction form)."""
    name, sep, emoji_id = emoji.rpartition(":")
    if sep and emoji_id.isdigit():
        return {"id": emoji_id, "name": name, "animated": False}
    return {"id": None, "name": emoji}


def reaction_payload(emoji: str, users: list[int], viewer_id: int) -> dict[str, Any]:
    return {
        "count": len(users),
        "count_details": {"burst": 0, "normal": len(users)},
        "me": viewer_id in users,
        "me_burst": False,
        "burst_colors": [],
        "emoji": emoji_payload(emoji),
    }


class IdCounter:
    """Small readable ids for interaction tokens and session ids."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._numbers = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._numbers)}"
