"""A server for a test: a Handler with any settings on 127.0.0.1 port 0, clients over
in-memory streams (the default) or TCP, torn down when the block ends."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Literal
from urllib.parse import urlencode

import trio
import trio.testing
import trio_websocket

from ..client import Client, open_client
from ..codecs import Codec
from ..config import Config
from ..handler import Handler, Headers
from ..metrics import Metrics
from ..server._connection import Connection
from ..server._server import Server, serve
from ._client import Rejected, TestClient

__all__ = ["TestServer", "Transport", "open_test_server"]

Transport = Literal["memory", "tcp"]
"""How a test's clients reach the server: ``"memory"`` (a ``trio.testing.memory_stream_pair``
into ``Server.serve_stream``, no socket) or ``"tcp"`` (a real socket to the listener)."""


class TestServer:
    """A running server for a test; made by :func:`open_test_server` (or ``riverside.serve``).

    Attributes:
        server: the :class:`~riverside_trio.Server` (``deliver_*``, ``send_info``,
            ``disconnect``, ...).
        handler: the handler instance it serves.
        transport: how :meth:`connect` reaches it unless told otherwise.
        timeout: the default bound, in seconds, on every wait of its clients.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self, server: Server, nursery: trio.Nursery, *, transport: Transport, timeout: float
    ) -> None:
        self.server = server
        self.handler: Handler = server.handler
        self.transport: Transport = transport
        self.timeout = timeout
        self._nursery = nursery
        self._peers = 0

    @property
    def url(self) -> str:
        """The WebSocket URL (``ws://127.0.0.1:<port>/ws``)."""
        return self.server.url

    @property
    def config(self) -> Config:
        """The settings it runs with."""
        return self.server.config

    @property
    def metrics(self) -> Metrics:
        """Its counters (what ``/metrics`` exports)."""
        return self.server.metrics

    @property
    def connection_count(self) -> int:
        """WebSocket connections open now."""
        return self.server.connection_count

    def connections(self) -> list[Connection]:
        """The connections open now, oldest first (``user_id``, ``channels``, ``close()``)."""
        return self.server.connections()

    def channels(self) -> dict[str, list[Connection]]:
        """Every channel with a member here, and its members (oldest first)."""
        found: dict[str, list[Connection]] = {}
        for conn in self.server.connections():
            for channel in sorted(conn.channels):
                found.setdefault(channel, []).append(conn)
        return dict(sorted(found.items()))

    def connect(
        self,
        path: str | None = None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        token: str | None = None,
        subprotocols: Iterable[str] | None = None,
        codec: Codec | None = None,
        transport: Transport | None = None,
        timeout: float | None = None,
        reconnect: bool = False,
        **client_options: Any,
    ) -> AbstractAsyncContextManager[TestClient]:
        """Connect a client; it is closed (1000) when the block ends.

        Args:
            path: the request path (the server's ``path`` setting when None); may carry a
                query string.
            query: query parameters to add (``AuthRequest.query``).
            headers: extra request headers.
            token: sent as ``Authorization: Bearer <token>`` (``AuthRequest.bearer_token``).
            subprotocols: offered subprotocols.
            codec: the client's codec (the handler's ``codec`` when None).
            transport: ``"memory"`` or ``"tcp"`` (the server's ``transport`` when None).
            timeout: the bound on each of the client's waits (the server's when None).
            reconnect: reconnect when the connection drops (off: a test sees the close).
            client_options: passed on to :func:`~riverside_trio.open_client`
                (``max_message_size``, ``backoff_min``, ...).

        Raises:
            Rejected: the server refused the upgrade (``status``, ``headers``, ``body``).
            OSError: (TCP) the server cannot be reached.
        """
        return self._connect(
            path,
            query=query,
            headers=headers,
            token=token,
            subprotocols=subprotocols,
            codec=codec,
            transport=transport,
            timeout=timeout,
            reconnect=reconnect,
            client_options=client_options,
        )

    @asynccontextmanager
    async def _connect(
        self,
        path: str | None,
        *,
        query: Mapping[str, str] | None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        token: str | None,
        subprotocols: Iterable[str] | None,
        codec: Codec | None,
        transport: Transport | None,
        timeout: float | None,
        reconnect: bool,
        client_options: dict[str, Any],
    ) -> AsyncIterator[TestClient]:
        transport = self.transport if transport is None else transport
        if transport not in ("memory", "tcp"):
            raise ValueError(f"transport must be 'memory' or 'tcp', got {transport!r}")
        base = self.url.removesuffix(self.config.path)
        target = self.config.path if path is None else path
        if not target.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        if query:
            target += ("&" if "?" in target else "?") + urlencode(query)
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
        if token is not None:
            pairs.append(("Authorization", f"Bearer {token}"))
        if transport == "memory":
            self._peers += 1
            peer = ("127.0.0.1", 40000 + self._peers % 20000)
            nursery = self._nursery
            server = self.server

            async def memory_stream() -> trio.abc.Stream:
                client_end, server_end = trio.testing.memory_stream_pair()
                nursery.start_soon(server.serve_stream, server_end, peer)
                return client_end

            client_options["stream_factory"] = memory_stream
        raised: list[BaseException] = []
        try:
            async with AsyncExitStack() as stack:
                try:
                    client: Client = await stack.enter_async_context(
                        open_client(
                            base + target,
                            codec=codec if codec is not None else self.handler.codec,
                            reconnect=reconnect,
                            subprotocols=subprotocols,
                            headers=pairs,
                            **client_options,
                        )
                    )
                except BaseExceptionGroup as group:
                    rejected = _rejection(group)
                    if rejected is None:
                        raise
                    raise rejected from None
                try:
                    yield TestClient(client, timeout=self.timeout if timeout is None else timeout)
                except BaseException as exc:
                    raised.append(exc)
                    raise
        except BaseExceptionGroup as group:
            alone = _alone(group, raised)
            if alone is None:
                raise
        else:
            return
        raise alone

    async def shutdown(self) -> None:
        """Shut the server down gracefully (1001 to every client, then stop) and wait until
        it has. A checkpoint."""
        self.server.shutdown()
        await self.server.wait_stopped()


def _rejection(group: BaseExceptionGroup[Any]) -> Rejected | None:
    """The refusal of the upgrade in ``group`` (the client's nursery wraps it), or None."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _rejection(exc)
            if found is not None:
                return found
        elif isinstance(exc, trio_websocket.ConnectionRejected):
            headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in exc.headers])
            return Rejected(exc.status_code, headers, exc.body or b"")
    return None


@asynccontextmanager
async def open_test_server(
    handler: Handler | type[Handler],
    *,
    config: Config | None = None,
    transport: Transport = "memory",
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    **settings: Any,
) -> AsyncIterator[TestServer]:
    """Serve ``handler`` on 127.0.0.1 port 0 for the duration of the block.

    Settings are ``config`` (defaults when None) with ``settings`` on top, e.g.
    ``open_test_server(Chat, idle_timeout=None, max_message_size=1000)``; ``host`` and
    ``port`` default to ``127.0.0.1`` and 0. When the block ends the server is cancelled
    (its clients see the connection drop); call :meth:`TestServer.shutdown` first to test
    a graceful shutdown.

    ``transport`` chooses how :meth:`TestServer.connect` reaches the server:

    - ``"memory"`` (default): a ``trio.testing.memory_stream_pair`` into
      ``Server.serve_stream``. Every rule, limit and close code of a real connection
      applies, and the whole exchange is tasks of this run, so it works under
      ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``):
      timers (idle timeout, keepalive, request timeouts, session expiry) then pass in no
      real time, and :func:`settle` means "everything sent has been handled".
    - ``"tcp"``: a real socket to the listener, as a deployed client would. Use a real
      clock (or a MockClock you move yourself with :func:`advance`): an autojumping clock
      would jump while bytes sit in the kernel.

    Raises:
        ConfigError: a setting is wrong (named in the message).
        ValueError: ``transport`` is neither ``"memory"`` nor ``"tcp"``.
        OSError: the listener cannot be bound.
    """
    if transport not in ("memory", "tcp"):
        raise ValueError(f"transport must be 'memory' or 'tcp', got {transport!r}")
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("port", 0)
    config = dataclasses.replace(config if config is not None else Config(), **settings)
    clock = trio.lowlevel.current_clock()
    mock = clock if isinstance(clock, trio.testing.MockClock) else None
    threshold = mock.autojump_threshold if mock is not None else 0.0
    raised: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:
            try:
                server: Server = await nursery.start(_serve, handler, config, ssl_context)
                yield TestServer(server, nursery, transport=transport, timeout=timeout)
            except BaseException as exc:
                raised.append(exc)
                raise
            finally:
                nursery.cancel_scope.cancel()
                if mock is not None:
                    # The teardown's shielded waits (terminate_timeout, the last flush) must
                    # not wait for a clock that only the test moves.
                    mock.autojump_threshold = 0
    except BaseExceptionGroup as group:
        alone = _alone(group, raised)
        if alone is None:
            raise
    else:
        return
    finally:
        if mock is not None:
            mock.autojump_threshold = threshold
    raise alone


def _alone(group: BaseExceptionGroup[Any], raised: list[BaseException]) -> BaseException | None:
    """What the block raised, when it is all ``group`` holds (nested groups flattened).

    The nurseries of the server and of the client wrap whatever the test's block raises; a
    failed assertion should read as one, and ``pytest.raises`` around a block should see
    what was raised in it. When anything else failed too, the group stays as it is.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if raised and len(leaves) == 1 and leaves[0] is raised[0]:
        return raised[0]
    return None


async def _serve(
    handler: Handler | type[Handler],
    config: Config,
    ssl_context: ssl.SSLContext | None,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(handler, config, ssl_context=ssl_context, task_status=task_status)
