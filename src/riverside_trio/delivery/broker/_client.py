"""coredis clients for a ``broker_url``: one for commands, and pub/sub sessions.

No client here retries anything by itself (coredis retries twice by default, which can
publish twice or run a claim twice): the broker's tasks own reconnection and backoff.
"""

from __future__ import annotations

from typing import Any

import coredis
from coredis.patterns.pubsub import PubSub, ShardedPubSub
from coredis.retry import NoRetryPolicy

from ._url import BrokerURL

__all__ = ["make_client", "open_pubsub"]

CONNECT_TIMEOUT = 2.0  # seconds to open a TCP (and TLS) connection to Redis
STREAM_TIMEOUT = 5.0  # seconds a command may wait for its reply
SUBSCRIBE_TIMEOUT = 30.0  # seconds to wait for the acknowledgement of one SUBSCRIBE batch


def make_client(url: BrokerURL) -> Any:
    """A coredis client (``Redis`` or ``RedisCluster``); enter it with ``async with``."""
    common: dict[str, Any] = {
        "username": url.username,
        "password": url.password,
        "decode_responses": False,
        "connect_timeout": CONNECT_TIMEOUT,
        "stream_timeout": STREAM_TIMEOUT,
        "retry_policy": NoRetryPolicy(),
        "ssl": url.tls,
    }
    if url.cluster:
        return coredis.RedisCluster(
            startup_nodes=[coredis.connection.TCPLocation(h, p) for h, p in url.nodes],
            **common,
        )
    host, port = url.nodes[0]
    return coredis.Redis(host=host, port=port, db=url.db, **common)


class _PubSub(PubSub):  # type: ignore[type-arg]
    async def _cleanup(self) -> None:
        """Nothing: the session's client closes this connection, which ends every
        subscription (coredis would write UNSUBSCRIBE to a connection already closed)."""


class _ShardedPubSub(ShardedPubSub):  # type: ignore[type-arg]
    async def _cleanup(self) -> None:
        """As :meth:`_PubSub._cleanup`."""


def open_pubsub(client: Any, cluster: bool) -> Any:
    """A pub/sub session over its own connection (sharded pub/sub on a Cluster); enter it
    with ``async with``. It does not reconnect: when Redis goes away it raises, and the
    broker opens a new one and resubscribes everything."""
    if cluster:
        return _ShardedPubSub(
            client.connection_pool,
            ignore_subscribe_messages=True,
            retry_policy=NoRetryPolicy(),
            subscription_timeout=SUBSCRIBE_TIMEOUT,
            unsubscription_timeout=SUBSCRIBE_TIMEOUT,
            max_idle_seconds=2,
        )
    return _PubSub(
        client.connection_pool,
        ignore_subscribe_messages=True,
        retry_policy=NoRetryPolicy(),
        subscription_timeout=SUBSCRIBE_TIMEOUT,
        unsubscription_timeout=SUBSCRIBE_TIMEOUT,
        max_idle_seconds=2,
    )
