"""The reading half of a connection: bytes in, events out, handler called.

A mixin of :class:`~riverside_trio._connection.Connection`, kept apart to keep each file to
one job. The read loop awaits as little as it can: a non-blocking ``recv`` first, a park on
``wait_readable`` only after a read that drained the socket (or EAGAIN), and a checkpoint
every ``READS_PER_CHECKPOINT`` reads without a park, for fairness.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import structlog
import trio
from trio.lowlevel import checkpoint, wait_readable

from .errors import ProtocolError
from .frames import (
    EV_BINARY,
    EV_BINARY_DEFLATED,
    EV_PING,
    EV_PONG,
    EV_TEXT,
    EV_TEXT_DEFLATED,
    OP_PONG,
    encode_close,
    encode_frame,
)
from .handler import ControlFrame, TerminateReason

if TYPE_CHECKING:
    import socket

    from ._core import Core
    from ._deflate import Inflater
    from .frames import FrameParser, TokenBucket

__all__ = ["READS_PER_CHECKPOINT", "Reader"]

log = structlog.get_logger("riverside_trio.connection")

RECV_SIZE = 65536
# Reads (or sends) without a park before the task yields to the scheduler anyway.
READS_PER_CHECKPOINT = 16
_SKIP = object()  # a message that was counted but goes no further


class Reader:
    """Reads, parses and dispatches incoming frames (mixed into Connection)."""

    if not TYPE_CHECKING:  # the attributes are Connection's slots
        __slots__ = ()
    else:  # provided by Connection
        user_id: str
        _core: Core
        _sock: socket.socket
        _parser: FrameParser
        _deflate: Inflater | None
        _bucket: TokenBucket | None
        _activity: bool
        _ping_sent_at: float | None
        _close_sent: bool
        _reason: TerminateReason | None

        def _mark_closing(self) -> None: ...
        def _initiate_close(self, code: int, reason: str, kind: str) -> None: ...
        def _push_control(self, frame: bytes) -> None: ...
        def _push_ping_or_pong(self, frame: bytes) -> None: ...

        _callback: Callable[..., Awaitable[bool]]

    async def _read_loop(self) -> None:
        """Read, parse and dispatch until the connection is over.

        Awaits as little as it can: ``recv`` is tried first and the task parks on
        ``wait_readable`` only when the previous read drained the socket (it returned less
        than it asked for) or the kernel said EAGAIN; after ``READS_PER_CHECKPOINT`` reads
        without a park it yields to the scheduler anyway.
        """
        # No bound methods are kept across a park: an idle connection holds as few objects
        # as it can (each one is work for the garbage collector).
        sock = self._sock
        parser = self._parser
        metrics = self._core.metrics
        handler = self._core.handler
        drained = not parser.buffered  # nothing came with the handshake: wait for data
        reads = 0
        while True:
            # Dispatch every complete event the parser has.
            try:
                while (event := parser.next_event()) is not None:
                    kind = event[0]
                    if kind <= EV_BINARY:  # EV_TEXT, EV_BINARY
                        if self._close_sent:
                            continue  # closing: data is dropped until the client's close
                        msg = self._accept_message(kind == EV_TEXT, event[1])
                        if msg is not _SKIP:
                            await self._callback(handler.handle_message, msg, self)
                    elif kind <= EV_BINARY_DEFLATED:  # a compressed message
                        if self._close_sent:
                            continue
                        text = kind == EV_TEXT_DEFLATED
                        msg = self._accept_message(text, self._inflate(event[1], text))
                        if msg is not _SKIP:
                            await self._callback(handler.handle_message, msg, self)
                    elif kind == EV_PING:
                        metrics.incoming_control["ping"] += 1
                        if not self._close_sent:
                            self._push_ping_or_pong(encode_frame(OP_PONG, event[1]))
                        if self._core.wants_control:
                            await self._control("ping", event[1])
                    elif kind == EV_PONG:
                        metrics.incoming_control["pong"] += 1
                        self._ping_sent_at = None
                        if self._core.wants_control:
                            await self._control("pong", event[1])
                    else:
                        metrics.incoming_control["close"] += 1
                        self._on_close(event[1], event[2])
                        return
            except ProtocolError as exc:
                kind_ = "message_too_big" if exc.code == 1009 else "protocol_error"
                self._fail(exc.code, exc.reason, kind_)
                return
            # Read more.
            while True:
                if drained:
                    reads = 0
                    await wait_readable(sock)
                elif reads >= READS_PER_CHECKPOINT:
                    reads = 0
                    await checkpoint()
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    drained = True
                    continue
                except OSError:
                    self._lost()
                    return
                break
            if not data:
                self._lost()
                return
            drained = len(data) < RECV_SIZE
            reads += 1
            self._activity = True
            parser.feed(data)

    async def _control(self, kind: Literal["ping", "pong"], payload: bytes) -> None:
        if not self._close_sent:
            frame = ControlFrame(kind, payload)
            await self._callback(self._core.handler.handle_control, frame, self)

    def _inflate(self, payload: bytes, text: bool) -> str | bytes:
        """Decompress a permessage-deflate message (capped at max_message_size).

        Raises:
            ProtocolError: 1009 past the limit, 1007 for corrupt data or invalid UTF-8.
        """
        assert self._deflate is not None
        data = self._deflate.inflate(payload)
        if not text:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(1007, "invalid UTF-8 in a text message") from None

    def _accept_message(self, text: bool, payload: Any) -> Any:
        """Count, rate-limit, type-check and decode one message; _SKIP if it goes no further."""
        core = self._core
        if text:
            core.metrics.incoming_text += 1
        else:
            core.metrics.incoming_binary += 1
        bucket = self._bucket
        if bucket is not None and not bucket.take(trio.current_time()):
            self._initiate_close(1008, "too many messages", "too_many_messages")
            return _SKIP
        if not (core.accepts_text if text else core.accepts_binary):
            self._invalid("wrong_type", 1003, "unsupported frame type")
            return _SKIP
        try:
            return core.codec.decode(payload)
        except Exception as exc:
            # Counted in the metrics; logged at most once a second (a client may flood).
            core.warn("undecodable_message", user_id=self.user_id, error=str(exc)[:200])
            self._invalid("undecodable", 1007, "message does not decode")
            return _SKIP

    def _invalid(self, kind: str, code: int, reason: str) -> None:
        self._core.metrics.invalid_messages[kind] += 1
        if self._core.config.invalid_message == "close":
            self._initiate_close(code, reason, "invalid_message")

    def _on_close(self, code: int, reason: str) -> None:
        """The client's close frame: an answer to ours, or its own request to close."""
        if not self._close_sent:
            self._reason = TerminateReason("remote", code, reason)
            self._mark_closing()
            # Echo the code (RFC 6455 5.5.1); 1005 "no status" gets an empty close frame, and
            # a code only a client may send (1010) is answered with 1000.
            try:
                frame = encode_close(None if code == 1005 else code)
            except ValueError:
                frame = encode_close(1000)
            self._push_control(frame)
        elif self._reason is None:
            self._reason = TerminateReason("remote", code, reason)

    def _fail(self, code: int, reason: str, kind: str) -> None:
        """Fail the connection: our close frame, then TCP closes without waiting."""
        if self._reason is None or not self._close_sent:
            self._reason = TerminateReason(kind, code, reason)
        if not self._close_sent:
            self._mark_closing()
            self._push_control(encode_close(code, reason))

    def _lost(self) -> None:
        """TCP ended without (the rest of) the closing handshake."""
        if self._reason is None:
            self._reason = TerminateReason("remote", 1006, "")
        self._mark_closing()
