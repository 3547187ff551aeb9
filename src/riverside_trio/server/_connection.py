"""One WebSocket connection: its state, its public API, callbacks and closing.

Three objects around one state: this :class:`Connection` (what handlers see, the rules),
its :class:`~._reader.Reader` (bytes in) and :class:`~._writer.Writer` (frames out), over
one transport (a plain socket, or any Trio stream: TLS, memory streams). The rules:

- One task per connection reads and runs ``init`` / ``handle_message`` / ``terminate``.
- Side tasks (writer, ``handle_info`` runner, child tasks) run in the server's nursery under
  a cancel scope of the connection's: an idle connection has no nursery of its own.
- Callbacks never overlap: a gate (no lock on the fast path) orders ``init``,
  ``handle_message``, ``handle_info`` and ``terminate``.
- Closing: the first close wins and fixes the TerminateReason; the connection leaves every
  delivery destination at once. After our close frame is out, data messages are dropped
  until the client's close frame arrives; the server then closes TCP. A client that does
  not answer within ``close_timeout`` is cut off. A protocol violation sends its close code
  and closes without waiting. Every close the server starts carries a machine-readable
  reason: the TerminateReason kind (``idle_timeout``, ``slow_consumer``, ...).
- Timers (idle, age, keepalive, close timeout) are checked by the server's sweeper
  (``_sweeper.py``), so an idle connection costs one parked task and no timer of its own.
- ``terminate(reason)`` runs exactly once, shielded and time-boxed, after the reader ends.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
import trio

from .._values import AuthRequest, TaskFailed, TaskResult, TerminateReason
from ..destinations import Channel, Session, User
from ..errors import CodecError, ConnectionClosed
from ..rpc._calls import RPCMethods
from ..wire.frames import PUSH_FULL, PUSH_QUEUED, encode_close
from ._gate import Gate
from ._mailbox import Mailbox
from ._reader import Reader
from ._tasks import SideTasks
from ._transport import Transport
from ._writer import Writer

if TYPE_CHECKING:
    from ..cluster import ClusterView, NameClaim
    from ..destinations import Destination
    from ..metrics import Metrics
    from ..wire.deflate import Inflater
    from ._core import Core

__all__ = ["Connection"]

log = structlog.get_logger("riverside_trio.connection")


class ServerView(Protocol):
    """What :attr:`Connection.server` offers: the :class:`~riverside_trio.Server`'s delivery
    API (a small protocol, so that the connection does not import the server; see the
    methods of Server for their documentation)."""

    @property
    def metrics(self) -> Metrics: ...
    @property
    def connection_count(self) -> int: ...
    def connections(self) -> list[Connection]: ...
    def deliver_user(self, user_id: str, obj: Any) -> int: ...
    def deliver_session(self, user_id: str, session_id: str, obj: Any) -> int: ...
    def deliver_channel(self, channel: str, obj: Any) -> int: ...
    def send_info(self, destination: Destination, info: Any) -> int: ...
    def publish(self, group: str, info: Any) -> int: ...
    def disconnect(
        self, user_id: str, session_id: str | None = None, code: int = 1000, reason: str = ""
    ) -> int: ...
    @property
    def node_id(self) -> str: ...
    async def cluster_view(self) -> ClusterView: ...


class Connection(Gate, RPCMethods):
    """An open WebSocket connection, as handler callbacks receive it.

    No method blocks: deliveries are encoded once, written or queued at once. ``state`` is
    yours; fixed: ``id`` (cluster-wide), ``user_id``, ``session_id``, ``subprotocol``, handshake.
    """

    __slots__ = (
        "__weakref__",
        "_aborted",
        "_activity",
        "_channels",
        "_close_deadline",
        "_close_sent",
        "_core",
        "_ended",
        "_groups",
        "_inflater",
        "_info_task",
        "_infos",
        "_join",
        "_last_ping",
        "_last_rx",
        "_names",
        "_opened_at",
        "_outbox",
        "_ping_sent_at",
        "_reader",
        "_rpc",
        "_scope",
        "_side",
        "_transport",
        "_writer",
        "handshake",
        "id",
        "session_id",
        "state",
        "subprotocol",
        "user_id",
    )

    def __init__(
        self,
        core: Core,
        transport: Transport,
        request: AuthRequest,
        *,
        user_id: str,
        session_id: str,
        state: Any,
        subprotocol: str | None,
        leftover: bytes,
        inflater: Inflater | None = None,
        channels: tuple[str, ...] = (),
    ) -> None:
        super().__init__()  # the callback gate
        self._core = core
        self.id = core.connection_id()  # unique in the cluster
        self._transport = transport
        self.handshake = request
        self.user_id = user_id
        self.session_id = session_id
        self.state = state
        self.subprotocol = subprotocol
        # Membership, owned (written) by the registry alone; made on the first join.
        self._channels: set[str] | None = None
        self._names: set[str] | None = None
        self._groups: set[str] | None = None
        self._inflater = inflater
        self._join = channels  # joined when the connection opens
        self._writer = Writer(self, transport)
        self._outbox = self._writer.outbox
        self._reader = Reader(self, transport, leftover, inflater)
        now = trio.current_time()
        self._activity = False
        self._opened_at = now
        self._last_rx = now
        self._last_ping = now
        self._ping_sent_at: float | None = None
        self._close_sent = False
        self._close_deadline: float | None = None
        self._aborted = False
        self._infos: Mailbox | None = None  # made on the first send_info
        self._info_task = False
        self._scope: trio.CancelScope | None = None  # the reading task's, for _abort
        self._side: SideTasks | None = None  # made when the first side task starts
        self._ended = False  # reading is over: no new side tasks

    def __repr__(self) -> str:
        return f"<Connection user_id={self.user_id!r} session_id={self.session_id!r}>"

    # ------------------------------------------------------------------ public API

    @property
    def path(self) -> str:
        """The path the client connected to."""
        return self.handshake.path

    @property
    def remote(self) -> tuple[str, int]:
        """The client's ``(host, port)``."""
        return self.handshake.peer

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or the connection ended."""
        return self._close_sent or self._outbox.closed

    @property
    def channels(self) -> frozenset[str]:
        """The channels this connection is a member of."""
        return frozenset(self._channels or ())

    @property
    def names(self) -> frozenset[str]:
        """The unique names this connection holds."""
        return frozenset(self._names or ())

    @property
    def groups(self) -> frozenset[str]:
        """The groups this connection is a member of."""
        return frozenset(self._groups or ())

    @property
    def server(self) -> ServerView:
        """The :class:`~riverside_trio.Server` this connection belongs to (delivery and
        infos to anyone)."""
        assert self._core.server is not None
        return cast("ServerView", self._core.server)

    def send(self, obj: Any) -> int:
        """Encode ``obj`` with the handler's codec and send it to this client.

        Returns 1 when it was written or queued, 0 when the outbox was full (the connection
        is then shed with 1008 ``slow_consumer``, or the message dropped, by
        ``outbox_policy``).

        Raises:
            ConnectionClosed: the connection is closing or closed.
            CodecError: ``obj`` cannot be encoded; nothing was sent.
        """
        if self._close_sent or self._outbox.closed:
            raise ConnectionClosed(*self._closed_args())
        core = self._core
        if self._inflater is not None:
            data, text = core.hub.payload(obj)
            status = self._outbox.push(core.hub.compressed_frame(data, text))
        else:
            payload = obj if type(obj) in core.passthrough else core.codec.encode(obj)
            if type(payload) is str or type(payload) is bytes:
                try:  # the common case: framed and pushed in one compiled call
                    status = self._outbox.push_message(payload)
                except UnicodeEncodeError as exc:
                    raise CodecError(f"text is not valid UTF-8: {exc}") from None
                text = type(payload) is str
            else:
                frame, text = core.hub.framed(payload)
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
        return self._core.hub.deliver(User(user_id), obj)

    def deliver_session(self, user_id: str, session_id: str, obj: Any) -> int:
        """Send ``obj`` to the connections of one session of ``user_id``."""
        return self._core.hub.deliver(Session(user_id, session_id), obj)

    def deliver_channel(self, channel: str, obj: Any) -> int:
        """Send ``obj`` to every member of ``channel``, this connection included if it is one."""
        return self._core.hub.deliver(Channel(channel), obj)

    def join_channel(self, channel: str) -> bool:
        """Join ``channel``; joining twice is harmless and still delivers once.

        Returns False if the connection was a member already.

        Raises:
            ConnectionClosed: the connection has ended.
        """
        self._check_member_name(channel, "channel")
        return self._core.registry.join(self, channel)

    def leave_channel(self, channel: str) -> bool:
        """Leave ``channel``; returns False if the connection was not a member."""
        return self._core.registry.leave(self, channel)

    def register_name(self, name: str) -> NameClaim:
        """Hold the unique ``name``: ``server.send_info(name, info)`` reaches this connection.

        The name is freed when the connection closes; registering it again does nothing.
        With several nodes, ``await`` the returned :class:`NameClaim` for the cluster's answer.

        Raises:
            NameInUseError: another connection holds ``name``.
            ConnectionClosed: this connection is closing or closed.
        """
        self._check_member_name(name, "name")
        return self._core.hub.register_name(self, name)

    def unregister_name(self, name: str) -> bool:
        """Free ``name``; False if this connection did not hold it."""
        return self._core.registry.unregister_name(self, name)

    def join_group(self, group: str) -> bool:
        """Join ``group``: ``server.publish(group, info)`` reaches this connection's
        ``handle_info``. Returns False if it was a member already.

        Raises:
            ConnectionClosed: this connection is closing or closed.
        """
        self._check_member_name(group, "group")
        return self._core.registry.join_group(self, group)

    def leave_group(self, group: str) -> bool:
        """Leave ``group``; False if this connection was not a member."""
        return self._core.registry.leave_group(self, group)

    def send_info(self, info: Any) -> None:
        """Post ``info`` to this connection's ``Handler.handle_info``.

        It runs after the callback in progress, never overlapping it. The mailbox holds up
        to ``mailbox_size`` infos; past that ``outbox_policy`` applies. Posting to a closed
        connection does nothing.
        """
        self._post_info(info)

    def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str = "") -> None:
        """Run ``await fn(*args)`` as a child task of this connection.

        Its return value arrives in ``handle_info`` as :class:`TaskResult`, an exception as
        :class:`TaskFailed` (logged too). The task is cancelled when the connection ends.

        Raises:
            ConnectionClosed: this connection is closing or closed.
        """
        if self._close_sent or not self._spawn(
            self._child, fn, args, name or getattr(fn, "__name__", "task")
        ):
            raise ConnectionClosed(*self._closed_args())

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake with ``code`` and ``reason``; ``terminate`` follows.

        Raises:
            ValueError: ``code`` is not a close code a server may send.
        """
        self._initiate_close(code, reason, "closed")

    def _check_member_name(self, value: object, what: str) -> None:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{what} must be a non-empty str, got {value!r}")
        if self._close_sent or self._outbox.closed:
            raise ConnectionClosed(*self._closed_args())

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
        self._writer.push_control(frame)

    def _close_for(self, kind: str, code: int) -> None:
        """Close on the server's initiative, with the machine-readable reason ``kind``."""
        self._initiate_close(code, kind, kind)

    def _mark_closing(self) -> None:
        """No more data frames: leave every delivery destination (the close frame is last);
        the infos still waiting will not run."""
        if not self._close_sent:
            self._close_sent = True
            self._core.registry.unroute(self)
            if self._infos:
                self._infos.clear()

    def _on_close(self, code: int, reason: str) -> None:
        """The client's close frame: an answer to ours, or its own request to close."""
        if not self._close_sent:
            self._reason = TerminateReason("remote", code, reason)
            self._mark_closing()
            # Echo the code (RFC 6455 5.5.1); 1005 "no status" gets an empty close frame, and
            # a code only a client may send (1010) is answered with 1000.
            try:
                frame = encode_close(None if code == 1005 else code)
            except ValueError:
                frame = encode_close(1000)
            self._writer.push_control(frame)
        elif self._reason is None:
            self._reason = TerminateReason("remote", code, reason)

    def _fail(self, code: int, reason: str, kind: str) -> None:
        """Fail the connection: our close frame, then TCP closes without waiting.

        The close reason is ``kind``, then the detail: ``protocol_error: <what>``.
        """
        if kind == "message_too_big":
            text = kind
        else:
            text = f"{kind}: {reason}".encode()[:123].decode("utf-8", "ignore")
        if self._reason is None or not self._close_sent:
            self._reason = TerminateReason(kind, code, text)
        if not self._close_sent:
            self._mark_closing()
            self._writer.push_control(encode_close(code, text))

    def _lost(self) -> None:
        """TCP ended without (the rest of) the closing handshake."""
        if self._reason is None:
            self._reason = TerminateReason("remote", 1006, "")
        self._mark_closing()

    def _overflow(self) -> None:
        """A message did not fit the outbox (or mailbox): shed, or count the drop."""
        if self._core.close_on_overflow:
            if not self._close_sent:
                self._core.warn("slow_consumer", user_id=self.user_id, session_id=self.session_id)
                self._close_for("slow_consumer", 1008)
        else:
            self._dropped()

    def _dropped(self) -> None:
        self._core.metrics.dropped_messages += 1
        self._core.warn("message_dropped", user_id=self.user_id, session_id=self.session_id)

    def _abort(self) -> None:
        """Stop now: the client did not finish the closing handshake, or the socket broke."""
        self._aborted = True
        if self._scope is not None:
            self._scope.cancel()

    def _push_ping_or_pong(self, frame: bytes) -> None:
        """Queue a ping or pong; a full outbox is the client's problem (outbox_policy): a
        client that pings without reading is shed, or its pongs are dropped."""
        if self._outbox.push(frame) == PUSH_FULL:
            self._overflow()

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        """The connection's whole life; returns when it is over (never raises)."""
        core = self._core
        core.registry.add(self)
        core.metrics.sessions_total += 1
        if self._join:
            for channel in self._join:
                core.registry.join(self, channel)
            self._join = ()
        if self._inflater is not None:
            core.hub.deflate_connections += 1
        try:
            # No nursery of its own (it would cost every idle connection): the side tasks
            # run in the server's nursery under scopes of this connection (_spawn).
            with trio.CancelScope() as self._scope:
                await self._callback(core.handler.init, self, failed="init_failed")
                await self._reader.run()
        finally:
            self._ended = True
            core.registry.remove(self)
            if self._inflater is not None:
                core.hub.deflate_connections -= 1
            if core.config.outbox_policy == "drop_oldest":  # keep the metric monotonic
                core.metrics.dropped_messages += self._outbox.dropped_frames
            # Cancelled from outside (the server is being torn down), cut off after the
            # close timeout, or the socket broke: no more waiting for the client, but
            # terminate still runs.
            hurry = self._aborted or trio.current_effective_deadline() == -math.inf
            with trio.CancelScope(shield=True):
                if self._side:
                    await self._side.stop()
                await self._finish(0 if hurry else core.config.close_timeout)

    async def _finish(self, flush_timeout: float) -> None:
        """Flush what is queued (bounded by flush_timeout), close, run terminate."""
        core = self._core
        reason = self._reason or TerminateReason("remote", 1006, "")
        self._reason = reason
        if self._writer.busy:
            with trio.move_on_after(flush_timeout):
                await self._writer.flush()
        self._writer.close()
        if self._infos:
            self._infos.clear()
        self._transport.send_eof()
        await self._transport.aclose(graceful=flush_timeout > 0)
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
        if self._side is None:
            self._side = SideTasks()
        await self._side.run(fn, args, self._crashed, self.user_id)

    def _crashed(self) -> None:
        self._lost()
        self._abort()

    async def _child(self, fn: Callable[..., Awaitable[Any]], args: Any, name: str) -> None:
        try:
            value = await fn(*args)
        except Exception as exc:
            log.exception("task_failed", task=name, user_id=self.user_id)
            self._post_info(TaskFailed(name, exc))
        else:
            self._post_info(TaskResult(name, value))

    # ------------------------------------------------------------------ infos

    def _post_info(self, info: Any) -> int:
        """Queue ``info`` for handle_info; 1 if queued (or queued after dropping), else 0."""
        if self._outbox.closed or self._ended or self._close_sent:
            return 0
        infos = self._infos
        if infos is None:
            infos = self._infos = Mailbox(self._core.config.mailbox_size, self._core.budget)
        elif infos.full:
            if self._core.config.outbox_policy == "drop_oldest":
                infos.popleft()
                self._dropped()
            else:
                self._overflow()
                return 0
        infos.append(info)
        if not self._info_task:
            self._info_task = self._spawn(self._run_infos)
        return 1

    async def _run_infos(self) -> None:
        handler = self._core.handler
        try:
            while self._infos and not self._close_sent:
                info = self._infos.popleft()
                await self._callback(handler.handle_info, info, self)
        finally:
            self._info_task = False
