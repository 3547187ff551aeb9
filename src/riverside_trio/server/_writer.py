"""The writing half of a connection: its outbox and the writer task that drains it.

Outgoing frames go through the connection's :class:`~riverside_trio.wire.frames.Outbox`.
Over a plain socket (the fast path) the outbox writes to the socket without awaiting when
nothing is queued (held back by the server's :class:`~riverside_trio.wire.frames.Cork` until
the reader parks or the flusher runs, so a burst leaves in one ``send``), and queues only what the
kernel refuses; over TLS on a socket the same, through the transport's encryption (its
``sender``). Over a stream (memory streams) every frame is queued. Either way a
writer task is started when something is queued and ends when the queue is empty, so an
idle connection has none. The queue is bounded (``outbox_size``, ``outbox_bytes``); a full
one is the connection's problem (``outbox_policy``).

The writer takes the queue in batches of whole frames of at most ``WRITE_BATCH`` bytes (one
frame at least), so what waits behind the batch stays in the outbox, counted by its limits
and droppable: a client holds at most ``outbox_bytes`` queued plus one batch. Both count
against the node's memory budget (``max_queued_bytes``): the outbox charges its queue, the
writer its batch (``held_bytes`` is both).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from trio.lowlevel import checkpoint, wait_writable

from ..wire.frames import PUSH_FULL, Outbox
from ._transport import SocketTransport, StreamTransport, TLSTransport, Transport

if TYPE_CHECKING:
    from ._core import Core


class Owner(Protocol):
    """What the writer needs of its connection (a small protocol: the connection owns the
    writer, and the writer does not import the connection)."""

    _core: Core

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> bool: ...
    def _lost(self) -> None: ...
    def _abort(self) -> None: ...


__all__ = ["SENDS_PER_CHECKPOINT", "WRITE_BATCH", "Owner", "Writer"]

# The most bytes (whole frames, one at least) the writer takes out of the outbox at a time.
WRITE_BATCH = 65536

# Sends without a park before the writer yields to the scheduler anyway.
SENDS_PER_CHECKPOINT = 16


class Writer:
    """The outbox of one connection and the task that drains it."""

    __slots__ = ("_conn", "_held", "_inflight", "_running", "outbox", "transport")

    def __init__(self, conn: Owner, transport: Transport) -> None:
        core = conn._core
        cfg = core.config
        self._conn = conn
        self.transport = transport
        fast = isinstance(transport, SocketTransport)
        tls = transport if isinstance(transport, TLSTransport) else None
        self.outbox = Outbox(
            transport.sock if fast else None,
            cfg.outbox_size,
            cfg.outbox_bytes,
            self.wake,
            drop_oldest=cfg.outbox_policy == "drop_oldest",
            cork=core.cork if fast or tls is not None else None,
            budget=core.budget,
            sender=tls.send_plain if tls is not None else None,
        )
        if tls is not None:
            tls.attach(self.wake, core.budget)
        self._running = False
        # Taken out of the outbox, not yet written: on the fast path what is left of the
        # batch (maybe a partly sent frame); on either path the close frame and what was
        # queued before it, when the outbox was full.
        self._inflight: memoryview | None = None
        self._held = 0  # bytes the writer holds, charged to the budget

    @property
    def busy(self) -> bool:
        """Something is queued or half sent (TLS: ciphertext the kernel has not taken)."""
        return (
            bool(self.outbox.queued_frames)
            or self._inflight is not None
            or bool(self.transport.pending if isinstance(self.transport, TLSTransport) else 0)
        )

    @property
    def held_bytes(self) -> int:
        """Bytes queued or being written: what this connection holds of the node's memory
        (over TLS with the ciphertext waiting for the kernel, at most about one batch)."""
        held = self.outbox.queued_bytes + self._held
        if isinstance(self.transport, TLSTransport):
            held += len(self.transport.pending)
        return held

    def push_control(self, frame: bytes) -> None:
        """Queue a close frame: past a full outbox if need be (it is the last frame).

        When the outbox is full (a shed client), whatever is queued goes first, since a
        frame may be half sent, then the close frame.
        """
        if self.outbox.push(frame) == PUSH_FULL:
            rest = self._pending()
            self._inflight = self._hold(rest + self.outbox.take() + frame)
            self.wake()

    def close(self) -> None:
        """The connection is over: drop whatever is queued or held (and its charge)."""
        self.outbox.close()
        self._inflight = None
        self._let_go(self._held)

    def _pending(self, limit: int = -1) -> bytes:
        """What is to be written next, in order, now out of the writer's and outbox's
        hands: what the writer held, else a batch of at most ``limit`` bytes (one frame at
        least; everything when negative)."""
        if self._inflight is not None:
            rest = bytes(self._inflight)
            self._inflight = None
            self._let_go(len(rest))
            return rest
        return self.outbox.take(limit)

    def _hold(self, data: bytes) -> memoryview:
        """The writer holds ``data`` until it is written: charge it to the budget."""
        self._held += len(data)
        self._conn._core.budget.charge(len(data))
        return memoryview(data)

    def _let_go(self, n: int) -> None:
        """``n`` held bytes were written or dropped."""
        if n:
            self._held -= n
            self._conn._core.budget.credit(n)

    def wake(self) -> None:
        """Something is queued: start the writer task unless it runs already."""
        if not self._running:
            # Once the connection has ended, its final flush sends the rest.
            self._running = self._conn._spawn(self._write_loop)

    async def _write_loop(self) -> None:
        """Drain the outbox, then end: an idle connection keeps no writer task."""
        outbox = self.outbox
        try:
            while self.busy or outbox.error:
                await self.flush()
                if outbox.closed:
                    # The peer is gone: stop reading too.
                    self._conn._lost()
                    self._conn._abort()
                    return
        finally:
            self._running = False

    async def flush(self) -> None:
        """Send everything queued, in order; on a dead peer, close the outbox.

        Cancelled, nothing is lost on the fast paths: a partly sent frame stays in
        ``_inflight`` (plain socket), ciphertext in the transport's ``pending`` (TLS), and
        the connection's final flush sends the rest.
        """
        transport = self.transport
        if isinstance(transport, SocketTransport):
            await self._flush_socket(transport)
        elif isinstance(transport, TLSTransport):
            await self._flush_tls(transport)
        else:
            await self._flush_stream(transport)

    async def _flush_stream(self, transport: StreamTransport) -> None:
        outbox = self.outbox
        outbox.writing = True
        try:
            # What push_control left in _inflight goes first: left alone, the write loop
            # would see work it never does, and spin.
            while data := self._pending(WRITE_BATCH):
                self._hold(data)
                try:
                    sent = await transport.send_all(data)
                finally:
                    self._let_go(len(data))
                if not sent:
                    self.close()
                    self._conn._lost()
                    return
        finally:
            outbox.writing = False

    async def _flush_tls(self, transport: TLSTransport) -> None:
        outbox = self.outbox
        sock = transport.sock
        outbox.writing = True
        sends = 0
        try:
            while True:
                if transport.pending:
                    try:
                        transport.send_pending()
                    except OSError:
                        transport.drop_pending()
                        self.close()
                        self._conn._lost()
                        return
                    if transport.pending:
                        await wait_writable(sock)
                        continue
                    sends += 1
                    if sends >= SENDS_PER_CHECKPOINT:
                        sends = 0
                        await checkpoint()
                data = self._pending(WRITE_BATCH)
                if not data:
                    return
                self._hold(data)
                try:
                    transport.encrypt(data)  # now ciphertext in transport.pending
                except OSError:
                    self.close()
                    self._conn._lost()
                    return
                finally:
                    self._let_go(len(data))
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
                    data = self._inflight = self._hold(outbox.take(WRITE_BATCH))
                try:
                    n = sock.send(data)
                except BlockingIOError:
                    await wait_writable(sock)
                    continue
                except OSError:
                    self.close()
                    self._conn._lost()
                    return
                self._let_go(n)
                self._inflight = data[n:] if n < len(data) else None
                sends += 1
                if sends >= SENDS_PER_CHECKPOINT:
                    sends = 0
                    await checkpoint()
        finally:
            outbox.writing = False
