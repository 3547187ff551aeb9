"""The callback gate of a connection: ``init``, ``handle_message``, ``handle_info``,
``handle_control`` and ``terminate`` of one connection never overlap, so handler state
needs no lock.

A flag, not a lock, on the fast path: a callback that finds the gate free takes it without
awaiting; only a second callback that finds it busy parks, in a lot made then. The reader
inlines the free case for ``handle_message`` and calls :meth:`Gate._callback_failed` when the
handler raises.
"""

from __future__ import annotations

from typing import Any

import structlog
from trio.lowlevel import ParkingLot

from .._values import TerminateReason
from ..errors import CloseConnection, ConnectionClosed

__all__ = ["Gate"]

log = structlog.get_logger("riverside_trio.connection")


class Gate:
    """The callback gate, and what a failed callback does (a base of the Connection)."""

    __slots__ = ("_gate_busy", "_gate_lot", "_reason")

    # Of the connection.
    user_id: str
    session_id: str
    _close_sent: bool

    def __init__(self) -> None:
        self._gate_busy = False
        self._gate_lot: ParkingLot | None = None  # made when two callbacks first contend
        self._reason: TerminateReason | None = None  # why the connection ends, once known

    def _initiate_close(self, code: int, reason: str, kind: str) -> None:
        raise NotImplementedError

    def _close_for(self, kind: str, code: int) -> None:
        raise NotImplementedError

    async def _callback(self, fn: Any, *args: Any, failed: str = "internal_error") -> bool:
        """Run one handler callback, never overlapping another; False if it failed."""
        if self._gate_busy:
            await self._gate_enter()
        else:
            self._gate_busy = True
        try:
            await fn(*args)
        except Exception as exc:
            return self._callback_failed(exc, fn, failed)
        finally:
            self._gate_exit()
        return True

    def _callback_failed(self, exc: Exception, fn: Any, failed: str = "internal_error") -> bool:
        """A callback raised ``exc``: close as it asks (CloseConnection) or with 1011."""
        if isinstance(exc, CloseConnection):
            try:
                self._initiate_close(exc.code, exc.reason, "stop")
            except ValueError:
                log.error("bad_close_code", code=exc.code, user_id=self.user_id)
                self._close_for("internal_error", 1011)
            return False
        if isinstance(exc, ConnectionClosed) and self._close_sent:
            return False  # this connection is closing: the handler's send ended quietly
        log.exception(
            "handler_failed",
            callback=getattr(fn, "__name__", repr(fn)),
            user_id=self.user_id,
            session_id=self.session_id,
        )
        if not self._close_sent:
            self._reason = TerminateReason(failed, 1011, failed)
        self._close_for(failed, 1011)
        return False

    async def _gate_enter(self) -> None:
        while self._gate_busy:
            if self._gate_lot is None:
                self._gate_lot = ParkingLot()
            await self._gate_lot.park()
        self._gate_busy = True

    def _gate_exit(self) -> None:
        self._gate_busy = False
        if self._gate_lot:
            self._gate_lot.unpark()
