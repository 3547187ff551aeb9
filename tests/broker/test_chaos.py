"""Redis going away: local delivery keeps working, what crosses is lost and counted, and
cross-node delivery resumes by itself once Redis is back (killed with SIGKILL and restarted
empty), with subscriptions, directory entries and names written again."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from .._helpers import ws_open
from .._redis import RedisServer, command, needs_redis
from ._nodes import all_settled, broker, nodes, wait_for

pytestmark = [needs_redis, pytest.mark.redis]


async def ask(ws: WebSocketConnection, msg: dict[str, Any]) -> Any:
    await ws.send_message(json.dumps(msg))
    return json.loads(await ws.get_message())


async def test_redis_killed_and_restarted_while_clients_stay_connected() -> None:
    with RedisServer() as redis:
        async with (
            nodes(redis.url, broker_ttl=1) as (a, b),
            ws_open(a.url + "?user=alice") as alice,
            ws_open(b.url + "?user=bob") as bob,
        ):
            prefix = a.config.broker_prefix
            for ws in (alice, bob):
                assert await ask(ws, {"join": "room"}) == {"joined": "room"}
            assert await ask(bob, {"register": "bob-name"}) == {"register": "bob-name", "ok": True}
            await all_settled(a, b)
            assert await ask(alice, {"channel": "room", "body": "before"}) == "before"
            assert json.loads(await alice.get_message()) == {"reached": 1}
            assert json.loads(await bob.get_message()) == "before"

            await trio.to_thread.run_sync(redis.kill)
            await wait_for(lambda: not broker(a).connected and not broker(b).connected, "down")
            # Local delivery keeps working; the copy for node b is dropped and counted.
            dropped = broker(a).stats.dropped_unreachable
            assert a.deliver_channel("room", "during") == 1
            assert json.loads(await alice.get_message()) == "during"
            assert broker(a).stats.dropped_unreachable == dropped + 1
            assert "riverside_broker_connected 0.0" in a.metrics.render().decode()

            await trio.to_thread.run_sync(redis.start)  # the same port, empty
            await all_settled(a, b)
            assert broker(a).stats.reconnects >= 1 and broker(b).stats.reconnects >= 1
            assert await ask(alice, {"channel": "room", "body": "after"}) == "after"
            assert json.loads(await alice.get_message()) == {"reached": 1}
            # bob never saw "during" (at-most-once), and sees "after" without a restart
            assert json.loads(await bob.get_message()) == "after"
            # the name and the directory came back into the empty Redis
            await wait_for(
                lambda: command(redis.port, "EXISTS", f"{prefix}:name:bob-name") == 1, "name"
            )
            with trio.fail_after(30):
                while (await a.cluster_view()).connection_count != 2:
                    await trio.sleep(0.05)


async def test_a_redis_down_at_start_up_is_retried_until_it_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = RedisServer()  # its port is free: nothing listens yet
    try:
        async with trio.open_nursery() as nursery:
            import riverside_trio
            from riverside_trio import Config

            from ._nodes import ClusterHandler

            config = Config(port=0, broker_url=redis.url, idle_timeout=None, ping_interval=None)
            server = await nursery.start(riverside_trio.serve, ClusterHandler, config)
            # the server listens and serves locally meanwhile
            async with ws_open(server.url + "?user=u") as ws:
                assert await ask(ws, {"join": "x"}) == {"joined": "x"}
            await wait_for(lambda: broker(server).stats.sessions == 0, "not connected")
            await trio.to_thread.run_sync(redis.start)
            await all_settled(server)
            nursery.cancel_scope.cancel()
    finally:
        redis.stop()
