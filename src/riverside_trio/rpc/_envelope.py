"""The request/reply envelope: the messages of request/reply, signals and sessions, and
their form in codecs that carry dicts (JSON, CBOR).

A message of a dict codec is an envelope when it is a dict with the key ``"$"``; every
other message is a plain one and goes to ``Handler.handle_message`` as before::

    {"$": "req", "id": 7, "name": "add", "data": [1, 2]}      request (client or server)
    {"$": "rep", "id": 7, "data": 3}                           reply
    {"$": "err", "id": 7, "code": "not_found", "message": ""}  error reply
    {"$": "sig", "name": "typing", "data": {...}}              signal (one way, no id)
    {"$": "restore", "id": 8, "key": "<64 characters>"}        restore a session (client)
    {"$": "close_session", "id": 9}                            close the session (client)
    {"$": "session", "key": ..., "created": ..., "last_lookup": ..., "info": ...}
                                                               a session was created (server)
    {"$": "session_closed"}                                    the session was closed (server)

``id`` is chosen by the side that asks (an int or a str; CBOR also bytes) and echoed in the
reply; ``data`` may be left out (None). Times are Unix seconds. The webwire binary layout
is a codec of its own (:class:`~riverside_trio.WebwireCodec`) and makes the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeGuard

__all__ = [
    "CloseSession",
    "Envelope",
    "ErrorCode",
    "ErrorReply",
    "Heartbeat",
    "Malformed",
    "Reply",
    "Request",
    "RestoreSession",
    "SessionClosed",
    "SessionCreated",
    "SessionData",
    "Signal",
    "Welcome",
    "from_dict",
    "to_dict",
]

RequestId = int | str | bytes


class ErrorCode:
    """The error codes riverside-trio itself sends in error replies."""

    SHUTDOWN: Final = "shutdown"
    """The server is shutting down and takes no new requests."""
    INTERNAL: Final = "internal_error"
    """The handler failed; the details are in the server's log, never in the reply."""
    UNKNOWN_NAME: Final = "unknown_name"
    """No request handler has that name."""
    TIMEOUT: Final = "timeout"
    """The handler did not answer within ``request_timeout``."""
    TOO_MANY_REQUESTS: Final = "too_many_requests"
    """More than ``outbox_size`` requests of one connection were waiting to run."""
    SESSIONS_DISABLED: Final = "sessions_disabled"
    """``sessions = false``: sessions cannot be created or restored."""
    SESSION_EXISTS: Final = "session_exists"
    """The connection has a session already: restoring another is refused."""
    SESSION_NOT_FOUND: Final = "session_not_found"
    """No session has that key (never created, closed, or expired)."""
    MAX_SESSION_CONNECTIONS: Final = "max_session_connections"
    """The session has ``max_session_connections`` connections already."""
    SESSION_STORE_UNAVAILABLE: Final = "session_store_unavailable"
    """The session store cannot be reached (Redis is down): try again later."""


@dataclass(frozen=True, slots=True)
class SessionData:
    """A restorable session.

    Attributes:
        key: 64 URL-safe characters (48 random bytes, base64url); whoever has it can
            restore the session, so treat it like a password.
        created: when it was created, Unix seconds.
        last_lookup: when it was last created or restored, Unix seconds.
        info: what the server attached to it (JSON-compatible); the client gets a copy.
    """

    key: str
    created: float
    last_lookup: float
    info: Any = None

    def to_dict(self) -> dict[str, Any]:
        """``{"key", "created", "last_lookup", "info"}``, as the client receives it."""
        return {
            "key": self.key,
            "created": self.created,
            "last_lookup": self.last_lookup,
            "info": self.info,
        }


@dataclass(frozen=True, slots=True)
class Request:
    """A request: ``name`` routes it, ``payload`` is its argument; answered by ``id``."""

    id: RequestId
    name: str
    payload: Any = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the request ``id``."""

    id: RequestId
    payload: Any = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The request ``id`` failed with ``code`` (see :class:`ErrorCode`) and ``message``."""

    id: RequestId
    code: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Signal:
    """A one-way message routed by ``name``; never answered."""

    name: str
    payload: Any = None


@dataclass(frozen=True, slots=True)
class RestoreSession:
    """The client asks to restore the session ``key`` on this connection."""

    id: RequestId
    key: str


@dataclass(frozen=True, slots=True)
class CloseSession:
    """The client closes its session."""

    id: RequestId


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """The server created a session for this connection."""

    session: SessionData


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The server closed this connection's session."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """webwire's keep-alive (type 33); nothing to answer."""


@dataclass(frozen=True, slots=True)
class Welcome:
    """webwire's AcceptConf (type 23), the server's first message."""

    read_timeout_ms: int
    buffer_size: int
    subprotocol: str = ""
    major: int = 2
    minor: int = 0


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that claims to be an envelope but is not a valid one."""

    why: str


Envelope = (
    Request
    | Reply
    | ErrorReply
    | Signal
    | RestoreSession
    | CloseSession
    | SessionCreated
    | SessionClosed
    | Heartbeat
    | Welcome
)

_ID_TYPES = (int, str, bytes)
_MAX_ID = 255  # characters or bytes of a str or bytes id


def _valid_id(value: object) -> TypeGuard[RequestId]:
    if isinstance(value, bool) or not isinstance(value, _ID_TYPES):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    return len(value) <= _MAX_ID


def _name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= 255


def from_dict(msg: Any) -> Envelope | Malformed | None:
    """The envelope ``msg`` holds; None for a plain message; Malformed for a broken one."""
    if type(msg) is not dict:
        return None
    kind = msg.get("$", _ABSENT)
    if kind is _ABSENT:
        return None
    if kind == "req":
        rid, name = msg.get("id"), msg.get("name")
        if not _valid_id(rid) or not _name(name):
            return Malformed("a request needs an id (int or str) and a name (str)")
        return Request(rid, name, msg.get("data"))
    if kind == "rep":
        rid = msg.get("id")
        return Reply(rid, msg.get("data")) if _valid_id(rid) else Malformed("reply without id")
    if kind == "err":
        rid, code, message = msg.get("id"), msg.get("code"), msg.get("message", "")
        if not _valid_id(rid) or not isinstance(code, str) or not isinstance(message, str):
            return Malformed("an error reply needs an id, a code and a message (str)")
        return ErrorReply(rid, code, message)
    if kind == "sig":
        name = msg.get("name")
        return Signal(name, msg.get("data")) if _name(name) else Malformed("signal without name")
    if kind == "restore":
        rid, key = msg.get("id"), msg.get("key")
        if not _valid_id(rid) or not isinstance(key, str) or not key:
            return Malformed("restore needs an id and a key (str)")
        return RestoreSession(rid, key)
    if kind == "close_session":
        rid = msg.get("id")
        return CloseSession(rid) if _valid_id(rid) else Malformed("close_session without id")
    if kind == "session":
        key = msg.get("key")
        if not isinstance(key, str):
            return Malformed("session without key")
        return SessionCreated(
            SessionData(key, msg.get("created", 0.0), msg.get("last_lookup", 0.0), msg.get("info"))
        )
    if kind == "session_closed":
        return SessionClosed()
    return Malformed(f"unknown envelope type {kind!r}"[:200])


_ABSENT: Any = object()


def to_dict(env: Envelope) -> dict[str, Any]:
    """The dict form of ``env`` (for JSON, CBOR and other dict codecs)."""
    t = type(env)
    if t is Reply:
        return {"$": "rep", "id": env.id, "data": env.payload}  # type: ignore[union-attr]
    if t is Request:
        r: Any = env
        return {"$": "req", "id": r.id, "name": r.name, "data": r.payload}
    if t is ErrorReply:
        e: Any = env
        return {"$": "err", "id": e.id, "code": e.code, "message": e.message}
    if t is Signal:
        s: Any = env
        return {"$": "sig", "name": s.name, "data": s.payload}
    if t is SessionCreated:
        c: Any = env
        return {"$": "session", **c.session.to_dict()}
    if t is SessionClosed:
        return {"$": "session_closed"}
    if t is RestoreSession:
        rs: Any = env
        return {"$": "restore", "id": rs.id, "key": rs.key}
    if t is CloseSession:
        cs: Any = env
        return {"$": "close_session", "id": cs.id}
    raise TypeError(f"{type(env).__name__} has no dict form")
