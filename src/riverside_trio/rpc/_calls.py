"""The request/reply side of a connection: its pending calls to the client, the queue of
the client's requests and signals with the task that runs them, and the methods a
:class:`~riverside_trio.Connection` gets from :class:`RPCMethods`.

Rules:

- The client's requests and signals of one connection run in arrival order in one task
  of the connection (``request_concurrency`` at a time, 1 by default): a handler that
  awaits ``conn.request()`` gets its reply while it waits. They run outside the gate of
  the other callbacks, so with ``request_concurrency > 1`` they may overlap. A handler
  that never awaits and would start at once runs in the reader instead (``_inline``):
  nothing can happen meanwhile, so the order and the limit are the same.
- The task waits for work with ``wait``/``wake`` (the reader reschedules it directly)
  and runs one request at a time under one cancel scope whose deadline each request sets
  (an idle connection keeps its last request's deadline until it passes: one wake-up).
- Replies are matched to pending calls by id as they are read; a reply to an id nobody
  waits for (unknown, or given up after its timeout) is dropped and logged.
- When the connection ends, its task is cancelled: running handlers are cancelled, pending
  calls raise :class:`~riverside_trio.ConnectionClosed`, its session stays restorable.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from ..errors import ConnectionClosed, RequestError, RequestTimeout
from ._envelope import ErrorReply, Reply, Request, SessionData, Signal

if TYPE_CHECKING:
    from ._format import Format

__all__ = ["ConnRPC", "RPCMethods", "RouterView"]


class RouterView(Protocol):
    """What a connection needs of its handler's router (defined in ``_router``)."""

    fmt: Format

    def state(self, conn: Any) -> ConnRPC: ...
    async def create_session(self, conn: Any, info: Any) -> SessionData: ...
    async def close_session_of(self, conn: Any) -> bool: ...


class _Call:
    """One server-to-client request waiting for its reply."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ConnRPC:
    """The request/reply state of one connection (made on its first envelope)."""

    __slots__ = ("closed", "next_id", "pending", "queue", "running", "session", "waiting")

    def __init__(self) -> None:
        self.queue: deque[Any] = deque()  # Request, Signal, RestoreSession, CloseSession
        self.waiting: Task | None = None  # the runner, while it waits for the queue
        self.pending: dict[Any, _Call] = {}
        self.next_id = 0
        self.running = 0
        self.session: SessionData | None = None
        self.closed = False

    def wake(self) -> None:
        """Wake the runner if it waits (there is work in the queue, or a free slot)."""
        task = self.waiting
        if task is not None:
            self.waiting = None
            reschedule(task)

    async def wait(self) -> None:
        """The runner waits for :meth:`wake` (a checkpoint: cancellable)."""
        self.waiting = current_task()
        await wait_task_rescheduled(self._abort)

    def _abort(self, _: Any) -> Abort:
        self.waiting = None
        return Abort.SUCCEEDED

    def resolve(self, env: Reply | ErrorReply) -> bool:
        """Hand a reply to the call waiting for it; False when none waits."""
        call = self.pending.pop(env.id, None)
        if call is None:
            return False
        if isinstance(env, ErrorReply):
            call.error = RequestError(env.code or "error", env.message)
        else:
            call.value = env.payload
        call.done.set()
        return True

    def fail_pending(self, code: int | None, reason: str) -> None:
        """The connection ended: every pending call raises ConnectionClosed."""
        self.closed = True
        for call in self.pending.values():
            call.error = ConnectionClosed(code, reason)
            call.done.set()
        self.pending.clear()
        self.queue.clear()


def _router(conn: Any) -> RouterView:
    router: RouterView | None = getattr(conn._core.handler, "_rpc_router", None)
    if router is None:
        raise RuntimeError("request/reply needs a handler derived from riverside_trio.RPCHandler")
    return router


class RPCMethods:
    """Request/reply and sessions on a :class:`~riverside_trio.Connection` (a mixin: the
    methods are documented on Connection)."""

    __slots__ = ()  # the Connection holds _rpc, made by the router on first use
    _rpc: ConnRPC

    async def request(self, name: str, payload: Any = None, *, timeout: float = 60.0) -> Any:
        """Send the client a request and wait for its reply; returns the reply's payload.

        A checkpoint. Cancelling it forgets the call (a late reply is dropped).

        Raises:
            RequestError: the client answered with an error reply (its code and message).
            RequestTimeout: no reply within ``timeout`` seconds.
            ConnectionClosed: the connection is closed, or ended while waiting.
            CodecError: ``payload`` cannot be encoded; nothing was sent.
            RuntimeError: the handler is not an :class:`~riverside_trio.RPCHandler`.
        """
        router = _router(self)
        st = router.state(self)
        if st.closed:
            raise ConnectionClosed(*self._closed_args())  # type: ignore[attr-defined]
        st.next_id += 1
        rid = router.fmt.new_id(st.next_id)
        call = _Call()
        self.send(router.fmt.out(Request(rid, name, payload)))  # type: ignore[attr-defined]
        st.pending[rid] = call
        try:
            with trio.move_on_after(timeout):
                await call.done.wait()
        finally:
            st.pending.pop(rid, None)
        if not call.done.is_set():
            raise RequestTimeout(f"no reply to {name!r} within {timeout} s")
        if call.error is not None:
            raise call.error
        return call.value

    def signal(self, name: str, payload: Any = None) -> None:
        """Send the client a signal: one way, never answered. Never blocks.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            CodecError: ``payload`` cannot be encoded; nothing was sent.
        """
        self.send(_format(self).out(Signal(name, payload)))  # type: ignore[attr-defined]

    @property
    def session(self) -> SessionData | None:
        """This connection's restorable session, or None."""
        try:
            st: ConnRPC = self._rpc
        except AttributeError:
            return None
        return st.session

    async def create_session(self, info: Any = None) -> SessionData:
        """Create a restorable session for this connection and tell the client its key.

        ``info`` (JSON-compatible) is stored with it and sent to the client. A checkpoint
        (the store saves it); a store that fails is logged and the session still works on
        this connection.

        Raises:
            SessionError: sessions are turned off (``sessions_disabled``) or this
                connection has a session already (``session_exists``).
            ConnectionClosed: the connection is closing or closed.
        """
        return await _router(self).create_session(self, info)

    async def close_session(self) -> bool:
        """Close this connection's session: the client is told, and the store forgets it
        once no connection holds it. False when there was none. A checkpoint."""
        return await _router(self).close_session_of(self)


def _format(conn: Any) -> Format:
    return _router(conn).fmt
