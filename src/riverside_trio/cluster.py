"""Several nodes: the cluster view, and what a unique name's claim tells you.

With ``broker_url`` set, nodes share Redis and see one cluster; without it the "cluster" is
this process alone and these types describe it. See README, "Running several nodes".
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import trio

from .errors import NameInUseError

__all__ = ["ClusterView", "ConnectionInfo", "NameClaim", "NameLost", "NodeInfo"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One live node.

    Attributes:
        node_id: 16 hex digits, fixed when the server starts (``server.node_id``).
        host: the host name of its machine.
        pid: its process id.
        started_at: when it started (Unix time, seconds).
        last_seen: when it last refreshed its entries in Redis (Unix time); a node that
            stops refreshing (killed) vanishes ``broker_ttl`` seconds after this.
        connections: its open WebSocket connections.
    """

    node_id: str
    host: str
    pid: int
    started_at: float
    last_seen: float
    connections: int


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One connection somewhere in the cluster.

    Attributes:
        id: the cluster-unique ``conn.id``.
        user_id: its user.
        session_id: its session.
        channels: the channels it is a member of.
        node_id: the node that holds it.
        connected_at: when it connected (Unix time).
        last_seen: when its node last confirmed it (Unix time; at most a third of
            ``broker_ttl`` old while the node lives, plus the time to write).
    """

    id: str
    user_id: str
    session_id: str
    channels: frozenset[str]
    node_id: str
    connected_at: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class ClusterView:
    """Who is where, as Redis had it when asked (``await server.cluster_view()``).

    Attributes:
        nodes: the live nodes, by node id.
        connections: every connection of every live node, by node then connection id.
    """

    nodes: tuple[NodeInfo, ...]
    connections: tuple[ConnectionInfo, ...]

    @property
    def connection_count(self) -> int:
        """Connections in the whole cluster."""
        return len(self.connections)

    def node(self, node_id: str) -> NodeInfo | None:
        """The node ``node_id`` if it is alive, else None."""
        return next((n for n in self.nodes if n.node_id == node_id), None)


@dataclass(frozen=True, slots=True)
class NameLost:
    """An info a connection's ``handle_info`` receives when it lost a unique name.

    With several nodes a name is claimed in Redis after ``register_name`` took it on this
    node. The connection loses it (and gets this info) when another node's connection holds
    it already, or when this node could not refresh its claim for ``broker_ttl`` seconds
    (Redis unreachable) and another connection claimed it meanwhile.

    Attributes:
        name: the name.
    """

    name: str


class NameClaim:
    """What ``conn.register_name(name)`` returns: the cluster's answer, when it comes.

    The name is taken on this node at once (a second connection here gets
    ``NameInUseError`` from ``register_name`` itself). With several nodes, ``await`` the
    claim to learn whether it is yours in the whole cluster: it raises ``NameInUseError``
    if a connection on another node holds it (the name is then released here, and the
    connection also gets :class:`NameLost`). Without a broker the claim is settled already.
    While Redis is unreachable the answer waits for it to come back (guard the ``await``
    with a timeout if you cannot wait). Not awaiting it is fine: the outcome is the same,
    only unobserved.
    """

    __slots__ = ("_done", "_error", "_waiters", "name")

    def __init__(self, name: str, *, done: bool = False) -> None:
        self.name = name
        self._done = done
        self._error: NameInUseError | None = None
        self._waiters: list[Any] = []

    @property
    def done(self) -> bool:
        """Whether the cluster has answered."""
        return self._done

    def _settle(self, error: NameInUseError | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        for event in self._waiters:
            event.set()
        self._waiters.clear()

    async def wait(self) -> None:
        """Wait for the cluster's answer. A checkpoint; cancelling it leaves the claim going.

        Raises:
            NameInUseError: another node's connection holds the name.
        """
        if not self._done:
            event = trio.Event()
            self._waiters.append(event)
            await event.wait()
        else:
            await trio.lowlevel.checkpoint()
        if self._error is not None:
            raise NameInUseError(self.name)

    def __await__(self) -> Generator[Any, None, None]:
        return self.wait().__await__()

    def __repr__(self) -> str:
        state = "pending" if not self._done else ("lost" if self._error else "held")
        return f"<NameClaim {self.name!r} {state}>"
