"""What the control API does to connections: send, disconnect, join or leave a channel, on
this node and (with a broker) on the others, and who is connected.

A target is a connection id, else a channel, else a user (with a session: that session).
This node's members are reached at once, through the registry and the hub, as
``server.deliver_*`` does; the other nodes through Redis, with one PUBLISH the call awaits,
whose answer (how many nodes were subscribed) is the call's ``nodes``:

- a channel, user or session goes to the destination's Redis channel, to which exactly the
  nodes holding at least one member are subscribed;
- a connection id goes to the channel of the node that made it (the id starts with that
  node's id), which the node hears while it lives: ``nodes`` is 1 if that node is alive,
  whether or not it still holds the connection.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..cluster import ClusterView
from ..delivery.broker._wire import BINARY, DISCONNECT, JOIN, LEAVE, TEXT
from ..delivery.hub import change_channel, close_members
from ..destinations import Channel, Destination, Session, User
from ._claims import Target

if TYPE_CHECKING:
    from ..delivery.broker.redis import RedisBroker
    from ..delivery.hub import Hub
    from ..delivery.registry import Members, Registry

__all__ = ["Operations", "Reached"]

_NODE_OF_ID = re.compile(r"([0-9a-f]{16})-[0-9a-f]+")

Reached = tuple[int, int]
"""(connections reached on this node, other nodes that received it)."""


class Operations:
    """The API's reach into this node (registry, hub) and the cluster (broker)."""

    def __init__(
        self,
        registry: Registry,
        hub: Hub,
        broker: RedisBroker | None,
        node_id: str,
        view: Callable[[], Awaitable[ClusterView]],
    ) -> None:
        self.registry = registry
        self.hub = hub
        self.broker = broker
        self.node_id = node_id
        self._view = view

    def _local(self, target: Target) -> Members:
        registry = self.registry
        if target.id is not None:
            return registry.by_id(target.id)
        if target.channel is not None:
            return registry.channel(target.channel)
        assert target.user is not None
        if target.session is not None:
            return registry.session(target.user, target.session)
        return registry.user(target.user)

    @staticmethod
    def _destination(target: Target) -> Destination:
        if target.channel is not None:
            return Channel(target.channel)
        assert target.user is not None
        if target.session is not None:
            return Session(target.user, target.session)
        return User(target.user)

    async def _publish(self, target: Target, kind: int, body: bytes) -> int:
        """Hand one envelope to the other nodes; how many received it. A checkpoint only
        with a broker.

        Raises:
            ConnectionError: Redis cannot be reached (or failed meanwhile).
        """
        broker = self.broker
        if broker is None:
            return 0
        envelope = broker.envelope
        if target.id is not None:
            match = _NODE_OF_ID.fullmatch(target.id)
            if match is None or match[1] == self.node_id:
                return 0  # not an id of ours, or a connection of this node (done already)
            try:
                data = envelope.to_connection(target.id, kind, body)
            except ValueError:
                return 0
            channel = broker.node_channel_of(match[1])
        else:
            data = envelope.origin_header(kind) + body
            channel = broker.channel_of(self._destination(target))
        try:
            received = await broker.publish_now(channel, data)
        except ConnectionError:
            raise
        except Exception as exc:  # coredis's own errors: Redis went away meanwhile
            raise ConnectionError(str(exc) or type(exc).__name__) from exc
        if channel in broker.subscribed:  # this node heard it too (and drops its echo)
            received -= 1
        return max(received, 0)

    async def send(self, target: Target, data: bytes, text: bool) -> Reached:
        """Send ``data`` as one frame, as it is (no codec), to the target's connections.

        Raises:
            ConnectionError: Redis cannot be reached; this node's were reached (in ``args``).
        """
        local = self.hub.deliver_payload(self._local(target), data, text)
        return local, await self._remote(target, TEXT if text else BINARY, data, local)

    async def disconnect(self, target: Target, code: int, reason: str) -> Reached:
        """Close the target's connections with ``code`` and ``reason`` (checked already)."""
        local = close_members(self._local(target), code, reason)
        body = code.to_bytes(2, "big") + reason.encode()
        return local, await self._remote(target, DISCONNECT, body, local)

    async def change_channel(self, target: Target, channel: str, join: bool) -> Reached:
        """Make the target's connections join (or leave) ``channel``."""
        local = change_channel(self.registry, self._local(target), channel, join)
        body = channel.encode("utf-8", "surrogatepass")
        return local, await self._remote(target, JOIN if join else LEAVE, body, local)

    async def _remote(self, target: Target, kind: int, body: bytes, local: int) -> int:
        try:
            return await self._publish(target, kind, body)
        except ConnectionError as exc:
            raise ConnectionError(local, str(exc)) from exc

    async def connections(self, target: Target) -> list[dict[str, Any]]:
        """The target's connections in the whole cluster (dSock's shape).

        Raises:
            BrokerError: Redis cannot be reached.
        """
        view = await self._view()
        out = []
        for c in view.connections:
            if target.id is not None:
                hit = c.id == target.id
            elif target.channel is not None:
                hit = target.channel in c.channels
            else:
                hit = c.user_id == target.user and (
                    target.session is None or c.session_id == target.session
                )
            if hit:
                out.append(
                    {
                        "id": c.id,
                        "worker": c.node_id,
                        "lastPing": int(c.last_seen),
                        "user": c.user_id,
                        "session": c.session_id,
                        "channels": sorted(c.channels),
                    }
                )
        return out
