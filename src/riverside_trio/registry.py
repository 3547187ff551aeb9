"""Who is connected: users, sessions, channels, unique names and groups.

Users, sessions and channels receive messages (frames to the client); names and groups
receive infos (to ``Handler.handle_info``).

Every group is an insertion-ordered ``dict`` from a connection's outbox to the connection,
so a delivery hands the outboxes straight to the compiled fan-out loop and maps the ones
that overflowed back to their connections. All operations are synchronous and O(1) per
membership; a connection leaves every group when it ends.

A user or session with one connection (the usual case) maps to the connection itself, not
to a one-entry dict: two objects fewer per idle connection for the garbage collector to
visit. A delivery to it builds its one-entry group on the spot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import NameInUseError

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Registry"]

Group = dict[Any, "Connection"]  # Outbox -> Connection
_EMPTY: Group = {}


class Registry:
    """The local registry of one server."""

    __slots__ = ("channels", "connections", "groups", "names", "sessions", "users")

    def __init__(self) -> None:
        self.connections: dict[Connection, None] = {}
        self.users: dict[str, Connection | Group] = {}
        self.sessions: dict[tuple[str, str], Connection | Group] = {}
        self.channels: dict[str, Group] = {}
        self.names: dict[str, Connection] = {}
        self.groups: dict[str, dict[Connection, None]] = {}

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        """Register an open connection under its user and session."""
        self.connections[conn] = None
        _add_one(self.users, conn.user_id, conn)
        _add_one(self.sessions, (conn.user_id, conn.session_id), conn)

    def remove(self, conn: Connection) -> None:
        """Forget a connection everywhere (idempotent)."""
        if self.connections.pop(conn, _EMPTY) is not _EMPTY:
            self.unroute(conn)

    def unroute(self, conn: Connection) -> None:
        """Take a closing connection out of every delivery group; it still counts as open."""
        _discard_one(self.users, conn.user_id, conn)
        _discard_one(self.sessions, (conn.user_id, conn.session_id), conn)
        if conn._channels:
            for name in conn._channels:
                _discard(self.channels, name, conn)
            conn._channels.clear()
        if conn._names:
            for name in conn._names:
                if self.names.get(name) is conn:
                    del self.names[name]
            conn._names.clear()
        if conn._groups:
            for name in conn._groups:
                members = self.groups.get(name)
                if members is not None:
                    members.pop(conn, None)
                    if not members:
                        del self.groups[name]
            conn._groups.clear()

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

    def register_name(self, conn: Connection, name: str) -> None:
        """Register ``conn`` under the unique ``name`` (again by the same holder: no-op).

        Raises:
            NameInUseError: another connection holds the name.
        """
        holder = self.names.get(name)
        if holder is not None and holder is not conn:
            raise NameInUseError(name)
        self.names[name] = conn
        if conn._names is None:
            conn._names = set()
        conn._names.add(name)

    def unregister_name(self, conn: Connection, name: str) -> bool:
        """Free ``name`` if ``conn`` holds it; False otherwise."""
        if self.names.get(name) is not conn:
            return False
        del self.names[name]
        if conn._names:
            conn._names.discard(name)
        return True

    def join_group(self, conn: Connection, group: str) -> bool:
        """Add ``conn`` to ``group``; False if it was a member already."""
        if conn._groups is None:
            conn._groups = set()
        elif group in conn._groups:
            return False
        conn._groups.add(group)
        self.groups.setdefault(group, {})[conn] = None
        return True

    def leave_group(self, conn: Connection, group: str) -> bool:
        """Remove ``conn`` from ``group``; False if it was not a member."""
        if not conn._groups or group not in conn._groups:
            return False
        conn._groups.discard(group)
        members = self.groups[group]
        del members[conn]
        if not members:
            del self.groups[group]
        return True

    def user(self, user_id: str) -> Group:
        return _group(self.users.get(user_id))

    def session(self, user_id: str, session_id: str) -> Group:
        return _group(self.sessions.get((user_id, session_id)))

    def channel(self, name: str) -> Group:
        return self.channels.get(name, _EMPTY)


def _discard(index: dict[Any, Group], key: Any, conn: Connection) -> None:
    group = index.get(key)
    if group is not None:
        group.pop(conn._outbox, None)
        if not group:
            del index[key]


def _add_one(index: dict[Any, Connection | Group], key: Any, conn: Connection) -> None:
    entry = index.get(key)
    if entry is None:
        index[key] = conn
    elif type(entry) is dict:
        entry[conn._outbox] = conn
    elif entry is not conn:
        other: Connection = entry  # type: ignore[assignment]
        index[key] = {other._outbox: other, conn._outbox: conn}


def _discard_one(index: dict[Any, Connection | Group], key: Any, conn: Connection) -> None:
    entry = index.get(key)
    if entry is conn:
        del index[key]
    elif type(entry) is dict:
        entry.pop(conn._outbox, None)
        if not entry:
            del index[key]


def _group(entry: Connection | Group | None) -> Group:
    if entry is None:
        return _EMPTY
    if type(entry) is dict:
        return entry
    conn: Connection = entry  # type: ignore[assignment]
    return {conn._outbox: conn}
