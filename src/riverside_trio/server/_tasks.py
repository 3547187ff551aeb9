"""The side tasks of a connection: its writer, its ``handle_info`` runner and child tasks.

They run in the server's nursery (a nursery per connection would cost every idle one), each
under a cancel scope the connection owns; when the connection ends it cancels them all and
waits until they have returned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio
from trio.lowlevel import ParkingLot

__all__ = ["SideTasks"]

log = structlog.get_logger("riverside_trio.connection")


class SideTasks:
    """The running side tasks of one connection (made when the first one starts)."""

    __slots__ = ("_lot", "_scopes")

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self._lot: ParkingLot | None = None

    def __bool__(self) -> bool:
        return bool(self._scopes)

    async def run(
        self,
        fn: Callable[..., Awaitable[object]],
        args: Any,
        failed: Callable[[], None],
        user_id: str,
    ) -> None:
        """Run ``fn(*args)`` under a scope of its own; a crash calls ``failed``."""
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await fn(*args)
        except Exception:
            # A bug of ours: end this connection, never the server.
            log.exception("connection_task_failed", user_id=user_id, task=fn.__name__)
            failed()
        finally:
            self._scopes.discard(scope)
            if not self._scopes and self._lot is not None:
                self._lot.unpark_all()

    async def stop(self) -> None:
        """Cancel every side task and wait until they have all returned."""
        for scope in self._scopes:
            scope.cancel()
        self._lot = ParkingLot()
        while self._scopes:
            await self._lot.park()
