"""The gateway websocket: HELLO, IDENTIFY -> READY -> GUILD_CREATE, heartbeats, RESUME, dispatch.

Frames go out as uncompressed JSON text; discord.py asks for zlib-stream in the URL but reads
text frames as they are.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

logger = logging.getLogger(__name__)

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE = 3
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

CLOSE_AUTHENTICATION_FAILED = 4004


@dataclass
class GatewaySession:
    """One identified session; it outlives its websocket so a RESUME can replay what was missed."""

    session_id: str
    identify: dict[str, Any]
    identified_at: float
    socket: web.WebSocketResponse | None = None
    seq: int = 0
    # Every dispatch in order (seq, frame) for replay on RESUME.
    sent: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    resumed_count: int = 0

    @property
    def connected(self) -> bool:
        return self.socket is not None and not self.socket.closed

    @property
    def intents(self) -> int:
        return int(self.identify.get("intents", 0))


class GatewayHub:
    """Accepts websocket connections and keeps the sessions; the stand-in dispatches through it."""

    def __init__(
        self,
        *,
        token: Callable[[], str],
        ready_payload: Callable[[GatewaySession], dict[str, Any]],
        guild_payloads: Callable[[], list[dict[str, Any]]],
        members_chunk: Callable[[dict[str, Any]], dict[str, Any]],
        resume_url: Callable[[], str],
        heartbeat_interval_ms: int,
        on_change: Callable[[], None],
    ) -> None:
        self._token = token
        self._ready_payload = ready_payload
        self._guild_payloads = guild_payloads
        self._members_chunk = members_chunk
        self._resume_url = resume_url
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._on_change = on_change
        self.sessions: list[GatewaySession] = []
        self.connection_count = 0
        self.heartbeats = 0
        self.received: list[dict[str, Any]] = []
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def active_session(self) -> GatewaySession | None:
        """The newest session whose websocket is open: where dispatches go."""
        for session in reversed(self.sessions):
            if session.connected:
                return session
        return None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await socket.prepare(request)
        self._sockets.add(socket)
        self.connection_count += 1
        self._on_change()
        session: GatewaySession | None = None
        try:
            await self._send(
                socket,
                {
                    "op": OP_HELLO,
                    "d": {"heartbeat_interval": self._heartbeat_interval_ms},
                    "s": None,
                    "t": None,
                },
            )
            async for message in socket:
                if message.type is not WSMsgType.TEXT:
                    if message.type is WSMsgType.ERROR:
                        break
                    continue
                frame = json.loads(message.data)
                self.received.append(frame)
                session = await self._on_frame(socket, session, frame)
        finally:
            self._sockets.discard(socket)
            if session is not None and session.socket is socket:
                session.socket = None
            self._on_change()
        return socket

    async def _on_frame(
        self,
        socket: web.WebSocketResponse,
        session: GatewaySession | None,
        frame: dict[str, Any],
    ) -> GatewaySession | None:
        op = frame.get("op")
        data = frame.get("d")
        if op == OP_HEARTBEAT:
            self.heartbeats += 1
            await self._send(socket, {"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == OP_IDENTIFY:
            if data.get("token") != self._token():
                await socket.close(
                    code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed."
                )
                return None
            session = GatewaySession(
                session_id=f"standin-session-{len(self.sessions) + 1}",
                identify=data,
                identified_at=time.monotonic(),
                socket=socket,
            )
            self.sessions.append(session)
            await self.dispatch_to(session, "READY", self._ready_payload(session))
            for guild in self._guild_payloads():
                await self.dispatch_to(session, "GUILD_CREATE", guild)
            self._on_change()
        elif op == OP_RESUME:
            session = self._resume(socket, data)
            if session is None:
                # Not resumable: discord.py then starts over with IDENTIFY.
                await self._send(
                    socket, {"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None}
                )
                return None
            missed = [frame for seq, frame in session.sent if seq > int(data.get("seq") or 0)]
            for missed_frame in missed:
                await self._send(socket, missed_frame)
            await self.dispatch_to(session, "RESUMED", {})
            self._on_change()
        elif op == OP_REQUEST_MEMBERS and session is not None:
            await self.dispatch_to(session, "GUILD_MEMBERS_CHUNK", self._members_chunk(data))
        # Presence updates and anything else are recorded in self.received and not answered.
        return session

    def _resume(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        if data.get("token") != self._token():
            return None
        for session in self.sessions:
            if session.session_id == data.get("session_id"):
                session.socket = socket
                session.resumed_count += 1
                return session
        return None

    async def dispatch_to(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data}
        session.sent.append((session.seq, frame))
        if session.socket is not None and not session.socket.closed:
            try:
                await self._send(session.socket, frame)
            except ConnectionResetError:
                # Kept in session.sent; a RESUME replays it.
                logger.debug("gateway socket went away while sending %s", event)

    async def send_op(self, op: int, data: Any = None) -> None:
        session = self.active_session
        if session is not None and session.socket is not None:
            await self._send(session.socket, {"op": op, "d": data, "s": None, "t": None})

    async def close_active(self, code: int) -> None:
        session = self.active_session
        if session is not None and session.socket is not None:
            await session.socket.close(code=code)

    async def close_all(self) -> None:
        for socket in list(self._sockets):
            await socket.close(code=1001)

    @staticmethod
    async def _send(socket: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        await socket.send_str(json.dumps(frame))
