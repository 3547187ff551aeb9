"""The reading half of a connection: bytes in, events out, handler called.

The read loop awaits as little as it can. Over a plain socket (and over TLS on one) it
tries a non-blocking ``recv`` first, parks only after a read that drained the socket (or
EAGAIN): a plain socket on the server's edge-triggered poller (``_poller.py``), else on
Trio's ``wait_readable``; before it parks it flushes the cork (what its burst sent leaves
in one ``send`` per client). It checkpoints once it has read ``READ_BYTES_PER_CHECKPOINT``
bytes without a park; over a stream each read is a ``receive_some``. Either way the bytes
go to the compiled frame parser and each event to the connection's rules, and the loop
yields to other tasks after ``EVENTS_PER_CHECKPOINT`` events of one burst: one client's flood gets
a bounded share of each wake-up (64 KiB of input or 64 frames), never the scheduler.

Pings and pongs count against ``control_frame_limit`` (a token bucket refilled over one
second): each one costs the server a parse, a pong and maybe a ``handle_control``, so a
client may not send them without end (1008 ``too_many_control_frames``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog
import trio
from trio.lowlevel import checkpoint, current_task, wait_readable, wait_task_rescheduled

from .._values import ControlFrame
from ..errors import ProtocolError
from ..wire.frames import (
    EV_BINARY,
    EV_BINARY_DEFLATED,
    EV_PING,
    EV_PONG,
    EV_TEXT,
    EV_TEXT_DEFLATED,
    OP_PONG,
    Cork,
    FrameParser,
    TokenBucket,
    encode_frame,
)
from ._transport import RECV_SIZE, SocketTransport, TLSTransport, Transport

if TYPE_CHECKING:
    from ..wire.deflate import Inflater
    from ._core import Core

__all__ = ["EVENTS_PER_CHECKPOINT", "READ_BYTES_PER_CHECKPOINT", "Reader", "Rules"]

log = structlog.get_logger("riverside_trio.connection")

# Bytes read without a park before the task yields to the scheduler anyway.
READ_BYTES_PER_CHECKPOINT = 65536
# Events dispatched from one burst of reads before the task yields to the scheduler.
EVENTS_PER_CHECKPOINT = 64
_SKIP = object()  # a message that was counted but goes no further


class Rules(Protocol):
    """What the reader needs of its connection (a small protocol: the connection owns the
    reader, and the reader does not import the connection)."""

    user_id: str
    _core: Core
    _close_sent: bool
    _activity: bool
    _ping_sent_at: float | None

    _gate_busy: bool

    async def _callback(self, fn: Any, *args: Any, failed: str = ...) -> bool: ...
    def _callback_failed(self, exc: Exception, fn: Any, failed: str = ...) -> bool: ...
    def _gate_exit(self) -> None: ...
    def _push_ping_or_pong(self, frame: bytes) -> None: ...
    def _on_close(self, code: int, reason: str) -> None: ...
    def _fail(self, code: int, reason: str, kind: str) -> None: ...
    def _lost(self) -> None: ...
    def _close_for(self, kind: str, code: int) -> None: ...


class Reader:
    """Reads, parses and dispatches the incoming frames of one connection."""

    __slots__ = ("_bucket", "_conn", "_control_bucket", "_inflater", "parser", "transport")

    def __init__(
        self, conn: Rules, transport: Transport, leftover: bytes, inflater: Inflater | None
    ) -> None:
        cfg = conn._core.config
        self._conn = conn
        self.transport = transport
        self._inflater = inflater
        self.parser = FrameParser(cfg.max_message_size, deflate=inflater is not None)
        if leftover:
            self.parser.feed(leftover)
        now = trio.current_time()
        self._bucket = (
            TokenBucket(cfg.transmission_limit, cfg.transmission_period, now)
            if cfg.transmission_limit
            else None
        )
        # Made at the first ping or pong (full, as a bucket made now would be by then): a
        # connection that sends none keeps one object less.
        self._control_bucket: TokenBucket | None = None

    async def run(self) -> None:
        """Read, parse and dispatch until the connection is over."""
        # No bound methods are kept across a park: an idle connection holds as few objects
        # as it can (each one is work for the garbage collector).
        conn = self._conn
        transport = self.transport
        sock = transport.sock if isinstance(transport, SocketTransport) else None
        tls = transport if isinstance(transport, TLSTransport) else None
        parser = self.parser
        metrics = conn._core.metrics
        handler = conn._core.handler
        cork = conn._core.cork  # flushed before every park: what this step held back leaves
        # The plain socket waits on the server's edge-triggered poller (registered once),
        # or on Trio's wait_readable when there is none (poller = "trio", not Linux; TLS).
        watch = None
        if isinstance(transport, SocketTransport) and (poller := conn._core.poller) is not None:
            watch = transport.watch = poller.register(transport.sock)
        task = current_task()
        # The lean path of a message: no token bucket, a frame type the codec takes, and a
        # codec that passes it through (raw codecs) or is called directly.
        core = conn._core
        lean_text = self._bucket is None and core.accepts_text
        lean_binary = self._bucket is None and core.accepts_binary
        raw = bool(core.passthrough)  # raw codecs decode what they accept as it is
        intercept = conn._core.intercept  # RPCHandler: envelopes never reach handle_message
        # Nothing came with the handshake: wait for data (TLS may hold some decrypted).
        drained = not parser.buffered and tls is None
        taken = 0  # bytes read since the last park or checkpoint
        events = 0
        while True:
            # Dispatch every complete event the parser has.
            try:
                while (event := parser.next_event()) is not None:
                    events += 1
                    if events >= EVENTS_PER_CHECKPOINT:
                        events = 0
                        _flush(cork)
                        await checkpoint()
                    kind = event[0]
                    if kind <= EV_BINARY:  # EV_TEXT, EV_BINARY
                        if conn._close_sent:
                            continue  # closing: data is dropped until the client's close
                        if lean_text if kind == EV_TEXT else lean_binary:
                            if kind == EV_TEXT:
                                metrics.incoming_text += 1
                            else:
                                metrics.incoming_binary += 1
                            msg = event[1] if raw else self._decode(event[1])
                        else:
                            msg = self._accept_message(kind == EV_TEXT, event[1])
                        if msg is _SKIP or (intercept is not None and intercept(msg, conn)):
                            continue
                        if conn._gate_busy:
                            await conn._callback(handler.handle_message, msg, conn)
                            continue
                        conn._gate_busy = True  # the callback gate, its free case inlined
                        try:
                            await handler.handle_message(msg, conn)
                        except Exception as exc:
                            conn._callback_failed(exc, handler.handle_message)
                        finally:
                            conn._gate_exit()
                    elif kind <= EV_BINARY_DEFLATED:  # a compressed message
                        if conn._close_sent:
                            continue
                        text = kind == EV_TEXT_DEFLATED
                        msg = self._accept_message(text, self._inflate(event[1], text))
                        if msg is not _SKIP and (intercept is None or not intercept(msg, conn)):
                            await conn._callback(handler.handle_message, msg, conn)
                    elif kind == EV_PING:
                        metrics.incoming_control["ping"] += 1
                        if self._over_control_limit():
                            continue
                        if not conn._close_sent:
                            conn._push_ping_or_pong(encode_frame(OP_PONG, event[1]))
                        if conn._core.wants_control:
                            await self._control("ping", event[1])
                    elif kind == EV_PONG:
                        metrics.incoming_control["pong"] += 1
                        if self._over_control_limit():
                            continue
                        conn._ping_sent_at = None
                        if conn._core.wants_control:
                            await self._control("pong", event[1])
                    else:
                        metrics.incoming_control["close"] += 1
                        conn._on_close(event[1], event[2])
                        return
            except ProtocolError as exc:
                kind_ = "message_too_big" if exc.code == 1009 else "protocol_error"
                conn._fail(exc.code, exc.reason, kind_)
                return
            # Read more.
            if tls is not None:
                while True:
                    if drained:
                        taken = 0
                        events = 0
                        _flush(cork)
                        await wait_readable(tls.sock)
                    elif taken >= READ_BYTES_PER_CHECKPOINT:
                        taken = 0
                        events = 0
                        _flush(cork)
                        await checkpoint()
                    plain = tls.recv_now()
                    if plain is None:
                        drained = True
                        continue
                    break
                data = plain
                drained = tls.drained
                taken += len(data)
            elif sock is None:
                events = 0
                _flush(cork)
                data = await transport.receive()  # always a checkpoint
            else:
                while True:
                    # Drained, unless the poller saw the socket readable since the last read.
                    if drained and (watch is None or not watch.ready):
                        taken = 0
                        events = 0
                        _flush(cork)
                        if watch is None:
                            await wait_readable(sock)
                        else:
                            watch.task = task  # parked until the poller wakes it
                            await wait_task_rescheduled(watch)
                    elif taken >= READ_BYTES_PER_CHECKPOINT:
                        taken = 0
                        events = 0
                        _flush(cork)
                        await checkpoint()
                    if watch is not None:
                        watch.ready = False  # readiness seen after this read is news
                    try:
                        data = sock.recv(RECV_SIZE)
                    except BlockingIOError:
                        drained = True
                        continue
                    except OSError:
                        data = b""
                    break
                drained = len(data) < RECV_SIZE
                taken += len(data)
            if not data:
                conn._lost()
                return
            conn._activity = True
            parser.feed(data)

    def _over_control_limit(self) -> bool:
        """Take a token for a ping or pong; without one, close (1008) and say so."""
        conn = self._conn
        limit = conn._core.config.control_frame_limit
        if not limit or conn._close_sent:
            return False
        now = trio.current_time()
        bucket = self._control_bucket
        if bucket is None:
            bucket = self._control_bucket = TokenBucket(limit, 1.0, now)
        if bucket.take(now):
            return False
        conn._close_for("too_many_control_frames", 1008)
        return True

    async def _control(self, kind: Literal["ping", "pong"], payload: bytes) -> None:
        conn = self._conn
        if not conn._close_sent:
            frame = ControlFrame(kind, payload)
            await conn._callback(conn._core.handler.handle_control, frame, conn)

    def _inflate(self, payload: bytes, text: bool) -> str | bytes:
        """Decompress a permessage-deflate message (capped at max_message_size).

        Raises:
            ProtocolError: 1009 past the limit, 1007 for corrupt data or invalid UTF-8.
        """
        assert self._inflater is not None
        data = self._inflater.inflate(payload)
        if not text:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(1007, "invalid UTF-8 in a text message") from None

    def _accept_message(self, text: bool, payload: Any) -> Any:
        """Count, rate-limit, type-check and decode one message; _SKIP if it goes no further."""
        conn = self._conn
        core = conn._core
        if text:
            core.metrics.incoming_text += 1
        else:
            core.metrics.incoming_binary += 1
        bucket = self._bucket
        if bucket is not None and not bucket.take(trio.current_time()):
            conn._close_for("too_many_messages", 1008)
            return _SKIP
        if not (core.accepts_text if text else core.accepts_binary):
            self._invalid("wrong_type", 1003)
            return _SKIP
        return self._decode(payload)

    def _decode(self, payload: Any) -> Any:
        """The codec's decoding of one message; _SKIP (counted) if it fails."""
        conn = self._conn
        core = conn._core
        try:
            return core.codec.decode(payload)
        except Exception as exc:
            # Counted in the metrics; logged at most once a second (a client may flood).
            core.warn("undecodable_message", user_id=conn.user_id, error=str(exc)[:200])
            self._invalid("undecodable", 1007)
            return _SKIP

    def _invalid(self, kind: str, code: int) -> None:
        core = self._conn._core
        core.metrics.invalid_messages[kind] += 1
        if core.config.invalid_message == "close":
            self._conn._close_for("invalid_message", code)


def _flush(cork: Cork) -> None:
    """Send what the cork holds before the reader's step ends (a failure is logged)."""
    try:
        cork.flush()
    except Exception:  # a bug of ours (a wake callback failed) must not end the connection
        log.exception("cork_flush_failed")
