"""Run a Handler as a server: listeners, the accept loop, timers and graceful shutdown.

Embed it in any Trio program with ``nursery.start``::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(riverside_trio.serve, ChatHandler(), Config(port=0))
        print(server.port)        # the bound port
        ...
        server.shutdown()         # graceful: 1001 to every client, then return

or run it from a synchronous ``main`` with :func:`run`, which also turns SIGINT and
SIGTERM into a graceful shutdown (a second signal cancels at once).
"""

from __future__ import annotations

import signal
import socket
import ssl
from typing import Any, cast

import structlog
import trio

from ..auth import may_wait
from ..cluster import ClusterView
from ..config import Config
from ..destinations import Channel, Destination, Group, Session, User
from ..handler import Handler
from ..metrics import Metrics
from . import _poller
from ._admission import Slot
from ._cluster import attach_broker, cluster_view, leave_cluster
from ._connection import Connection
from ._core import Core
from ._flusher import Flusher
from ._frontdoor import handle_request
from ._listener import accept_loop, open_listeners
from ._poller import Poller
from ._sweeper import sweep
from ._tls import make_ssl_context
from ._transport import SocketTransport, StreamTransport, TLSTransport, Transport

__all__ = ["Server", "run", "serve"]

log = structlog.get_logger("riverside_trio.server")
conn_log = structlog.get_logger("riverside_trio.connection")


class Server:
    """A riverside-trio server. ``nursery.start(serve, ...)`` returns the running one.

    Attributes:
        config: the settings it runs with.
        handler: the handler instance.
    """

    def __init__(
        self,
        handler: Handler | type[Handler],
        config: Config | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if isinstance(handler, type):
            handler = handler()
        if not isinstance(handler, Handler):
            raise TypeError(
                f"handler must be a riverside_trio.Handler (instance or subclass), "
                f"got {type(handler).__name__}"
            )
        self.handler = handler
        self.config = config if config is not None else Config()
        if ssl_context is None and self.config.tls_certfile is not None:
            ssl_context = make_ssl_context(self.config)
        self.ssl_context = ssl_context
        """The TLS context of ``wss://`` (None: plain ``ws://``)."""
        overridden = frozenset(
            name
            for name in ("authenticate", "handle_control", "terminate")
            if getattr(type(handler), name) is not getattr(Handler, name)
        )
        self._core = Core(handler, self.config, overridden=overridden)
        self._core.server = self
        self._core.broker = attach_broker(self._core)
        if self.config.api_key is not None:
            from ..api._app import ControlAPI

            api = self._core.api = ControlAPI(self._core, self.cluster_view)
            # a claim is tried first, then the other configured authenticators (a JWT)
            core = self._core
            core.authenticators = (api.authenticate_claim, *core.authenticators)
            core.watch_authenticate = core.custom_authenticate or may_wait(core.authenticators)
        self._listeners: list[socket.socket] = []
        self._shutdown = trio.Event()
        self._drained = trio.lowlevel.ParkingLot()
        self._stopped = trio.Event()
        self._started = False
        self.port: int = 0
        """The bound TCP port (useful with ``port=0``)."""

    # ------------------------------------------------------------------ public

    @property
    def host(self) -> str:
        """The configured host."""
        return self.config.host

    @property
    def url(self) -> str:
        """``ws://host:port/path`` (``wss://`` with TLS) of the WebSocket endpoint."""
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        elif host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        scheme = "ws" if self.ssl_context is None else "wss"
        return f"{scheme}://{host}:{self.port}{self.config.path}"

    @property
    def node_id(self) -> str:
        """This node's id in the cluster: 16 hex digits, new each time a server is made."""
        return self._core.node_id

    async def cluster_view(self) -> ClusterView:
        """Every live node and its connections: from Redis with ``broker_url``, else this
        node alone. A checkpoint; cancelling it leaves nothing behind.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        return await cluster_view(self._core)

    @property
    def metrics(self) -> Metrics:
        """The server's counters (the values /metrics exports)."""
        return self._core.metrics

    @property
    def connection_count(self) -> int:
        """WebSocket connections open now."""
        return len(self._core.registry)

    def connections(self) -> list[Connection]:
        """The connections open now, oldest first."""
        return self._connections()

    def _connections(self) -> list[Connection]:
        # The registry knows its members by a small protocol; here they are Connections.
        return cast("list[Connection]", list(self._core.registry.connections))

    def deliver_user(self, user_id: str, obj: Any) -> int:
        """Send ``obj`` to every connection of ``user_id``; returns how many it reached."""
        return self._core.hub.deliver(User(user_id), obj)

    def deliver_session(self, user_id: str, session_id: str, obj: Any) -> int:
        """Send ``obj`` to the connections of one session; returns how many it reached."""
        return self._core.hub.deliver(Session(user_id, session_id), obj)

    def deliver_channel(self, channel: str, obj: Any) -> int:
        """Send ``obj`` to every member of ``channel``; returns how many it reached."""
        return self._core.hub.deliver(Channel(channel), obj)

    def send_info(self, destination: Destination, info: Any) -> int:
        """Post ``info`` to ``Handler.handle_info`` of every connection at ``destination``.

        ``destination`` is a registered name (``str`` or :class:`Name`), a :class:`User`,
        :class:`Session`, :class:`Channel` or :class:`Group`. Returns how many connections
        it reached. Never blocks; each mailbox is bounded (``outbox_size``).
        """
        return self._core.hub.send_info(destination, info)

    def publish(self, group: str, info: Any) -> int:
        """Post ``info`` to ``handle_info`` of every member of ``group``; how many it reached."""
        return self._core.hub.send_info(Group(group), info)

    def disconnect(
        self, user_id: str, session_id: str | None = None, code: int = 1000, reason: str = ""
    ) -> int:
        """Close every connection of ``user_id`` (or of one session) with ``code``.

        ``terminate`` sees kind ``closed``. Returns how many connections it closed.

        Raises:
            ValueError: ``code`` is not a close code a server may send.
        """
        destination = User(user_id) if session_id is None else Session(user_id, session_id)
        return self._core.hub.disconnect(destination, code, reason)

    def shutdown(self) -> None:
        """Begin a graceful shutdown and return at once.

        The server stops accepting, answers upgrades still in progress with 503, closes
        every connection with 1001, waits up to ``drain_timeout`` for them to end, then
        cancels what is left; :func:`serve` returns after that.
        """
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        """Wait until the server has shut down. A checkpoint."""
        await self._stopped.wait()

    # ------------------------------------------------------------------ running

    async def serve(
        self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`shutdown` completes or the caller cancels.

        Follows the ``nursery.start`` protocol: reports this Server once it listens.
        Cancellation from outside stops at once (connections end with 1006 for clients).

        Raises:
            OSError: the address cannot be bound (in use, not available, no permission).
            RuntimeError: this Server was started before.
        """
        if self._started:
            raise RuntimeError("a Server can only be started once")
        self._started = True
        self._listeners = open_listeners(self.config)
        self.port = self._listeners[0].getsockname()[1]
        cork = self._core.cork
        flusher = Flusher(cork)
        cork.active = True
        poller = Poller() if self.config.poller == "auto" and _poller.AVAILABLE else None
        self._core.poller = poller
        try:
            async with trio.open_nursery() as nursery:
                self._core.nursery = nursery
                nursery.start_soon(flusher.run)
                if poller is not None:
                    nursery.start_soon(poller.run)
                if self._core.broker is not None:
                    await nursery.start(self._core.broker.run)
                for lsock in self._listeners:
                    nursery.start_soon(
                        accept_loop, lsock, nursery, self._handle, self._core.admission
                    )
                nursery.start_soon(sweep, self._core, self._connections)
                nursery.start_soon(self._core.memory.run)
                log.info(
                    "listening",
                    host=self.config.host,
                    port=self.port,
                    path=self.config.path,
                    tls=self.ssl_context is not None,
                )
                task_status.started(self)
                await self._shutdown.wait()
                await self._graceful_stop()
                nursery.cancel_scope.cancel()
        finally:
            cork.active = False  # every connection has ended and sent its own queue
            cork.wake = None
            if poller is not None:
                self._core.poller = None
                poller.close()
            self._close_listeners()
            self._stopped.set()
            log.info("stopped", port=self.port)

    async def _graceful_stop(self) -> None:
        core = self._core
        core.shutting_down = True
        self._close_listeners()
        for idle in list(core.idle_http):  # kept-alive HTTP connections waiting: close them
            idle.cancel()
        conns = self._connections()
        log.info("shutting_down", connections=len(conns), drain_timeout=self.config.drain_timeout)
        deadline = trio.current_time() + self.config.drain_timeout
        with trio.move_on_at(deadline):  # requests running (RPCHandler) finish first
            while core.rpc_running:
                await core.rpc_idle.park()
        for conn in self._connections():
            conn._close_for("shutdown", 1001)
        with trio.move_on_at(deadline):
            while len(core.registry) or core.handshakes:
                await self._drained.park()
        await leave_cluster(core)

    def _close_listeners(self) -> None:
        for lsock in self._listeners:
            if lsock.fileno() != -1:
                trio.lowlevel.notify_closing(lsock)
                lsock.close()

    async def serve_stream(self, stream: trio.abc.Stream, peer: tuple[str, int] = ("", 0)) -> None:
        """Serve one client over ``stream``, as if it had connected to the listener.

        Any :class:`trio.abc.Stream` works: one end of ``trio.testing.memory_stream_pair``
        drives a handler in tests without a socket, with every rule, limit and close code
        of a real connection. The client speaks HTTP and WebSocket over the other end.
        Returns when the client's connection is over; the stream is closed then. A
        checkpoint.

        Raises:
            RuntimeError: the server is not running.
        """
        if self._core.nursery is None or self._stopped.is_set():
            raise RuntimeError("the server is not running: start it with nursery.start(serve)")
        slot = self._core.admission.admit(peer[0])
        if slot is None:  # over a cap of pending sockets, as a socket would be
            await trio.aclose_forcefully(stream)
            return
        await self._serve_transport(StreamTransport(stream), peer, slot)

    async def _handle(self, sock: socket.socket, peer: tuple[str, int], slot: Slot) -> None:
        """One accepted TCP connection: plain or TLS, both on the socket's fast path (the
        front door does the TLS handshake, under the slot's deadline)."""
        if self.ssl_context is None:
            await self._serve_transport(SocketTransport(sock), peer, slot)
        else:
            await self._serve_transport(TLSTransport(sock, self.ssl_context), peer, slot)

    async def _serve_transport(
        self, transport: Transport, peer: tuple[str, int], slot: Slot
    ) -> None:
        """One client, from the request head to the end of the WebSocket.

        ``slot`` (its pending slot) is given back once the client is a WebSocket
        connection, or when its socket is closed.
        """
        core = self._core
        try:
            conn = await handle_request(core, transport, peer, slot)
            if conn is not None:
                slot.release()
                if core.config.log_connections:
                    _log_open(conn, peer)
                await conn._run()
                if core.config.log_connections:
                    _log_close(conn, peer)
        except Exception:
            # A bug of ours must never take the server down with it.
            log.exception("connection_crashed", peer=peer)
        finally:
            if not isinstance(transport, StreamTransport):
                transport.close_now()
            else:
                with trio.CancelScope(shield=True):
                    await transport.aclose(graceful=False)
            slot.release()
            if core.shutting_down:
                self._drained.unpark_all()


def _log_open(conn: Connection, peer: tuple[str, int]) -> None:
    conn_log.info(
        "connection_open",
        peer=f"{peer[0]}:{peer[1]}",
        user_id=conn.user_id,
        session_id=conn.session_id,
        path=conn.path,
    )


def _log_close(conn: Connection, peer: tuple[str, int]) -> None:
    reason = conn._reason
    conn_log.info(
        "connection_closed",
        peer=f"{peer[0]}:{peer[1]}",
        user_id=conn.user_id,
        session_id=conn.session_id,
        code=reason.code if reason is not None else None,
        reason=reason.kind if reason is not None else None,
        duration=round(trio.current_time() - conn._opened_at, 3),
    )


async def serve(
    handler: Handler | type[Handler],
    config: Config | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` with ``config`` until shut down or cancelled.

    ``ssl_context`` serves ``wss://`` with that TLS context (``Config.tls_certfile`` builds
    one for you).

    Use with ``await nursery.start(serve, handler, config)``, which returns the running
    :class:`Server` (its ``port`` is the bound port, so ``port=0`` works in tests).

    Raises:
        OSError: the address cannot be bound.
        TypeError: ``handler`` is not a Handler.
    """
    await Server(handler, config, ssl_context=ssl_context).serve(task_status=task_status)


def run(handler: Handler | type[Handler], config: Config | None = None) -> None:
    """Run a server in a new Trio run until SIGINT or SIGTERM, then shut down gracefully.

    A second signal cancels whatever the graceful shutdown is still waiting for. The soft
    limit on open files is raised to the hard limit first, so ``max_connections`` is not
    capped by a low default.
    """
    _raise_open_files_limit()
    trio.run(_run_main, handler, config)


def _raise_open_files_limit() -> None:
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.debug("open_files_limit_unchanged", soft=soft, hard=hard)


async def _run_main(handler: Handler | type[Handler], config: Config | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, handler, config)

            async def watch_signals() -> None:
                first = True
                async for signum in signals:
                    log.info("signal", signal=signal.Signals(signum).name)
                    if first:
                        first = False
                        server.shutdown()
                    else:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            await server.wait_stopped()
            nursery.cancel_scope.cancel()
