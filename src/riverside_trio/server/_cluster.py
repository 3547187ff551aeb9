"""Joining a server to a cluster: the broker when ``broker_url`` is set, and the cluster view.

Without ``broker_url`` nothing here runs and coredis is never imported; the view is then this
node alone, built from its registry.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

import structlog
import trio

from ..cluster import ClusterView, ConnectionInfo, NodeInfo

if TYPE_CHECKING:
    from ..delivery.broker.redis import RedisBroker
    from ._core import Core

__all__ = ["attach_broker", "cluster_view", "leave_cluster"]

log = structlog.get_logger("riverside_trio.broker")

LEAVE_TIMEOUT = 2.0  # seconds a graceful shutdown spends removing its entries from Redis


def attach_broker(core: Core) -> RedisBroker | None:
    """Make the Redis broker of ``core`` (None without ``broker_url``) and plug it into the
    registry and the hub."""
    config = core.config
    if config.broker_url is None:
        return None
    from ..delivery.broker.redis import RedisBroker

    broker = RedisBroker(
        config.broker_url,
        core.registry,
        core.hub,
        core.node_id,
        prefix=config.broker_prefix,
        ttl=config.broker_ttl,
        queue_size=config.broker_queue_size,
        warn=core.warn,
    )
    core.hub.broker = broker
    core.registry.listener = broker
    core.registry.on_change = broker.member_changed
    core.metrics.broker = broker.stats
    if config.session_store != "memory":
        from ..rpc._redis_store import RedisSessionStore

        store = RedisSessionStore(
            core.node_id, config.broker_prefix, config.broker_ttl, str(broker.url)
        )
        broker.session_tasks.append(store.run)
        core.session_store = store
        core.metrics.session_store = store
    return broker


async def cluster_view(core: Core) -> ClusterView:
    """The cluster: from Redis with a broker, else this node alone. A checkpoint."""
    if core.broker is not None:
        return await core.broker.cluster_view()
    await trio.lowlevel.checkpoint()
    now, mono = time.time(), trio.current_time()
    conns: list[Any] = list(core.registry.connections)
    infos = tuple(
        ConnectionInfo(
            c.id,
            c.user_id,
            c.session_id,
            frozenset(c._channels or ()),
            core.node_id,
            now - (mono - c._opened_at),
            now,
        )
        for c in conns
    )
    node = NodeInfo(
        core.node_id, socket.gethostname(), os.getpid(), core.started_at, now, len(conns)
    )
    return ClusterView((node,), infos)


async def leave_cluster(core: Core) -> None:
    """At shutdown: remove this node's entries and names from Redis, within a bound."""
    if core.broker is None:
        return
    with trio.move_on_after(LEAVE_TIMEOUT) as scope:
        if core.session_store is not None:
            await core.session_store.leave()  # connections gone count no more
        await core.broker.directory.leave()
    if scope.cancelled_caught:
        log.warning("broker_leave_timeout", timeout=LEAVE_TIMEOUT)
