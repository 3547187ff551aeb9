"""The demo served by ``riverside-trio serve`` when no handler is named.

Open ``http://127.0.0.1:8000/`` for its chat page (``_static/demo.html``, on the browser
client ``/riverside.js``), or speak its JSON with any WebSocket client, e.g.
``python -m websockets ws://127.0.0.1:8000/ws``::

    < {"type":"welcome","user":"3f2a...","help":"..."}
    > {"type": "join", "channel": "lobby"}
    < {"type":"joined","channel":"lobby"}
    > {"type": "say", "channel": "lobby", "text": "hi"}
    < {"type":"said","channel":"lobby","from":"3f2a...","text":"hi"}
    > {"type": "dm", "to": "bob", "text": "psst"}
    < {"type":"dm","from":"3f2a...","to":"bob","text":"psst"}
    > {"anything": "else"}
    < {"anything":"else"}
    > hello
    < {"type":"error","error":"not_json","message":"...","help":"..."}

A client is anonymous (a random user id) unless it connects with ``?user=NAME``; with a JWT
key configured, its token says who it is (``?user=`` is ignored).
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from ._values import Accept, AuthRequest, HTTPRequest, HTTPResponse, TerminateReason
from ._values import new_session_id as _random_id
from .codecs import JSONCodec
from .errors import AuthError, CodecError, RequestError
from .rpc._router import RPCHandler, request

if TYPE_CHECKING:
    from .server._connection import Connection

__all__ = ["DemoHandler"]

HELP = (
    'Send JSON text. Rooms: {"type": "join", "channel": "lobby"}, '
    '{"type": "say", "channel": "lobby", "text": "hi"}, {"type": "leave", "channel": "lobby"}. '
    'A direct message: {"type": "dm", "to": "<user>", "text": "psst"}. '
    'Anything without a "type" (or of type "echo") comes back unchanged. '
    'Requests: {"$": "req", "id": 1, "name": "who", "data": "lobby"} (also "join", "leave", '
    '"hello"). Connect with ?user=<name> to choose your name; the chat page is at /.'
)

_USAGE = {
    "join": '{"type": "join", "channel": "<room>"}',
    "leave": '{"type": "leave", "channel": "<room>"}',
    "say": '{"type": "say", "channel": "<room>", "text": "<text>"}',
    "dm": '{"type": "dm", "to": "<user>", "text": "<text>"}',
}

_NAME = re.compile(r"[\w.\-]{1,32}")
_ROOM = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_PRESENCE = "presence:"  # the companion channel of room R, "presence:R", carries its signals
_MAX_REMEMBERED = 10_000  # sessions whose rooms the demo remembers (the oldest are forgotten)


@functools.cache
def demo_page() -> bytes:
    """The chat page's HTML (package data, read once)."""
    return files("riverside_trio").joinpath("_static/demo.html").read_bytes()


class _Unreadable:
    """A message the demo's codec could not decode: answered with an error."""

    __slots__ = ("error", "message")

    def __init__(self, error: str, message: str) -> None:
        self.error = error
        self.message = message


class _DemoCodec(JSONCodec):
    """JSON, except that what is not JSON (or a binary frame) reaches the handler as
    :class:`_Unreadable` instead of being ignored, so that the demo can say why."""

    accepts = frozenset({"text", "binary"})

    def decode(self, data: str | bytes) -> Any:
        if not isinstance(data, str):
            return _Unreadable("binary", "binary frames are not understood here: send JSON text")
        try:
            return super().decode(data)
        except CodecError as exc:
            return _Unreadable("not_json", f"this is not JSON ({exc})")


class DemoHandler(RPCHandler):
    """A chat (rooms, direct messages, presence, sessions) and an echo in one handler.

    Plain JSON messages (``{"type": ...}``):

    - ``join`` / ``leave`` a ``channel``: joins or leaves it and replies ``joined`` /
      ``left``; the room's page users see it as a ``presence`` signal;
    - ``say``: ``{"type": "said", "channel", "from", "text"}`` to every member of the room;
    - ``dm``: ``{"type": "dm", "from", "to", "text"}`` to every connection of user ``to``
      and of the sender;
    - a message without ``type``, or of type ``echo``, is sent back unchanged; an unknown
      ``type``, a known one without its fields, text that is not JSON and binary frames
      are answered ``{"type": "error", "error", "message", "help"}``.

    Requests (the page uses them): ``hello`` (make or keep a session and rejoin its rooms;
    replies ``{"user", "rooms", "restored"}``), ``join`` / ``leave`` a room (``join``
    replies who is in it and subscribes to its presence signals), ``who`` (the users in a
    room, cluster-wide).
    """

    codec = _DemoCodec()

    def __init__(self) -> None:
        self._rooms_of_session: dict[str, list[str]] = {}

    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        if req.path == "/":
            return HTTPResponse(body=demo_page(), content_type="text/html; charset=utf-8")
        return None

    async def authenticate(self, req: AuthRequest) -> Accept:
        if req._authenticators:  # a JWT key is configured: the token says who, never ?user=
            return await super().authenticate(req)
        name = req.query.get("user", "")
        if not name:
            return Accept(user_id=_random_id())
        if _NAME.fullmatch(name) is None:
            raise AuthError(400, body="user must be 1 to 32 letters, digits, '_', '.' or '-'\n")
        return Accept(user_id=name)

    async def init(self, conn: Connection) -> None:
        conn.state["rooms"] = set()
        conn.send({"type": "welcome", "user": conn.user_id, "help": HELP})

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        match msg:
            case _Unreadable(error=error, message=message):
                self._error(conn, error, message)
            case {"type": "join", "channel": str(channel)} if channel:
                self._join(conn, channel)
                conn.send({"type": "joined", "channel": channel})
            case {"type": "leave", "channel": str(channel)} if channel:
                self._leave(conn, channel)
                conn.send({"type": "left", "channel": channel})
            case {"type": "say", "channel": str(channel), "text": str(text)} if channel:
                said = {"type": "said", "channel": channel, "from": conn.user_id, "text": text}
                conn.deliver_channel(channel, said)
            case {"type": "dm", "to": str(to), "text": str(text)} if to:
                dm = {"type": "dm", "from": conn.user_id, "to": to, "text": text}
                conn.deliver_user(to, dm)
                if to != conn.user_id:
                    conn.deliver_user(conn.user_id, dm)  # the sender's devices see it too
            case {"type": "echo"}:
                conn.send(msg)
            case {"type": str(kind)} if kind in _USAGE:
                self._error(conn, "bad_message", f"{kind} is written {_USAGE[kind]}")
            case {"type": kind}:
                known = ", ".join([*_USAGE, "echo"])
                self._error(conn, "unknown_type", f"unknown type {kind!r}; known: {known}")
            case _:
                conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        for room in conn.state.get("rooms", ()):
            self._presence(conn, room, "left")

    # ------------------------------------------------------------------ requests

    @request("hello")
    async def hello(self, payload: Any, conn: Connection) -> Any:
        """Make a session (or keep the restored one) and rejoin the rooms it remembers."""
        restored = conn.session is not None
        if conn.session is None:
            await conn.create_session({"user": conn.user_id})
            self._remember(conn)  # rooms joined before the session
            rooms: list[str] = []
        else:
            rooms = self._rooms_of_session.get(conn.session.key, [])
        for room in rooms:
            self._join(conn, room, presence=True)
        return {"user": conn.user_id, "rooms": sorted(conn.state["rooms"]), "restored": restored}

    @request("join")
    async def join(self, room: Any, conn: Connection) -> Any:
        """Join ``room`` and its presence signals; the reply is who is in it."""
        self._join(conn, _room(room), presence=True)
        return await self.who(room, conn)

    @request("leave")
    async def leave(self, room: Any, conn: Connection) -> Any:
        self._leave(conn, _room(room))
        return None

    @request("who")
    async def who(self, room: Any, conn: Connection) -> Any:
        """The users in ``room``, on every node."""
        room = _room(room)
        server = conn.server
        view = await server.cluster_view()  # Redis's, with a broker: this node's from here
        users = {c.user_id for c in server.connections() if room in c.channels}
        users.update(
            c.user_id
            for c in view.connections
            if c.node_id != server.node_id and room in c.channels
        )
        return sorted(users)

    # ------------------------------------------------------------------ helpers

    def _error(self, conn: Connection, error: str, message: str) -> None:
        conn.send({"type": "error", "error": error, "message": message, "help": HELP})

    def _join(self, conn: Connection, room: str, *, presence: bool = False) -> None:
        if presence:
            conn.join_channel(_PRESENCE + room)
        if conn.join_channel(room):
            conn.state["rooms"].add(room)
            self._remember(conn)
            self._presence(conn, room, "joined")

    def _leave(self, conn: Connection, room: str) -> None:
        conn.leave_channel(_PRESENCE + room)
        if conn.leave_channel(room):
            conn.state["rooms"].discard(room)
            self._remember(conn)
            self._presence(conn, room, "left")

    def _presence(self, conn: Connection, room: str, event: str) -> None:
        data = {"channel": room, "user": conn.user_id, "event": event}
        conn.deliver_channel(_PRESENCE + room, {"$": "sig", "name": "presence", "data": data})

    def _remember(self, conn: Connection) -> None:
        """Keep the rooms of the connection's session, for ``hello`` after a restore."""
        if conn.session is None:
            return
        remembered = self._rooms_of_session
        remembered.pop(conn.session.key, None)
        remembered[conn.session.key] = sorted(conn.state["rooms"])
        while len(remembered) > _MAX_REMEMBERED:
            del remembered[next(iter(remembered))]


def _room(room: Any) -> str:
    if not isinstance(room, str) or _ROOM.fullmatch(room) is None:
        raise RequestError("bad_room", "a room is a string of 1 to 64 printable characters")
    return room
