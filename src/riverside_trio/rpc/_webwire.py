"""webwire's binary protocol (v2.0) as a codec: a client written to webwire's protocol
document can talk to riverside-trio.

Every message is one binary WebSocket message whose first byte is its type::

    0   error reply        type, id(8), code length(1..255), code (ASCII 32..126), message
    1   shutdown reply     type, id(8)      (error code "shutdown")
    2   internal error     type, id(8)      ("internal_error")
    3   session not found  type, id(8)      ("session_not_found")
    4   max session conns  type, id(8)      ("max_session_connections")
    5   sessions disabled  type, id(8)      ("sessions_disabled")
    21  session created    type, JSON {"k": key, "c": created, "l": last lookup, "i": info}
    22  session closed     type
    23  accept conf        type, 2, 0, read timeout ms (u32 LE), buffer size (u32 LE), name
    31  close session      type, id(8)
    32  restore session    type, id(8), key
    33  heartbeat          type
    63/64/65    signal     type, name length(1), name, [pad], payload (binary/UTF-8/UTF-16)
    127/128/129 request    type, id(8), name length(1), name, [pad], payload
    191/192/193 reply      type, id(8), [pad], payload

UTF-16 payloads (little-endian) are aligned to an even offset with one pad byte. A payload
decodes to ``bytes`` (binary) or ``str`` (UTF-8, UTF-16); ``bytes`` are sent as binary,
``str`` as UTF-8, None as an empty binary payload. Error codes with a type of their own
use it; any other code is an error reply (type 0). Times in the session JSON are RFC 3339.

As an extension of webwire, the server may also send requests (127..129) and the client
answer them with replies (191..193), the same layouts in the other direction.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from typing import Any

from ..codecs import FrameType
from ..errors import CodecError
from ._envelope import (
    CloseSession,
    Envelope,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Malformed,
    Reply,
    Request,
    RestoreSession,
    SessionClosed,
    SessionCreated,
    SessionData,
    Signal,
    Welcome,
)

__all__ = ["WebwireCodec", "parse_session_json", "session_json"]

_CODE_TYPES = {
    ErrorCode.SHUTDOWN: 1,
    ErrorCode.INTERNAL: 2,
    ErrorCode.SESSION_NOT_FOUND: 3,
    ErrorCode.MAX_SESSION_CONNECTIONS: 4,
    ErrorCode.SESSIONS_DISABLED: 5,
}
_TYPE_CODES = {v: k for k, v in _CODE_TYPES.items()}


def _time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def session_json(session: SessionData) -> str:
    """webwire's session JSON: ``{"k", "c", "l", "i"}``."""
    obj: dict[str, Any] = {
        "k": session.key,
        "c": _time(session.created),
        "l": _time(session.last_lookup),
    }
    if session.info is not None:
        obj["i"] = session.info
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def parse_session_json(text: str | bytes) -> SessionData:
    """The inverse of :func:`session_json`.

    Raises:
        ValueError: ``text`` is not a session JSON object.
    """
    obj = json.loads(text)
    if not isinstance(obj, dict) or not isinstance(obj.get("k"), str):
        raise ValueError("not a session object")

    def when(value: object) -> float:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return datetime.fromisoformat(value).timestamp()
        return 0.0

    return SessionData(obj["k"], when(obj.get("c")), when(obj.get("l")), obj.get("i"))


def _payload(data: bytes, offset: int, encoding: int) -> Any:
    """Payload bytes to bytes (binary) or str; raises ValueError for bad text."""
    if encoding == 0:
        return data[offset:]
    if encoding == 1:
        return data[offset:].decode("utf-8")
    if offset % 2:  # UTF-16 is aligned with a pad byte
        offset += 1
    if (len(data) - offset) % 2:
        raise ValueError("odd UTF-16 payload")
    return data[offset:].decode("utf-16-le")


def _encode_payload(payload: Any) -> tuple[int, bytes]:
    if payload is None:
        return 0, b""
    if isinstance(payload, bytes | bytearray | memoryview):
        return 0, bytes(payload)
    if isinstance(payload, str):
        return 1, payload.encode("utf-8")
    raise CodecError(f"webwire payloads are bytes or str, got {type(payload).__name__}")


def _id(value: object) -> bytes:
    if isinstance(value, bytes) and len(value) == 8:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return value.to_bytes(8, "big")
    raise CodecError(f"a webwire id is 8 bytes, got {value!r}")


def _name(name: str) -> bytes:
    raw = name.encode("ascii", "strict") if name.isascii() else b""
    if len(raw) != len(name) or len(raw) > 255:
        raise CodecError(f"a webwire name is 0-255 ASCII characters, got {name!r}")
    return raw


class WebwireCodec:
    """webwire's binary protocol (v2.0) as a codec: envelopes in, bytes out.

    Use it as the ``codec`` of a :class:`~riverside_trio.RPCHandler` (and of the Trio
    client) to speak to clients written to webwire's protocol document. Every message is
    an envelope; a message that breaks the layout closes the connection (1008
    ``invalid_envelope``), as webwire does.
    """

    frame_type: FrameType = "binary"
    accepts: frozenset[FrameType] = frozenset({"binary"})

    def decode(self, data: str | bytes) -> Envelope | Malformed:
        if isinstance(data, str):
            raise CodecError("webwire takes binary messages")
        try:
            return _decode(data)
        except (ValueError, IndexError, struct.error) as exc:
            return Malformed(f"webwire: {exc}"[:200])

    def encode(self, obj: Any) -> bytes:
        return _encode(obj)


def _encode(obj: Any) -> bytes:
    t = type(obj)
    if t is Reply:
        enc, body = _encode_payload(obj.payload)
        pad = b"\x00" if enc == 2 else b""
        return bytes((191 + enc,)) + _id(obj.id) + pad + body
    if t is Request:
        enc, body = _encode_payload(obj.payload)
        name = _name(obj.name)
        if not name and not body:
            raise CodecError("a webwire request needs a name or a payload")
        return bytes((127 + enc,)) + _id(obj.id) + bytes((len(name),)) + name + body
    if t is Signal:
        enc, body = _encode_payload(obj.payload)
        name = _name(obj.name)
        if not name and not body:
            raise CodecError("a webwire signal needs a name or a payload")
        return bytes((63 + enc, len(name))) + name + body
    if t is ErrorReply:
        special = _CODE_TYPES.get(obj.code)
        if special is not None:
            return bytes((special,)) + _id(obj.id)
        code: bytes = obj.code.encode("ascii", "replace")[:255]
        text: bytes = obj.message.encode()
        return b"\x00" + _id(obj.id) + bytes((len(code),)) + code + text
    if t is SessionCreated:
        return b"\x15" + session_json(obj.session).encode()
    if t is SessionClosed:
        return b"\x16"
    if t is Welcome:
        head = struct.pack("<BBBII", 23, obj.major, obj.minor, obj.read_timeout_ms,
                           obj.buffer_size)  # fmt: skip
        sub: bytes = obj.subprotocol.encode("ascii", "replace")
        return head + sub
    if t is RestoreSession:
        key: bytes = obj.key.encode("ascii")
        return b"\x20" + _id(obj.id) + key
    if t is CloseSession:
        return b"\x1f" + _id(obj.id)
    if t is Heartbeat:
        return b"\x21"
    raise CodecError(f"webwire sends envelopes, got {type(obj).__name__}")


def _decode(data: bytes) -> Envelope | Malformed:
    if not data:
        return Malformed("webwire: empty message")
    t = data[0]
    if 127 <= t <= 129:
        if len(data) < 11:
            return Malformed("webwire: a request needs a name or a payload")
        n = data[9]
        if len(data) < 10 + n:
            return Malformed("webwire: name longer than the message")
        name = data[10 : 10 + n].decode("ascii")
        return Request(data[1:9], name, _payload(data, 10 + n, t - 127))
    if 191 <= t <= 193:
        if len(data) < 9:
            return Malformed("webwire: reply too short")
        return Reply(data[1:9], _payload(data, 9, t - 191))
    if 63 <= t <= 65:
        if len(data) < 3:
            return Malformed("webwire: a signal needs a name or a payload")
        n = data[1]
        if len(data) < 2 + n:
            return Malformed("webwire: name longer than the message")
        return Signal(data[2 : 2 + n].decode("ascii"), _payload(data, 2 + n, t - 63))
    if t == 0:
        if len(data) < 10 or data[9] == 0 or len(data) < 10 + data[9]:
            return Malformed("webwire: bad error reply")
        code = data[10 : 10 + data[9]].decode("ascii")
        return ErrorReply(data[1:9], code, data[10 + data[9] :].decode("utf-8"))
    if 1 <= t <= 5:
        if len(data) != 9:
            return Malformed("webwire: bad error reply")
        return ErrorReply(data[1:9], _TYPE_CODES[t])
    if t == 31:
        return CloseSession(data[1:9]) if len(data) == 9 else Malformed("webwire: bad close")
    if t == 32:
        if len(data) < 10:
            return Malformed("webwire: restore without a key")
        return RestoreSession(data[1:9], data[9:].decode("ascii"))
    if t == 33:
        return Heartbeat()
    if t == 21:
        return SessionCreated(parse_session_json(data[1:]))
    if t == 22:
        return SessionClosed()
    if t == 23:
        if len(data) < 11:
            return Malformed("webwire: accept conf too short")
        _, major, minor, timeout, size = struct.unpack_from("<BBBII", data)
        return Welcome(timeout, size, data[11:].decode("ascii", "replace"), major, minor)
    return Malformed(f"webwire: unknown message type {t}")
