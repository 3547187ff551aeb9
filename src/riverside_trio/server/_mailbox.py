"""A connection's mailbox: the infos waiting for its ``handle_info``, in order.

Bounded by ``mailbox_size`` (the connection applies ``outbox_policy`` when it is full), and
charged to the node's memory budget at :data:`INFO_BYTES` an info while it waits. An info
is any Python object, often one object posted to many mailboxes at once (``publish``), so
its own size is not what a mailbox adds: the estimate stands for the slot, the reference
and a share of the object, and keeps the budget's arithmetic simple.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..wire.frames import Budget

__all__ = ["INFO_BYTES", "Mailbox"]

INFO_BYTES = 256  # what one waiting info counts against max_queued_bytes


class Mailbox:
    """The infos of one connection, made on its first ``send_info``."""

    __slots__ = ("_budget", "_queue", "size")

    def __init__(self, size: int, budget: Budget) -> None:
        self.size = size
        self._budget = budget
        self._queue: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        """``size`` infos are waiting."""
        return len(self._queue) >= self.size

    @property
    def held_bytes(self) -> int:
        """What the waiting infos count against the node's budget."""
        return len(self._queue) * INFO_BYTES

    def append(self, info: Any) -> None:
        """Add ``info`` at the end (the caller checked ``full``)."""
        self._queue.append(info)
        self._budget.charge(INFO_BYTES)

    def popleft(self) -> Any:
        """Remove and return the oldest info.

        Raises:
            IndexError: the mailbox is empty.
        """
        info = self._queue.popleft()
        self._budget.credit(INFO_BYTES)
        return info

    def clear(self) -> None:
        """Drop every waiting info."""
        self._budget.credit(len(self._queue) * INFO_BYTES)
        self._queue.clear()
