"""The one seam between a connection and its bytes: a plain socket or any Trio stream.

Two transports, one interface, and every rule of the front door and the connection above
them:

- :class:`SocketTransport`, the fast path: a non-blocking plain TCP socket. Reads try
  ``recv`` first and park on ``wait_readable`` only when the kernel says EAGAIN; the
  compiled outbox writes straight to its descriptor.
- :class:`~._tls.TLSTransport`, ``wss://`` on the same fast path: TLS with
  :class:`ssl.SSLObject` over memory BIOs, non-blocking ``recv`` and ``send`` on the socket;
  the outbox hands it plaintext directly (its ``sender``), as it would write to a plain
  socket.
- :class:`StreamTransport`, the stream path: any :class:`trio.abc.Stream` (one end of
  ``trio.testing.memory_stream_pair`` in tests, or a stream of your own through
  ``Server.serve_stream``). Reads are ``receive_some`` and writes ``send_all``, by one task
  at a time: the outbox never writes to it directly, its writer task does.

Both report a dead peer the same way: ``b""`` from :meth:`receive`, False from
:meth:`send_all`.
"""

from __future__ import annotations

import contextlib
import socket

import trio
from trio.lowlevel import wait_readable, wait_writable

from ._poller import Watch
from ._tls import TLSTransport

__all__ = ["RECV_SIZE", "SocketTransport", "StreamTransport", "TLSTransport", "Transport"]

RECV_SIZE = 65536
# How long a stream's closing handshake (TLS close_notify) may take before it is cut.
_STREAM_CLOSE_TIMEOUT = 1.0


class SocketTransport:
    """A non-blocking plain TCP socket (the fast path)."""

    __slots__ = ("sock", "watch")

    stream: None = None
    secure_channel_up = True  # nothing to set up: bytes can be written at once

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Its registration with the server's poller, while the reader uses one: removed
        # before the socket is closed, however the connection ends.
        self.watch: Watch | None = None

    async def handshake(self) -> bool:
        """Nothing to do on a plain socket: True. Not a checkpoint."""
        return True

    def recv_now(self) -> bytes | None:
        """What the socket has now, without waiting: None if nothing; b"" at EOF or reset."""
        try:
            return self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    async def receive(self) -> bytes:
        """Some bytes; b"" at EOF or on a reset. A checkpoint only when it has to wait."""
        while (data := self.recv_now()) is None:
            await wait_readable(self.sock)
        return data

    async def send_all(self, data: bytes) -> bool:
        """Write all of ``data``; False if the peer is gone."""
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                await wait_writable(sock)
                continue
            except OSError:
                return False
            view = view[n:]
        return True

    async def wait_hangup(self) -> None:
        """Return when the client closes or resets; keep waiting while it sends nothing.

        Data the client sends early is left in the socket for the connection to read.
        """
        sock = self.sock
        while True:
            await wait_readable(sock)
            try:
                peeked = sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not peeked:
                return
            await trio.sleep_forever()  # data, not a hang-up: nothing more to watch

    def send_eof(self) -> None:
        """Half-close: no more bytes from us (the client may still send its last ones)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    async def aclose(self, graceful: bool = True) -> None:
        """Close the socket at once (idempotent). Not a checkpoint."""
        self.close_now()

    def close_now(self) -> None:
        """Close the socket at once (idempotent); unregistered from the poller first."""
        watch = self.watch
        if watch is not None:
            self.watch = None
            watch.unregister()
        sock = self.sock
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()


class StreamTransport:
    """Any :class:`trio.abc.Stream`: TLS, or in-memory streams in tests (the stream path)."""

    __slots__ = ("_early", "secure_channel_up", "stream")

    sock: None = None

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._early: bytes | None = None  # read while watching for a hang-up
        self.secure_channel_up = not isinstance(stream, trio.SSLStream)
        """False until the TLS handshake is done: nothing can be written to the client."""

    async def handshake(self) -> bool:
        """Complete the TLS handshake (if the stream is TLS); False if it failed. A
        checkpoint for TLS; cancel it to bound it (the front door's deadline does)."""
        if self.secure_channel_up:
            return True
        assert isinstance(self.stream, trio.SSLStream)
        try:
            await self.stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.secure_channel_up = True
        return True

    def recv_now(self) -> bytes | None:
        """Bytes already read ahead (while watching for a hang-up), else None."""
        data, self._early = self._early, None
        return data

    async def receive(self) -> bytes:
        """Some bytes; b"" at EOF or if the stream broke. Always a checkpoint."""
        data, self._early = self._early, None
        if data is not None:
            await trio.lowlevel.checkpoint()
            return data
        try:
            return bytes(await self.stream.receive_some(RECV_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def send_all(self, data: bytes) -> bool:
        """Write all of ``data``; False if the stream is broken or closed. A checkpoint.

        One task sends at a time: the front door, then the connection's writer. Cancelled,
        the stream may be left broken (a TLS record half sent): a later call returns False.
        """
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def wait_hangup(self) -> None:
        """Return when the client closes; data read meanwhile is kept for :meth:`receive`."""
        data = await self.receive()
        if not data:
            return
        self._early = data
        await trio.sleep_forever()

    def send_eof(self) -> None:
        """Nothing to do: a stream is closed whole (TLS has no half-close)."""

    async def aclose(self, graceful: bool = True) -> None:
        """Close the stream: with its closing handshake (TLS close_notify) if ``graceful``,
        waiting for it a moment at most, else at once. A checkpoint."""
        if graceful:
            with trio.move_on_after(_STREAM_CLOSE_TIMEOUT) as scope:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.aclose()
            if not scope.cancelled_caught:
                return
        await trio.aclose_forcefully(self.stream)


Transport = SocketTransport | StreamTransport | TLSTransport
