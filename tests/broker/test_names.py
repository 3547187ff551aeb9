"""Unique names and the cluster view across nodes: a name is unique in the whole cluster,
frees itself when its connection ends, and when its node is killed (a separate OS process
started with the CLI, killed with SIGKILL) within broker_ttl; the view sees every node."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

import riverside_trio

from .._helpers import start_cli, ws_open
from .._redis import RedisServer, command, needs_redis
from ._nodes import all_settled, broker, nodes, wait_for

pytestmark = [needs_redis, pytest.mark.redis]


async def ask(ws: WebSocketConnection, msg: dict[str, Any]) -> Any:
    await ws.send_message(json.dumps(msg))
    return json.loads(await ws.get_message())


async def test_a_name_is_unique_in_the_whole_cluster_and_frees_itself(
    redis: RedisServer,
) -> None:
    async with nodes(redis.url) as (a, b):
        prefix = a.config.broker_prefix
        async with ws_open(b.url + "?user=second") as second:
            async with ws_open(a.url + "?user=first") as first:
                assert await ask(first, {"register": "worker"}) == {
                    "register": "worker",
                    "ok": True,
                }
                holder = command(redis.port, "GET", f"{prefix}:name:worker").decode()
                assert holder == f"{a.node_id}/{a.connections()[0].id}"
                assert await ask(second, {"register": "worker"}) == {
                    "register": "worker",
                    "ok": False,
                }
                # the loser got the name back out of its node's registry, and was told
                assert json.loads(await second.get_message()) == {"got_info": {"lost": "worker"}}
                assert b.send_info("worker", "to the holder") == 0
                assert json.loads(await first.get_message()) == {"got_info": "to the holder"}
            # first is gone: the name is free in Redis, and second can take it
            await wait_for(
                lambda: command(redis.port, "EXISTS", f"{prefix}:name:worker") == 0, "freed"
            )
            assert await ask(second, {"register": "worker"}) == {"register": "worker", "ok": True}


async def test_racing_claims_on_three_nodes_give_the_name_to_exactly_one(
    redis: RedisServer,
) -> None:
    async with (
        nodes(redis.url, n=3) as servers,
        ws_open(servers[0].url + "?user=u0") as w0,
        ws_open(servers[1].url + "?user=u1") as w1,
        ws_open(servers[2].url + "?user=u2") as w2,
    ):
        clients = (w0, w1, w2)
        for round_ in range(5):
            name = f"leader-{round_}"
            for ws in clients:  # sent together: the claims race in Redis
                await ws.send_message(json.dumps({"register": name}))
            answers = [json.loads(await ws.get_message()) for ws in clients]
            assert sorted(a["ok"] for a in answers) == [False, False, True]
            for ws, answer in zip(clients, answers, strict=True):
                if not answer["ok"]:
                    assert json.loads(await ws.get_message()) == {"got_info": {"lost": name}}


async def test_the_cluster_view_shows_every_node_and_connection(redis: RedisServer) -> None:
    async with (
        nodes(redis.url) as (a, b),
        ws_open(a.url + "?user=alice&session=s1") as alice,
        ws_open(b.url + "?user=bob&session=s2") as bob,
    ):
        assert await ask(alice, {"join": "room"}) == {"joined": "room"}
        assert await ask(bob, {"join": "lobby"}) == {"joined": "lobby"}

        def seen(view: riverside_trio.ClusterView) -> set[tuple[str, str, frozenset[str]]]:
            return {(c.user_id, c.node_id, c.channels) for c in view.connections}

        expected = {
            ("alice", a.node_id, frozenset({"room"})),
            ("bob", b.node_id, frozenset({"lobby"})),
        }
        with trio.fail_after(30):
            while seen(view := await b.cluster_view()) != expected:
                await trio.sleep(0.02)
        assert {n.node_id for n in view.nodes} == {a.node_id, b.node_id}
        assert view.connection_count == 2
        assert {c.id for c in view.connections} == {
            a.connections()[0].id,
            b.connections()[0].id,
        }
        node = view.node(a.node_id)
        assert node is not None and node.pid == os.getpid()
        await wait_for(lambda: broker(a).directory.cluster_connections == 2, "counted")
        metrics = a.metrics.render().decode()
        assert "riverside_cluster_connections 2.0" in metrics
        assert "riverside_cluster_nodes 2.0" in metrics
        assert "riverside_broker_published_total" in metrics


async def test_a_node_killed_with_sigkill_vanishes_and_frees_its_names(
    redis: RedisServer,
) -> None:
    """The other node is a separate OS process started with the CLI."""
    src = str(Path(riverside_trio.__file__).resolve().parents[1])
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSIDE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, root, env.get("PYTHONPATH")) if p)
    # broker_ttl 6 s: a node refreshes every 2 s, so a name outlives a stall of up to ~4 s of
    # the CLI node (a loaded CI machine) and still vanishes soon after the SIGKILL.
    async with nodes(redis.url, n=1, broker_ttl=6) as (a,):
        prefix = a.config.broker_prefix
        cmd = [
            sys.executable,
            "-m",
            "riverside_trio",
            "serve",
            "tests.broker._nodes:ClusterHandler",
        ]
        cmd += ["--port", "0", "--log-format", "json", "--idle-timeout", "off"]
        cmd += ["--broker-url", redis.url, "--broker-prefix", prefix, "--broker-ttl", "6"]
        lines: list[str] = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                process, port = await start_cli(nursery, cmd, env, lines)
                other = f"ws://127.0.0.1:{port}/ws"
                async with ws_open(other + "?user=remote") as remote, ws_open(a.url) as here:
                    assert await ask(remote, {"join": "room"}) == {"joined": "room"}
                    assert await ask(remote, {"register": "w"}) == {"register": "w", "ok": True}
                    assert await ask(here, {"join": "room"}) == {"joined": "room"}
                    await all_settled(a)
                    # across processes: a delivery from here reaches the CLI node's client
                    assert await ask(here, {"channel": "room", "body": "hello"}) == "hello"
                    assert json.loads(await here.get_message()) == {"reached": 1}
                    assert json.loads(await remote.get_message()) == "hello"
                    view = await a.cluster_view()
                    assert len(view.nodes) == 2
                    assert await ask(here, {"register": "w"}) == {"register": "w", "ok": False}
                    assert json.loads(await here.get_message()) == {"got_info": {"lost": "w"}}

                    os.kill(process.pid, signal.SIGKILL)
                    await process.wait()
                    with trio.fail_after(30):  # broker_ttl is 6 s
                        while len((await a.cluster_view()).nodes) != 1:
                            await trio.sleep(0.05)
                    assert (await a.cluster_view()).connection_count == 1
                    assert command(redis.port, "EXISTS", f"{prefix}:name:w") == 0
                    assert await ask(here, {"register": "w"}) == {"register": "w", "ok": True}
                    nursery.cancel_scope.cancel()


async def test_a_graceful_shutdown_removes_the_node_and_frees_its_names_at_once(
    redis: RedisServer,
) -> None:
    async with nodes(redis.url) as (a, b):
        prefix = b.config.broker_prefix
        async with ws_open(b.url + "?user=leaving") as ws:
            assert await ask(ws, {"register": "job"}) == {"register": "job", "ok": True}
            await wait_for(lambda: broker(b).directory.cluster_nodes == 2, "both nodes seen")
            b.shutdown()
            with trio.fail_after(30):
                await b.wait_stopped()
        # at once, not after broker_ttl (15 s): the entries and the name are gone
        assert command(redis.port, "EXISTS", f"{prefix}:name:job") == 0
        assert command(redis.port, "EXISTS", f"{prefix}:node:{b.node_id}:info") == 0
        assert [n.node_id for n in (await a.cluster_view()).nodes] == [a.node_id]
