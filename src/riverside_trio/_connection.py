"""One WebSocket connection: the reader, the outbox and its writer, the callbacks.

The rules of a connection, all in this file:

- One task per connection reads: it drains everything the socket has (a non-blocking
  ``recv`` first, parking on ``wait_readable`` only when the kernel says EAGAIN), feeds it
  to the compiled frame parser, and runs ``init`` / ``handle_message`` / ``terminate``.
- Outgoing frames go through the connection's :class:`~riverside_trio.frames.Outbox`:
  written to the socket at once when nothing is queued, else queued (bounded by
  ``outbox_size`` and ``outbox_bytes``) for the writer task, which joins everything
  pending into one send. A full outbox sheds the connection: close 1008 ``slow_consumer``.
- ``handle_info`` runs in a short-lived task started when something is posted; a gate
  keeps it from overlapping ``handle_message``, ``init`` and ``terminate``.
- Closing: the first close wins and fixes the TerminateReason. After our close frame is
  out, data messages are dropped until the client's close frame arrives; the server then
  closes TCP. A client that does not answer within ``close_timeout`` is cut off. A
  protocol violation sends its close code and closes TCP without waiting.
- Timers (idle, age, keepalive, close timeout) are checked by the server's sweeper, so an
  idle connection costs two parked tasks and no timer of its own.
- ``terminate(reason)`` runs exactly once, shielded and time-boxed, after the reader ends.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import structlog
import trio
from trio.lowlevel import ParkingLot, checkpoint, wait_readable, wait_writable

from ._deflate import Inflater
from .errors import CloseConnection, ConnectionClosed, ProtocolError
from .frames import (
    EV_BINARY,
    EV_BINARY_DEFLATED,
    EV_PING,
    EV_PONG,
    EV_TEXT,
    EV_TEXT_DEFLATED,
    OP_PING,
    OP_PONG,
    PUSH_FULL,
    PUSH_QUEUED,
    FrameParser,
    Outbox,
    TokenBucket,
    encode_close,
    encode_frame,
)
from .handler import AuthRequest, ControlFrame, TaskFailed, TaskResult, TerminateReason

if TYPE_CHECKING:
    from ._core import Core
    from .server import Server

__all__ = ["Connection"]

log = structlog.get_logger("riverside_trio.connection")

RECV_SIZE = 65536
# Reads without a park before the reader yields to the scheduler anyway (fairness).
READS_PER_CHECKPOINT = 16
_SKIP = object()  # a message that was counted but goes no further


class Connection:
    """An open WebSocket connection, as handler callbacks receive it.

    Every method is synchronous and never blocks: deliveries are encoded once and written
    or queued at once. Attributes ``user_id``, ``session_id``, ``subprotocol`` and
    ``request`` are fixed at the handshake; ``state`` is yours.
    """

    __slots__ = (
        "__weakref__",
        "_aborted",
        "_activity",
        "_bucket",
        "_channels",
        "_close_deadline",
        "_close_sent",
        "_core",
        "_deflate",
        "_gate_busy",
        "_gate_lot",
        "_groups",
        "_inflight",
        "_info_task",
        "_infos",
        "_last_ping",
        "_last_rx",
        "_names",
        "_nursery",
        "_opened_at",
        "_outbox",
        "_parser",
        "_ping_sent_at",
        "_reason",
        "_sock",
        "_writer_running",
        "request",
        "session_id",
        "state",
        "subprotocol",
        "user_id",
    )

    def __init__(
        self,
        core: Core,
        sock: socket.socket,
        request: AuthRequest,
        *,
        user_id: str,
        session_id: str,
        state: Any,
        subprotocol: str | None,
        leftover: bytes,
        deflate: Inflater | None = None,
    ) -> None:
        cfg = core.config
        self._core = core
        self._sock = sock
        self.request = request
        self.user_id = user_id
        self.session_id = session_id
        self.state = state
        self.subprotocol = subprotocol
        self._channels: set[str] | None = None  # made on the first join
        self._names: set[str] | None = None
        self._groups: set[str] | None = None
        if cfg.outbox_policy == "drop_oldest":
            self._outbox = Outbox(
                sock, cfg.outbox_size, cfg.outbox_bytes, self._wake_writer, drop_oldest=True
            )
        else:
            self._outbox = Outbox(sock, cfg.outbox_size, cfg.outbox_bytes, self._wake_writer)
        self._deflate = deflate
        if deflate is None:
            self._parser = FrameParser(cfg.max_message_size)
        else:
            self._parser = FrameParser(cfg.max_message_size, deflate=True)
        if leftover:
            self._parser.feed(leftover)
        now = trio.current_time()
        self._bucket = (
            TokenBucket(cfg.transmission_limit, cfg.transmission_period, now)
            if cfg.transmission_limit
            else None
        )
        self._activity = False
        self._opened_at = now
        self._last_rx = now
        self._last_ping = now
        self._ping_sent_at: float | None = None
        self._close_sent = False
        self._close_deadline: float | None = None
        self._reason: TerminateReason | None = None
        self._aborted = False
        self._writer_running = False
        self._gate_busy = False
        self._gate_lot: ParkingLot | None = None  # made when two callbacks first contend
        self._infos: deque[Any] | None = None  # made on the first send_info
        self._info_task = False
        self._inflight: memoryview | None = None
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<Connection user_id={self.user_id!r} session_id={self.session_id!r}>"

    # ------------------------------------------------------------------ public API

    @property
    def path(self) -> str:
        """The path the client connected to."""
        return self.request.path

    @property
    def remote(self) -> tuple[str, int]:
        """The client's ``(host, port)``."""
        return self.request.peer

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or the connection ended."""
        return self._close_sent or self._outbox.closed

    @property
    def channels(self) -> frozenset[str]:
        """The channels this connection is a member of."""
        return frozenset(self._channels or ())

    def send(self, obj: Any) -> int:
        """Encode ``obj`` with the handler's codec and send it to this client.

        Returns 1 when it was written or queued, 0 when the outbox was full (the connection
        is then shed with 1008 ``slow_consumer``).

        Raises:
            ConnectionClosed: the connection is closing or closed.
            CodecError: ``obj`` cannot be encoded; nothing was sent.
        """
        if self._close_sent or self._outbox.closed:
            raise ConnectionClosed(*self._closed_args())
        if self._deflate is None:
            frame, text = self._core.encode(obj)
        else:
            data, text = self._core.payload(obj)
            frame = self._core.compressed_frame(data, text)
        status = self._outbox.push(frame)
        if status <= PUSH_QUEUED:
            if text:
                self._core.metrics.outgoing_text += 1
            else:
                self._core.metrics.outgoing_binary += 1
            return 1
        if status == PUSH_FULL:
            self._overflow()
        return 0

    deliver_me = send

    def deliver_user(self, user_id: str, obj: Any) -> int:
        """Send ``obj`` to every connection of ``user_id`` (all their devices)."""
        return self._core.deliver(self._core.registry.user(user_id), obj)

    def deliver_session(self, user_id: str, session_id: str, obj: Any) -> int:
        """Send ``obj`` to the connections of one session of ``user_id``."""
        return self._core.deliver(self._core.registry.session(user_id, session_id), obj)

    def deliver_channel(self, channel: str, obj: Any) -> int:
        """Send ``obj`` to every member of ``channel``, this connection included if it is one."""
        return self._core.deliver(self._core.registry.channel(channel), obj)

    def join_channel(self, channel: str) -> bool:
        """Join ``channel``; joining twice is harmless and still delivers once.

        Returns False if the connection was a member already.

        Raises:
            ConnectionClosed: the connection has ended.
        """
        if not isinstance(channel, str) or not channel:
            raise TypeError(f"channel must be a non-empty str, got {channel!r}")
        if self._close_sent or self._outbox.closed:
            raise ConnectionClosed(*self._closed_args())
        return self._core.registry.join(self, channel)

    def leave_channel(self, channel: str) -> bool:
        """Leave ``channel``; returns False if the connection was not a member."""
        return self._core.registry.leave(self, channel)

    @property
    def server(self) -> Server:
        """The server this connection belongs to (delivery and infos to anyone)."""
        assert self._core.server is not None
        return self._core.server

    @property
    def names(self) -> frozenset[str]:
        """The unique names this connection holds."""
        return frozenset(self._names or ())

    @property
    def groups(self) -> frozenset[str]:
        """The groups this connection is a member of."""
        return frozenset(self._groups or ())

    def register_name(self, name: str) -> None:
        """Hold the unique ``name``: ``server.send_info(name, info)`` reaches this connection.

        The name is freed when the connection closes. Registering a name this connection
        holds already does nothing.

        Raises:
            NameInUseError: another connection holds ``name``.
            ConnectionClosed: this connection is closing or closed.
        """
        self._check_member_name(name, "name")
        self._core.registry.register_name(self, name)

    def unregister_name(self, name: str) -> bool:
        """Free ``name``; False if this connection did not hold it."""
        return self._core.registry.unregister_name(self, name)

    def join_group(self, group: str) -> bool:
        """Join ``group``: ``server.publish(group, info)`` reaches this connection's
        ``handle_info``. Returns False if it was a member already.

        Raises:
            ConnectionClosed: this connection is closing or closed.
        """
        self._check_member_name(group, "group")
        return self._core.registry.join_group(self, group)

    def leave_group(self, group: str) -> bool:
        """Leave ``group``; False if this connection was not a member."""
        return self._core.registry.leave_group(self, group)

    def _check_member_name(self, value: object, what: str) -> None:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{what} must be a non-empty str, got {value!r}")
        if self._close_sent or self._outbox.closed:
            raise ConnectionClosed(*self._closed_args())

    def send_info(self, info: Any) -> None:
        """Post ``info`` to this connection's ``Handler.handle_info``.

        It runs after the callback in progress, never overlapping it. The mailbox holds up
        to ``outbox_size`` infos; past that ``outbox_policy`` applies. Posting to a closed
        connection does nothing.
        """
        self._post_info(info)

    def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str = "") -> None:
        """Run ``await fn(*args)`` as a child task of this connection.

        Its return value arrives in ``handle_info`` as :class:`TaskResult`, an exception as
        :class:`TaskFailed` (logged too). The task is cancelled when the connection ends.

        Raises:
            ConnectionClosed: this connection is closing or closed.
        """
        if self._nursery is None or self._close_sent:
            raise ConnectionClosed(*self._closed_args())
        self._nursery.start_soon(self._child, fn, args, name or getattr(fn, "__name__", "task"))

    async def _child(self, fn: Callable[..., Awaitable[Any]], args: Any, name: str) -> None:
        try:
            value = await fn(*args)
        except Exception as exc:
            log.exception("task_failed", task=name, user_id=self.user_id)
            self._post_info(TaskFailed(name, exc))
        else:
            self._post_info(TaskResult(name, value))

    def _post_info(self, info: Any) -> int:
        """Queue ``info`` for handle_info; 1 if queued (or queued after dropping), else 0."""
        if self._outbox.closed or self._nursery is None or self._close_sent:
            return 0
        infos = self._infos
        if infos is None:
            infos = self._infos = deque()
        elif len(infos) >= self._core.config.outbox_size:
            policy = self._core.config.outbox_policy
            if policy == "drop_oldest":
                infos.popleft()
                self._dropped()
            else:
                self._overflow()
                return 0
        infos.append(info)
        if not self._info_task:
            self._info_task = True
            self._nursery.start_soon(self._run_infos)
        return 1

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake with ``code`` and ``reason``; ``terminate`` follows.

        Raises:
            ValueError: ``code`` is not a close code a server may send.
        """
        self._initiate_close(code, reason, "closed")

    # ------------------------------------------------------------------ closing

    def _closed_args(self) -> tuple[int | None, str]:
        r = self._reason
        return (r.code, r.reason) if r is not None else (1006, "")

    def _initiate_close(self, code: int, reason: str, kind: str) -> None:
        """Send our close frame (once); the reader then waits for the client's."""
        if self._close_sent:
            return
        frame = encode_close(code, reason)  # ValueError for a code a server may not send
        self._mark_closing()
        if self._reason is None:
            self._reason = TerminateReason(kind, code, reason)
        self._close_deadline = trio.current_time() + self._core.config.close_timeout
        if self._infos:
            self._infos.clear()
        if self._outbox.push(frame) == PUSH_FULL:
            # Shed: whatever is queued goes first (a frame may be half sent), then the close.
            self._inflight = memoryview(self._pending() + frame)
            self._wake_writer()

    def _mark_closing(self) -> None:
        """No more data frames: leave every delivery group (the close frame is last)."""
        if not self._close_sent:
            self._close_sent = True
            self._core.registry.unroute(self)

    def _pending(self) -> bytes:
        rest = bytes(self._inflight) if self._inflight is not None else b""
        self._inflight = None
        return rest + self._outbox.take()

    def _overflow(self) -> None:
        """A message did not fit the outbox (or mailbox): shed, or count the drop."""
        if self._core.close_on_overflow:
            self._shed()
        else:
            self._dropped()

    def _dropped(self) -> None:
        self._core.metrics.dropped_messages += 1
        self._core.warn("message_dropped", user_id=self.user_id, session_id=self.session_id)

    def _shed(self) -> None:
        """The outbox is full: close 1008 ``slow_consumer``."""
        if not self._close_sent:
            self._core.warn("slow_consumer", user_id=self.user_id, session_id=self.session_id)
            self._initiate_close(1008, "slow_consumer", "slow_consumer")

    def _abort(self) -> None:
        """Stop now: the client did not finish the closing handshake, or the socket broke."""
        self._aborted = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        """The connection's whole life; returns when it is over (never raises)."""
        core = self._core
        core.registry.add(self)
        core.metrics.sessions_total += 1
        if self._deflate is not None:
            core.deflate_connections += 1
        try:
            async with trio.open_nursery() as nursery:
                # Holds the writer and handle_info tasks, started only when needed.
                self._nursery = nursery
                await self._callback(core.handler.init, self, failed="init_failed")
                await self._read_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            core.registry.remove(self)
            if self._deflate is not None:
                core.deflate_connections -= 1
            if core.config.outbox_policy == "drop_oldest":  # keep the metric monotonic
                core.metrics.dropped_messages += self._outbox.dropped_frames
            # Cancelled from outside (the server is being torn down), cut off after the
            # close timeout, or the socket broke: no more waiting for the client, but
            # terminate still runs.
            hurry = self._aborted or trio.current_effective_deadline() == -math.inf
            with trio.CancelScope(shield=True):
                await self._finish(0 if hurry else core.config.close_timeout)

    async def _finish(self, flush_timeout: float) -> None:
        """Flush what is queued (bounded by flush_timeout), close TCP, run terminate."""
        core = self._core
        reason = self._reason or TerminateReason("remote", 1006, "")
        self._reason = reason
        with trio.move_on_after(flush_timeout):
            await self._flush()
        self._outbox.close()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        core.metrics.disconnects[reason.kind] += 1
        core.metrics.observe_duration(trio.current_time() - self._opened_at)
        with trio.move_on_after(core.config.terminate_timeout) as scope:
            await self._gate_enter()
            try:
                await core.handler.terminate(reason, self)
            except Exception:
                log.exception("terminate_failed", user_id=self.user_id, session_id=self.session_id)
            finally:
                self._gate_exit()
        if scope.cancelled_caught:
            log.warning(
                "terminate_timeout",
                user_id=self.user_id,
                session_id=self.session_id,
                timeout=core.config.terminate_timeout,
            )

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        """Read, parse and dispatch until the connection is over.

        Awaits as little as it can: ``recv`` is tried first and the task parks on
        ``wait_readable`` only when the previous read drained the socket (it returned less
        than it asked for) or the kernel said EAGAIN; after ``READS_PER_CHECKPOINT`` reads
        without a park it yields to the scheduler anyway.
        """
        sock = self._sock
        recv = sock.recv
        parser = self._parser
        next_event = parser.next_event
        feed = parser.feed
        metrics = self._core.metrics
        handle_message = self._core.handler.handle_message
        drained = not parser.buffered  # nothing came with the handshake: wait for data
        reads = 0
        while True:
            # Dispatch every complete event the parser has.
            try:
                while (event := next_event()) is not None:
                    kind = event[0]
                    if kind <= EV_BINARY:  # EV_TEXT, EV_BINARY
                        if self._close_sent:
                            continue  # closing: data is dropped until the client's close
                        msg = self._accept_message(kind == EV_TEXT, event[1])
                        if msg is not _SKIP:
                            await self._callback(handle_message, msg, self)
                    elif kind <= EV_BINARY_DEFLATED:  # a compressed message
                        if self._close_sent:
                            continue
                        text = kind == EV_TEXT_DEFLATED
                        msg = self._accept_message(text, self._inflate(event[1], text))
                        if msg is not _SKIP:
                            await self._callback(handle_message, msg, self)
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
                    data = recv(RECV_SIZE)
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
            feed(data)

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
            log.debug("undecodable_message", user_id=self.user_id, error=str(exc))
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

    def _push_control(self, frame: bytes) -> None:
        """Queue a close frame: past a full outbox if need be (it is the last frame)."""
        if self._outbox.push(frame) == PUSH_FULL:
            self._inflight = memoryview(self._pending() + frame)
            self._wake_writer()

    def _push_ping_or_pong(self, frame: bytes) -> None:
        """Queue a ping or pong; a full outbox is the client's problem (outbox_policy): a
        client that pings without reading is shed, or its pongs are dropped."""
        if self._outbox.push(frame) == PUSH_FULL:
            self._overflow()

    # ------------------------------------------------------------------ callbacks

    async def _callback(self, fn: Any, *args: Any, failed: str = "internal_error") -> bool:
        """Run one handler callback, never overlapping another; False if it failed."""
        if self._gate_busy:
            await self._gate_enter()
        else:
            self._gate_busy = True
        try:
            await fn(*args)
        except CloseConnection as exc:
            try:
                self._initiate_close(exc.code, exc.reason, "stop")
            except ValueError:
                log.error("bad_close_code", code=exc.code, user_id=self.user_id)
                self._initiate_close(1011, "internal error", "internal_error")
            return False
        except Exception as exc:
            if isinstance(exc, ConnectionClosed) and self._close_sent:
                return False  # this connection is closing: the handler's send ended quietly
            log.exception(
                "handler_failed",
                callback=getattr(fn, "__name__", repr(fn)),
                user_id=self.user_id,
                session_id=self.session_id,
            )
            if not self._close_sent:
                self._reason = TerminateReason(failed, 1011, "internal error")
            self._initiate_close(1011, "internal error", failed)
            return False
        finally:
            self._gate_exit()
        return True

    async def _gate_enter(self) -> None:
        while self._gate_busy:
            if self._gate_lot is None:
                self._gate_lot = ParkingLot()
            await self._gate_lot.park()
        self._gate_busy = True

    def _gate_exit(self) -> None:
        self._gate_busy = False
        if self._gate_lot:
            self._gate_lot.unpark()

    async def _run_infos(self) -> None:
        handler = self._core.handler
        try:
            while self._infos and not self._close_sent:
                info = self._infos.popleft()
                await self._callback(handler.handle_info, info, self)
        finally:
            self._info_task = False

    # ------------------------------------------------------------------ writing

    def _wake_writer(self) -> None:
        """Something is queued: start the writer task unless it runs already."""
        if not self._writer_running and self._nursery is not None:
            self._writer_running = True
            try:
                self._nursery.start_soon(self._write_loop)
            except RuntimeError:  # the connection is ending: its final flush sends the rest
                self._writer_running = False

    async def _write_loop(self) -> None:
        """Drain the outbox, then end: an idle connection keeps no writer task."""
        outbox = self._outbox
        try:
            while outbox.queued_frames or self._inflight is not None or outbox.error:
                await self._flush()
                if outbox.closed:
                    # The socket broke under a write: stop reading too.
                    self._lost()
                    self._abort()
                    return
        finally:
            self._writer_running = False

    async def _flush(self) -> None:
        """Send everything queued, in order; on a broken socket, close the outbox."""
        outbox = self._outbox
        sock = self._sock
        outbox.writing = True
        sends = 0
        try:
            while True:
                data = self._inflight
                if data is None:
                    if not outbox.queued_frames:
                        return
                    data = self._inflight = memoryview(outbox.take())
                try:
                    n = sock.send(data)
                except BlockingIOError:
                    await wait_writable(sock)
                    continue
                except OSError:
                    self._inflight = None
                    outbox.close()
                    self._lost()
                    return
                self._inflight = data[n:] if n < len(data) else None
                sends += 1
                if sends >= READS_PER_CHECKPOINT:
                    sends = 0
                    await checkpoint()
        finally:
            outbox.writing = False

    # ------------------------------------------------------------------ timers

    def _check_timers(self, now: float) -> None:
        """Called by the server's sweeper: idle, age, keepalive and close deadlines."""
        cfg = self._core.config
        if self._close_deadline is not None:
            if now >= self._close_deadline:
                self._abort()
            return
        if self._activity:
            self._activity = False
            self._last_rx = now
        elif cfg.idle_timeout is not None and now - self._last_rx >= cfg.idle_timeout:
            self._initiate_close(1000, "idle timeout", "idle_timeout")
            return
        if cfg.max_connection_age is not None and now - self._opened_at >= cfg.max_connection_age:
            self._initiate_close(1000, "connection too old", "over_age")
            return
        if cfg.ping_interval is not None:
            if self._ping_sent_at is not None:
                if now - self._ping_sent_at >= cfg.ping_timeout:
                    self._initiate_close(1011, "keepalive timeout", "keepalive_timeout")
            elif now - self._last_ping >= cfg.ping_interval:
                self._last_ping = now
                self._ping_sent_at = now
                self._push_ping_or_pong(encode_frame(OP_PING, b"riverside"))

    def _go_away(self) -> None:
        """Server shutdown: close 1001."""
        self._initiate_close(1001, "server shutting down", "shutdown")
