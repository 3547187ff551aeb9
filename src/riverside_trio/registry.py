"""Who is connected: users, sessions and channels, each mapped to their connections.

Every group is an insertion-ordered ``dict`` from a connection's outbox to the connection,
so a delivery hands the outboxes straight to the compiled fan-out loop and maps the ones
that overflowed back to their connections. All operations are synchronous and O(1) per
membership; a connection leaves every group when it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Registry"]

Group = dict[Any, "Connection"]  # Outbox -> Connection
_EMPTY: Group = {}


class Registry:
    """The local registry of one server."""

    __slots__ = ("channels", "connections", "sessions", "users")

    def __init__(self) -> None:
        self.connections: dict[Connection, None] = {}
        self.users: dict[str, Group] = {}
        self.sessions: dict[tuple[str, str], Group] = {}
        self.channels: dict[str, Group] = {}

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        """Register an open connection under its user and session."""
        self.connections[conn] = None
        self.users.setdefault(conn.user_id, {})[conn._outbox] = conn
        self.sessions.setdefault((conn.user_id, conn.session_id), {})[conn._outbox] = conn

    def remove(self, conn: Connection) -> None:
        """Forget a connection everywhere (idempotent)."""
        if self.connections.pop(conn, _EMPTY) is not _EMPTY:
            self.unroute(conn)

    def unroute(self, conn: Connection) -> None:
        """Take a closing connection out of every delivery group; it still counts as open."""
        _discard(self.users, conn.user_id, conn)
        _discard(self.sessions, (conn.user_id, conn.session_id), conn)
        if conn._channels:
            for name in conn._channels:
                _discard(self.channels, name, conn)
            conn._channels.clear()

    def join(self, conn: Connection, channel: str) -> bool:
        """Add ``conn`` to ``channel``; False if it was a member already."""
        if conn._channels is None:
            conn._channels = set()
        elif channel in conn._channels:
            return False
        conn._channels.add(channel)
        self.channels.setdefault(channel, {})[conn._outbox] = conn
        return True

    def leave(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; False if it was not a member."""
        if not conn._channels or channel not in conn._channels:
            return False
        conn._channels.discard(channel)
        _discard(self.channels, channel, conn)
        return True

    def user(self, user_id: str) -> Group:
        return self.users.get(user_id, _EMPTY)

    def session(self, user_id: str, session_id: str) -> Group:
        return self.sessions.get((user_id, session_id), _EMPTY)

    def channel(self, name: str) -> Group:
        return self.channels.get(name, _EMPTY)


def _discard(index: dict[Any, Group], key: Any, conn: Connection) -> None:
    group = index.get(key)
    if group is not None:
        group.pop(conn._outbox, None)
        if not group:
            del index[key]
