"""Restorable sessions: keys, the store protocol, the in-memory store, and which
connections of this server hold which session.

The rules (webwire's, except that a restore never overwrites):

- ``conn.create_session(info)`` makes a session with a random 64-character URL-safe key,
  saves it in the store and tells the client (``SessionCreated``). It is refused when
  sessions are turned off (``sessions_disabled``) or the connection has one already
  (``session_exists``).
- A client restores a session by key on a new connection: refused when sessions are off
  (``sessions_disabled``), when the connection has a session already (``session_exists``),
  when the session has ``max_session_connections`` connections (``max_session_connections``),
  when the store does not have it (``session_not_found``) or fails (``internal_error``).
- A connection that ends leaves its session restorable. Closing it (by the client, by
  ``conn.close_session()`` or ``RPCHandler.close_session(key)``) deletes it from the store
  when its last connection leaves it.
- The store forgets a session nobody has created or restored for ``session_expiry`` seconds.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ._envelope import SessionData

__all__ = ["MemoryStore", "SessionStore", "Sessions", "new_session_key"]


def new_session_key() -> str:
    """A random session key: 48 random bytes in base64url, 64 characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(48)).decode("ascii")


@runtime_checkable
class SessionStore(Protocol):
    """Where sessions live between connections. Any object with these methods works.

    ``ttl`` is ``session_expiry`` in seconds (None: keep forever): a session that is not
    looked up again within it may be forgotten.
    """

    async def save(self, session: SessionData, ttl: float | None) -> None:
        """Store ``session`` (a new one, or a new version of one) under its key."""
        ...

    async def lookup(self, key: str, ttl: float | None) -> SessionData | None:
        """The session ``key`` with ``last_lookup`` set to now (and stored so), or None."""
        ...

    async def delete(self, key: str) -> None:
        """Forget the session ``key``; nothing happens when there is none."""
        ...


class MemoryStore:
    """Sessions in this process's memory, forgotten after ``ttl`` seconds without a lookup.

    Args:
        clock: the time in Unix seconds (``time.time``); tests pass their own.
        max_sessions: the most sessions held; the oldest-looked-up are dropped beyond it.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, max_sessions: int = 1_000_000
    ) -> None:
        self._clock = clock
        self._max = max_sessions
        self._data: dict[str, tuple[SessionData, float | None]] = {}  # key -> (s, expires)

    def __len__(self) -> int:
        return len(self._data)

    def now(self) -> float:
        """The store's clock, Unix seconds."""
        return self._clock()

    async def save(self, session: SessionData, ttl: float | None) -> None:
        self._expire()
        self._data.pop(session.key, None)
        expires = None if ttl is None else self._clock() + ttl
        self._data[session.key] = (session, expires)
        while len(self._data) > self._max:
            del self._data[next(iter(self._data))]

    async def lookup(self, key: str, ttl: float | None) -> SessionData | None:
        self._expire()
        entry = self._data.pop(key, None)
        if entry is None:
            return None
        now = self._clock()
        session = SessionData(entry[0].key, entry[0].created, now, entry[0].info)
        self._data[key] = (session, None if ttl is None else now + ttl)
        return session

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def _expire(self) -> None:
        """Drop expired sessions; entries are in order of their last lookup."""
        now = self._clock()
        while self._data:
            key = next(iter(self._data))
            expires = self._data[key][1]
            if expires is None or expires > now:
                return  # (with one ttl, entries expire in this order)
            del self._data[key]


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
