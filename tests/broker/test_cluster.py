"""A Redis Cluster of three masters (sharded pub/sub: SSUBSCRIBE / SPUBLISH): delivery
across nodes, delivery resuming by itself after one master is killed and restarted, and
sessions in the cluster (each session's keys in one slot)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio

from riverside_trio import ErrorCode, SessionError, open_client

from .._helpers import ws_open
from .._http import KEY, api, refused_upgrade
from .._redis import RedisCluster, command, needs_redis
from ._nodes import all_settled, broker, nodes, wait_for
from .test_api_cluster import Echo
from .test_sessions import SessionApp, store, via

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


async def test_sessions_restore_across_nodes_on_a_cluster(cluster: RedisCluster) -> None:
    gate = trio.Event()
    async with (
        nodes(cluster.url, handler=SessionApp, broker_ttl=1, max_session_connections=1) as (a, b),
        open_client(
            a.url, stream_factory=via(a, b, gate=gate), backoff_min=0.001, backoff_max=0.01
        ) as one,
        open_client(b.url) as two,
    ):
        await wait_for(lambda: store(a)._client is not None and store(b)._client is not None, "")
        key = await one.request("login", "kim")
        with pytest.raises(SessionError) as info:
            await two.restore_session(key)  # held on a: full
        assert info.value.code == ErrorCode.MAX_SESSION_CONNECTIONS
        a.connections()[0].close(1012, "restarting")
        # a writes its count down (a scripted pipeline on the cluster); then the client
        # comes back on b and restores there
        await wait_for(lambda: key not in store(a)._held, "a's count written")
        gate.set()
        await wait_for(lambda: one.connects == 2 and one.connected, "reconnected to b")
        assert one.restore_error is None and await one.request("whoami") == "kim"
        assert await b.handler.close_session(key) == 1
        await wait_for(lambda: one.session is None, "told")
        with pytest.raises(SessionError) as info:
            await two.restore_session(key)
        assert info.value.code == ErrorCode.SESSION_NOT_FOUND


async def test_the_control_api_and_its_claims_work_on_a_redis_cluster(
    cluster: RedisCluster,
) -> None:
    async with nodes(cluster.url, handler=Echo, api_key=KEY) as (a, b):
        reply = await api(a.port, "POST", "/claim", {"user": "u", "channels": "c1,c2"})
        assert reply.status == 200, reply.body
        claim_id = reply.json["claim"]["id"]
        info = (await api(b.port, "GET", "/info", {"channel": "c2"})).json
        assert [c["id"] for c in info["claims"]] == [claim_id]
        async with ws_open(b.url + "?claim=" + claim_id) as ws:
            await all_settled(a, b)
            assert b.connections()[0].channels == {"c1", "c2"}
            reply = await api(
                a.port, "POST", "/send", {"channel": "c1", "type": "text"}, body=b"hi"
            )
            assert reply.json["nodes"] == 1
            assert await ws.get_message() == "hi"
            conn_id = b.connections()[0].id
            reply = await api(a.port, "POST", "/send", {"id": conn_id, "type": "text"}, body=b"id")
            assert reply.json["nodes"] == 1
            assert await ws.get_message() == "id"
        refused = await refused_upgrade(a.port, "/ws?claim=" + claim_id)
        assert refused.json["errorCode"] == "MISSING_CLAIM"
