"""Who is connected here: users, sessions, channels, unique names and groups.

The registry is the only owner of membership: every join, leave, name and group goes
through it, and it alone edits the membership sets a connection carries (``_channels``,
``_names``, ``_groups``: kept on the connection so an idle one costs no extra dict entry,
read by the connection's properties, written only here).

Every destination maps to an insertion-ordered ``dict`` from a connection's outbox to the
connection, so a delivery hands the outboxes straight to the compiled fan-out loop and maps
the ones that overflowed back to their connections. All operations are synchronous and
O(1) per membership; a connection leaves everything when it starts closing.

A user or session with one connection (the usual case) maps to the connection itself, not
to a one-entry dict: two objects fewer per idle connection for the garbage collector to
visit. A delivery to it builds its one-entry group on the spot.

When a destination gets its first local member or loses its last one, the registry tells
its ``listener`` (:class:`MembershipListener`): that is what a broker subscribes on. No
listener, no cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..destinations import Channel, Destination, Group, Name, Session, User
from ..errors import NameInUseError

__all__ = ["Member", "Members", "MembershipListener", "Registry"]


class Member(Protocol):
    """What the registry and the hub need of a connection (a small protocol, so that
    delivery does not import the server)."""

    id: str
    user_id: str
    session_id: str
    _outbox: Any
    _inflater: Any
    _channels: set[str] | None
    _names: set[str] | None
    _groups: set[str] | None

    def _overflow(self) -> None: ...
    def _post_info(self, info: Any) -> int: ...
    def _initiate_close(self, code: int, reason: str, kind: str) -> None: ...


Members = dict[Any, Member]  # Outbox -> Connection
_EMPTY: Members = {}


class MembershipListener(Protocol):
    """Told when a destination gets its first local member and loses its last one."""

    def first_member(self, destination: Destination) -> None:
        """``destination`` has a local member now, and had none before."""

    def last_member(self, destination: Destination) -> None:
        """``destination`` has no local member any more."""


class Registry:
    """The local registry of one server."""

    __slots__ = (
        "channels",
        "connections",
        "groups",
        "ids",
        "listener",
        "names",
        "on_change",
        "sessions",
        "users",
    )

    def __init__(self, listener: MembershipListener | None = None) -> None:
        self.connections: dict[Member, None] = {}
        self.ids: dict[str, Member] = {}  # connection id -> connection (the control API's)
        self.users: dict[str, Member | Members] = {}
        self.sessions: dict[tuple[str, str], Member | Members] = {}
        self.channels: dict[str, Members] = {}
        self.names: dict[str, Member] = {}
        self.groups: dict[str, Members] = {}
        self.listener = listener
        # Told when a connection comes, goes, joins or leaves a channel (the broker's
        # directory of the cluster); None: no cost.
        self.on_change: Callable[[Member], None] | None = None

    def __len__(self) -> int:
        return len(self.connections)

    # ------------------------------------------------------------------ reading

    def members(self, destination: Destination) -> Members:
        """The local members of ``destination`` (do not modify the result).

        Raises:
            TypeError: ``destination`` is not a destination.
        """
        if isinstance(destination, str):
            destination = Name(destination)
        cls = type(destination)
        if cls is Channel:
            return self.channels.get(destination.name, _EMPTY)  # type: ignore[union-attr]
        if cls is User:
            return _members(self.users.get(destination.user_id))  # type: ignore[union-attr]
        if cls is Session:
            key = (destination.user_id, destination.session_id)  # type: ignore[union-attr]
            return _members(self.sessions.get(key))
        if cls is Name:
            return _members(self.names.get(destination.name))  # type: ignore[union-attr]
        if cls is Group:
            return self.groups.get(destination.name, _EMPTY)  # type: ignore[union-attr]
        raise TypeError(
            "destination must be a User, Session, Channel, Name, Group or a name (str), "
            f"got {type(destination).__name__}"
        )

    def by_id(self, conn_id: str) -> Members:
        """The local connection whose id is ``conn_id`` (as a one-member group), if any."""
        conn = self.ids.get(conn_id)
        return _EMPTY if conn is None else {conn._outbox: conn}

    def user(self, user_id: str) -> Members:
        """The local connections of ``user_id``."""
        return _members(self.users.get(user_id))

    def session(self, user_id: str, session_id: str) -> Members:
        """The local connections of one session."""
        return _members(self.sessions.get((user_id, session_id)))

    def channel(self, name: str) -> Members:
        """The local members of channel ``name``."""
        return self.channels.get(name, _EMPTY)

    # ------------------------------------------------------------------ connections

    def add(self, conn: Member) -> None:
        """Register an open connection under its user and session."""
        self.connections[conn] = None
        self.ids[conn.id] = conn
        if _add_one(self.users, conn.user_id, conn) and self.listener is not None:
            self.listener.first_member(User(conn.user_id))
        key = (conn.user_id, conn.session_id)
        if _add_one(self.sessions, key, conn) and self.listener is not None:
            self.listener.first_member(Session(*key))
        if self.on_change is not None:
            self.on_change(conn)

    def remove(self, conn: Member) -> None:
        """Forget a connection everywhere (idempotent)."""
        if self.connections.pop(conn, _EMPTY) is not _EMPTY:
            self.unroute(conn)
            if self.on_change is not None:
                self.on_change(conn)

    def unroute(self, conn: Member) -> None:
        """Take a closing connection out of every destination; it still counts as open."""
        self.ids.pop(conn.id, None)
        listener = self.listener
        if _discard_one(self.users, conn.user_id, conn) and listener is not None:
            listener.last_member(User(conn.user_id))
        key = (conn.user_id, conn.session_id)
        if _discard_one(self.sessions, key, conn) and listener is not None:
            listener.last_member(Session(*key))
        if conn._channels:
            for name in conn._channels:
                self._drop(self.channels, name, conn, Channel)
            conn._channels.clear()
        if conn._names:
            for name in conn._names:
                if self.names.get(name) is conn:
                    del self.names[name]
                    if listener is not None:
                        listener.last_member(Name(name))
            conn._names.clear()
        if conn._groups:
            for name in conn._groups:
                self._drop(self.groups, name, conn, Group)
            conn._groups.clear()

    # ------------------------------------------------------------------ channels, groups

    def join(self, conn: Member, channel: str) -> bool:
        """Add ``conn`` to ``channel``; False if it was a member already."""
        if conn._channels is None:
            conn._channels = set()
        elif channel in conn._channels:
            return False
        conn._channels.add(channel)
        self._put(self.channels, channel, conn, Channel)
        if self.on_change is not None:
            self.on_change(conn)
        return True

    def leave(self, conn: Member, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; False if it was not a member."""
        if not conn._channels or channel not in conn._channels:
            return False
        conn._channels.discard(channel)
        self._drop(self.channels, channel, conn, Channel)
        if self.on_change is not None:
            self.on_change(conn)
        return True

    def join_group(self, conn: Member, group: str) -> bool:
        """Add ``conn`` to ``group``; False if it was a member already."""
        if conn._groups is None:
            conn._groups = set()
        elif group in conn._groups:
            return False
        conn._groups.add(group)
        self._put(self.groups, group, conn, Group)
        return True

    def leave_group(self, conn: Member, group: str) -> bool:
        """Remove ``conn`` from ``group``; False if it was not a member."""
        if not conn._groups or group not in conn._groups:
            return False
        conn._groups.discard(group)
        self._drop(self.groups, group, conn, Group)
        return True

    def _put(
        self, index: dict[str, Members], key: str, conn: Member, kind: type[Channel | Group]
    ) -> None:
        members = index.get(key)
        if members is None:
            members = index[key] = {}
            if self.listener is not None:
                self.listener.first_member(kind(key))
        members[conn._outbox] = conn

    def _drop(
        self, index: dict[str, Members], key: str, conn: Member, kind: type[Channel | Group]
    ) -> None:
        members = index.get(key)
        if members is not None:
            members.pop(conn._outbox, None)
            if not members:
                del index[key]
                if self.listener is not None:
                    self.listener.last_member(kind(key))

    # ------------------------------------------------------------------ names

    def register_name(self, conn: Member, name: str) -> None:
        """Register ``conn`` under the unique ``name`` (again by the same holder: no-op).

        Raises:
            NameInUseError: another connection holds the name.
        """
        holder = self.names.get(name)
        if holder is conn:
            return
        if holder is not None:
            raise NameInUseError(name)
        self.names[name] = conn
        if conn._names is None:
            conn._names = set()
        conn._names.add(name)
        if self.listener is not None:
            self.listener.first_member(Name(name))

    def unregister_name(self, conn: Member, name: str) -> bool:
        """Free ``name`` if ``conn`` holds it; False otherwise."""
        if self.names.get(name) is not conn:
            return False
        del self.names[name]
        if conn._names:
            conn._names.discard(name)
        if self.listener is not None:
            self.listener.last_member(Name(name))
        return True


def _add_one(index: dict[Any, Member | Members], key: Any, conn: Member) -> bool:
    """Add ``conn`` under ``key``; True if it is the first member."""
    entry = index.get(key)
    if entry is None:
        index[key] = conn
        return True
    if type(entry) is dict:
        entry[conn._outbox] = conn
    elif entry is not conn:
        other: Member = entry  # type: ignore[assignment]
        index[key] = {other._outbox: other, conn._outbox: conn}
    return False


def _discard_one(index: dict[Any, Member | Members], key: Any, conn: Member) -> bool:
    """Remove ``conn`` from ``key``; True if it was the last member."""
    entry = index.get(key)
    if entry is conn:
        del index[key]
        return True
    if type(entry) is dict:
        entry.pop(conn._outbox, None)
        if not entry:
            del index[key]
            return True
    return False


def _members(entry: Member | Members | None) -> Members:
    if entry is None:
        return _EMPTY
    if type(entry) is dict:
        return entry
    conn: Member = entry  # type: ignore[assignment]
    return {conn._outbox: conn}
