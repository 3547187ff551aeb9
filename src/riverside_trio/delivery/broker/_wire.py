"""What crosses Redis: channel names and the envelope of a message, with no I/O.

A destination has one Redis channel, ``<prefix>:<kind>:<key>``::

    User("alice")           riverside:u:alice
    Session("alice", "s1")  riverside:s:5:alices1      (length of the user id, then both)
    Channel("lobby")        riverside:c:lobby
    Name("worker-1")        riverside:n:worker-1
    Group("admins")         riverside:g:admins

and each node has its own, ``<prefix>:node:<node id>``, for its heartbeat.

An envelope is one version byte, one kind byte, the origin node's 8-byte id, then the body:
the codec's payload bytes as they will be framed (kinds ``T`` text and ``B`` binary, encoded
once in the whole cluster), an info as CBOR (``I``; never pickle: a node decodes only plain
data), a close code and reason (``D``), a channel to join (``J``) or leave (``L``), or
nothing (``H``, a heartbeat).

The control API also reaches one connection by its id (``<node id>-<n>``): it publishes on
that node's own channel a ``C`` envelope whose body is the id's length (one byte), the id,
then one of the kinds above without its header (kind byte, body): ``T``/``B`` raw messages,
``D`` disconnects, ``J``/``L`` channel changes.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ...destinations import Channel, Destination, Group, Name, Session, User
from ...errors import CodecError

__all__ = [
    "BINARY",
    "DISCONNECT",
    "HEARTBEAT",
    "INFO",
    "JOIN",
    "LEAVE",
    "TEXT",
    "TO_CONNECTION",
    "Envelope",
    "channel_name",
    "decode_info",
    "encode_info",
    "node_channel",
    "open_envelope",
]

VERSION = 1
TEXT, BINARY, INFO, DISCONNECT, HEARTBEAT = b"T"[0], b"B"[0], b"I"[0], b"D"[0], b"H"[0]
JOIN, LEAVE, TO_CONNECTION = b"J"[0], b"L"[0], b"C"[0]
_KINDS = frozenset({TEXT, BINARY, INFO, DISCONNECT, HEARTBEAT, JOIN, LEAVE, TO_CONNECTION})
_INNER_KINDS = frozenset({TEXT, BINARY, DISCONNECT, JOIN, LEAVE})
HEADER_SIZE = 10  # version, kind, 8 bytes of origin


def channel_name(prefix: str, destination: Destination) -> bytes:
    """The Redis channel of ``destination``.

    Raises:
        TypeError: ``destination`` is not a destination.
    """
    cls = type(destination)
    if cls is Channel:
        key = "c:" + destination.name  # type: ignore[union-attr]
    elif cls is User:
        key = "u:" + destination.user_id  # type: ignore[union-attr]
    elif cls is Session:
        user, session = destination.user_id, destination.session_id  # type: ignore[union-attr]
        key = f"s:{len(user)}:{user}{session}"
    elif cls is Name:
        key = "n:" + destination.name  # type: ignore[union-attr]
    elif cls is Group:
        key = "g:" + destination.name  # type: ignore[union-attr]
    elif cls is str:
        key = "n:" + destination  # type: ignore[operator]
    else:
        raise TypeError(f"not a destination: {type(destination).__name__}")
    return f"{prefix}:{key}".encode("utf-8", "surrogatepass")


def node_channel(prefix: str, node_id: str) -> bytes:
    """The channel of one node (its heartbeat)."""
    return f"{prefix}:node:{node_id}".encode()


class Envelope:
    """Builds the envelopes of one node: the header of each kind is made once."""

    __slots__ = ("_binary", "_disconnect", "_info", "_text", "heartbeat", "origin")

    def __init__(self, node_id: str) -> None:
        self.origin = bytes.fromhex(node_id)
        if len(self.origin) != 8:
            raise ValueError("a node id is 16 hex digits")
        head = bytes([VERSION])
        self._text = head + bytes([TEXT]) + self.origin
        self._binary = head + bytes([BINARY]) + self.origin
        self._info = head + bytes([INFO]) + self.origin
        self._disconnect = head + bytes([DISCONNECT]) + self.origin
        self.heartbeat = head + bytes([HEARTBEAT]) + self.origin

    def message(self, payload: bytes, text: bool) -> bytes:
        """A message's envelope: its payload as the codec made it."""
        return (self._text if text else self._binary) + payload

    def info(self, info: Any) -> bytes:
        """An info's envelope (CBOR).

        Raises:
            CodecError: ``info`` cannot cross nodes (not plain data CBOR can carry).
        """
        return self._info + encode_info(info)

    def disconnect(self, code: int, reason: str) -> bytes:
        """A disconnect's envelope."""
        return self._disconnect + code.to_bytes(2, "big") + reason.encode()

    def channel_change(self, channel: str, join: bool) -> bytes:
        """The envelope making members join (or leave) ``channel``."""
        kind = JOIN if join else LEAVE
        return self.origin_header(kind) + channel.encode("utf-8", "surrogatepass")

    def origin_header(self, kind: int) -> bytes:
        """The header of an envelope of ``kind`` from this node."""
        return bytes([VERSION, kind]) + self.origin

    def to_connection(self, conn_id: str, kind: int, body: bytes) -> bytes:
        """The envelope for the one connection ``conn_id`` (published on its node's channel).

        Raises:
            ValueError: ``conn_id`` is longer than 255 bytes.
        """
        raw_id = conn_id.encode("utf-8", "surrogatepass")
        if len(raw_id) > 255:
            raise ValueError("a connection id is at most 255 bytes")
        head = self.origin_header(TO_CONNECTION)
        return head + bytes([len(raw_id)]) + raw_id + bytes([kind]) + body


def encode_info(info: Any) -> bytes:
    """``info`` as CBOR.

    Raises:
        CodecError: CBOR cannot carry it (an object of a class of your own, a function...).
    """
    try:
        return cbor2.dumps(info)
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError) as exc:
        raise CodecError(
            f"this info cannot cross nodes: CBOR cannot encode it ({exc}); send plain data "
            "(dict, list, str, bytes, numbers, bool, None, sets, datetimes)"
        ) from None


def decode_info(body: bytes) -> Any:
    """An info from its CBOR; only plain data comes out (no class is ever instantiated).

    Raises:
        ValueError: the body is not CBOR.
    """
    try:
        return cbor2.loads(body)
    except (cbor2.CBORDecodeError, EOFError, TypeError, ValueError) as exc:
        raise ValueError(f"not CBOR: {exc}") from None


def open_envelope(data: bytes) -> tuple[int, bytes, bytes]:
    """(kind, origin, body) of an envelope.

    Raises:
        ValueError: not an envelope of this version.
    """
    if len(data) < HEADER_SIZE or data[0] != VERSION:
        raise ValueError("not a riverside-trio envelope of version 1")
    kind = data[1]
    if kind not in _KINDS:
        raise ValueError(f"unknown envelope kind {kind!r}")
    return kind, data[2:HEADER_SIZE], data[HEADER_SIZE:]


def open_disconnect(body: bytes) -> tuple[int, str]:
    """(code, reason) of a disconnect's body.

    Raises:
        ValueError: malformed.
    """
    if len(body) < 2:
        raise ValueError("a disconnect needs a close code")
    return int.from_bytes(body[:2], "big"), body[2:].decode()


def open_to_connection(body: bytes) -> tuple[str, int, bytes]:
    """(connection id, inner kind, inner body) of a ``C`` envelope's body.

    Raises:
        ValueError: malformed.
    """
    if not body:
        raise ValueError("a connection envelope needs an id")
    n = body[0]
    if len(body) < n + 2:
        raise ValueError("a connection envelope is truncated")
    kind = body[n + 1]
    if kind not in _INNER_KINDS:
        raise ValueError(f"unknown kind {kind!r} for a connection")
    return body[1 : n + 1].decode("utf-8", "surrogatepass"), kind, body[n + 2 :]
