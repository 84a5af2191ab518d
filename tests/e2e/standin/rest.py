"""The REST half of the stand-in: routing, body parsing, recording and fault injection.

Every request under /api/v10 and /cdn goes through `RestApi.handle`, which records it, applies
any injected fault, then runs the matching route. Routes act on the stand-in's world and answer
with the JSON shapes Discord uses. An unknown route answers 404 and is kept in
`DiscordStandin.unknown_requests` so a test can spot what the bot asked for that we don't serve.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import discord
from aiohttp import web

from . import recording as errors
from .interactions import (
    ALLOWED_CALLBACKS,
    CALLBACK_DEFERRED,
    CALLBACK_MESSAGE,
    CALLBACK_MODAL,
    CALLBACK_UPDATE_MESSAGE,
    Callback,
)
from .model import (
    CHANNEL_TYPE_PUBLIC_THREAD,
    EPHEMERAL_FLAG,
    LOADING_FLAG,
    MESSAGE_TYPE_CHAT_INPUT_COMMAND,
    THREAD_TYPES,
    StoredAttachment,
    StoredMessage,
    guess_content_type,
)
from .recording import RecordedRequest, UploadedFile, error_body

if TYPE_CHECKING:
    from .interactions import InteractionHandle
    from .server import DiscordStandin

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
MAX_FILES_PER_MESSAGE = 10
MAX_CONTENT_LENGTH = 2000


class ApiError(Exception):
    """Raised inside a route to answer with Discord's error JSON."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # discord.py only parses JSON when the Content-Type is exactly application/json: no charset.
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)


def no_content() -> web.Response:
    return web.Response(status=204)


@dataclass
class Call:
    """One routed request: what was sent and the path parameters."""

    record: RecordedRequest
    params: dict[str, str]

    @property
    def body(self) -> dict[str, Any]:
        return self.record.json if isinstance(self.record.json, dict) else {}


Handler = Callable[[Call], Awaitable[web.Response]]

_SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


class RestApi:
    def __init__(self, standin: DiscordStandin) -> None:
        self.s = standin
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        route = self._add
        route("GET", r"/users/@me", self.get_me)
        route("GET", r"/users/(?P<user>\d+)", self.get_user)
        route("POST", r"/users/@me/channels", self.create_dm)
        route("GET", r"/oauth2/applications/@me", self.get_application)
        route("GET", r"/applications/@me", self.get_application)
        route("GET", r"/gateway", self.get_gateway)
        route("GET", r"/gateway/bot", self.get_gateway_bot)
        route("PUT", r"/applications/(?P<app>\d+)/commands", self.put_commands)
        route(
            "PUT", r"/applications/(?P<app>\d+)/guilds/(?P<guild>\d+)/commands", self.put_commands
        )
        route("GET", r"/applications/(?P<app>\d+)/commands", self.get_commands)
        route(
            "GET", r"/applications/(?P<app>\d+)/guilds/(?P<guild>\d+)/commands", self.get_commands
        )
        route("GET", r"/channels/(?P<channel>\d+)", self.get_channel)
        route("DELETE", r"/channels/(?P<channel>\d+)", self.delete_channel)
        route("POST", r"/channels/(?P<channel>\d+)/typing", self.typing)
        route("POST", r"/channels/(?P<channel>\d+)/threads", self.create_thread)
        route("GET", r"/channels/(?P<channel>\d+)/messages", self.list_messages)
        route("POST", r"/channels/(?P<channel>\d+)/messages", self.create_message)
        message = r"/channels/(?P<channel>\d+)/messages/(?P<message>\d+)"
        route("GET", message, self.get_message)
        route("PATCH", message, self.edit_message)
        route("DELETE", message, self.delete_message)
        reactions = message + r"/reactions"
        route("PUT", reactions + r"/(?P<emoji>[^/]+)/@me", self.add_own_reaction)
        route("DELETE", reactions + r"/(?P<emoji>[^/]+)/(?P<user>@me|\d+)", self.remove_reaction)
        route("DELETE", reactions + r"/(?P<emoji>[^/]+)", self.clear_emoji)
        route("DELETE", reactions, self.clear_reactions)
        route("GET", reactions + r"/(?P<emoji>[^/]+)", self.list_reactors)
        route("GET", r"/guilds/(?P<guild>\d+)", self.get_guild)
        route("GET", r"/guilds/(?P<guild>\d+)/channels", self.get_guild_channels)
        route("GET", r"/guilds/(?P<guild>\d+)/roles", self.get_guild_roles)
        route("GET", r"/guilds/(?P<guild>\d+)/members/(?P<user>\d+)", self.get_member)
        route(
            "POST",
            r"/interactions/(?P<interaction>\d+)/(?P<token>[^/]+)/callback",
            self.interaction_callback,
        )
        webhook = r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)"
        route("POST", webhook, self.create_followup)
        webhook_message = webhook + r"/messages/(?P<message>@original|\d+)"
        route("GET", webhook_message, self.get_webhook_message)
        route("PATCH", webhook_message, self.edit_webhook_message)
        route("DELETE", webhook_message, self.delete_webhook_message)
        route(
            "GET",
            r"/cdn/attachments/(?P<channel>\d+)/(?P<attachment>\d+)/(?P<filename>[^/]+)",
            self.cdn_download,
        )

    def _add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern + r"\Z"), handler.__name__, handler))

    # ---- the one entry point -------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        path = raw_path[len(API_PREFIX) :] if raw_path.startswith(API_PREFIX) else raw_path
        # Match on raw segments, then decode each parameter: emoji arrive percent-encoded.
        record = RecordedRequest(
            seq=len(self.s.requests) + 1,
            at=time.monotonic(),
            method=request.method,
            path=unquote(path),
            query=dict(request.query),
            json=None,
            files=[],
        )
        self.s.requests.append(record)
        try:
            await self._read_body(request, record)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._finish(
                record,
                json_response(
                    error_body(400, errors.INVALID_FORM_BODY, f"unreadable body: {exc}"), 400
                ),
            )

        fault = self.s.take_fault(record)
        if fault is not None:
            record.injected_fault = True
            return self._finish(record, json_response(fault.body, fault.status, fault.headers))

        for method, pattern, name, handler in self._routes:
            match = pattern.match(path)
            if match is None or method != request.method:
                continue
            record.route = name
            params = {key: unquote(value) for key, value in match.groupdict().items()}
            try:
                response = await handler(Call(record=record, params=params))
            except ApiError as exc:
                response = json_response(error_body(exc.status, exc.code, exc.message), exc.status)
            return self._finish(record, response)

        self.s.unknown_requests.append(record)
        logger.warning("stand-in has no route for %s %s", request.method, path)
        return self._finish(
            record,
            json_response(
                error_body(
                    404, 0, f"404: Not Found (stand-in has no route for {request.method} {path})"
                ),
                404,
            ),
        )

    def _finish(self, record: RecordedRequest, response: web.StreamResponse) -> web.StreamResponse:
        record.status = response.status
        self.s.notify()
        return response

    @staticmethod
    async def _read_body(request: web.Request, record: RecordedRequest) -> None:
        if not request.body_exists:
            return
        content_type = request.content_type
        if content_type == "application/json":
            record.json = json.loads(await request.text())
        elif content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    record.json = json.loads(await part.text())
                elif part.filename is not None:
                    record.files.append(
                        UploadedFile(
                            field=part.name or "",
                            filename=part.filename,
                            content_type=part.headers.get(
                                "Content-Type", "application/octet-stream"
                            ),
                            data=bytes(await part.read(decode=False)),
                        )
                    )
        else:
            record.json = (await request.read()).decode()

    # ---- identity and gateway ------------------------------------------------------------

    async def get_me(self, call: Call) -> web.Response:
        return json_response({**self.s.bot_user.payload(), "verified": True, "mfa_enabled": False})

    async def get_user(self, call: Call) -> web.Response:
        user = self.s.find_user(int(call.params["user"]))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(user.payload())

    async def get_application(self, call: Call) -> web.Response:
        return json_response(
            {
                "id": str(self.s.application_id),
                "name": self.s.bot_user.name,
                "icon": None,
                "description": "faraday under test",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.s.owner.payload(),
                "team": None,
                "verify_key": "0" * 64,
                "flags": 0,
                "interactions_endpoint_url": None,
                "bot": self.s.bot_user.payload(),
            }
        )

    async def get_gateway(self, call: Call) -> web.Response:
        return json_response({"url": self.s.gateway_url})

    async def get_gateway_bot(self, call: Call) -> web.Response:
        return json_response(
            {
                "url": self.s.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    # ---- application commands ------------------------------------------------------------

    def _check_app(self, call: Call) -> None:
        if int(call.params["app"]) != self.s.application_id:
            raise ApiError(403, 50001, "Missing Access")

    async def put_commands(self, call: Call) -> web.Response:
        self._check_app(call)
        guild_id = int(call.params["guild"]) if "guild" in call.params else None
        if guild_id is not None and guild_id != self.s.guild.id:
            raise ApiError(403, 50001, "Missing Access")
        if not isinstance(call.record.json, list):
            raise ApiError(400, errors.INVALID_FORM_BODY, "expected a list of commands")
        return json_response(self.s.record_command_sync(guild_id, call.record.json))

    async def get_commands(self, call: Call) -> web.Response:
        self._check_app(call)
        guild_id = int(call.params["guild"]) if "guild" in call.params else None
        return json_response(self.s.synced_commands(guild_id))

    # ---- guild and channels --------------------------------------------------------------

    async def create_direct_message(self, call: Call) -> web.Response:
        """A message in a DM channel: no guild permissions apply, and no gateway echo."""
        channel_id = int(call.params["channel"])
        content, embeds, attachments = self._compose(call, channel_id, call.body)
        message = self.s.new_message(channel_id=channel_id, author=self.s.bot_user,
                                     content=content, attachments=attachments, embeds=embeds,
                                     flags=0)
        return json_response(self.s.message_payload(message))

    def _channel(self, call: Call) -> int:
        channel_id = int(call.params["channel"])
        if channel_id not in self.s.guild.channels:
            raise ApiError(404, errors.UNKNOWN_CHANNEL, "Unknown Channel")
        return channel_id

    def _guild(self, call: Call) -> None:
        if int(call.params["guild"]) != self.s.guild.id:
            raise ApiError(404, 10004, "Unknown Guild")

    async def get_channel(self, call: Call) -> web.Response:
        return json_response(self.s.guild.channels[self._channel(call)].payload())

    async def delete_channel(self, call: Call) -> web.Response:
        """Deleting a thread needs Manage Threads, a channel Manage Channels (as on Discord);
        its messages go with it."""
        channel = self.s.guild.channels[self._channel(call)]
        self._require("manage_threads" if channel.is_thread else "manage_channels")
        payload = channel.payload()
        del self.s.guild.channels[channel.id]
        for message in self.s.messages.values():
            if message.channel_id == channel.id:
                message.deleted = True
        if channel.is_thread:
            await self.s.echo("THREAD_DELETE", {
                "id": str(channel.id), "guild_id": str(channel.guild_id),
                "parent_id": str(channel.parent_id), "type": channel.type,
            })
        else:
            await self.s.echo("CHANNEL_DELETE", payload)
        self.s.notify()
        return json_response(payload)

    async def typing(self, call: Call) -> web.Response:
        self._channel(call)
        return no_content()

    async def get_guild(self, call: Call) -> web.Response:
        self._guild(call)
        payload = self.s.guild.payload()
        for key in ("members", "channels", "threads", "presences", "voice_states"):
            payload.pop(key)
        return json_response(payload)

    async def get_guild_channels(self, call: Call) -> web.Response:
        self._guild(call)
        return json_response([c.payload() for c in self.s.guild.channels.values()])

    async def get_guild_roles(self, call: Call) -> web.Response:
        self._guild(call)
        return json_response([r.payload() for r in self.s.guild.roles.values()])

    async def get_member(self, call: Call) -> web.Response:
        self._guild(call)
        member = self.s.guild.members.get(int(call.params["user"]))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(member.member_payload())

    # ---- channel messages ----------------------------------------------------------------

    def _require(self, permission: str) -> None:
        if not getattr(self.s.bot_permissions, permission):
            raise ApiError(403, errors.MISSING_PERMISSIONS, "Missing Permissions")

    def _channel_message(self, call: Call) -> StoredMessage:
        channel_id = self._channel(call)
        message = self.s.messages.get(int(call.params["message"]))
        if (
            message is None
            or message.deleted
            or message.ephemeral
            or message.channel_id != channel_id
        ):
            raise ApiError(404, errors.UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def list_messages(self, call: Call) -> web.Response:
        channel_id = self._channel(call)
        self._require("read_message_history")
        query = call.record.query
        limit = int(query.get("limit", 50))
        visible = self.s.messages_in(channel_id)
        if "before" in query:
            visible = [m for m in visible if m.id < int(query["before"])]
        if "after" in query:
            visible = [m for m in visible if m.id > int(query["after"])]
        newest_first = list(reversed(visible))[:limit]
        return json_response([self.s.message_payload(m) for m in newest_first])

    async def create_dm(self, call: Call) -> web.Response:
        user = self.s.find_user(int(call.body.get("recipient_id") or 0))
        if user is None:
            raise ApiError(400, errors.INVALID_FORM_BODY, "recipient_id: unknown user")
        channel_id = self.s.open_dm(user)
        return json_response({"id": str(channel_id), "type": 1, "last_message_id": None,
                              "recipients": [user.payload()]})

    async def create_message(self, call: Call) -> web.Response:
        if int(call.params["channel"]) in self.s.dm_channels:
            return await self.create_direct_message(call)
        channel_id = self._channel(call)
        self._require("send_messages")
        if call.record.files:
            self._require("attach_files")
        content, embeds, attachments = self._compose(call, channel_id, call.body)
        message = self.s.new_message(
            channel_id=channel_id,
            author=self.s.bot_user,
            content=content,
            attachments=attachments,
            embeds=embeds,
            flags=int(call.body.get("flags") or 0) & ~EPHEMERAL_FLAG,
        )
        message.components = self._components(call.body)
        await self.s.echo("MESSAGE_CREATE", self.s.message_event_payload(message))
        return json_response(self.s.message_payload(message))

    async def create_thread(self, call: Call) -> web.Response:
        """A thread not started from a message (discord.py's ``TextChannel.create_thread``)."""
        channel_id = self._channel(call)
        parent = self.s.guild.channels[channel_id]
        if parent.is_thread:
            raise ApiError(400, errors.INVALID_FORM_BODY, "Cannot create a thread in a thread")
        thread_type = int(call.body.get("type") or CHANNEL_TYPE_PUBLIC_THREAD)
        if thread_type not in THREAD_TYPES:
            raise ApiError(400, errors.INVALID_FORM_BODY, f"type: {thread_type} is not a thread")
        self._require("create_public_threads" if thread_type == CHANNEL_TYPE_PUBLIC_THREAD
                      else "create_private_threads")
        name = str(call.body.get("name") or "")
        if not 1 <= len(name) <= 100:
            raise ApiError(400, errors.INVALID_FORM_BODY, "name: Must be 1 to 100 characters")
        thread = self.s.add_thread(name, parent_id=channel_id, thread_type=thread_type)
        await self.s.echo("THREAD_CREATE", {**thread.payload(), "newly_created": True})
        return json_response(thread.payload())

    @staticmethod
    def _components(body: dict[str, Any]) -> list[dict[str, Any]]:
        components = body.get("components") or []
        if len(components) > 5:
            raise ApiError(400, errors.INVALID_FORM_BODY, "components: at most 5 action rows")
        for row in components:
            items = row.get("components") or []
            if row.get("type") == 1 and len(items) > 5:
                raise ApiError(400, errors.INVALID_FORM_BODY,
                               "components: at most 5 components per action row")
            for item in items:
                if len(str(item.get("custom_id") or "")) > 100:
                    raise ApiError(400, errors.INVALID_FORM_BODY,
                                   "custom_id: Must be 100 or fewer in length.")
        return [dict(row) for row in components]

    async def get_message(self, call: Call) -> web.Response:
        self._require("read_message_history")
        return json_response(self.s.message_payload(self._channel_message(call)))

    async def edit_message(self, call: Call) -> web.Response:
        message = self._channel_message(call)
        if message.author.id != self.s.bot_user.id:
            raise ApiError(
                403,
                errors.CANNOT_EDIT_OTHERS_MESSAGE,
                "Cannot edit a message authored by another user",
            )
        if call.record.files:
            self._require("attach_files")
        self._apply_edit(message, call)
        await self.s.echo("MESSAGE_UPDATE", self.s.message_event_payload(message))
        return json_response(self.s.message_payload(message))

    async def delete_message(self, call: Call) -> web.Response:
        message = self._channel_message(call)
        if message.author.id != self.s.bot_user.id:
            self._require("manage_messages")
        await self.s.delete_message(message.id)
        return no_content()

    # ---- reactions -----------------------------------------------------------------------

    async def add_own_reaction(self, call: Call) -> web.Response:
        message = self._channel_message(call)
        self._require("read_message_history")
        if call.params["emoji"] not in message.reactions:
            # Adding a new emoji needs Add Reactions; joining an existing one does not.
            self._require("add_reactions")
        await self.s.react(message, call.params["emoji"], self.s.bot_user, add=True)
        return no_content()

    async def remove_reaction(self, call: Call) -> web.Response:
        message = self._channel_message(call)
        user_param = call.params["user"]
        user_id = self.s.bot_user.id if user_param == "@me" else int(user_param)
        if user_id != self.s.bot_user.id:
            self._require("manage_messages")
        user = self.s.find_user(user_id)
        if user is not None:
            await self.s.react(message, call.params["emoji"], user, add=False)
        return no_content()

    async def clear_emoji(self, call: Call) -> web.Response:
        message = self._channel_message(call)
        self._require("manage_messages")
        message.reactions.pop(call.params["emoji"], None)
        return no_content()

    async def clear_reactions(self, call: Call) -> web.Response:
        message = self._channel_message(call)
        self._require("manage_messages")
        message.reactions.clear()
        return no_content()

    async def list_reactors(self, call: Call) -> web.Response:
        message = self._channel_message(call)
        users = [self.s.find_user(uid) for uid in message.reactors(call.params["emoji"])]
        return json_response([u.payload() for u in users if u is not None])

    # ---- interactions and their webhooks ---------------------------------------------------

    def _interaction(self, interaction_id: int | None, token: str) -> InteractionHandle:
        handle = self.s.interactions_by_token.get(token)
        if handle is None or (interaction_id is not None and handle.id != interaction_id):
            raise ApiError(404, errors.UNKNOWN_INTERACTION, "Unknown interaction")
        return handle

    async def interaction_callback(self, call: Call) -> web.Response:
        handle = self._interaction(int(call.params["interaction"]), call.params["token"])
        if handle.callback is not None:
            raise ApiError(
                400,
                errors.INTERACTION_ALREADY_ACKNOWLEDGED,
                "Interaction has already been acknowledged.",
            )
        callback_type = int(call.body.get("type", 0))
        if callback_type not in ALLOWED_CALLBACKS.get(handle.interaction_type, frozenset()):
            raise ApiError(
                400, errors.INVALID_FORM_BODY,
                f"type: callback type {callback_type} cannot answer an interaction of type "
                f"{handle.interaction_type}",
            )
        data = dict(call.body.get("data") or {})
        callback = Callback(type=callback_type, data=data, at=call.record.at)
        deadline = self.s.ack_deadline
        if (
            deadline is not None
            and handle.dispatched_at is not None
            and callback.at - handle.dispatched_at > deadline
        ):
            handle.late_callback = callback
            raise ApiError(404, errors.UNKNOWN_INTERACTION, "Unknown interaction")
        message: StoredMessage | None = None
        updated: StoredMessage | None = None
        if callback_type in (CALLBACK_MESSAGE, CALLBACK_DEFERRED):
            ephemeral = int(data.get("flags") or 0) & EPHEMERAL_FLAG
            if callback_type == CALLBACK_MESSAGE:
                content, embeds, attachments = self._compose(call, handle.channel_id, data)
                flags = ephemeral
            else:
                content, embeds, attachments = "", [], []
                flags = ephemeral | LOADING_FLAG
            message = self.s.new_message(
                channel_id=handle.channel_id,
                author=self.s.bot_user,
                content=content,
                attachments=attachments,
                embeds=embeds,
                flags=flags,
                origin="interaction",
                interaction=(handle.id, handle.user),
                message_type=MESSAGE_TYPE_CHAT_INPUT_COMMAND,
            )
            message.components = self._components(data)
            handle.original = message
        elif callback_type == CALLBACK_MODAL:
            if not data.get("custom_id") or not data.get("title") or not data.get("components"):
                raise ApiError(400, errors.INVALID_FORM_BODY,
                               "a modal needs custom_id, title and components")
            if len(str(data["title"])) > 45:
                raise ApiError(400, errors.INVALID_FORM_BODY, "title: Must be 45 or fewer.")
            handle.modal = data
        elif callback_type == CALLBACK_UPDATE_MESSAGE and handle.message_id is not None:
            updated = self.s.messages.get(handle.message_id)
            if updated is not None:
                self._apply_edit(updated, call, body=data)
        # Recorded only once accepted: a refused callback leaves the interaction unanswered.
        handle.callback = callback
        if message is not None and not message.ephemeral:
            await self.s.echo("MESSAGE_CREATE", self.s.message_event_payload(message))
        if updated is not None and not updated.ephemeral:
            await self.s.echo("MESSAGE_UPDATE", self.s.message_event_payload(updated))
        interaction: dict[str, Any] = {
            "id": str(handle.id),
            "type": handle.interaction_type,
            "response_message_loading": callback_type == CALLBACK_DEFERRED,
            "response_message_ephemeral": bool(message is not None and message.ephemeral),
        }
        body: dict[str, Any] = {"interaction": interaction, "resource": {"type": callback_type}}
        if message is not None:
            interaction["response_message_id"] = str(message.id)
            body["resource"]["message"] = self.s.message_payload(message)
        return json_response(body)

    def _webhook(self, call: Call) -> InteractionHandle:
        if int(call.params["app"]) != self.s.application_id:
            raise ApiError(404, errors.UNKNOWN_WEBHOOK, "Unknown Webhook")
        handle = self.s.interactions_by_token.get(call.params["token"])
        if handle is None or handle.callback is None:
            # Followups and @original exist only once the interaction was acknowledged.
            raise ApiError(404, errors.UNKNOWN_WEBHOOK, "Unknown Webhook")
        return handle

    async def create_followup(self, call: Call) -> web.Response:
        handle = self._webhook(call)
        original = handle.original
        if original is not None and original.loading and not original.deleted:
            # The first followup after a deferral replaces the "thinking..." message and keeps
            # the deferral's ephemeral flag, whatever flags the followup asks for.
            self._apply_edit(original, call, clear_loading=True)
            handle.followups.append(original)
            message = original
            event = "MESSAGE_UPDATE"
        else:
            content, embeds, attachments = self._compose(call, handle.channel_id, call.body)
            message = self.s.new_message(
                channel_id=handle.channel_id,
                author=self.s.bot_user,
                content=content,
                attachments=attachments,
                embeds=embeds,
                flags=int(call.body.get("flags") or 0) & EPHEMERAL_FLAG,
                origin="followup",
                interaction=(handle.id, handle.user),
                message_type=MESSAGE_TYPE_CHAT_INPUT_COMMAND,
            )
            message.components = self._components(call.body)
            handle.followups.append(message)
            event = "MESSAGE_CREATE"
        if not message.ephemeral:
            await self.s.echo(event, self.s.message_event_payload(message))
        if call.record.query.get("wait", "").lower() not in ("true", "1"):
            return no_content()
        return json_response(self.s.message_payload(message))

    def _webhook_message(self, call: Call) -> tuple[InteractionHandle, StoredMessage]:
        handle = self._webhook(call)
        wanted = call.params["message"]
        if wanted == "@original":
            message = handle.original
        else:
            message = next((m for m in handle.followups if m.id == int(wanted)), None)
            if (
                message is None
                and handle.original is not None
                and handle.original.id == int(wanted)
            ):
                message = handle.original
        if message is None or message.deleted:
            raise ApiError(404, errors.UNKNOWN_MESSAGE, "Unknown Message")
        return handle, message

    async def get_webhook_message(self, call: Call) -> web.Response:
        _, message = self._webhook_message(call)
        return json_response(self.s.message_payload(message))

    async def edit_webhook_message(self, call: Call) -> web.Response:
        _, message = self._webhook_message(call)
        self._apply_edit(message, call, clear_loading=True)
        if not message.ephemeral:
            await self.s.echo("MESSAGE_UPDATE", self.s.message_event_payload(message))
        return json_response(self.s.message_payload(message))

    async def delete_webhook_message(self, call: Call) -> web.Response:
        _, message = self._webhook_message(call)
        await self.s.delete_message(message.id, dispatch=not message.ephemeral)
        return no_content()

    # ---- the fake CDN --------------------------------------------------------------------

    async def cdn_download(self, call: Call) -> web.Response:
        attachment = self.s.cdn_files.get(int(call.params["attachment"]))
        if attachment is None or attachment.filename != call.params["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=attachment.data, headers={"Content-Type": attachment.content_type})

    # ---- message bodies ------------------------------------------------------------------

    @staticmethod
    def _content(body: dict[str, Any]) -> str:
        content = body.get("content")
        content = "" if content is None else str(content)
        if len(content) > MAX_CONTENT_LENGTH:
            raise ApiError(
                400,
                errors.INVALID_FORM_BODY,
                f"content: Must be {MAX_CONTENT_LENGTH} or fewer in length.",
            )
        return content

    def _compose(
        self,
        call: Call,
        channel_id: int,
        body: dict[str, Any],
        *,
        base: StoredMessage | None = None,
    ) -> tuple[str, list[dict[str, Any]], list[StoredAttachment]]:
        """Content, embeds and attachments after this request (on top of `base` for an edit).

        Refuses what Discord refuses before anything is stored: an empty message, too long a
        text, too many or too large files.
        """
        if base is None:
            content, embeds, existing = self._content(body), list(body.get("embeds") or []), []
        else:
            content = self._content(body) if "content" in body else base.content
            embeds = list(body.get("embeds") or []) if "embeds" in body else base.embeds
            existing = base.attachments
        attachments = self._attachments(call, channel_id, existing=existing, body=body)
        if attachments is None:
            attachments = list(existing)
        if not (content or embeds or attachments):
            raise ApiError(400, 50006, "Cannot send an empty message")
        return content, embeds, attachments

    def _apply_edit(
        self,
        message: StoredMessage,
        call: Call,
        *,
        clear_loading: bool = False,
        body: dict[str, Any] | None = None,
    ) -> None:
        body = call.body if body is None else body
        content, embeds, attachments = self._compose(call, message.channel_id, body, base=message)
        message.content, message.embeds, message.attachments = content, embeds, attachments
        if "components" in body:
            # An empty list removes every button; leaving the key out keeps them.
            message.components = self._components(body)
        if clear_loading:
            message.flags &= ~LOADING_FLAG
        message.record_edit(call.record.at)

    def _attachments(
        self,
        call: Call,
        channel_id: int,
        *,
        existing: list[StoredAttachment],
        body: dict[str, Any] | None = None,
    ) -> list[StoredAttachment] | None:
        """The message's attachments after this request, or None when it leaves them alone.

        An `attachments` list names what the message keeps: an id of an existing attachment
        keeps it, a small index refers to the upload `files[index]`. Without the list, every
        upload is added in order.
        """
        body = call.body if body is None else body
        uploads: dict[int, UploadedFile] = {}
        for upload in call.record.files:
            match = re.fullmatch(r"files\[(\d+)\]", upload.field)
            uploads[int(match.group(1)) if match else len(uploads)] = upload
        entries = body.get("attachments")
        if entries is None:
            if not uploads:
                return None
            entries = [{"id": index} for index in sorted(uploads)]
        by_id = {str(a.id): a for a in existing}
        result: list[StoredAttachment] = []
        for entry in entries:
            key = str(entry.get("id"))
            if key in by_id:
                result.append(by_id[key])
            elif key.isdigit() and int(key) in uploads:
                upload = uploads[int(key)]
                result.append(
                    self.s.store_upload(
                        channel_id=channel_id,
                        filename=entry.get("filename") or upload.filename,
                        data=upload.data,
                        description=entry.get("description"),
                    )
                )
            else:
                raise ApiError(
                    400,
                    errors.INVALID_FORM_BODY,
                    f"attachments: unknown attachment id or file index {key}",
                )
        if len(result) > MAX_FILES_PER_MESSAGE:
            raise ApiError(
                400,
                errors.INVALID_FORM_BODY,
                f"attachments: at most {MAX_FILES_PER_MESSAGE} files per message",
            )
        limit = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        if any(a.size > limit for a in result):
            raise ApiError(413, 40005, "Request entity too large")
        return result


def safe_filename(filename: str) -> str:
    """Discord rewrites characters outside a small set in uploaded file names."""
    cleaned = _SAFE_FILENAME.sub("_", filename) or "file"
    return cleaned


def content_type_for(filename: str) -> str:
    return guess_content_type(filename)
