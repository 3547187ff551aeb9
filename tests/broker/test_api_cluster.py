"""The HTTP control API across two nodes and a real Redis: every call on one node reaches
connections on the other; claims live in Redis and are used once, even when two nodes race
for one; an API-only node; Redis unreachable."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

import riverside_trio
from riverside_trio import Config, Connection, Handler, Server
from riverside_trio.api._node import ApiOnlyHandler

from .._helpers import NO_TIMERS, start_cli, ws_open
from .._http import KEY, api, refused_upgrade, upgrade
from .._redis import RedisServer, free_port, needs_redis
from ._nodes import all_settled, nodes, wait_for

pytestmark = [needs_redis, pytest.mark.redis]

SETTINGS: dict[str, Any] = {"api_key": KEY}


class Echo(Handler):
    """No authenticate: claims decide who connects."""

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


async def claim(server: Server, **params: Any) -> str:
    reply = await api(server.port, "POST", "/claim", params)
    assert reply.status == 200, reply.body
    claim_id: str = reply.json["claim"]["id"]
    return claim_id


def only(server: Server) -> Connection:
    (conn,) = server.connections()
    return conn


async def test_every_call_on_one_node_reaches_connections_on_the_other(
    redis: RedisServer,
) -> None:
    async with nodes(redis.url, handler=Echo, **SETTINGS) as (a, b):
        c1 = await claim(a, user="bob", session="s1", channels="room")
        c2 = await claim(a, user="bob", session="s2")
        async with ws_open(b.url + "?claim=" + c1) as s1, ws_open(b.url + "?claim=" + c2) as s2:
            await all_settled(a, b)
            ids = {c.session_id: c.id for c in b.connections()}

            async def call(route: str, params: dict[str, Any], body: bytes = b"") -> Any:
                reply = await api(a.port, "POST", route, params, body=body)
                assert reply.status == 200, reply.body
                return reply.json

            got = await call("/send", {"user": "bob", "type": "text"}, b"to bob")
            assert (got["connections"], got["nodes"]) == (0, 1)
            assert await s1.get_message() == await s2.get_message() == "to bob"
            got = await call("/send", {"user": "bob", "session": "s2", "type": "binary"}, b"\x01")
            assert got["nodes"] == 1
            assert await s2.get_message() == b"\x01"
            await call("/send", {"channel": "room", "type": "text"}, b"room")
            assert await s1.get_message() == "room"
            got = await call("/send", {"id": ids["s2"], "type": "text"}, b"by id")
            assert (got["connections"], got["nodes"]) == (0, 1)
            assert await s2.get_message() == "by id"
            got = await call("/send", {"user": "nobody", "type": "text"}, b"x")
            assert got["nodes"] == 0  # no node holds nobody: Redis counts no subscriber
            # asked of the node that holds them: its own connections, no other node
            reply = await api(b.port, "POST", "/send", {"user": "bob", "type": "text"}, body=b"b")
            assert (reply.json["connections"], reply.json["nodes"]) == (2, 0)
            assert await s1.get_message() == await s2.get_message() == "b"

            # channels, by user and by id, on the other node
            got = await call("/channel/subscribe/news", {"user": "bob"})
            assert got["nodes"] == 1
            await wait_for(
                lambda: all("news" in c.channels for c in b.connections()), "bob joins news"
            )
            await all_settled(a, b)
            await call("/send", {"channel": "news", "type": "text"}, b"news")
            assert await s1.get_message() == await s2.get_message() == "news"
            await call("/channel/unsubscribe/news", {"id": ids["s1"]})
            conn1 = next(c for c in b.connections() if c.id == ids["s1"])
            await wait_for(lambda: "news" not in conn1.channels, "s1 leaves news")

            # the cluster view, from the node that holds nothing
            def listed() -> bool:
                return len(info["connections"]) == 2 and any(
                    c["channels"] == ["news"] for c in info["connections"]
                )

            for _ in range(200):  # the directory is written asynchronously: poll it
                info = (await api(a.port, "GET", "/info", {"user": "bob"})).json
                if listed():
                    break
                await trio.sleep(0.05)
            assert listed(), info
            assert {c["worker"] for c in info["connections"]} == {b.node_id}
            assert {c["id"] for c in info["connections"]} == set(ids.values())

            # disconnect by id with a code, then by session
            got = await call("/disconnect", {"id": ids["s1"], "code": 4002, "reason": "x"})
            assert got["nodes"] == 1
            with pytest.raises(ConnectionClosed) as exc:
                await s1.get_message()
            assert (exc.value.reason.code, exc.value.reason.reason) == (4002, "x")
            await call("/disconnect", {"user": "bob", "session": "s2"})
            with pytest.raises(ConnectionClosed) as exc:
                await s2.get_message()
            assert exc.value.reason.code == 1000


async def test_claims_live_in_redis_and_are_used_once(redis: RedisServer) -> None:
    async with nodes(redis.url, handler=Echo, **SETTINGS) as (a, b):
        made = await claim(a, user="u", session="s", channels="x,y", id="shared-1")
        info = (await api(b.port, "GET", "/info", {"user": "u", "session": "s"})).json
        assert [c["id"] for c in info["claims"]] == [made]
        assert info["claims"][0]["channels"] == ["x", "y"]
        reply = await api(b.port, "POST", "/claim", {"user": "v", "id": "shared-1"})
        assert reply.json["errorCode"] == "CLAIM_ID_ALREADY_USED"
        # subscribe edits the claims in Redis (unless ignoreClaims)
        await api(b.port, "POST", "/channel/subscribe/z", {"user": "u"})
        await api(b.port, "POST", "/channel/unsubscribe/x", {"channel": "x"})
        await api(b.port, "POST", "/channel/subscribe/w", {"user": "u", "ignoreClaims": "true"})
        info = (await api(a.port, "GET", "/info", {"channel": "z"})).json
        assert info["claims"][0]["channels"] == ["y", "z"]
        assert (await api(a.port, "GET", "/info", {"channel": "x"})).json["claims"] == []
        async with ws_open(b.url + "?claim=" + made):
            conn = only(b)
            assert (conn.user_id, conn.session_id, conn.channels) == ("u", "s", {"y", "z"})
            refused = await refused_upgrade(a.port, "/ws?claim=" + made)
            assert (refused.status, refused.json["errorCode"]) == (401, "MISSING_CLAIM")
        # disconnect deletes the target's claims, unless keepClaims
        await claim(a, user="k", id="kept")
        await api(b.port, "POST", "/disconnect", {"user": "k", "keepClaims": "1"})
        assert len((await api(a.port, "GET", "/info", {"user": "k"})).json["claims"]) == 1
        await api(b.port, "POST", "/disconnect", {"user": "k"})
        assert (await api(a.port, "GET", "/info", {"user": "k"})).json["claims"] == []
        refused = await refused_upgrade(a.port, "/ws?claim=kept")
        assert refused.json["errorCode"] == "MISSING_CLAIM"


async def test_two_nodes_racing_for_one_claim_give_it_once(redis: RedisServer) -> None:
    async with nodes(redis.url, handler=Echo, **SETTINGS) as (a, b):
        # over WebSocket: two upgrades with one claim, at once, one on each node
        for round_ in range(3):
            claim_id = await claim(a, user="racer")
            outcomes: list[int] = []

            async def connect(
                server: Server, claim_id: str = claim_id, out: list[int] = outcomes
            ) -> None:
                out.append((await upgrade(server.port, "/ws?claim=" + claim_id)).status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(connect, a)
                nursery.start_soon(connect, b)
            assert sorted(outcomes) == [101, 401], round_
        # many consumers at once on both nodes' stores: exactly one gets each claim
        stores = [a._core.api.claims, b._core.api.claims]  # type: ignore[union-attr]
        for round_ in range(5):
            cid = await claim(b, user="r", id=f"race-{round_}")
            won: list[Any] = []

            async def consume(store: Any, cid: str = cid, won: list[Any] = won) -> None:
                got = await store.consume(cid)
                if got is not None:
                    won.append(got)

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(consume, stores[i % 2])
            assert len(won) == 1 and won[0].user == "r"


async def test_an_expired_claim_in_redis_is_refused(redis: RedisServer) -> None:
    async with nodes(redis.url, handler=Echo, **SETTINGS) as (a, b):
        claim_id = await claim(a, user="u", duration=5)
        clock = b._core.api.clock  # type: ignore[union-attr]
        clock()
        clock._offset += 6  # this node's wall clock, 6 s later (Redis keeps it 60 s more)
        refused = await refused_upgrade(b.port, "/ws?claim=" + claim_id)
        assert (refused.status, refused.json["errorCode"]) == (401, "EXPIRED_CLAIM")
        info = (await api(b.port, "GET", "/info", {"user": "u"})).json
        assert info["claims"] == []


async def test_an_api_only_node_drives_the_cluster(redis: RedisServer) -> None:
    prefix = "t" + secrets.token_hex(4)
    settings = {**NO_TIMERS, "broker_prefix": prefix, "broker_url": redis.url, **SETTINGS}
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            riverside_trio.serve, Echo, Config(host="127.0.0.1", port=0, **settings)
        )
        gateway = await nursery.start(
            riverside_trio.serve, ApiOnlyHandler, Config(host="127.0.0.1", port=0, **settings)
        )
        await all_settled(worker, gateway)
        claim_id = await claim(gateway, user="w")
        refused = await refused_upgrade(gateway.port, "/ws?claim=" + claim_id)
        assert (refused.status, refused.json["errorCode"]) == (404, "NOT_FOUND")
        async with ws_open(worker.url + "?claim=" + claim_id) as ws:
            await all_settled(worker, gateway)
            reply = await api(
                gateway.port, "POST", "/send", {"user": "w", "type": "text"}, body=b"hi"
            )
            assert reply.json == {"success": True, "connections": 0, "nodes": 1}
            assert await ws.get_message() == "hi"
        nursery.cancel_scope.cancel()


async def test_redis_unreachable_is_503_and_local_delivery_goes_on() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = Config(host="127.0.0.1", port=0, broker_url=dead, **NO_TIMERS, **SETTINGS)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(riverside_trio.serve, Echo, config)
        p = server.port
        reply = await api(p, "POST", "/claim", {"user": "u"})
        assert (reply.status, reply.json["errorCode"]) == (503, "ERROR_CHECKING_CLAIM")
        assert reply.headers["retry-after"]
        reply = await api(p, "POST", "/send", {"user": "u", "type": "text"}, body=b"x")
        assert (reply.status, reply.json["errorCode"]) == (503, "ERROR_DELIVERING_MESSAGING")
        assert "0 connection(s) on this node" in reply.json["error"]
        reply = await api(p, "GET", "/info", {"user": "u"})
        assert (reply.status, reply.json["errorCode"]) == (503, "ERROR_GETTING_CONNECTION")
        refused = await refused_upgrade(p, "/ws?claim=abc")
        assert (refused.status, refused.json["errorCode"]) == (503, "ERROR_GETTING_CLAIM")
        assert (await api(p, "GET", "/ping")).body == b"pong"
        nursery.cancel_scope.cancel()


async def test_the_api_command_runs_an_api_node_that_reaches_the_cluster(
    redis: RedisServer,
) -> None:
    prefix = "t" + secrets.token_hex(4)
    command = [
        sys.executable, "-m", "riverside_trio", "api", "--port", "0", "--log-format", "json",
        "--broker-url", redis.url, "--broker-prefix", prefix,
    ]  # fmt: skip
    env = {**os.environ, "RIVERSIDE_API_KEY": KEY}
    lines: list[str] = []
    config = Config(host="127.0.0.1", port=0, broker_url=redis.url, broker_prefix=prefix)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(riverside_trio.serve, Echo, config.replace(**SETTINGS))
            process, port = await start_cli(nursery, command, env, lines)
            await wait_for(lambda: any('"broker_connected"' in x for x in lines), "connected")
            reply = await api(port, "POST", "/claim", {"user": "cli"})
            assert reply.status == 200, reply.body
            async with ws_open(worker.url + "?claim=" + reply.json["claim"]["id"]) as ws:
                await all_settled(worker)
                sent = await api(port, "POST", "/send", {"user": "cli", "type": "text"}, body=b"x")
                assert sent.json == {"success": True, "connections": 0, "nodes": 1}
                assert await ws.get_message() == "x"
            assert (await api(port, "GET", "/ping", key="wrong-key-123")).status == 401
            process.send_signal(signal.SIGTERM)
            await process.wait()
            nursery.cancel_scope.cancel()
    assert any('"api_request"' in line and '"request_id"' in line for line in lines)
