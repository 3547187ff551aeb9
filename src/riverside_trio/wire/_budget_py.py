"""The pure-Python twin of the compiled memory budget (``Budget`` in ``src/_frames.pyx``).

Imported through :mod:`riverside_trio.wire._frames_py`, which re-exports it; the outbox twin
(``_outbox_py``) charges it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

from ._encode_py import _as_ssize

__all__ = ["Budget"]


@final
class Budget:
    """Bytes held for sending across many outboxes (and whatever else charges it), against
    one limit: the node's memory budget for queued outgoing bytes.

    Every outbox made with ``budget=`` charges the bytes it queues and credits those it
    sends, drops or gives to its writer (``take``); the writer charges what it took until
    it is written. ``used`` is the sum. Every charge of one byte or more that leaves ``used``
    over ``limit`` calls ``on_over`` (with no arguments, after the charging outbox has
    updated its state): it must only note that work is due (shedding, which touches outboxes, must
    happen later, not inside the call). Nothing is refused: the budget counts, its owner
    decides.

    Args:
        limit: The most bytes ``used`` may reach without ``on_over`` being called, >= 0.
        on_over: Called with no arguments by each charge (of one byte or more) that leaves
            ``used > limit``.

    Raises:
        TypeError: ``on_over`` is not callable.
        ValueError: ``limit`` is negative.
    """

    __slots__ = ("_limit", "_on_over", "_used")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 'Budget' is not an acceptable base type")

    def __init__(self, limit: int, on_over: Callable[[], None]) -> None:
        value = _as_ssize(limit)
        if value < 0:
            raise ValueError(f"limit must not be negative, not {value}")
        if not callable(on_over):
            raise TypeError("on_over must be callable")
        self._limit = value
        self._used = 0
        self._on_over = on_over

    @property
    def limit(self) -> int:
        """The most bytes ``used`` may reach without ``on_over`` being called."""
        return self._limit

    @property
    def used(self) -> int:
        """Bytes charged now."""
        return self._used

    @property
    def over(self) -> bool:
        """Whether ``used`` is over ``limit`` now."""
        return self._used > self._limit

    def charge(self, n: int, /) -> None:
        """Add ``n`` bytes to ``used``; calls ``on_over`` if ``n > 0`` leaves it over the limit.

        Raises:
            ValueError: ``n`` is negative.
        """
        size = _as_ssize(n)
        if size < 0:
            raise ValueError(f"cannot charge a negative number of bytes ({size})")
        self._add(size)

    def credit(self, n: int, /) -> None:
        """Take ``n`` bytes off ``used``.

        Raises:
            ValueError: ``n`` is negative or more than ``used``.
        """
        size = _as_ssize(n)
        if size < 0 or size > self._used:
            raise ValueError(f"cannot credit {size} bytes: {self._used} are charged")
        self._used -= size

    def _add(self, delta: int) -> None:
        """Charge (delta > 0) or credit (delta < 0) what an outbox queued or let go."""
        self._used += delta
        if delta > 0 and self._used > self._limit:
            self._on_over()
