"""The pure-Python twin of the compiled frame parser (``FrameParser`` in ``src/_frames.pyx``).

Imported through :mod:`riverside_trio._frames_py`, which re-exports it; it is a module of its
own only to keep each file to one job.
"""

from __future__ import annotations

import codecs
from typing import Any, Final, final

from ..errors import ProtocolError as _ProtocolError
from ._encode_py import _MAX_CONTROL_PAYLOAD, _OPCODES, _as_ssize

__all__ = [
    "EV_BINARY",
    "EV_BINARY_DEFLATED",
    "EV_CLOSE",
    "EV_PING",
    "EV_PONG",
    "EV_TEXT",
    "EV_TEXT_DEFLATED",
    "FrameParser",
]

# Frame parsing ----------------------------------------------------------------------------
#
# FrameParser reads client-to-server frames (RFC 6455 section 5, server side, with or without
# permessage-deflate, RFC 7692) and keeps, byte for byte, the decisions of wsproto's
# FrameProtocol(client=False), which the tests use as the oracle (with its PerMessageDeflate
# extension when deflate=True, on streams without a control frame between the fragments of a
# compressed message: wsproto 1.3 forgets that the message is compressed there, and fails
# it with 1007). The rules, in the order they are checked:
#
# Header, checked as its bytes arrive (2 bytes, then the extended length, then the key):
#   1. opcode not in {0, 1, 2, 8, 9, 10}                                   -> 1002
#   2. control frame (8, 9, 10) without FIN                                -> 1002
#   3. control frame with a 7-bit length over 125                          -> 1002
#   4. 16-bit length under 126, 64-bit length under 65536 (not minimal)    -> 1002
#   5. 64-bit length with the most significant bit set                     -> 1002
#   6. RSV2 or RSV3 set, or RSV1 set without deflate                       -> 1002
#      with deflate: RSV1 set on a control frame or a continuation frame   -> 1002
#   7. MASK bit clear                                                      -> 1002
# Control frames wait for their whole payload, even between the fragments of a message:
#   8. ping, pong: an event with the payload; close: an empty payload gives 1005 and "",
#      a 1-byte payload -> 1002, a code outside 1000-1003, 1007-1013, 3000-4999 -> 1002
#      (wsproto 1.3 refuses 1014 too), a reason that is not UTF-8 -> 1007. After a close
#      event the parser is finished: it drops what it holds and ignores later data.
# Data frames, once the header is complete:
#   9. a continuation without a message in progress, or a text or binary frame inside one
#      -> 1002, when its first payload byte arrives (as wsproto), or at once when empty or
#      over the size limit;
#  10. message bytes so far + declared length > max_message_size -> 1009 at once, before
#      any payload (wsproto has no limit);
#  11. text is strict UTF-8 -> 1007, checked as payload arrives: whatever has come in is
#      decoded incrementally, so a bad byte fails on arrival, and a message ending inside a
#      character fails at its end.
# Compressed messages (deflate, RSV1 on the first frame): the event is EV_TEXT_DEFLATED or
# EV_BINARY_DEFLATED with the compressed payload of all fragments joined, unmasked; rules 9
# and 10 apply (the limit counts compressed bytes), rule 11 does not: the caller inflates the
# payload (appending 00 00 ff ff), caps its size and checks the text.
# Payload bytes are unmasked with the frame's key from the frame's first payload byte on. A
# whole single-frame message already in the buffer is unmasked straight into its event (the
# fast path); otherwise payload is unmasked into the message assembly as it arrives, so the
# parser never holds more than max_message_size bytes of message plus one unfinished frame
# header or control frame. After an error every next_event() raises it again.

EV_TEXT: Final = 1
EV_BINARY: Final = 2
EV_TEXT_DEFLATED: Final = 3  # EV_TEXT + 2: a compressed message, deflate=True only
EV_BINARY_DEFLATED: Final = 4
EV_CLOSE: Final = 8
EV_PING: Final = 9
EV_PONG: Final = 10

_NEXT: Final[tuple[Any, ...]] = ()  # a frame header was consumed: parse on (events are never empty)
_DEFLATED: Final = 2  # EV_TEXT + _DEFLATED == EV_TEXT_DEFLATED, same for binary
_SHRINK: Final = 1 << 16  # drop an emptied assembly buffer above this size

_utf8_decode: Final = codecs.utf_8_decode


def _unmask(data: bytes | bytearray, key: bytes, phase: int) -> bytes:
    """XOR ``data`` with ``key`` repeated, starting at key byte ``phase``."""
    n = len(data)
    if not n:
        return b""
    if phase:
        key = key[phase:] + key[:phase]
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


def _close_code_accepted(code: int) -> bool:
    """Close codes a client may send us, as wsproto 1.3 accepts them."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1013 or 3000 <= code <= 4999


@final
class FrameParser:
    """An incremental parser of client-to-server frames: bytes in, whole messages out.

    The rules are listed above this class. Feed it bytes as they arrive, in any chunks, then
    call ``next_event`` until it returns ``None``.

    Args:
        max_message_size: The most payload bytes a text or binary message may have, over all
            its fragments; a frame that would exceed it fails with 1009 from its header on.
            For a compressed message, the compressed bytes.
        deflate: permessage-deflate was negotiated: RSV1 on the first frame of a message
            marks it compressed, and it comes out as ``EV_TEXT_DEFLATED`` or
            ``EV_BINARY_DEFLATED``, not inflated.

    Raises:
        TypeError: ``max_message_size`` is not an integer.
        ValueError: ``max_message_size`` is negative.
    """

    __slots__ = (
        "_buf",
        "_closed",
        "_deflate",
        "_error",
        "_fin",
        "_in_frame",
        "_key",
        "_max",
        "_msg",
        "_msg_op",
        "_phase",
        "_pos",
        "_remaining",
        "_valid",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 'FrameParser' is not an acceptable base type")

    def __init__(self, max_message_size: int, *, deflate: bool = False) -> None:
        size = _as_ssize(max_message_size)
        if size < 0:
            raise ValueError(f"max_message_size must not be negative, not {size}")
        self._max = size
        self._deflate = bool(deflate)  # permessage-deflate: RSV1 on a message's first frame
        self._buf = bytearray()  # received bytes; those before _pos are consumed
        self._pos = 0
        self._msg = bytearray()  # unmasked payload of the message in progress
        self._msg_op = 0  # the event kind of the message in progress (EV_TEXT ...), else 0
        self._valid = 0  # _msg[:_valid] is known to be whole UTF-8 characters
        self._in_frame = False  # inside the payload of a data frame
        self._fin = False
        self._remaining = 0  # payload bytes of that frame still to come
        self._key = b""
        self._phase = 0  # payload bytes of that frame so far, modulo 4
        self._closed = False
        self._error: tuple[int, str] | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: received but not parsed yet, plus the message assembled so far."""
        return len(self._buf) - self._pos + len(self._msg)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; ignored once the parser is finished or failed.

        Raises:
            TypeError: ``data`` is not a buffer (``str``).
            BufferError: ``data`` is not C-contiguous.
        """
        if type(data) is not bytes:
            with memoryview(data) as view:  # TypeError for str and other non-buffers
                if not view.c_contiguous:
                    raise BufferError("memoryview: underlying buffer is not C-contiguous")
        if self._closed or self._error is not None:
            return
        buf = self._buf
        pos = self._pos
        if pos and pos >= len(buf) - pos:  # compact: the copy costs no more than was parsed
            del buf[:pos]
            self._pos = 0
        buf += data

    def next_event(self) -> tuple[Any, ...] | None:
        """Parse the next complete event.

        Returns:
            ``(EV_TEXT, str)``, ``(EV_BINARY, bytes)``, ``(EV_PING, bytes)``,
            ``(EV_PONG, bytes)``, ``(EV_CLOSE, code, reason)``, with ``deflate``
            ``(EV_TEXT_DEFLATED, bytes)`` or ``(EV_BINARY_DEFLATED, bytes)`` (the compressed
            payload, without the final ``00 00 ff ff``), or ``None`` when more bytes are
            needed or the parser is finished.

        Raises:
            ProtocolError: The client broke RFC 6455 (``code`` 1002 or 1007) or sent a message
                over ``max_message_size`` (1009); raised again by every later call.
        """
        if self._error is not None:
            raise _ProtocolError(*self._error)
        if self._closed:
            return None
        while True:
            if self._in_frame:
                if not self._read_payload():
                    self._pause()
                    return None
                if not self._fin:
                    if self._msg_op == EV_TEXT:
                        self._validate()
                    continue
                return self._finish_message()
            event = self._read_frame()
            if event is None:
                self._pause()
                return None
            if event is not _NEXT:
                return event

    def _read_frame(self) -> tuple[Any, ...] | None:
        """Parse a frame header; return an event, ``_NEXT`` (in the payload now) or ``None``."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 2:
            return None
        first = buf[pos]
        second = buf[pos + 1]
        opcode = first & 0x0F
        if opcode not in _OPCODES:
            raise self._fail(1002, "invalid opcode")
        control = opcode >= 0x8
        if control and not first & 0x80:
            raise self._fail(1002, "fragmented control frame")
        length = second & 0x7F
        if control and length > _MAX_CONTROL_PAYLOAD:
            raise self._fail(1002, "control frame too long")
        head = 2
        if length == 126:
            if avail < 4:
                return None
            length = buf[pos + 2] << 8 | buf[pos + 3]
            if length < 126:
                raise self._fail(1002, "payload length not minimally encoded")
            head = 4
        elif length == 127:
            if avail < 10:
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if length < 0x10000:
                raise self._fail(1002, "payload length not minimally encoded")
            if length >> 63:
                raise self._fail(1002, "payload length over 2**63")
            head = 10
        if first & 0x70:
            if first & 0x30 or not self._deflate:
                raise self._fail(1002, "reserved bits set")
            if control:
                raise self._fail(1002, "RSV1 set on a control frame")
            if not opcode:
                raise self._fail(1002, "RSV1 set on a continuation frame")
        if not second & 0x80:
            raise self._fail(1002, "unmasked frame")
        head += 4
        if avail < head:
            return None
        start = pos + head
        key = bytes(buf[start - 4 : start])
        avail -= head  # payload bytes here
        if control:
            if avail < length:
                return None
            payload = _unmask(buf[start : start + length], key, 0)
            self._pos = start + length
            if opcode == EV_CLOSE:
                return self._close_event(payload)
            return (opcode, payload)
        too_big = length > self._max - len(self._msg)
        if (opcode == 0) != (self._msg_op != 0):
            if length and not avail and not too_big:
                return None  # wsproto decides on the first payload byte
            if opcode:
                raise self._fail(1002, "expected a continuation frame")
            raise self._fail(1002, "continuation frame without a message")
        if too_big:
            raise self._fail(1009, "message too big")
        if length and not avail:
            return None
        if first & 0x80 and not self._msg_op and avail >= length:  # fast path: a whole message
            data = _unmask(buf[start : start + length], key, 0)
            self._pos = start + length
            if first & 0x40:  # compressed (deflate)
                return (opcode + _DEFLATED, data)
            if opcode == EV_BINARY:
                return (EV_BINARY, data)
            try:
                return (EV_TEXT, data.decode("utf-8"))
            except UnicodeDecodeError:
                raise self._fail(1007, "invalid UTF-8 in text message") from None
        self._pos = start
        self._in_frame = True
        self._fin = bool(first & 0x80)
        self._remaining = length
        self._key = key
        self._phase = 0
        if opcode:
            self._msg_op = opcode + _DEFLATED if first & 0x40 else opcode
        return _NEXT

    def _read_payload(self) -> bool:
        """Unmask what has arrived of the frame into the message; True once it is whole."""
        remaining = self._remaining
        if remaining:
            buf = self._buf
            pos = self._pos
            n = min(len(buf) - pos, remaining)
            if not n:
                return False
            self._msg += _unmask(buf[pos : pos + n], self._key, self._phase)
            self._pos = pos + n
            self._phase = (self._phase + n) & 3
            self._remaining = remaining = remaining - n
            if remaining:
                if self._msg_op == EV_TEXT:
                    self._validate()
                return False
        self._in_frame = False
        return True

    def _validate(self) -> None:
        """Decode the text received since the last check, keeping a split character for later."""
        try:
            _, consumed = _utf8_decode(self._msg[self._valid :], "strict", False)
        except UnicodeDecodeError:
            raise self._fail(1007, "invalid UTF-8 in text message") from None
        self._valid += consumed

    def _finish_message(self) -> tuple[int, str | bytes]:
        msg = self._msg
        opcode = self._msg_op
        self._msg = bytearray() if len(msg) > _SHRINK else msg
        self._msg_op = 0
        self._valid = 0
        if opcode != EV_TEXT:  # binary, or compressed (deflate)
            data = bytes(msg)
            msg.clear()
            return (opcode, data)
        try:
            text = msg.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(1007, "invalid UTF-8 in text message") from None
        msg.clear()
        return (EV_TEXT, text)

    def _close_event(self, payload: bytes) -> tuple[int, int, str]:
        if not payload:
            code, reason = 1005, ""
        elif len(payload) == 1:
            raise self._fail(1002, "close frame with a 1-byte payload")
        else:
            code = payload[0] << 8 | payload[1]
            if not _close_code_accepted(code):
                raise self._fail(1002, "invalid close code")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail(1007, "invalid UTF-8 in close reason") from None
        self._closed = True
        self._release()
        return (EV_CLOSE, code, reason)

    def _pause(self) -> None:
        """Compact the buffer before waiting for more bytes; the copy is paid by parsed ones."""
        buf = self._buf
        pos = self._pos
        if pos and pos >= len(buf) - pos:
            del buf[:pos]
            self._pos = 0

    def _release(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._msg = bytearray()
        self._msg_op = 0
        self._valid = 0
        self._in_frame = False

    def _fail(self, code: int, reason: str) -> _ProtocolError:
        self._error = (code, reason)
        self._release()
        return _ProtocolError(code, reason)
