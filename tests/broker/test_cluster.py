"""A Redis Cluster of three masters (sharded pub/sub: SSUBSCRIBE / SPUBLISH): delivery
across nodes, and delivery resuming by itself after one master is killed and restarted."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio

from .._helpers import ws_open
from .._redis import RedisCluster, command, needs_redis
from ._nodes import all_settled, broker, nodes

pytestmark = [needs_redis, pytest.mark.redis]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as c:
        yield c


async def test_delivery_across_nodes_over_sharded_pub_sub(cluster: RedisCluster) -> None:
    async with nodes(cluster.url) as (a, b), ws_open(b.url + "?user=bob") as bob:
        prefix = a.config.broker_prefix
        for i in range(30):  # channels spread over the three masters' slots
            b.connections()[0].join_channel(f"room{i}")
        await all_settled(a, b)
        shard_channels: set[bytes] = set()
        for node in cluster.nodes:
            shard_channels |= set(command(node.port, "PUBSUB", "SHARDCHANNELS", f"{prefix}:c:*"))
        assert shard_channels == {f"{prefix}:c:room{i}".encode() for i in range(30)}
        for i in range(30):
            assert a.deliver_channel(f"room{i}", i) == 0
        # in order per destination; these are 30 destinations on three shards
        assert sorted([json.loads(await bob.get_message()) for _ in range(30)]) == list(range(30))


async def test_delivery_resumes_after_a_master_restarts(cluster: RedisCluster) -> None:
    async with nodes(cluster.url) as (a, b), ws_open(b.url + "?user=bob") as bob:
        b.connections()[0].join_channel("room")
        await all_settled(a, b)
        assert a.deliver_channel("room", -1) == 0
        assert json.loads(await bob.get_message()) == -1
        await trio.to_thread.run_sync(cluster.restart, 0)
        # Until the cluster has recovered, pub/sub may be silent: publish until one arrives
        # (a real-time guard, not a synchronisation); then every later one arrives, in order.
        got = None
        with trio.fail_after(60):
            n = 0
            while got is None:
                a.deliver_channel("room", n)
                n += 1
                with trio.move_on_after(0.2):
                    got = json.loads(await bob.get_message())
        await all_settled(a, b)
        assert broker(a).stats.reconnects + broker(b).stats.reconnects >= 1
        for i in range(1000, 1050):
            a.deliver_channel("room", i)
        received = []
        while len(received) < 50:
            value = json.loads(await bob.get_message())
            if value >= 1000:
                received.append(value)
            else:
                assert value > got  # late copies of the probes, never out of order
                got = value
        assert received == list(range(1000, 1050))
