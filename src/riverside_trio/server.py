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

import contextlib
import errno
import signal
import socket
from typing import Any, cast

import structlog
import trio
from trio.lowlevel import wait_readable

from ._connection import Connection
from ._core import Core
from ._http import handle_request
from .config import Config
from .frames import Cork
from .handler import Destination, Group, Handler
from .metrics import Metrics

__all__ = ["Server", "run", "serve"]

log = structlog.get_logger("riverside_trio.server")

ACCEPTS_PER_WAKEUP = 64
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Server:
    """A riverside-trio server. ``nursery.start(serve, ...)`` returns the running one.

    Attributes:
        config: the settings it runs with.
        handler: the handler instance.
    """

    def __init__(self, handler: Handler | type[Handler], config: Config | None = None) -> None:
        if isinstance(handler, type):
            handler = handler()
        if not isinstance(handler, Handler):
            raise TypeError(
                f"handler must be a riverside_trio.Handler (instance or subclass), "
                f"got {type(handler).__name__}"
            )
        self.handler = handler
        self.config = config if config is not None else Config()
        self._core = Core(handler, self.config)
        self._core.server = self
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
        """``ws://host:port/path`` of the WebSocket endpoint."""
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        elif host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"ws://{host}:{self.port}{self.config.path}"

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
        return list(self._core.registry.connections)

    def deliver_user(self, user_id: str, obj: Any) -> int:
        """Send ``obj`` to every connection of ``user_id``; returns how many it reached."""
        return self._core.deliver(self._core.registry.user(user_id), obj)

    def deliver_session(self, user_id: str, session_id: str, obj: Any) -> int:
        """Send ``obj`` to the connections of one session; returns how many it reached."""
        return self._core.deliver(self._core.registry.session(user_id, session_id), obj)

    def deliver_channel(self, channel: str, obj: Any) -> int:
        """Send ``obj`` to every member of ``channel``; returns how many it reached."""
        return self._core.deliver(self._core.registry.channel(channel), obj)

    def send_info(self, destination: Destination, info: Any) -> int:
        """Post ``info`` to ``Handler.handle_info`` of every connection at ``destination``.

        ``destination`` is a registered name (``str`` or :class:`Name`), a :class:`User`,
        :class:`Session`, :class:`Channel` or :class:`Group`. Returns how many connections
        it reached. Never blocks; each mailbox is bounded (``outbox_size``).
        """
        return self._core.send_info(destination, info)

    def publish(self, group: str, info: Any) -> int:
        """Post ``info`` to ``handle_info`` of every member of ``group``; how many it reached."""
        return self._core.send_info(Group(group), info)

    def disconnect(
        self, user_id: str, session_id: str | None = None, code: int = 1000, reason: str = ""
    ) -> int:
        """Close every connection of ``user_id`` (or of one session) with ``code``.

        ``terminate`` sees kind ``closed``. Returns how many connections it closed.

        Raises:
            ValueError: ``code`` is not a close code a server may send.
        """
        return self._core.disconnect(user_id, session_id, code, reason)

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
        self._listeners = _open_listeners(self.config)
        self.port = self._listeners[0].getsockname()[1]
        cork = self._core.cork
        # A Trio instrument by duck typing: its after_task_step flushes held-back writes.
        instrument = cast("trio.abc.Instrument", cork)
        trio.lowlevel.add_instrument(instrument)
        cork.active = True
        try:
            async with trio.open_nursery() as nursery:
                self._core.nursery = nursery
                for lsock in self._listeners:
                    nursery.start_soon(self._accept_loop, lsock, nursery)
                nursery.start_soon(self._sweeper)
                log.info("listening", host=self.config.host, port=self.port, path=self.config.path)
                task_status.started(self)
                await self._shutdown.wait()
                await self._graceful_stop()
                nursery.cancel_scope.cancel()
        finally:
            cork.active = False  # every connection has ended and sent its own queue
            with contextlib.suppress(KeyError):  # Trio drops an instrument that raised
                trio.lowlevel.remove_instrument(instrument)
            self._close_listeners()
            self._stopped.set()
            log.info("stopped", port=self.port)

    async def _graceful_stop(self) -> None:
        core = self._core
        core.shutting_down = True
        self._close_listeners()
        conns = list(core.registry.connections)
        log.info("shutting_down", connections=len(conns), drain_timeout=self.config.drain_timeout)
        for conn in conns:
            conn._go_away()
        with trio.move_on_after(self.config.drain_timeout):
            while len(core.registry) or core.handshakes:
                await self._drained.park()

    def _close_listeners(self) -> None:
        for lsock in self._listeners:
            if lsock.fileno() != -1:
                trio.lowlevel.notify_closing(lsock)
                lsock.close()

    async def _accept_loop(self, lsock: socket.socket, nursery: trio.Nursery) -> None:
        backoff = 0.0
        while True:
            try:
                await wait_readable(lsock)
            except (trio.ClosedResourceError, OSError):
                return
            for _ in range(ACCEPTS_PER_WAKEUP):
                try:
                    sock, addr = lsock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _FD_EXHAUSTED:
                        # Out of file descriptors: back off instead of spinning; the
                        # pending clients wait in the backlog.
                        backoff = min(max(backoff * 2, 0.01), 1.0)
                        log.error("accept_failed", error=str(exc), retry_in=backoff)
                        await trio.sleep(backoff)
                    elif lsock.fileno() == -1:
                        return
                    break
                backoff = 0.0
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self._handle, sock, addr[:2])

    async def _handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        """One TCP connection, from the request head to the end of the WebSocket."""
        core = self._core
        try:
            conn = await handle_request(core, sock, peer)
            if conn is not None:
                await conn._run()
        except Exception:
            # A bug of ours must never take the server down with it.
            log.exception("connection_crashed", peer=peer)
        finally:
            if sock.fileno() != -1:
                trio.lowlevel.notify_closing(sock)
                sock.close()
            if core.shutting_down:
                self._drained.unpark_all()

    async def _sweeper(self) -> None:
        """Check every connection's timers: idle, age, keepalive, close deadline."""
        cfg = self.config
        periods = [
            t
            for t in (
                cfg.idle_timeout,
                cfg.max_connection_age,
                cfg.ping_interval,
                cfg.ping_timeout,
                cfg.close_timeout,
            )
            if t is not None
        ]
        tick = min(max(min(periods) / 10, 0.005), 1.0)
        registry = self._core.registry
        cork = self._core.cork
        while True:
            await trio.sleep(tick)
            # The cork flushes at the end of every task step; should Trio ever have dropped
            # it as an instrument, held-back frames still leave within a tick.
            _flush(cork)
            now = trio.current_time()
            for conn in list(registry.connections):
                try:
                    conn._check_timers(now)
                except Exception:  # a bug of ours must not stop every other timer
                    log.exception("timer_check_failed", user_id=conn.user_id)


def _flush(cork: Cork) -> None:
    try:
        cork.flush()
    except Exception:  # a bug of ours (a wake callback failed) must not stop the server
        log.exception("cork_flush_failed")


def _open_listeners(config: Config) -> list[socket.socket]:
    """Bind every address ``host`` resolves to (all on the same port)."""
    infos = socket.getaddrinfo(
        config.host or None,
        config.port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    seen: set[Any] = set()
    listeners: list[socket.socket] = []
    port = config.port
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if config.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr[0], port, *addr[2:]))
            port = sock.getsockname()[1]
            sock.listen(config.backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


async def serve(
    handler: Handler | type[Handler],
    config: Config | None = None,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` with ``config`` until shut down or cancelled.

    Use with ``await nursery.start(serve, handler, config)``, which returns the running
    :class:`Server` (its ``port`` is the bound port, so ``port=0`` works in tests).

    Raises:
        OSError: the address cannot be bound.
        TypeError: ``handler`` is not a Handler.
    """
    await Server(handler, config).serve(task_status=task_status)


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
