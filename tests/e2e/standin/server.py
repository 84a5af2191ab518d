"""DiscordStandin: a loopback Discord (REST + gateway + CDN) for the real discord.py client.

A test starts it, points a bot at `api_base_url` / `gateway_url`, then acts as Discord users
(slash commands, reactions, deleting messages) and inspects what the bot did through the
recorded requests and the stand-in's view of every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import discord
from aiohttp import web

from .gateway import OP_RECONNECT, GatewayHub, GatewaySession
from .interactions import (
    INTERACTION_COMMAND,
    INTERACTION_COMPONENT,
    INTERACTION_MODAL_SUBMIT,
    SUB_COMMAND,
    InteractionHandle,
    InvalidInvocation,
    build_options,
)
from .model import (
    CHANNEL_TYPE_PUBLIC_THREAD,
    MESSAGE_TYPE_DEFAULT,
    Guild,
    MessageVersion,
    Role,
    SnowflakeFactory,
    StandinUser,
    StoredAttachment,
    StoredMessage,
    TextChannel,
    emoji_payload,
    guess_content_type,
)
from .recording import FaultRule, RecordedRequest, fault_rule
from .rest import RestApi, safe_filename

logger = logging.getLogger(__name__)

T = TypeVar("T")

MESSAGE_CONTENT_INTENT = 1 << 15

DEFAULT_BOT_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    read_message_history=True,
    manage_messages=True,
    use_application_commands=True,
)
EVERYONE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    attach_files=True,
    add_reactions=True,
    read_message_history=True,
    use_application_commands=True,
)


class DiscordStandin:
    """One guild with one text channel (more on request), a bot account and test users."""

    def __init__(
        self,
        *,
        token: str = "standin-bot-token",
        bot_name: str = "Faraday",
        guild_name: str = "Faraday Test Server",
        channel_names: Iterable[str] = ("general",),
        admin_role_name: str = "Faraday Admin",
        user_names: Iterable[str] = ("alice", "bob"),
        admin_names: Iterable[str] = ("root",),
        bot_permissions: discord.Permissions = DEFAULT_BOT_PERMISSIONS,
        attachment_size_limit: int = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES,
        heartbeat_interval: float = 41.25,
        ack_deadline: float | None = 3.0,
    ) -> None:
        self.token = token
        self.attachment_size_limit = attachment_size_limit
        # Discord refuses an interaction callback that comes later than 3 s after the event.
        self.ack_deadline = ack_deadline
        self._ids = SnowflakeFactory()
        self._port: int | None = None
        self._runner: web.AppRunner | None = None

        self.owner = StandinUser(id=self._ids.next(), name="server-owner")
        self.bot_user = StandinUser(id=self._ids.next(), name=bot_name, bot=True)
        # Modern applications share their id with their bot user.
        self.application_id = self.bot_user.id

        guild_id = self._ids.next()
        self.guild = Guild(id=guild_id, name=guild_name, owner_id=self.owner.id)
        self.guild.roles[guild_id] = Role(guild_id, "@everyone", EVERYONE_PERMISSIONS.value, 0)
        self.bot_role = Role(self._ids.next(), bot_name, bot_permissions.value, 1)
        self.admin_role = Role(self._ids.next(), admin_role_name, EVERYONE_PERMISSIONS.value, 2)
        for role in (self.bot_role, self.admin_role):
            self.guild.roles[role.id] = role
        self.bot_user.role_ids.append(self.bot_role.id)
        for position, name in enumerate(channel_names):
            channel = TextChannel(self._ids.next(), guild_id, name, position)
            self.guild.channels[channel.id] = channel
        self.guild.members[self.owner.id] = self.owner
        self.guild.members[self.bot_user.id] = self.bot_user

        self.users: dict[str, StandinUser] = {}
        for name in user_names:
            self.create_user(name)
        for name in admin_names:
            self.create_user(name, admin=True)

        # Recording.
        self.requests: list[RecordedRequest] = []
        self.unknown_requests: list[RecordedRequest] = []
        self.messages: dict[int, StoredMessage] = {}
        # Direct-message channels the bot opened: channel id -> the user at the other end.
        self.dm_channels: dict[int, StandinUser] = {}
        self.cdn_files: dict[int, StoredAttachment] = {}
        self.interactions: list[InteractionHandle] = []
        self.interactions_by_token: dict[str, InteractionHandle] = {}
        self.command_syncs: list[tuple[int | None, list[str], float]] = []
        self._commands: dict[int | None, dict[str, dict[str, Any]]] = {}
        self._command_ids: dict[tuple[int | None, str], int] = {}
        self._faults: list[FaultRule] = []

        self._changed = asyncio.Event()
        self.rest = RestApi(self)
        self.gateway = GatewayHub(
            token=lambda: self.token,
            ready_payload=self._ready_payload,
            guild_payloads=lambda: [self.guild.payload()],
            members_chunk=self._members_chunk,
            resume_url=lambda: self.gateway_url,
            heartbeat_interval_ms=int(heartbeat_interval * 1000),
            on_change=self.notify,
        )

    # ---- lifecycle and addresses ---------------------------------------------------------

    async def start(self) -> DiscordStandin:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/", self.gateway.handle)
        app.router.add_route("*", "/api/v10/{tail:.*}", self.rest.handle)
        app.router.add_route("*", "/cdn/{tail:.*}", self.rest.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self._port = server.sockets[0].getsockname()[1]
        logger.info("Discord stand-in listening on %s", self.base_url)
        return self

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordStandin:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the stand-in is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        """What discord.http.Route.BASE must be set to."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY must be set to."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def cdn_host(self) -> str:
        """The host attachment URLs point at."""
        return "127.0.0.1"

    @property
    def cdn_origin(self) -> str:
        """Scheme, host and port of attachment URLs: what the bot must trust for downloads.

        It is plain http on an ephemeral port, so a bare host name would not do.
        """
        return self.base_url

    @property
    def guild_id(self) -> int:
        return self.guild.id

    @property
    def channel_id(self) -> int:
        """The first (default) text channel."""
        return next(iter(self.guild.channels))

    def channel_named(self, name: str) -> int:
        for channel in self.guild.channels.values():
            if channel.name == name:
                return channel.id
        raise KeyError(
            f"no channel named {name!r}; have {[c.name for c in self.guild.channels.values()]}"
        )

    def discord_config(self) -> dict[str, Any]:
        """Keys of the bot's [discord] config table that point it at this stand-in."""
        return {
            "api_base_url": self.api_base_url,
            "gateway_url": self.gateway_url,
            "cdn_hosts": [self.cdn_origin],
            "guild_ids": [self.guild.id],
            "admin_role_ids": [self.admin_role.id],
        }

    # ---- the world -----------------------------------------------------------------------

    def create_user(
        self, name: str, *, admin: bool = False, role_ids: Iterable[int] = ()
    ) -> StandinUser:
        """A guild member; admins carry the admin role (`admin_role.id`)."""
        if name in self.users:
            raise ValueError(f"user {name!r} already exists")
        roles = list(role_ids)
        if admin:
            roles.append(self.admin_role.id)
        user = StandinUser(id=self._ids.next(), name=name, role_ids=roles)
        self.users[name] = user
        self.guild.members[user.id] = user
        return user

    def add_thread(
        self,
        name: str,
        *,
        parent_id: int | None = None,
        thread_type: int = CHANNEL_TYPE_PUBLIC_THREAD,
        owner: StandinUser | None = None,
    ) -> TextChannel:
        """A thread under ``parent_id`` (default: the first channel). Created by a test it is
        not announced; the REST route announces the ones the bot creates (THREAD_CREATE)."""
        parent = parent_id or self.channel_id
        thread = TextChannel(
            self._ids.next(), self.guild.id, name, 0, type=thread_type, parent_id=parent,
            owner_id=(owner or self.bot_user).id,
        )
        self.guild.channels[thread.id] = thread
        return thread

    def threads_of(self, parent_id: int | None = None) -> list[TextChannel]:
        parent = parent_id or self.channel_id
        return [c for c in self.guild.channels.values() if c.is_thread and c.parent_id == parent]

    def find_user(self, user_id: int) -> StandinUser | None:
        return self.guild.members.get(user_id)

    def open_dm(self, user: StandinUser) -> int:
        """The DM channel between the bot and ``user`` (one per user, as on Discord)."""
        for channel_id, other in self.dm_channels.items():
            if other.id == user.id:
                return channel_id
        channel_id = self._ids.next()
        self.dm_channels[channel_id] = user
        return channel_id

    def direct_messages(self, user: StandinUser | str) -> list[StoredMessage]:
        """What the bot sent ``user`` by DM, oldest first."""
        target = self._user(user)
        channels = {c for c, other in self.dm_channels.items() if other.id == target.id}
        return [m for m in self.messages.values() if m.channel_id in channels]

    @property
    def bot_permissions(self) -> discord.Permissions:
        return discord.Permissions(self.guild.permissions_of(self.bot_user))

    async def set_bot_permissions(self, permissions: discord.Permissions) -> None:
        """Change what the bot's role allows, and tell a connected bot (GUILD_ROLE_UPDATE)."""
        self.bot_role.permissions = permissions.value
        await self.echo(
            "GUILD_ROLE_UPDATE", {"guild_id": str(self.guild.id), "role": self.bot_role.payload()}
        )

    def add_cdn_file(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        *,
        declared_size: int | None = None,
        channel_id: int | None = None,
    ) -> dict[str, Any]:
        """Put bytes on the fake CDN; returns the attachment dict a user's upload would have.

        `content_type` and `declared_size` may lie about the bytes, as a hostile client could.
        """
        attachment = StoredAttachment(
            id=self._ids.next(),
            filename=safe_filename(filename),
            content_type=content_type or guess_content_type(filename),
            data=data,
            url="",
            declared_size=declared_size,
        )
        channel = channel_id or self.channel_id
        attachment.url = (
            f"{self.base_url}/cdn/attachments/{channel}/{attachment.id}/{attachment.filename}"
        )
        self.cdn_files[attachment.id] = attachment
        return attachment.payload()

    def store_upload(
        self, *, channel_id: int, filename: str, data: bytes, description: str | None
    ) -> StoredAttachment:
        filename = safe_filename(filename)
        attachment = StoredAttachment(
            id=self._ids.next(),
            filename=filename,
            content_type=guess_content_type(filename),
            data=data,
            url="",
            description=description,
        )
        attachment.url = f"{self.base_url}/cdn/attachments/{channel_id}/{attachment.id}/{filename}"
        self.cdn_files[attachment.id] = attachment
        return attachment

    def new_message(
        self,
        *,
        channel_id: int,
        author: StandinUser,
        content: str,
        attachments: list[StoredAttachment],
        embeds: list[dict[str, Any]],
        flags: int,
        origin: str = "channel",
        interaction: tuple[int, StandinUser] | None = None,
        message_type: int = MESSAGE_TYPE_DEFAULT,
    ) -> StoredMessage:
        """Store a message; `interaction` is (interaction id, invoking user) for answers."""
        message = StoredMessage(
            id=self._ids.next(),
            channel_id=channel_id,
            guild_id=self.guild.id,
            author=author,
            content=content,
            attachments=attachments,
            embeds=embeds,
            flags=flags,
            created_at=time.monotonic(),
            type=message_type,
            origin=origin,
            interaction_id=None if interaction is None else interaction[0],
            interaction_user=None if interaction is None else interaction[1],
            application_id=self.application_id if origin != "channel" else None,
        )
        self.messages[message.id] = message
        return message

    def message_payload(self, message: StoredMessage) -> dict[str, Any]:
        return message.payload(viewer_id=self.bot_user.id)

    def message_event_payload(self, message: StoredMessage) -> dict[str, Any]:
        payload = self.message_payload(message)
        member = message.author.member_payload()
        del member["user"]
        payload["member"] = member
        return payload

    def record_command_sync(
        self, guild_id: int | None, commands: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        scope: dict[str, dict[str, Any]] = {}
        for command in commands:
            key = (guild_id, command["name"])
            # Discord keeps a command's id across re-syncs of the same name.
            command_id = self._command_ids.setdefault(key, self._ids.next())
            stored = {
                "type": 1,
                **command,
                "id": str(command_id),
                "application_id": str(self.application_id),
                "version": str(self._ids.next()),
                "default_member_permissions": command.get("default_member_permissions"),
            }
            if guild_id is not None:
                stored["guild_id"] = str(guild_id)
            scope[command["name"]] = stored
        self._commands[guild_id] = scope
        self.command_syncs.append((guild_id, sorted(scope), time.monotonic()))
        return list(scope.values())

    def synced_commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """Commands as last synced globally (guild_id None) or to a guild."""
        return list(self._commands.get(guild_id, {}).values())

    def _find_command(self, name: str) -> dict[str, Any] | None:
        for scope in (self.guild.id, None):
            command = self._commands.get(scope, {}).get(name)
            if command is not None:
                return command
        return None

    # ---- gateway -------------------------------------------------------------------------

    def _ready_payload(self, session: GatewaySession) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": 10,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(self.guild.id), "unavailable": True}],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "guild_join_requests": [],
            "user_settings": {},
            "auth": {},
        }
        shard = session.identify.get("shard")
        if shard is not None:
            payload["shard"] = shard
        return payload

    def _members_chunk(self, request: Mapping[str, Any]) -> dict[str, Any]:
        wanted = {int(uid) for uid in request.get("user_ids") or []}
        members = [
            member.member_payload()
            for member in self.guild.members.values()
            if not wanted or member.id in wanted
        ]
        chunk: dict[str, Any] = {
            "guild_id": str(self.guild.id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if request.get("nonce"):
            chunk["nonce"] = request["nonce"]
        return chunk

    @property
    def identify_count(self) -> int:
        return len(self.gateway.sessions)

    async def wait_until_connected(
        self, *, identifies: int = 1, timeout: float = 20.0
    ) -> GatewaySession:
        """Wait until the bot has identified `identifies` times in all and is connected."""

        def ready() -> GatewaySession | None:
            if self.identify_count < identifies:
                return None
            return self.gateway.active_session

        return await self.wait_for(
            ready,
            timeout=timeout,
            description=f"gateway session number {identifies} to be connected",
        )

    async def dispatch(self, event: str, data: dict[str, Any], *, timeout: float = 20.0) -> None:
        """Send a gateway event to the connected bot, waiting for it to be connected."""
        session = await self._connected_session(event, timeout=timeout)
        await self.gateway.dispatch_to(session, event, data)

    async def _connected_session(self, event: str, *, timeout: float = 20.0) -> GatewaySession:
        return await self.wait_for(
            lambda: self.gateway.active_session,
            timeout=timeout,
            description=f"a connected gateway session to dispatch {event}",
        )

    async def echo(self, event: str, data: dict[str, Any]) -> None:
        """The events Discord sends back about the bot's own actions (no waiting for a bot)."""
        session = self.gateway.active_session or (
            self.gateway.sessions[-1] if self.gateway.sessions else None
        )
        if session is not None:
            await self.gateway.dispatch_to(session, event, data)

    async def disconnect_gateway(self, code: int = 4000) -> None:
        """Close the bot's websocket; discord.py reconnects and RESUMEs for most codes."""
        await self.gateway.close_active(code)

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT, as Discord does before moving a session."""
        await self.gateway.send_op(OP_RECONNECT)

    # ---- acting as users -----------------------------------------------------------------

    def _user(self, user: StandinUser | str) -> StandinUser:
        if isinstance(user, StandinUser):
            return user
        try:
            return self.users[user]
        except KeyError:
            raise KeyError(f"no user {user!r}; have {sorted(self.users)}") from None

    async def send_slash_command(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: StandinUser | str = "alice",
        channel_id: int | None = None,
        attachments: Mapping[str, Mapping[str, Any]] | None = None,
        validate: bool = True,
    ) -> InteractionHandle:
        """Invoke /name as `user` and return a handle to watch the bot's answers.

        Attachment options take dicts from `add_cdn_file` (in `options` or `attachments`).
        With validate=True the command must have been synced and the options must satisfy its
        schema, as Discord's client enforces before anything reaches a bot.
        """
        author = self._user(user)
        channel = channel_id or self.channel_id
        given = {**(options or {}), **(attachments or {})}
        # "settings set" is the subcommand `set` of the command group `settings`.
        top, _, sub = name.partition(" ")
        command = self._find_command(top)
        if command is None and validate:
            raise InvalidInvocation(
                f"/{top} was never synced; guild commands: "
                f"{sorted(self._commands.get(self.guild.id, {}))}, "
                f"global: {sorted(self._commands.get(None, {}))}"
            )
        schema = command
        if sub and command is not None:
            schema = next((o for o in command.get("options", [])
                           if o["name"] == sub and o["type"] == SUB_COMMAND), None)
            if schema is None and validate:
                raise InvalidInvocation(f"/{top} has no subcommand {sub!r}")
        built = build_options(schema, given, validate=validate)
        data: dict[str, Any] = {
            "id": command["id"] if command else str(self._ids.next()),
            "name": top,
            "type": 1,
            "options": (
                [{"name": sub, "type": SUB_COMMAND, "options": built.options}] if sub
                else built.options
            ),
        }
        if built.resolved:
            data["resolved"] = built.resolved
        if command is not None and "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._interact(INTERACTION_COMMAND, data, author, channel, name)

    async def _interact(
        self,
        interaction_type: int,
        data: dict[str, Any],
        author: StandinUser,
        channel: int,
        name: str,
        *,
        message: StoredMessage | None = None,
    ) -> InteractionHandle:
        """Dispatch INTERACTION_CREATE as Discord does, and return a handle on its answers."""
        interaction_id = self._ids.next()
        token = f"interaction-token-{interaction_id}"
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": interaction_type,
            "token": token,
            "version": 1,
            "guild_id": str(self.guild.id),
            "guild": {"id": str(self.guild.id), "locale": "en-US", "features": []},
            "channel_id": str(channel),
            "channel": self.guild.channels[channel].payload(),
            "member": author.member_payload(permissions=self.guild.permissions_of(author)),
            "data": data,
            "app_permissions": str(self.guild.permissions_of(self.bot_user)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild.id)},
            "context": 0,
            "attachment_size_limit": self.attachment_size_limit,
        }
        if message is not None:
            payload["message"] = self.message_payload(message)
        handle = InteractionHandle(
            self,
            interaction_id=interaction_id,
            token=token,
            command_name=name,
            user=author,
            channel_id=channel,
            payload=payload,
            interaction_type=interaction_type,
            message_id=message.id if message is not None else None,
        )
        self.interactions.append(handle)
        self.interactions_by_token[token] = handle
        session = await self._connected_session("INTERACTION_CREATE")
        # Set before sending: an in-process bot may answer before the send returns.
        handle.dispatched_at = time.monotonic()
        await self.gateway.dispatch_to(session, "INTERACTION_CREATE", payload)
        return handle

    async def press_button(
        self, message_id: int, custom_id: str, user: StandinUser | str = "alice"
    ) -> InteractionHandle:
        """``user`` presses the button ``custom_id`` on a message: a component interaction
        (type 3) carrying the whole message, as Discord sends it. Only a button that is on the
        message and enabled can be pressed, as in Discord's client."""
        message = self._live_message(message_id)
        button = message.button(custom_id)
        if button is None:
            raise InvalidInvocation(
                f"message {message_id} has no button {custom_id!r}; it has "
                f"{[b.get('custom_id') for b in message.buttons()]}"
            )
        if button.get("disabled"):
            raise InvalidInvocation(f"button {custom_id!r} is disabled")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(INTERACTION_COMPONENT, data, self._user(user),
                                    message.channel_id, f"button {custom_id}", message=message)

    async def submit_modal(
        self,
        opened: InteractionHandle,
        values: Mapping[str, str],
        *,
        validate: bool = True,
    ) -> InteractionHandle:
        """The user who opened ``opened``'s modal submits it with these text input values (by
        custom_id): a modal submit interaction (type 5) whose components mirror the modal's.

        With validate=True, what Discord's client refuses (a required input left empty, a value
        beyond max_length or under min_length) raises InvalidInvocation instead.
        """
        modal = opened.modal
        if modal is None:
            raise InvalidInvocation(f"no modal was opened; {opened.describe()}")
        known: set[str] = set()

        def answer(item: dict[str, Any]) -> dict[str, Any]:
            custom_id = str(item["custom_id"])
            known.add(custom_id)
            value = str(values.get(custom_id, ""))
            if validate:
                if item.get("required", True) and not value:
                    raise InvalidInvocation(f"the modal's {custom_id!r} is required")
                if "max_length" in item and len(value) > int(item["max_length"]):
                    raise InvalidInvocation(
                        f"the modal's {custom_id!r} takes at most {item['max_length']} characters"
                    )
                if value and "min_length" in item and len(value) < int(item["min_length"]):
                    raise InvalidInvocation(
                        f"the modal's {custom_id!r} needs at least {item['min_length']} characters"
                    )
            return {"type": item["type"], "custom_id": custom_id, "value": value}

        rows: list[dict[str, Any]] = []
        for row in modal["components"]:
            if row.get("type") == 18:  # a label around one input
                rows.append({"type": 18, "component": answer(row["component"])})
            else:
                rows.append({"type": row.get("type", 1),
                             "components": [answer(i) for i in row.get("components", [])]})
        unknown = set(values) - known
        if unknown:
            raise InvalidInvocation(f"the modal has no input(s) {sorted(unknown)}")
        data = {"custom_id": modal["custom_id"], "components": rows}
        message = self.messages.get(opened.message_id) if opened.message_id else None
        return await self._interact(INTERACTION_MODAL_SUBMIT, data, opened.user,
                                    opened.channel_id, f"modal {modal['custom_id']}",
                                    message=message)

    def post_user_message(
        self,
        user: StandinUser | str,
        content: str,
        *,
        channel_id: int | None = None,
    ) -> StoredMessage:
        """A message by a user that the bot has never seen (no MESSAGE_CREATE is sent)."""
        return self.new_message(
            channel_id=channel_id or self.channel_id,
            author=self._user(user),
            content=content,
            attachments=[],
            embeds=[],
            flags=0,
        )

    async def react(
        self, message: StoredMessage, emoji: str, user: StandinUser, *, add: bool
    ) -> None:
        users = message.reactions.setdefault(emoji, [])
        changed = (user.id not in users) if add else (user.id in users)
        if not changed:
            return
        if add:
            users.append(user.id)
        else:
            users.remove(user.id)
            if not users:
                del message.reactions[emoji]
        event: dict[str, Any] = {
            "user_id": str(user.id),
            "channel_id": str(message.channel_id),
            "message_id": str(message.id),
            "guild_id": str(message.guild_id),
            "emoji": emoji_payload(emoji),
            "burst": False,
            "type": 0,
        }
        if add:
            event["member"] = user.member_payload()
            event["message_author_id"] = str(message.author.id)
            event["burst_colors"] = []
        name = "MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE"
        if user.id == self.bot_user.id:
            await self.echo(name, event)
        else:
            await self.dispatch(name, event)
        self.notify()

    def _live_message(self, message_id: int) -> StoredMessage:
        message = self.messages.get(message_id)
        if message is None or message.deleted:
            raise KeyError(f"no live message {message_id} in the stand-in")
        return message

    async def add_reaction(
        self, message_id: int, emoji: str, user: StandinUser | str = "alice"
    ) -> None:
        """`user` reacts; MESSAGE_REACTION_ADD reaches the bot even for an uncached message."""
        await self.react(self._live_message(message_id), emoji, self._user(user), add=True)

    async def remove_reaction(
        self, message_id: int, emoji: str, user: StandinUser | str = "alice"
    ) -> None:
        await self.react(self._live_message(message_id), emoji, self._user(user), add=False)

    async def delete_message(self, message_id: int, *, dispatch: bool = True) -> None:
        """A user (or moderator) deletes a message; later requests on it get 404 10008."""
        message = self._live_message(message_id)
        message.deleted = True
        if dispatch and not message.ephemeral:
            await self.echo(
                "MESSAGE_DELETE",
                {
                    "id": str(message.id),
                    "channel_id": str(message.channel_id),
                    "guild_id": str(message.guild_id),
                },
            )
        self.notify()

    # ---- faults --------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        times: int | None = 1,
        retry_after: float = 0.2,
        code: int | None = None,
        message: str | None = None,
        is_global: bool = False,
    ) -> FaultRule:
        """Answer the next `times` matching requests with `status` (times=None: until cleared).

        `path_regex` is searched in the API path without /api/v10 (e.g. r"/messages/\\d+$"),
        or "/cdn/..." for attachment downloads; `method` may be "*". A 429 carries
        `retry_after` in its body and Discord's rate-limit headers, Via included. Default
        error codes: 404 -> 10008 Unknown Message, 403 -> 50013 Missing Permissions.
        """
        rule = fault_rule(
            method,
            path_regex,
            status,
            times=times,
            retry_after=retry_after,
            code=code,
            message=message,
            is_global=is_global,
        )
        self._faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        self._faults.clear()

    def take_fault(self, record: RecordedRequest) -> FaultRule | None:
        for rule in self._faults:
            if rule.matches(record.method, record.path):
                rule.hits.append(record)
                return rule
        return None

    # ---- queries -------------------------------------------------------------------------

    def notify(self) -> None:
        self._changed.set()

    def message(self, message_id: int) -> StoredMessage:
        try:
            return self.messages[message_id]
        except KeyError:
            raise KeyError(f"the stand-in never saw message {message_id}") from None

    def messages_in(
        self,
        channel_id: int | None = None,
        *,
        include_ephemeral: bool = False,
        include_deleted: bool = False,
        author: StandinUser | None = None,
    ) -> list[StoredMessage]:
        """Messages in a channel (default: the first), oldest first."""
        channel = channel_id or self.channel_id
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel
            and (include_ephemeral or not m.ephemeral)
            and (include_deleted or not m.deleted)
            and (author is None or m.author.id == author.id)
        ]

    def bot_messages(self, channel_id: int | None = None) -> list[StoredMessage]:
        """Public messages the bot posted in the channel, oldest first."""
        return self.messages_in(channel_id, author=self.bot_user)

    def edits_of(self, message_id: int) -> list[MessageVersion]:
        """Each edit of the message (not its creation), with its stand-in monotonic time `at`."""
        return self.message(message_id).edits

    def requests_matching(self, method: str, path_regex: str) -> list[RecordedRequest]:
        import re

        pattern = re.compile(path_regex)
        return [
            r
            for r in self.requests
            if (method == "*" or r.method == method.upper()) and pattern.search(r.path)
        ]

    def describe_recent(self, count: int = 15) -> str:
        lines = [r.describe() for r in self.requests[-count:]]
        if self.unknown_requests:
            lines.append("unrouted: " + ", ".join(r.describe() for r in self.unknown_requests))
        return "\n  ".join(["recent requests:", *lines]) if lines else "no requests yet"

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        *,
        timeout: float = 10.0,
        description: str | Callable[[], str] = "a condition",
        interval: float = 0.02,
    ) -> T:
        """Poll `predicate` until it returns something truthy, and return that.

        On timeout, fail with what was awaited and the last requests the stand-in saw.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                what = description() if callable(description) else description
                raise AssertionError(
                    f"timed out after {timeout:.1f}s waiting for {what}\n  "
                    + self.describe_recent()
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(interval * 10, remaining))
