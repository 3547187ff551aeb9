"""The Trio client: plain messages, request/reply, signals and a session that survives
reconnects, over trio-websocket.

Rules:

- The first connection is made by :func:`open_client` (a failure raises). When a connection
  drops (the server closed it, the network failed), pending requests raise
  :class:`~riverside_trio.ConnectionClosed`, and with ``reconnect`` (the default) the client
  connects again after a jittered exponential backoff (``backoff_min`` doubling up to
  ``backoff_max``, each delay drawn from its upper half), restores its session, and only
  then counts as connected. An HTTP 4xx answer to a reconnect ends the client for good;
  anything else is retried.
- ``request()`` waits for a connection (within its timeout), then for the reply.
- Requests and signals from the server run as tasks of the connection, concurrently; a
  handler's return value is the reply, ``RequestError`` an error reply, anything else
  ``internal_error`` (logged).
- Plain messages wait for :meth:`Client.receive` in a queue of ``max_queue``; beyond that
  the oldest are dropped (logged), so an unread queue never stalls replies.
"""

from __future__ import annotations

import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
import trio
import trio_websocket
from trio.lowlevel import ParkingLot

from ..codecs import Codec, JSONCodec, check_codec
from ..errors import CodecError, ConnectionClosed, RequestError, RequestTimeout, SessionError
from ..rpc._envelope import (
    CloseSession,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Malformed,
    Reply,
    Request,
    RestoreSession,
    SessionClosed,
    SessionCreated,
    SessionData,
    Signal,
    Welcome,
)
from ..rpc._format import format_for
from ._ws import open_stream, wrap_client_stream

__all__ = ["Client", "open_client"]

log = structlog.get_logger("riverside_trio.client")

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


class Client:
    """A connection to a riverside-trio server that reconnects; made by :func:`open_client`.

    Attributes:
        url: the server's WebSocket URL.
        session: the current restorable session, or None.
        connects: how many times a connection was made (1 after open_client; each
            reconnect adds one).
        restore_error: why the last restore after a reconnect was refused, or None.
    """

    def __init__(
        self,
        url: str,
        *,
        codec: Codec,
        reconnect: bool,
        backoff_min: float,
        backoff_max: float,
        request_timeout: float,
        max_queue: int,
        connect_kwargs: dict[str, Any],
        stream_factory: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self._codec = check_codec(codec)
        self._fmt = format_for(codec)
        self._reconnect = reconnect
        self._backoff = (backoff_min, backoff_max)
        self._timeout = request_timeout
        self._max_queue = max_queue
        self._kwargs = connect_kwargs
        self._stream_factory = stream_factory
        self._ssl_context = ssl_context
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._ready = trio.Event()
        self._gone: ConnectionClosed | None = None  # closed for good
        self._last_close: ConnectionClosed | None = None  # how the last connection ended
        self._pending: dict[Any, tuple[trio.Event, list[Any]]] = {}
        self._next_id = 0
        self._inbox: deque[Any] = deque()
        self._inbox_lot = ParkingLot()
        self._ended = trio.Event()  # set once _gone is
        self._session_lot = ParkingLot()
        self._requests: dict[str, Callable[[Any], Awaitable[Any]]] = {}
        self._signals: dict[str, Callable[[Any], Awaitable[None]]] = {}
        self.session: SessionData | None = None
        self.connects = 0
        self.restore_error: RequestError | None = None
        self.welcome: Welcome | None = None

    # ------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        """True while a connection is up (and its session restored)."""
        return self._ready.is_set()

    def on_request(self, name: str) -> Callable[[H], H]:
        """Decorate ``async def fn(payload) -> reply`` to answer the server's requests
        named ``name``."""

        def register(fn: H) -> H:
            self._requests[name] = fn
            return fn

        return register

    def on_signal(self, name: str) -> Callable[[H], H]:
        """Decorate ``async def fn(payload)`` to receive the server's signals named ``name``."""

        def register(fn: H) -> H:
            self._signals[name] = fn
            return fn

        return register

    async def wait_connected(self) -> None:
        """Wait until a connection is up and its session restored. A checkpoint.

        Raises:
            ConnectionClosed: the client is closed for good.
        """
        while True:
            if self._gone is not None:
                raise self._gone
            if self._ready.is_set():
                await trio.lowlevel.checkpoint()
                return
            await self._ready.wait()

    async def wait_session(self) -> SessionData:
        """Wait until the client has a session; returns it. A checkpoint."""
        while self.session is None:
            if self._gone is not None:
                raise self._gone
            await self._session_lot.park()
        await trio.lowlevel.checkpoint()
        return self.session

    async def send(self, obj: Any) -> None:
        """Send a plain message (encoded with the codec). A checkpoint.

        Raises:
            ConnectionClosed: not connected now (plain messages are not queued).
            CodecError: ``obj`` cannot be encoded.
        """
        await self._send(self._codec.encode(obj))

    async def receive(self) -> Any:
        """The next plain message from the server (decoded). A checkpoint.

        Raises:
            ConnectionClosed: the client is closed for good and nothing is left (with
                ``reconnect`` off: the close code and reason the connection ended with).
        """
        while not self._inbox:
            if self._gone is not None:
                raise self._gone
            await self._inbox_lot.park()
        await trio.lowlevel.checkpoint()
        return self._inbox.popleft()

    def receive_nowait(self) -> Any:
        """The next plain message if one is waiting; never blocks, not a checkpoint.

        Raises:
            trio.WouldBlock: no message is waiting.
        """
        if not self._inbox:
            raise trio.WouldBlock
        return self._inbox.popleft()

    async def wait_closed(self) -> ConnectionClosed:
        """Wait until the client is closed for good; return why (the close code and reason
        of the last connection when ``reconnect`` is off). A checkpoint."""
        await self._ended.wait()
        assert self._gone is not None
        return self._gone

    async def request(self, name: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Send a request and return the reply's payload. A checkpoint.

        Waits for a connection first if there is none (a reconnect is under way); the
        whole call is bounded by ``timeout`` (``request_timeout`` of :func:`open_client`
        when None).

        Raises:
            RequestError: the server answered with an error reply (``code``, ``message``).
            RequestTimeout: no reply within the timeout.
            ConnectionClosed: the connection dropped before the reply came, or the client
                is closed for good.
        """
        timeout = self._timeout if timeout is None else timeout
        with trio.move_on_after(timeout):
            await self.wait_connected()
            return await self._call(lambda rid: Request(rid, name, payload))
        raise RequestTimeout(f"no reply to {name!r} within {timeout} s")

    async def signal(self, name: str, payload: Any = None) -> None:
        """Send a signal (one way). A checkpoint.

        Raises:
            ConnectionClosed: not connected now.
        """
        await self._send(self._codec.encode(self._fmt.out(Signal(name, payload))))

    async def restore_session(self, key: str, *, timeout: float | None = None) -> SessionData:
        """Restore the session ``key`` on this connection. A checkpoint.

        Raises:
            SessionError: refused (``code``: ``session_not_found``, ``session_exists``,
                ``max_session_connections``, ``sessions_disabled``, ``internal_error``).
        """
        with trio.fail_after(self._timeout if timeout is None else timeout):
            await self.wait_connected()
            return await self._restore(key)

    async def close_session(self, *, timeout: float | None = None) -> None:
        """Close the session (the server forgets it when no connection holds it).

        Raises:
            RequestError: the server refused (``sessions_disabled``).
        """
        with trio.fail_after(self._timeout if timeout is None else timeout):
            await self.wait_connected()
            await self._call(CloseSession)
        self._set_session(None)

    async def aclose(self) -> None:
        """Close the connection (1000) and stop reconnecting. A checkpoint."""
        self._gone = ConnectionClosed(1000, "closed by the client")
        self._wake_all()
        ws = self._ws
        if ws is not None:
            await ws.aclose()

    # ------------------------------------------------------------------ internals

    async def _send(self, data: str | bytes) -> None:
        ws = self._ws
        if ws is None or self._gone is not None:
            raise self._gone or ConnectionClosed(1006, "not connected")
        try:
            await ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def _call(self, make: Callable[[Any], Any]) -> Any:
        self._next_id += 1
        rid = self._fmt.new_id(self._next_id)
        done, result = trio.Event(), list[Any]()
        data = self._codec.encode(self._fmt.out(make(rid)))
        self._pending[rid] = (done, result)
        try:
            await self._send(data)
            await done.wait()
        finally:
            self._pending.pop(rid, None)
        outcome = result[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _restore(self, key: str) -> SessionData:
        try:
            payload = await self._call(lambda rid: RestoreSession(rid, key))
        except RequestError as exc:
            raise SessionError(exc.code, exc.message) from None
        session = self._fmt.parse_session(payload)
        self._set_session(session)
        return session

    def _set_session(self, session: SessionData | None) -> None:
        self.session = session
        self._session_lot.unpark_all()

    def _wake_all(self) -> None:
        self._inbox_lot.unpark_all()
        self._session_lot.unpark_all()
        self._ready.set()  # waiters see _gone
        if self._gone is not None:
            self._ended.set()

    def _fail_pending(self, error: ConnectionClosed) -> None:
        for done, result in self._pending.values():
            result.append(error)
            done.set()
        self._pending.clear()

    async def _connect(self, nursery: trio.Nursery) -> _Link:
        """Open the transport (ours, so we always close it) and the WebSocket over it."""
        if self._stream_factory is not None:
            stream = await self._stream_factory()
        else:
            stream = await open_stream(self.url, self._ssl_context)
        try:
            ws = await wrap_client_stream(nursery, stream, self.url, **self._kwargs)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return _Link(ws, stream)

    async def _supervise(
        self,
        first: _Link,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the first connection, then reconnect for as long as allowed."""
        await self._serve(first, task_status)
        attempt = 0
        while self._gone is None and self._reconnect:
            low, high = self._backoff
            delay = min(high, low * 2**attempt)
            await trio.sleep(random.uniform(delay / 2, delay))
            attempt += 1
            try:
                async with trio.open_nursery() as conn_nursery:
                    link = await self._connect(conn_nursery)
                    attempt = 0
                    await self._serve(link)
                    conn_nursery.cancel_scope.cancel()
            except trio_websocket.ConnectionRejected as exc:
                if 400 <= exc.status_code < 500:
                    log.warning("reconnect_refused", url=self.url, status=exc.status_code)
                    self._gone = ConnectionClosed(None, f"reconnect refused: {exc.status_code}")
            except (OSError, trio_websocket.HandshakeError) as exc:
                log.info("reconnect_failed", url=self.url, error=str(exc)[:200])
        if self._gone is None:  # no reconnect: closed as the last connection was
            self._gone = self._last_close or ConnectionClosed(None, "disconnected")
        self._wake_all()

    async def _serve(
        self,
        link: _Link,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One connection: read it until it ends; restore the session first if any."""
        ws = link.ws
        self._ws = ws
        self.connects += 1
        try:
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._read, ws, tasks)
                session = self.session
                if session is not None:
                    self.session = None
                    try:
                        await self._restore(session.key)
                        self.restore_error = None
                    except SessionError as exc:
                        log.info("session_not_restored", code=exc.code)
                        self.restore_error = exc
                        self._set_session(None)
                    except ConnectionClosed:
                        pass
                self._ready.set()
                task_status.started()
        finally:
            self._ws = None
            with trio.CancelScope(shield=True):
                # Bounded: when the client is cancelled, the task that would read the
                # server's close reply may be cancelled too, and aclose() would wait forever.
                with trio.move_on_after(_CLOSE_WAIT), suppress(trio.ClosedResourceError):
                    await ws.aclose()
                # trio-websocket leaves the stream open after some closes, and in others its
                # reader is closing it right now (the server's TCP close arrived): a second
                # SSLStream.aclose() meanwhile finds the socket closed. It ends closed anyway.
                with suppress(trio.ClosedResourceError):
                    await link.stream.aclose()
            if self._ready.is_set() and self._gone is None:
                self._ready = trio.Event()
            reason = ws.closed
            self._last_close = (
                ConnectionClosed(reason.code, reason.reason or "")
                if reason is not None
                else ConnectionClosed(1006, "")
            )
            self._fail_pending(self._last_close)

    async def _read(self, ws: trio_websocket.WebSocketConnection, tasks: trio.Nursery) -> None:
        try:
            while True:
                data = await ws.get_message()
                try:
                    msg = self._codec.decode(data)
                except (CodecError, ValueError) as exc:
                    log.warning("undecodable_message", error=str(exc)[:200])
                    continue
                self._dispatch(msg, tasks)
        except trio_websocket.ConnectionClosed:
            pass
        tasks.cancel_scope.cancel()

    def _dispatch(self, msg: Any, tasks: trio.Nursery) -> None:
        env = self._fmt.parse(msg)
        if env is None:
            if len(self._inbox) >= self._max_queue:
                self._inbox.popleft()
                log.warning("plain_message_dropped", max_queue=self._max_queue)
            self._inbox.append(msg)
            self._inbox_lot.unpark()
        elif isinstance(env, Reply | ErrorReply):
            entry = self._pending.pop(env.id, None)
            if entry is None:
                log.info("unknown_reply_id", id=repr(env.id)[:80])
                return
            if isinstance(env, ErrorReply):
                entry[1].append(RequestError(env.code or "error", env.message))
            else:
                entry[1].append(env.payload)
            entry[0].set()
        elif isinstance(env, Request):
            tasks.start_soon(self._answer, env)
        elif isinstance(env, Signal):
            fn = self._signals.get(env.name)
            if fn is None:
                log.info("unknown_signal", name=env.name)
            else:
                tasks.start_soon(self._on_signal, fn, env)
        elif isinstance(env, SessionCreated):
            self._set_session(env.session)
        elif isinstance(env, SessionClosed):
            self._set_session(None)
        elif isinstance(env, Welcome):
            self.welcome = env
            if env.major != 2:
                log.warning("unsupported_protocol_version", major=env.major, minor=env.minor)
        elif isinstance(env, Malformed):
            log.warning("invalid_envelope", why=env.why)
        elif not isinstance(env, Heartbeat):
            log.warning("unexpected_envelope", kind=type(env).__name__)

    async def _answer(self, req: Request) -> None:
        fn = self._requests.get(req.name)
        reply: Any
        try:
            if fn is None:
                raise RequestError(ErrorCode.UNKNOWN_NAME, f"no request handler named {req.name!r}")
            reply = Reply(req.id, await fn(req.payload))
        except RequestError as exc:
            reply = ErrorReply(req.id, exc.code, exc.message)
        except Exception:
            log.exception("request_handler_failed", name=req.name)
            reply = ErrorReply(req.id, ErrorCode.INTERNAL, "internal error")
        with suppress(ConnectionClosed):
            await self._send(self._codec.encode(self._fmt.out(reply)))

    async def _on_signal(self, fn: Callable[[Any], Awaitable[None]], sig: Signal) -> None:
        try:
            await fn(sig.payload)
        except Exception:
            log.exception("signal_handler_failed", name=sig.name)


_CLOSE_WAIT = 5.0  # seconds the client waits for the server's reply to its close frame


@dataclass(frozen=True, slots=True)
class _Link:
    ws: trio_websocket.WebSocketConnection
    stream: trio.abc.Stream


def _closed(exc: trio_websocket.ConnectionClosed) -> ConnectionClosed:
    reason = exc.reason
    return ConnectionClosed(
        reason.code if reason else None, (reason.reason or "") if reason else ""
    )


@asynccontextmanager
async def open_client(
    url: str,
    *,
    codec: Codec | None = None,
    reconnect: bool = True,
    backoff_min: float = 0.5,
    backoff_max: float = 30.0,
    request_timeout: float = 60.0,
    max_queue: int = 1000,
    subprotocols: Iterable[str] | None = None,
    headers: Iterable[tuple[str, str]] = (),
    max_message_size: int = 1_048_576,
    stream_factory: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Client]:
    """Connect to a riverside-trio server; the client lives as long as the block.

    ``codec`` must match the server's (:class:`~riverside_trio.JSONCodec` by default;
    :class:`~riverside_trio.CBORCodec`, :class:`~riverside_trio.WebwireCodec`, ...).
    Leaving the block closes the connection with 1000 and cancels the client's tasks.
    ``wss://`` URLs use ``ssl_context`` (the system's default CAs when None).
    ``stream_factory``, when given, opens each connection's transport instead of a TCP
    connection to ``url`` (a proxy, a Unix socket, one end of
    ``trio.testing.memory_stream_pair`` whose other end goes to ``server.serve_stream``).

    Raises:
        OSError: the server cannot be reached.
        trio_websocket.HandshakeError: the upgrade was refused
            (``trio_websocket.ConnectionRejected`` has the HTTP status).
    """
    codec = codec if codec is not None else JSONCodec()
    client = Client(
        url,
        codec=codec,
        reconnect=reconnect,
        backoff_min=backoff_min,
        backoff_max=backoff_max,
        request_timeout=request_timeout,
        max_queue=max_queue,
        connect_kwargs={
            "subprotocols": list(subprotocols) if subprotocols is not None else None,
            "extra_headers": [(k.encode(), v.encode()) for k, v in headers] or None,
            "max_message_size": max_message_size,
        },
        stream_factory=stream_factory,
        ssl_context=ssl_context,
    )
    async with trio.open_nursery() as nursery:
        first = await client._connect(nursery)
        await nursery.start(client._supervise, first)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_WAIT):
                await client.aclose()
            nursery.cancel_scope.cancel()
