"""The routing handler: :class:`RPCHandler` with ``@request(name)`` and ``@signal(name)``.

What happens to each incoming envelope (``Router.intercept`` sees every decoded message in
the reader, before ``handle_message``, and never awaits):

- a plain message (no envelope) goes to ``handle_message`` as with any Handler;
- a request or signal joins the connection's queue (see ``_calls``); during a graceful
  shutdown a request is answered ``shutdown`` at once and a signal dropped; more than
  ``outbox_size`` waiting requests: ``too_many_requests``;
- unless its handler never awaits (no ``await``, ``async for`` or ``async with`` in its
  body, checked once in its bytecode) and it would start at once (nothing waits in the
  queue, fewer than ``request_concurrency`` run): then it runs right here, to its end, in
  the reader's step (no task switch, no cancel scope; it has no checkpoint, so it could not
  be cancelled by ``request_timeout`` in the request task either);
- a request handler's return value is the reply; ``RequestError(code, message)`` is an
  error reply with them; any other exception is logged and answered ``internal_error``
  (nothing of it leaks); no reply within ``request_timeout``: ``timeout`` (the handler is
  cancelled); a name with no handler: ``unknown_name``;
- a signal handler's exception is logged; a signal with no handler is logged and dropped;
- a reply or error reply resolves the server's pending ``conn.request()``; one nobody
  waits for is dropped and logged;
- a malformed envelope closes the connection with 1008 ``invalid_envelope``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import structlog
import trio

from ..errors import ConnectionClosed, RequestError
from ..handler import Handler
from ..wire.frames import Cork
from ._calls import ConnRPC
from ._envelope import (
    CloseSession,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Malformed,
    Reply,
    Request,
    RestoreSession,
    Signal,
    Welcome,
)
from ._format import Format, format_for
from ._inline import DEFAULT as _DEFAULT
from ._inline import inline_table, never_awaits
from ._session_ops import SessionOps
from ._sessions import Sessions, SessionStore

if TYPE_CHECKING:
    from ..server._connection import Connection

__all__ = ["RPCHandler", "request", "signal"]

log = structlog.get_logger("riverside_trio.rpc")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def request(name: str) -> Callable[[F], F]:
    """Mark an ``async def method(self, payload, conn)`` of an :class:`RPCHandler` as the
    handler of requests named ``name``; what it returns is the reply's payload."""
    _check_name(name)

    def mark(fn: F) -> F:
        fn._rpc_request = name  # type: ignore[attr-defined]
        return fn

    return mark


def signal(name: str) -> Callable[[F], F]:
    """Mark an ``async def method(self, payload, conn)`` of an :class:`RPCHandler` as the
    handler of signals named ``name``."""
    _check_name(name)

    def mark(fn: F) -> F:
        fn._rpc_signal = name  # type: ignore[attr-defined]
        return fn

    return mark


def _check_name(name: object) -> None:
    if not isinstance(name, str) or len(name) > 255 or not name.isascii():
        raise ValueError(f"a request or signal name is 0-255 ASCII characters, got {name!r}")


class RPCHandler(Handler):
    """A :class:`~riverside_trio.Handler` that also speaks request/reply, signals and
    restorable sessions (see the README's "Request/reply" section).

    Decorate methods with :func:`request` and :func:`signal`; plain messages still reach
    ``handle_message``. Set ``session_store`` (a class or instance attribute) to keep
    sessions elsewhere than in this process's memory.
    """

    session_store: ClassVar[SessionStore | None] = None
    _rpc_requests: ClassVar[dict[str, str]] = {}
    _rpc_signals: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        requests: dict[str, str] = {}
        signals: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if (name := getattr(value, "_rpc_request", None)) is not None:
                    requests[name] = attr
                if (name := getattr(value, "_rpc_signal", None)) is not None:
                    signals[name] = attr
        cls._rpc_requests = requests
        cls._rpc_signals = signals
        own_init = cls.__dict__.get("init")
        if own_init is not None and not getattr(own_init, "_rpc_wrapped", False):
            # webwire clients expect the server's greeting first, whatever init does.
            async def init(self: RPCHandler, conn: Connection) -> None:
                self._rpc_router.greet(conn)
                await own_init(self, conn)

            init._rpc_wrapped = True  # type: ignore[attr-defined]
            init.__doc__ = own_init.__doc__
            cls.init = init  # type: ignore[method-assign]

    async def init(self, conn: Connection) -> None:
        """The connection is open (webwire clients get their greeting first)."""
        self._rpc_router.greet(conn)

    async def handle_request(self, name: str, payload: Any, conn: Connection) -> Any:
        """Requests with no ``@request`` handler; the default answers ``unknown_name``."""
        raise RequestError(ErrorCode.UNKNOWN_NAME, f"no request handler named {name!r}")

    async def handle_signal(self, name: str, payload: Any, conn: Connection) -> None:
        """Signals with no ``@signal`` handler; the default logs and drops them."""
        log.info("unknown_signal", name=name, user_id=conn.user_id)

    @property
    def sessions(self) -> Sessions:
        """Which connections of this server hold which session."""
        return self._rpc_router.sessions

    async def close_session(self, key: str) -> int:
        """Close the session ``key``: each of its connections here is told, and the store
        forgets it. Returns how many connections held it here. A checkpoint."""
        return await self._rpc_router.close_key(key)

    @property
    def _rpc_router(self) -> Router:
        router: Router | None = self.__dict__.get("_rpc_router_")
        if router is None:
            router = self.__dict__["_rpc_router_"] = Router(self)
        return router

    @property
    def _rpc_intercept(self) -> Callable[[Any, Connection], bool]:
        # Read once by the server: the reader calls the router's method directly.
        router = self._rpc_router
        return router.intercept if router.fmt.webwire else router.intercept_dict


def _flush(cork: Cork) -> None:
    try:
        cork.flush()
    except Exception:  # a bug of ours: log, carry on
        log.exception("cork_flush_failed")


class Router(SessionOps):
    """The request/reply machinery of one RPCHandler instance (its sessions: ``SessionOps``)."""

    def __init__(self, handler: RPCHandler) -> None:
        self.handler = handler
        self.fmt: Format = format_for(handler.codec)
        self._store: SessionStore | None = None  # chosen on first use (SessionOps.store_of)
        self.sessions = Sessions()
        # The handlers that run inline in the reader (see the module's docstring).
        self.inline_requests = inline_table(handler, handler._rpc_requests)
        self.inline_signals = inline_table(handler, handler._rpc_signals)
        self.any_request = never_awaits(handler.handle_request)
        self.any_signal = never_awaits(handler.handle_signal)

    # ---------------------------------------------------------------- the reader's side

    def state(self, conn: Connection) -> ConnRPC:
        try:
            return conn._rpc
        except AttributeError:
            pass
        st = conn._rpc = ConnRPC()
        if not conn._spawn(self._runner, conn, st):
            st.closed = True
        return st

    def greet(self, conn: Connection) -> None:
        """webwire's AcceptConf, the first message a webwire client gets."""
        self.state(conn)
        if self.fmt.webwire:
            cfg = conn._core.config
            timeout = int((cfg.idle_timeout or 0) * 1000)
            size = min(cfg.max_message_size, 2**32 - 1)
            conn.send(Welcome(min(timeout, 2**32 - 1), size, conn.subprotocol or ""))

    def intercept_dict(self, msg: Any, conn: Connection) -> bool:
        """:meth:`intercept` for dict codecs: a plain request whose handler never awaits
        and that would start at once runs here without an envelope object."""
        if type(msg) is dict and msg.get("$") == "req":
            rid, name = msg.get("id"), msg.get("name")
            if (
                type(name) is str
                and (fn := self.inline_requests.get(name)) is not None
                and (
                    (type(rid) is int and -(2**63) <= rid < 2**64)
                    or (type(rid) is str and len(rid) <= 255)
                )
                and len(name) <= 255
            ):
                core = conn._core
                try:
                    st = conn._rpc
                except AttributeError:
                    st = self.state(conn)
                if (
                    not core.shutting_down
                    and not st.closed
                    and not st.queue
                    and st.running < core.config.request_concurrency
                ):
                    self._finish(fn(msg.get("data"), conn), rid, name, conn)
                    return True
        return self.intercept(msg, conn)

    def intercept(self, msg: Any, conn: Connection) -> bool:
        """Take an envelope off the read path; False: a plain message for handle_message."""
        env = self.fmt.parse(msg)
        if env is None:
            return False
        t = type(env)
        if t is Request or t is Signal or t is RestoreSession or t is CloseSession:
            core = conn._core
            if core.shutting_down:
                if t is not Signal:
                    self._refuse(conn, env, ErrorCode.SHUTDOWN, "server shutting down")
                return True
            st = self.state(conn)
            if st.closed:
                return True
            if not st.queue and st.running < core.config.request_concurrency:
                if t is Request:
                    if self._inline_request(env, conn):  # type: ignore[arg-type]
                        return True
                elif t is Signal and self._inline_signal(env, conn):  # type: ignore[arg-type]
                    return True
            if len(st.queue) >= core.config.outbox_size:
                if t is not Signal:
                    self._refuse(conn, env, ErrorCode.TOO_MANY_REQUESTS, "too many waiting")
                return True
            st.queue.append(env)
            core.rpc_running += 1
            st.wake()
        elif isinstance(env, Reply | ErrorReply):
            if not self.state(conn).resolve(env):
                conn._core.warn("unknown_reply_id", user_id=conn.user_id, id=repr(env.id)[:80])
        elif isinstance(env, Malformed):
            conn._core.metrics.invalid_messages["envelope"] += 1
            conn._core.warn("invalid_envelope", user_id=conn.user_id, why=env.why)
            conn._close_for("invalid_envelope", 1008)
        elif t is not Heartbeat:  # a server-only message from a client
            conn._core.metrics.invalid_messages["envelope"] += 1
            conn._close_for("invalid_envelope", 1008)
        return True

    def _refuse(self, conn: Connection, env: Any, code: str, message: str) -> None:
        self._send(conn, ErrorReply(env.id, code, message))

    def _inline_request(self, req: Request, conn: Connection) -> bool:
        """Run ``req`` here if its handler never awaits; False: it goes to the queue."""
        name = req.name
        fn = self.inline_requests.get(name, _DEFAULT)
        if fn is None:
            return False
        if fn is _DEFAULT:
            if self.any_request is None:
                return False
            coro = self.any_request(name, req.payload, conn)
        else:
            coro = fn(req.payload, conn)
        self._finish(coro, req.id, name, conn)
        return True

    def _finish(
        self, coro: Coroutine[Any, Any, Any], rid: Any, name: str, conn: Connection
    ) -> None:
        """Run a request handler that never awaits to its end, and answer ``rid``."""
        try:
            coro.send(None)
        except StopIteration as done:
            self._reply(conn, rid, done.value)
            return
        except RequestError as exc:
            reply = ErrorReply(rid, exc.code, exc.message)
        except ConnectionClosed:
            if conn.closed:
                return
            log.exception("request_failed", name=name, user_id=conn.user_id)
            reply = ErrorReply(rid, ErrorCode.INTERNAL, "internal error")
        except Exception:
            log.exception("request_failed", name=name, user_id=conn.user_id)
            reply = ErrorReply(rid, ErrorCode.INTERNAL, "internal error")
        else:  # cannot happen (it has no await): never let its trap reach Trio
            coro.close()
            log.error("request_failed", name=name, user_id=conn.user_id, why="suspended")
            reply = ErrorReply(rid, ErrorCode.INTERNAL, "internal error")
        self._send(conn, reply)

    def _inline_signal(self, sig: Signal, conn: Connection) -> bool:
        """Run ``sig`` here if its handler never awaits; False: it goes to the queue."""
        name = sig.name
        fn = self.inline_signals.get(name, _DEFAULT)
        if fn is None:
            return False
        if fn is _DEFAULT:
            if self.any_signal is None:
                return False
            coro = self.any_signal(name, sig.payload, conn)
        else:
            coro = fn(sig.payload, conn)
        try:
            coro.send(None)
        except StopIteration:
            pass
        except ConnectionClosed:
            if not conn.closed:
                log.exception("signal_failed", name=name, user_id=conn.user_id)
        except Exception:
            log.exception("signal_failed", name=name, user_id=conn.user_id)
        else:  # cannot happen (it has no await)
            coro.close()
            log.error("signal_failed", name=name, user_id=conn.user_id, why="suspended")
        return True

    # ---------------------------------------------------------------- the runner

    async def _runner(self, conn: Connection, st: ConnRPC) -> None:
        """Run the connection's requests and signals, up to request_concurrency at once."""
        limit = conn._core.config.request_concurrency
        try:
            if limit == 1:
                await self._serial(conn, st)
            cork = conn._core.cork
            async with trio.open_nursery() as nursery:
                while True:
                    while st.queue and st.running < limit:
                        st.running += 1
                        nursery.start_soon(self._run_one, st.queue.popleft(), conn, st)
                    _flush(cork)
                    await st.wait()
        finally:
            core = conn._core
            core.rpc_running -= len(st.queue)
            if core.rpc_running <= 0:
                core.rpc_running = 0
                core.rpc_idle.unpark_all()
            code, reason = conn._closed_args()
            st.fail_pending(code, reason)
            if st.session is not None:
                self.unbind_session(st.session.key, conn)

    async def _serial(self, conn: Connection, st: ConnRPC) -> None:
        """One at a time (the default), under one cancel scope whose deadline each request
        sets to its own request_timeout (cheaper than a scope per request); a fresh scope
        after a timeout, and once an idle connection's last deadline passes. Never returns."""
        cork = conn._core.cork
        timeout = conn._core.config.request_timeout
        inf = math.inf
        while True:
            item: Any = None
            with trio.CancelScope() as scope:
                while True:
                    if not st.queue:
                        # The last request's deadline stays: moving it costs as much as a
                        # third of the request; if it passes, the wait ends, a fresh scope.
                        _flush(cork)  # the replies of this step leave now, not by the flusher
                        await st.wait()
                        continue
                    item = st.queue.popleft()
                    st.running = 1  # the reader runs nothing inline meanwhile
                    if timeout is not None and type(item) is Request:
                        scope.deadline = trio.current_time() + timeout
                        await self._run(item, conn)
                        if scope.cancel_called:  # it ran past its deadline: a fresh scope, or
                            # the next request would start cancelled
                            break
                    else:
                        if scope.deadline != inf:
                            scope.deadline = inf  # signals and sessions have no timeout
                        await self._run(item, conn)
                    st.running = 0
                    item = None
            st.running = 0
            if scope.cancelled_caught and type(item) is Request:
                self._timed_out(conn, item, timeout)

    async def _run_one(self, item: Any, conn: Connection, st: ConnRPC) -> None:
        timeout = conn._core.config.request_timeout
        try:
            if timeout is not None and type(item) is Request:
                with trio.move_on_after(timeout) as scope:
                    await self._run(item, conn)
                if scope.cancelled_caught:
                    self._timed_out(conn, item, timeout)
            else:
                await self._run(item, conn)
        finally:
            st.running -= 1
            st.wake()

    def _timed_out(self, conn: Connection, req: Request, timeout: float | None) -> None:
        self._send(conn, ErrorReply(req.id, ErrorCode.TIMEOUT, f"no reply within {timeout} s"))

    async def _run(self, item: Any, conn: Connection) -> None:
        core = conn._core
        try:
            t = type(item)
            if t is Request:
                await self._request(item, conn)
            elif t is Signal:
                await self._signal(item, conn)
            elif t is RestoreSession:
                await self._restore(item, conn)
            else:
                await self._close_by_client(item, conn)
        finally:
            core.rpc_running -= 1
            if core.rpc_running <= 0 and core.shutting_down:
                core.rpc_idle.unpark_all()

    async def _request(self, req: Request, conn: Connection) -> None:
        handler = self.handler
        attr = handler._rpc_requests.get(req.name)
        reply: Any
        try:  # under the runner's cancel scope (request_timeout)
            if attr is not None:
                value = await getattr(handler, attr)(req.payload, conn)
            else:
                value = await handler.handle_request(req.name, req.payload, conn)
            self._reply(conn, req.id, value)
            return
        except RequestError as exc:
            reply = ErrorReply(req.id, exc.code, exc.message)
        except ConnectionClosed:
            if conn.closed:
                return
            log.exception("request_failed", name=req.name, user_id=conn.user_id)
            reply = ErrorReply(req.id, ErrorCode.INTERNAL, "internal error")
        except Exception:
            log.exception("request_failed", name=req.name, user_id=conn.user_id)
            reply = ErrorReply(req.id, ErrorCode.INTERNAL, "internal error")
        self._send(conn, reply)

    def _reply(self, conn: Connection, rid: Any, value: Any) -> None:
        """Send the reply ``value`` to the request ``rid`` (built in the codec's form at once)."""
        try:
            conn.send(self.fmt.reply(rid, value))
        except ConnectionClosed:
            pass
        except Exception:  # the reply cannot be encoded: the client still gets an answer
            log.exception("reply_not_encodable", user_id=conn.user_id)
            self._send(conn, ErrorReply(rid, ErrorCode.INTERNAL, "internal error"))

    def _send(self, conn: Connection, env: Any) -> None:
        try:
            conn.send(self.fmt.out(env))
        except ConnectionClosed:
            pass
        except Exception:  # a bug of ours (what we send here always encodes)
            log.exception("envelope_not_encodable", user_id=conn.user_id)

    async def _signal(self, sig: Signal, conn: Connection) -> None:
        handler = self.handler
        attr = handler._rpc_signals.get(sig.name)
        try:
            if attr is not None:
                await getattr(handler, attr)(sig.payload, conn)
            else:
                await handler.handle_signal(sig.name, sig.payload, conn)
        except ConnectionClosed:
            if not conn.closed:
                log.exception("signal_failed", name=sig.name, user_id=conn.user_id)
        except Exception:
            log.exception("signal_failed", name=sig.name, user_id=conn.user_id)
