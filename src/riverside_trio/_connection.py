"""One WebSocket connection: its state, the outbox and its writer, callbacks, closing.

The rules of a connection (reading is in ``_reader.py``, infos and names in
``_mailbox.py``, both mixed into :class:`Connection`):

- One task per connection reads: it drains everything the socket has (a non-blocking
  ``recv`` first, parking on ``wait_readable`` only when the kernel says EAGAIN), feeds it
  to the compiled frame parser, and runs ``init`` / ``handle_message`` / ``terminate``.
- Outgoing frames go through the connection's :class:`~riverside_trio.frames.Outbox`:
  written to the socket without awaiting when nothing is queued (held back by the
  server's :class:`~riverside_trio.frames.Cork` until the task step ends, so one step's
  frames leave in one ``send``), else queued (bounded by ``outbox_size`` and
  ``outbox_bytes``) for a writer task, started only when the kernel refuses bytes and
  ending when the queue is empty. A full outbox applies ``outbox_policy``: close 1008
  ``slow_consumer``, or drop the oldest or the newest message.
- Side tasks (the writer, the ``handle_info`` runner, child tasks) run in the server's
  nursery, each under a cancel scope of the connection's, cancelled when it ends: an
  idle connection has no nursery of its own.
- ``handle_info`` runs in a short-lived task started when something is posted; a gate
  keeps it from overlapping ``handle_message``, ``init`` and ``terminate``.
- Closing: the first close wins and fixes the TerminateReason; the connection leaves every
  delivery group at once. After our close frame is out, data messages are dropped until the
  client's close frame arrives; the server then closes TCP. A client that does not answer
  within ``close_timeout`` is cut off. A protocol violation sends its close code and closes
  TCP without waiting.
- Timers (idle, age, keepalive, close timeout) are checked by the server's sweeper, so an
  idle connection costs one parked task and no timer of its own.
- ``terminate(reason)`` runs exactly once, shielded and time-boxed, after the reader ends.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio
from trio.lowlevel import ParkingLot, checkpoint, wait_writable

from ._deflate import Inflater
from ._mailbox import Mailbox
from ._reader import READS_PER_CHECKPOINT, Reader
from .errors import CloseConnection, ConnectionClosed
from .frames import (
    OP_PING,
    PUSH_FULL,
    PUSH_QUEUED,
    FrameParser,
    Outbox,
    TokenBucket,
    encode_close,
    encode_frame,
)
from .handler import AuthRequest, TerminateReason

if TYPE_CHECKING:
    from ._core import Core

__all__ = ["Connection"]

log = structlog.get_logger("riverside_trio.connection")


class Connection(Reader, Mailbox):
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
        "_ended",
        "_gate_busy",
        "_gate_lot",
        "_groups",
        "_inflight",
        "_info_task",
        "_infos",
        "_last_ping",
        "_last_rx",
        "_names",
        "_opened_at",
        "_outbox",
        "_parser",
        "_ping_sent_at",
        "_reason",
        "_scope",
        "_side",
        "_side_lot",
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
        self._outbox = Outbox(
            sock,
            cfg.outbox_size,
            cfg.outbox_bytes,
            self._wake_writer,
            drop_oldest=cfg.outbox_policy == "drop_oldest",
            cork=core.cork,
        )
        self._deflate = deflate
        self._parser = FrameParser(cfg.max_message_size, deflate=deflate is not None)
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
        self._scope: trio.CancelScope | None = None  # the reading task's, for _abort
        self._side: set[trio.CancelScope] | None = None  # scopes of running side tasks
        self._side_lot: ParkingLot | None = None
        self._ended = False  # reading is over: no new side tasks

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
        self._push_control(frame)

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
        if self._scope is not None:
            self._scope.cancel()

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        """The connection's whole life; returns when it is over (never raises)."""
        core = self._core
        core.registry.add(self)
        core.metrics.sessions_total += 1
        if self._deflate is not None:
            core.deflate_connections += 1
        try:
            # No nursery of its own (it would cost every idle connection): the side tasks
            # run in the server's nursery under scopes of this connection (_spawn).
            with trio.CancelScope() as self._scope:
                await self._callback(core.handler.init, self, failed="init_failed")
                await self._read_loop()
        finally:
            self._ended = True
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
                if self._side:
                    await self._stop_side_tasks()
                await self._finish(0 if hurry else core.config.close_timeout)

    # ------------------------------------------------------------------ side tasks

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> bool:
        """Start ``fn(*args)`` as a side task of this connection; False once it has ended.

        Side tasks (the writer, the handle_info runner, child tasks) run in the server's
        nursery, each under a cancel scope that the connection cancels when it ends.
        """
        nursery = self._core.nursery
        if self._ended or nursery is None:
            return False
        try:
            nursery.start_soon(self._side_task, fn, args)
        except RuntimeError:  # the server's nursery is closing
            return False
        return True

    async def _side_task(self, fn: Callable[..., Awaitable[object]], args: Any) -> None:
        if self._ended:
            return  # the connection ended before this task began
        side = self._side
        if side is None:
            side = self._side = set()
        scope = trio.CancelScope()
        side.add(scope)
        try:
            with scope:
                await fn(*args)
        except Exception:
            # A bug of ours: end this connection, never the server.
            log.exception("connection_task_failed", user_id=self.user_id, task=fn.__name__)
            self._lost()
            self._abort()
        finally:
            side.discard(scope)
            if not side and self._side_lot is not None:
                self._side_lot.unpark_all()

    async def _stop_side_tasks(self) -> None:
        """Cancel the side tasks and wait until they have all returned."""
        side = self._side
        assert side is not None
        for scope in side:
            scope.cancel()
        lot = self._side_lot = ParkingLot()
        while side:
            await lot.park()

    async def _finish(self, flush_timeout: float) -> None:
        """Flush what is queued (bounded by flush_timeout), close TCP, run terminate."""
        core = self._core
        reason = self._reason or TerminateReason("remote", 1006, "")
        self._reason = reason
        if self._outbox.queued_frames or self._inflight is not None:
            with trio.move_on_after(flush_timeout):
                await self._flush()
        self._outbox.close()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        core.metrics.disconnects[reason.kind] += 1
        core.metrics.observe_duration(trio.current_time() - self._opened_at)
        if not core.has_terminate:
            return
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

    def _push_control(self, frame: bytes) -> None:
        """Queue a close frame: past a full outbox if need be (it is the last frame).

        When the outbox is full (a shed client), whatever is queued goes first, since a
        frame may be half sent, then the close frame.
        """
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

    # ------------------------------------------------------------------ writing

    def _wake_writer(self) -> None:
        """Something is queued: start the writer task unless it runs already."""
        if not self._writer_running:
            # Once the connection has ended, its final flush sends the rest.
            self._writer_running = self._spawn(self._write_loop)

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
