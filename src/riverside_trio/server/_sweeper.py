"""The server's timers: one task checks every connection's deadlines each tick.

Idle timeout, maximum age, keepalive pings and the close deadline are kept as timestamps on
each connection and checked here, so an idle connection costs no timer of its own. The tick
is a tenth of the shortest period in use (5 ms to 1 s).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from ..wire.frames import OP_PING, encode_frame
from ._connection import Connection
from ._core import Core

__all__ = ["check_timers", "sweep"]

log = structlog.get_logger("riverside_trio.server")


async def sweep(core: Core, connections: Callable[[], list[Connection]]) -> None:
    """Check every connection's timers each tick, forever."""
    cfg = core.config
    periods = [
        t
        for t in (
            cfg.idle_timeout,
            cfg.max_connection_age,
            cfg.ping_interval,
            cfg.ping_timeout,
            cfg.close_timeout,
        )
        if t is not None
    ]
    tick = min(max(min(periods) / 10, 0.005), 1.0)
    while True:
        await trio.sleep(tick)
        now = trio.current_time()
        for conn in connections():
            try:
                check_timers(conn, now)
            except Exception:  # a bug of ours must not stop every other timer
                log.exception("timer_check_failed", user_id=conn.user_id)


def check_timers(conn: Connection, now: float) -> None:
    """Called by the server's sweeper: idle, age, keepalive and close deadlines."""
    cfg = conn._core.config
    if conn._close_deadline is not None:
        if now >= conn._close_deadline:
            conn._abort()
        return
    if conn._activity:
        conn._activity = False
        conn._last_rx = now
    elif cfg.idle_timeout is not None and now - conn._last_rx >= cfg.idle_timeout:
        conn._close_for("idle_timeout", 1000)
        return
    if cfg.max_connection_age is not None and now - conn._opened_at >= cfg.max_connection_age:
        conn._close_for("over_age", 1000)
        return
    if cfg.ping_interval is not None:
        if conn._ping_sent_at is not None:
            if now - conn._ping_sent_at >= cfg.ping_timeout:
                conn._close_for("keepalive_timeout", 1011)
        elif now - conn._last_ping >= cfg.ping_interval:
            conn._last_ping = now
            conn._ping_sent_at = now
            conn._push_ping_or_pong(encode_frame(OP_PING, b"riverside"))
