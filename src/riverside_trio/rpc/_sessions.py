"""Restorable sessions: keys, the store protocol, the in-memory store, and which
connections of this server hold which session.

The rules (webwire's, except that a restore never overwrites):

- ``conn.create_session(info)`` makes a session with a random 64-character URL-safe key,
  saves it in the store and tells the client (``SessionCreated``). It is refused when
  sessions are turned off (``sessions_disabled``), the connection has one already
  (``session_exists``) or the store cannot be reached (``session_store_unavailable``).
- A client restores a session by key on a new connection: refused when sessions are off
  (``sessions_disabled``), when the connection has a session already (``session_exists``),
  when the session has ``max_session_connections`` connections (``max_session_connections``;
  counted by the store, so across nodes with the Redis store), when the store does not have
  it (``session_not_found``), cannot be reached (``session_store_unavailable``) or fails
  (``internal_error``).
- A connection that ends leaves its session restorable. Closing it (by the client or
  ``conn.close_session()``) deletes it from the store when no other connection holds it;
  ``RPCHandler.close_session(key)`` deletes it whoever holds it.
- The store forgets a session no connection has held for ``session_expiry`` seconds.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from ..errors import SessionError
from ._envelope import ErrorCode, SessionData

__all__ = ["MemoryStore", "SessionStore", "Sessions", "full", "new_session_key"]


def new_session_key() -> str:
    """A random session key: 48 random bytes in base64url, 64 characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(48)).decode("ascii")


def full() -> SessionError:
    """The refusal of a restore beyond ``max_session_connections``."""
    return SessionError(ErrorCode.MAX_SESSION_CONNECTIONS, "the session has its most connections")


@runtime_checkable
class SessionStore(Protocol):
    """Where sessions live between connections, and how many connections hold each.

    The server calls it; any object with these methods works (set it as
    ``RPCHandler.session_store``). ``ttl`` is ``session_expiry`` in seconds (None: keep
    forever): a session that no connection has held for ``ttl`` seconds may be forgotten.
    "This node" is the server calling the store; a store shared by several nodes (as
    :class:`~riverside_trio.RedisSessionStore` is) counts every node's connections.

    A store that cannot reach where it keeps sessions raises
    :class:`~riverside_trio.SessionStoreError` (the client gets
    ``session_store_unavailable``); anything else it raises is logged as a bug and answered
    ``internal_error``.
    """

    async def create(self, session: SessionData, ttl: float | None) -> None:
        """Save the new ``session``, held by one connection of this node."""
        ...

    async def restore(
        self, key: str, ttl: float | None, max_connections: int
    ) -> SessionData | None:
        """One more connection of this node holds the session ``key``: return it with
        ``last_lookup`` set to now (and stored so), or None when there is no such session.

        Raises:
            SessionError: ``max_session_connections`` when ``max_connections`` (> 0)
                connections hold it already, in all (the connection is not counted).
        """
        ...

    def release(self, key: str) -> None:
        """A connection of this node no longer holds ``key`` (it ended, or its session was
        closed). The session stays. Never waits: a remote store writes it later."""
        ...

    async def delete(self, key: str, *, unless_held: bool = False) -> bool:
        """Forget the session ``key`` (True), or keep it (False) when ``unless_held`` and a
        connection somewhere still holds it. False too when there is none."""
        ...

    def watch(self, closed: Callable[[str], None]) -> None:
        """Call ``closed(key)`` when a session a connection of this node holds is closed
        elsewhere (another node deleted it, or it was lost). A store of one process never
        calls it."""
        ...


class _Entry:
    __slots__ = ("held", "session", "ttl")

    def __init__(self, session: SessionData, ttl: float | None, held: int) -> None:
        self.session = session
        self.ttl = ttl
        self.held = held


class MemoryStore:
    """Sessions in this process's memory (a :class:`SessionStore` for one node), forgotten
    ``ttl`` seconds after their last connection left them.

    Args:
        clock: the time in Unix seconds (``time.time``); tests pass their own.
        max_sessions: the most sessions held; beyond it, those idle longest are dropped.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, max_sessions: int = 1_000_000
    ) -> None:
        self._clock = clock
        self._max = max_sessions
        self._data: dict[str, _Entry] = {}
        self._idle: dict[str, float | None] = {}  # no connection: key -> expires, in order

    def __len__(self) -> int:
        return len(self._data)

    def now(self) -> float:
        """The store's clock, Unix seconds."""
        return self._clock()

    def connections(self, key: str) -> int:
        """How many connections hold the session ``key`` (0: none, or no such session)."""
        entry = self._data.get(key)
        return 0 if entry is None else entry.held

    async def create(self, session: SessionData, ttl: float | None) -> None:
        self._expire()
        self._idle.pop(session.key, None)
        self._data[session.key] = _Entry(session, ttl, 1)
        while len(self._data) > self._max and self._idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            self._data.pop(oldest, None)

    async def restore(
        self, key: str, ttl: float | None, max_connections: int
    ) -> SessionData | None:
        self._expire()
        entry = self._data.get(key)
        if entry is None:
            return None
        if max_connections and entry.held >= max_connections:
            raise full()
        entry.session = replace(entry.session, last_lookup=self._clock())
        entry.ttl = ttl
        entry.held += 1
        self._idle.pop(key, None)
        return entry.session

    def release(self, key: str) -> None:
        entry = self._data.get(key)
        if entry is None or entry.held <= 0:
            return
        entry.held -= 1
        if not entry.held:
            self._idle[key] = None if entry.ttl is None else self._clock() + entry.ttl

    async def delete(self, key: str, *, unless_held: bool = False) -> bool:
        entry = self._data.get(key)
        if entry is None or (unless_held and entry.held):
            return False
        del self._data[key]
        self._idle.pop(key, None)
        return True

    def watch(self, closed: Callable[[str], None]) -> None:
        """Nothing: every connection holding a session of this store is in this process."""

    def _expire(self) -> None:
        """Drop expired sessions; idle entries are in the order they became idle."""
        now = self._clock()
        idle = self._idle
        while idle:
            key = next(iter(idle))
            expires = idle[key]
            if expires is None or expires > now:
                return  # (with one ttl, entries expire in this order)
            del idle[key]
            self._data.pop(key, None)


class Sessions:
    """Which connections of this server hold which session (in this process)."""

    def __init__(self) -> None:
        self._conns: dict[str, set[Any]] = {}

    @property
    def active_count(self) -> int:
        """Sessions with at least one connection here."""
        return len(self._conns)

    def connections(self, key: str) -> list[Any]:
        """The connections holding session ``key`` here (empty if none)."""
        return list(self._conns.get(key, ()))

    def count(self, key: str) -> int:
        """How many connections here hold session ``key``."""
        return len(self._conns.get(key, ()))

    def holds(self, key: str, conn: Any) -> bool:
        """Whether ``conn`` holds session ``key`` here."""
        return conn in self._conns.get(key, ())

    def bind(self, key: str, conn: Any) -> None:
        self._conns.setdefault(key, set()).add(conn)

    def unbind(self, key: str, conn: Any) -> bool:
        """Remove ``conn``; True when it was the session's last connection here."""
        conns = self._conns.get(key)
        if conns is None:
            return True
        conns.discard(conn)
        if conns:
            return False
        del self._conns[key]
        return True
