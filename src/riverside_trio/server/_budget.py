"""The node's memory budget for queued outgoing bytes, and the shedding past it.

Every outbox charges the compiled :class:`~riverside_trio.wire.frames.Budget` with the bytes
it queues, every writer with the batch it is writing, every mailbox with its infos
(``_mailbox.INFO_BYTES`` each); ``riverside_queued_bytes`` is the sum. A charge that takes
the sum over ``max_queued_bytes`` only notes that shedding is due (it happens inside a
push, maybe in the middle of a fan-out); the shedder task then closes the connections
holding the most, largest first, with 1008 ``memory_budget``, until what they held covers
the excess. A shed connection's queue and mailbox are dropped at once (the rest of a frame
already half written is kept, so the close frame behind it parses); the batch its writer
holds goes when written, or when ``close_timeout`` cuts the connection off, so what
connections already closing hold counts as on its way out, not as a reason to shed more.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog
from trio.lowlevel import ParkingLot

from ..metrics import Metrics
from ..wire.frames import Budget, Outbox
from ._mailbox import Mailbox

__all__ = ["MemoryBudget", "Sheddable", "held_bytes"]

log = structlog.get_logger("riverside_trio.server")


class _Writing(Protocol):
    @property
    def held_bytes(self) -> int: ...


class Sheddable(Protocol):
    """What shedding needs of a connection (a small protocol: no import of the connection)."""

    user_id: str
    session_id: str
    _close_sent: bool
    _outbox: Outbox
    _writer: _Writing
    _infos: Mailbox | None

    def _close_for(self, kind: str, code: int) -> None: ...


def held_bytes(conn: Sheddable) -> int:
    """What ``conn`` holds of the node's budget: its queue, its writer's batch, its infos."""
    infos = conn._infos
    return conn._writer.held_bytes + (infos.held_bytes if infos is not None else 0)


class MemoryBudget:
    """The budget of one server and the task that sheds connections past it."""

    __slots__ = ("_connections", "_due", "_lot", "_metrics", "_warn", "budget")

    def __init__(
        self,
        limit: int | None,
        connections: Callable[[], Iterable[Sheddable]],
        metrics: Metrics,
        warn: Callable[..., None],
    ) -> None:
        """``limit``: ``max_queued_bytes`` (None: off, the bytes are still counted);
        ``connections``: the open connections; ``warn``: the server's rate-limited log."""
        self.budget = Budget(sys.maxsize if limit is None else limit, self._over)
        self._connections = connections
        self._metrics = metrics
        self._warn = warn
        self._due = False
        self._lot = ParkingLot()

    def _over(self) -> None:
        """The budget's ``on_over``: called inside a push, so only note that work is due."""
        if not self._due:
            self._due = True
            self._lot.unpark_all()

    async def run(self) -> None:
        """Shed whenever the budget went over, forever (a task of the server)."""
        while True:
            if not self._due:
                await self._lot.park()
            self._due = False  # a charge while shedding (close frames) sets it again
            try:
                self.shed()
            except Exception:  # a bug of ours must not stop the budget
                log.exception("memory_shedding_failed")

    def shed(self) -> int:
        """Close the connections holding the most until what they held covers the excess
        over the limit; returns how many were closed."""
        budget = self.budget
        excess = budget.used - budget.limit
        if excess <= 0:
            return 0
        candidates: list[tuple[int, Sheddable]] = []
        for conn in self._connections():
            held = held_bytes(conn)
            if conn._close_sent:
                excess -= held  # on its way out
            elif held:
                candidates.append((held, conn))
        if excess <= 0:
            return 0
        candidates.sort(key=_first, reverse=True)
        shed = 0
        for held, conn in candidates:
            if excess <= 0:
                break
            self._warn(
                "memory_budget",
                user_id=conn.user_id,
                session_id=conn.session_id,
                held_bytes=held,
                queued_bytes=budget.used,
                max_queued_bytes=budget.limit,
            )
            conn._outbox.drop_queued()
            conn._close_for("memory_budget", 1008)  # drops its mailbox too
            excess -= held
            shed += 1
        self._metrics.memory_shed_connections += shed
        return shed


def _first(item: tuple[int, Any]) -> int:
    return item[0]
