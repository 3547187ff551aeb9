"""Pure-Python twin of the compiled hot path, part one: constants, frame encoding and the
token bucket (see ``_frames_py`` for the whole twin).

Conversions follow the compiled module: integer arguments go through ``__index__`` and must fit
a ``Py_ssize_t`` (``OverflowError`` otherwise), float arguments accept what a C ``double``
argument accepts (``float``, ``int``, objects with ``__float__`` or ``__index__``; not ``str``).
"""

from __future__ import annotations

import socket
import struct
import sys
from operator import index as _index
from typing import Any, Final, final

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "PUSH_CLOSED",
    "PUSH_FULL",
    "PUSH_QUEUED",
    "PUSH_SENT",
    "TokenBucket",
    "encode_close",
    "encode_frame",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

PUSH_SENT: Final = 0
PUSH_QUEUED: Final = 1
PUSH_FULL: Final = 2
PUSH_CLOSED: Final = 3

_OPCODES: Final = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))
_MAX_CONTROL_PAYLOAD: Final = 125
_MAX_CLOSE_REASON: Final = 123  # 125 minus the 2-byte code
_SSIZE_MIN: Final = -sys.maxsize - 1
_SEND_FLAGS: Final = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)

_pack_short: Final = struct.Struct("!BBH").pack
_pack_long: Final = struct.Struct("!BBQ").pack
_pack_code: Final = struct.Struct("!H").pack


def _as_ssize(value: object) -> int:
    """Convert like a C ``Py_ssize_t`` argument: ``__index__``, then a range check."""
    result = _index(value)  # type: ignore[arg-type]  # TypeError like Cython's conversion
    if not _SSIZE_MIN <= result <= sys.maxsize:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return result


def _as_double(value: object) -> float:
    """Convert like a C ``double`` argument (``PyFloat_AsDouble``): no ``str`` parsing."""
    if type(value) is float:
        return value
    cls = type(value)
    if hasattr(cls, "__float__") or hasattr(cls, "__index__"):
        return float(value)  # type: ignore[arg-type]
    raise TypeError(f"must be real number, not {cls.__name__}")


def _opcode(opcode: object) -> int:
    """Check an opcode: ``TypeError`` if not an integer, ``ValueError`` if not one of the six."""
    try:
        op = _as_ssize(opcode)
    except OverflowError:
        op = -1
    if op not in _OPCODES:
        raise ValueError(f"invalid opcode: {opcode!r}")
    return op


def _sendable_close_code(code: int) -> bool:
    """Close codes a server may send: 1000-1003, 1007-1009, 1011-1013, 3000-4999."""
    return (
        1000 <= code <= 1003 or 1007 <= code <= 1009 or 1011 <= code <= 1013 or 3000 <= code <= 4999
    )


def _header(first: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, length))
    if length < 0x10000:
        return _pack_short(first, 126, length)
    return _pack_long(first, 127, length)


def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    fin: bool = True,
    rsv1: bool = False,
) -> bytes:
    """Encode one server-to-client frame (unmasked, RSV2 and RSV3 clear).

    Args:
        opcode: One of the ``OP_*`` constants.
        payload: The payload, any C-contiguous buffer; it is copied.
        fin: Whether this is the final fragment of its message.
        rsv1: Set RSV1, which marks a compressed message under permessage-deflate
            (RFC 7692); only on the first frame of a text or binary message.

    Returns:
        The header followed by the payload.

    Raises:
        TypeError: ``opcode`` is not an integer, or ``payload`` is not a buffer (``str``).
        BufferError: ``payload`` is not C-contiguous.
        ValueError: Unknown opcode, a control frame (close, ping, pong) with a payload
            over 125 bytes or ``fin=False``, or ``rsv1`` on a control or continuation frame.
    """
    op = _opcode(opcode)
    if type(payload) is bytes:
        length = len(payload)
    else:
        view = memoryview(payload)  # TypeError for str and other non-buffers
        if not view.c_contiguous:
            raise BufferError("memoryview: underlying buffer is not C-contiguous")
        length = view.nbytes
        payload = view
    first = (0x80 if fin else 0) | op
    if op >= 0x8 and (length > _MAX_CONTROL_PAYLOAD or not first & 0x80):
        raise ValueError(
            "control frames must be final and carry at most 125 bytes "
            f"(opcode {op:#x}, {length} bytes, fin={bool(fin)})"
        )
    if rsv1:
        if op == 0x0 or op >= 0x8:
            raise ValueError(
                f"RSV1 is for the first frame of a text or binary message only (opcode {op:#x})"
            )
        first |= 0x40
    return _header(first, length) + payload


def encode_close(code: int | None = None, reason: str = "") -> bytes:
    """Encode a whole close frame.

    Args:
        code: A close code a server may send (1000-1003, 1007-1009, 1011-1013, 3000-4999),
            or ``None`` for a close frame without a payload. 1010 is for clients only (RFC 6455
            7.4.1); 1014 makes wsproto-based clients fail the connection.
        reason: Text sent after the code, UTF-8 encoded; cut to 123 bytes at a character
            boundary.

    Returns:
        The close frame.

    Raises:
        TypeError: ``reason`` is not a ``str``, or ``code`` is not an integer.
        ValueError: ``code`` is not one a server may send, or ``reason`` is given without a
            code (``UnicodeEncodeError``, a ``ValueError``, for lone surrogates).
    """
    if not isinstance(reason, str):
        raise TypeError(f"reason must be str, not {type(reason).__name__}")
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b"\x88\x00"
    try:
        value = _as_ssize(code)
    except OverflowError:
        value = -1
    if not _sendable_close_code(value):
        raise ValueError(f"a server may not send close code {code!r}")
    data = reason.encode("utf-8")
    if len(data) > _MAX_CLOSE_REASON:
        cut = _MAX_CLOSE_REASON
        while data[cut] & 0xC0 == 0x80:  # never split a character
            cut -= 1
        data = data[:cut]
    return bytes((0x88, 2 + len(data))) + _pack_code(value) + data


@final
class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled continuously over ``period`` seconds.

    It starts full. ``take(now)`` first refills ``(now - last) * capacity / period`` tokens
    (capped at ``capacity``; a clock going backwards refills nothing and leaves ``last``
    alone), then takes one token if at least one is there.

    Args:
        capacity: The most tokens the bucket holds, at least 1.
        period: Seconds to refill from empty to full, above 0.
        now: The current time, in seconds on any monotonic clock.

    Raises:
        ValueError: ``capacity < 1`` or ``period <= 0``.
    """

    __slots__ = ("_cap", "_capacity", "_last", "_period", "_rate", "_tokens")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 'TokenBucket' is not an acceptable base type")

    def __init__(self, capacity: int, period: float, now: float) -> None:
        cap = _as_ssize(capacity)
        per = _as_double(period)
        start = _as_double(now)
        if cap < 1:
            raise ValueError(f"capacity must be at least 1, not {cap}")
        if not per > 0.0:
            raise ValueError(f"period must be above 0, not {per!r}")
        self._capacity = cap
        self._period = per
        self._cap = float(cap)
        self._rate = self._cap / per
        self._tokens = self._cap
        self._last = start

    @property
    def tokens(self) -> float:
        """Tokens in the bucket after the last ``take``."""
        return self._tokens

    @property
    def capacity(self) -> int:
        """The most tokens the bucket holds."""
        return self._capacity

    @property
    def period(self) -> float:
        """Seconds to refill from empty to full."""
        return self._period

    def take(self, now: float, /) -> bool:
        """Refill up to ``now``, then take one token.

        Returns:
            Whether a token was taken.
        """
        if type(now) is not float:
            now = _as_double(now)
        elapsed = now - self._last
        tokens = self._tokens
        if elapsed > 0.0:
            tokens = tokens + elapsed * self._rate
            if tokens > self._cap:
                tokens = self._cap
            self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False
