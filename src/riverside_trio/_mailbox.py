"""Infos, unique names, groups and child tasks of a connection.

A mixin of :class:`~riverside_trio._connection.Connection`, kept apart to keep each file to
one job. An info is a Python object for ``Handler.handle_info``; it waits in a bounded
mailbox (``outbox_size``; ``outbox_policy`` applies when full) and is handled by a
short-lived task, never overlapping another callback of the connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import structlog

from .errors import ConnectionClosed
from .handler import TaskFailed, TaskResult

if TYPE_CHECKING:
    from ._connection import Connection
    from ._core import Core
    from .frames import Outbox
    from .server import Server

__all__ = ["Mailbox"]

log = structlog.get_logger("riverside_trio.connection")


class Mailbox:
    """Infos, names, groups and child tasks (mixed into Connection)."""

    if not TYPE_CHECKING:  # the attributes are Connection's slots
        __slots__ = ()
    else:  # provided by Connection
        user_id: str
        _core: Core
        _outbox: Outbox
        _ended: bool
        _close_sent: bool
        _infos: deque[Any] | None
        _info_task: bool
        _names: set[str] | None
        _groups: set[str] | None

        _closed_args: Callable[[], tuple[int | None, str]]

        def _overflow(self) -> None: ...
        def _dropped(self) -> None: ...

        _callback: Callable[..., Awaitable[bool]]
        _spawn: Callable[..., bool]

    @property
    def server(self) -> Server:
        """The server this connection belongs to (delivery and infos to anyone)."""
        assert self._core.server is not None
        return self._core.server

    @property
    def names(self) -> frozenset[str]:
        """The unique names this connection holds."""
        return frozenset(self._names or ())

    @property
    def groups(self) -> frozenset[str]:
        """The groups this connection is a member of."""
        return frozenset(self._groups or ())

    def register_name(self, name: str) -> None:
        """Hold the unique ``name``: ``server.send_info(name, info)`` reaches this connection.

        The name is freed when the connection closes. Registering a name this connection
        holds already does nothing.

        Raises:
            NameInUseError: another connection holds ``name``.
            ConnectionClosed: this connection is closing or closed.
        """
        self._check_member_name(name, "name")
        self._core.registry.register_name(cast("Connection", self), name)

    def unregister_name(self, name: str) -> bool:
        """Free ``name``; False if this connection did not hold it."""
        return self._core.registry.unregister_name(cast("Connection", self), name)

    def join_group(self, group: str) -> bool:
        """Join ``group``: ``server.publish(group, info)`` reaches this connection's
        ``handle_info``. Returns False if it was a member already.

        Raises:
            ConnectionClosed: this connection is closing or closed.
        """
        self._check_member_name(group, "group")
        return self._core.registry.join_group(cast("Connection", self), group)

    def leave_group(self, group: str) -> bool:
        """Leave ``group``; False if this connection was not a member."""
        return self._core.registry.leave_group(cast("Connection", self), group)

    def _check_member_name(self, value: object, what: str) -> None:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{what} must be a non-empty str, got {value!r}")
        if self._close_sent or self._outbox.closed:
            raise ConnectionClosed(*self._closed_args())

    def send_info(self, info: Any) -> None:
        """Post ``info`` to this connection's ``Handler.handle_info``.

        It runs after the callback in progress, never overlapping it. The mailbox holds up
        to ``outbox_size`` infos; past that ``outbox_policy`` applies. Posting to a closed
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

    async def _child(self, fn: Callable[..., Awaitable[Any]], args: Any, name: str) -> None:
        try:
            value = await fn(*args)
        except Exception as exc:
            log.exception("task_failed", task=name, user_id=self.user_id)
            self._post_info(TaskFailed(name, exc))
        else:
            self._post_info(TaskResult(name, value))

    def _post_info(self, info: Any) -> int:
        """Queue ``info`` for handle_info; 1 if queued (or queued after dropping), else 0."""
        if self._outbox.closed or self._ended or self._close_sent:
            return 0
        infos = self._infos
        if infos is None:
            infos = self._infos = deque()
        elif len(infos) >= self._core.config.outbox_size:
            policy = self._core.config.outbox_policy
            if policy == "drop_oldest":
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
