"""The writing half of a connection: its outbox and the writer task that drains it.

Outgoing frames go through the connection's :class:`~riverside_trio.wire.frames.Outbox`.
Over a plain socket (the fast path) the outbox writes to the socket without awaiting when
nothing is queued (held back by the server's :class:`~riverside_trio.wire.frames.Cork` until
the reader parks or the flusher runs, so a burst leaves in one ``send``), and queues only what the
kernel refuses. Over a stream (TLS, memory streams) every frame is queued. Either way a
writer task is started when something is queued and ends when the queue is empty, so an
idle connection has none. The queue is bounded (``outbox_size``, ``outbox_bytes``); a full
one is the connection's problem (``outbox_policy``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from trio.lowlevel import checkpoint, wait_writable

from ..wire.frames import PUSH_FULL, Outbox
from ._transport import SocketTransport, Transport

if TYPE_CHECKING:
    from ._core import Core


class Owner(Protocol):
    """What the writer needs of its connection (a small protocol: the connection owns the
    writer, and the writer does not import the connection)."""

    _core: Core

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> bool: ...
    def _lost(self) -> None: ...
    def _abort(self) -> None: ...


__all__ = ["SENDS_PER_CHECKPOINT", "Owner", "Writer"]

# Sends without a park before the writer yields to the scheduler anyway.
SENDS_PER_CHECKPOINT = 16


class Writer:
    """The outbox of one connection and the task that drains it."""

    __slots__ = ("_conn", "_inflight", "_running", "outbox", "transport")

    def __init__(self, conn: Owner, transport: Transport) -> None:
        cfg = conn._core.config
        self._conn = conn
        self.transport = transport
        fast = isinstance(transport, SocketTransport)
        self.outbox = Outbox(
            transport.sock if fast else None,
            cfg.outbox_size,
            cfg.outbox_bytes,
            self.wake,
            drop_oldest=cfg.outbox_policy == "drop_oldest",
            cork=conn._core.cork if fast else None,
        )
        self._running = False
        self._inflight: memoryview | None = None  # a partly sent frame (fast path)

    @property
    def busy(self) -> bool:
        """Something is queued or half sent."""
        return bool(self.outbox.queued_frames) or self._inflight is not None

    @property
    def held_bytes(self) -> int:
        """Bytes queued or half sent: what this connection holds of the node's memory."""
        inflight = self._inflight
        return self.outbox.queued_bytes + (len(inflight) if inflight is not None else 0)

    def push_control(self, frame: bytes) -> None:
        """Queue a close frame: past a full outbox if need be (it is the last frame).

        When the outbox is full (a shed client), whatever is queued goes first, since a
        frame may be half sent, then the close frame.
        """
        if self.outbox.push(frame) == PUSH_FULL:
            self._inflight = memoryview(self._pending() + frame)
            self.wake()

    def _pending(self) -> bytes:
        rest = bytes(self._inflight) if self._inflight is not None else b""
        self._inflight = None
        return rest + self.outbox.take()

    def wake(self) -> None:
        """Something is queued: start the writer task unless it runs already."""
        if not self._running:
            # Once the connection has ended, its final flush sends the rest.
            self._running = self._conn._spawn(self._write_loop)

    async def _write_loop(self) -> None:
        """Drain the outbox, then end: an idle connection keeps no writer task."""
        outbox = self.outbox
        try:
            while outbox.queued_frames or self._inflight is not None or outbox.error:
                await self.flush()
                if outbox.closed:
                    # The peer is gone: stop reading too.
                    self._conn._lost()
                    self._conn._abort()
                    return
        finally:
            self._running = False

    async def flush(self) -> None:
        """Send everything queued, in order; on a dead peer, close the outbox."""
        if isinstance(self.transport, SocketTransport):
            await self._flush_socket(self.transport)
            return
        outbox = self.outbox
        outbox.writing = True
        try:
            while outbox.queued_frames:
                if not await self.transport.send_all(outbox.take()):
                    outbox.close()
                    self._conn._lost()
                    return
        finally:
            outbox.writing = False

    async def _flush_socket(self, transport: SocketTransport) -> None:
        outbox = self.outbox
        sock = transport.sock
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
                    self._conn._lost()
                    return
                self._inflight = data[n:] if n < len(data) else None
                sends += 1
                if sends >= SENDS_PER_CHECKPOINT:
                    sends = 0
                    await checkpoint()
        finally:
            outbox.writing = False
