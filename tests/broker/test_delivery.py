"""Deliveries across nodes through a real Redis: users, sessions and channels reach members
on every node, each node frames once, the origin delivers its own members and drops its
echo; what the calls return with a broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from riverside_trio import Channel, CodecError, User

from .._helpers import ws_open
from .._redis import RedisServer, command, needs_redis
from ._nodes import all_settled, broker, nodes, wait_for

pytestmark = [needs_redis, pytest.mark.redis]


async def ask(ws: WebSocketConnection, msg: dict[str, Any]) -> Any:
    await ws.send_message(json.dumps(msg))
    return json.loads(await ws.get_message())


async def recv(ws: WebSocketConnection) -> Any:
    return json.loads(await ws.get_message())


async def test_channel_delivery_reaches_members_on_every_node_once(redis: RedisServer) -> None:
    async with (
        nodes(redis.url) as (a, b),
        ws_open(a.url + "?user=alice") as alice,
        ws_open(b.url + "?user=bob") as bob,
        ws_open(b.url + "?user=carol") as carol,
    ):
        for ws in (alice, bob, carol):
            assert await ask(ws, {"join": "room"}) == {"joined": "room"}
        await all_settled(a, b)
        await alice.send_message(json.dumps({"channel": "room", "body": "hi"}))
        assert await recv(alice) == "hi"  # the origin delivers its own members directly
        assert await recv(alice) == {"reached": 1}  # local connections reached
        assert await recv(bob) == "hi"
        assert await recv(carol) == "hi"
        # One message crossed Redis for node b's two members; a dropped its echo.
        assert broker(b).stats.received == 1
        assert broker(a).stats.echoes == 1
        assert broker(a).stats.received == 0
        # Nothing else arrived: the next message each gets is the next delivery.
        await bob.send_message(json.dumps({"channel": "room", "body": "second"}))
        assert await recv(bob) == "second"
        assert await recv(bob) == {"reached": 2}
        assert await recv(carol) == "second"
        assert await recv(alice) == "second"


async def test_user_and_session_delivery_across_nodes(redis: RedisServer) -> None:
    async with (
        nodes(redis.url) as (a, b),
        ws_open(a.url + "?user=alice&session=phone") as phone,
        ws_open(b.url + "?user=alice&session=laptop") as laptop,
        ws_open(b.url + "?user=bob") as bob,
    ):
        await all_settled(a, b)
        # from b: the laptop is local (counted), the phone on a is reached through Redis
        assert await ask(bob, {"user": "alice", "body": "to all devices"}) == {"reached": 1}
        assert await recv(laptop) == "to all devices"
        assert await recv(phone) == "to all devices"
        msg = {"user": "alice", "session": "phone", "body": "phone only"}
        assert await ask(bob, msg) == {"reached": 0}
        assert await recv(phone) == "phone only"
        assert await ask(laptop, {"user": "alice", "body": "again"}) == "again"
        assert await recv(laptop) == {"reached": 1}
        assert await recv(phone) == "again"  # not "phone only" twice: the session got it once


async def test_messages_from_one_sender_arrive_in_order_across_nodes(redis: RedisServer) -> None:
    async with nodes(redis.url) as (a, b), ws_open(b.url + "?user=bob") as bob:
        assert await ask(bob, {"join": "feed"}) == {"joined": "feed"}
        await all_settled(a, b)
        for i in range(500):
            assert a.deliver_channel("feed", i) == 0  # no member on a
        for i in range(500):
            assert await recv(bob) == i
        assert broker(a).stats.published == 500
        assert broker(a).stats.dropped == 0


async def test_disconnect_closes_connections_on_other_nodes(redis: RedisServer) -> None:
    async with (
        nodes(redis.url) as (a, b),
        ws_open(a.url + "?user=admin") as admin,
        ws_open(b.url + "?user=bob") as bob,
    ):
        await all_settled(a, b)
        assert await ask(admin, {"disconnect": "bob", "code": 4001}) == {"reached": 0}
        with pytest.raises(ConnectionClosed) as info:
            await bob.get_message()
        assert info.value.reason.code == 4001
        assert info.value.reason.reason == "bye"


async def test_an_info_that_cannot_cross_nodes_raises_before_anything_is_sent(
    redis: RedisServer,
) -> None:
    async with (
        nodes(redis.url) as (a, b),
        ws_open(a.url + "?user=alice") as alice,
        ws_open(b.url + "?user=bob") as bob,
    ):
        assert await ask(alice, {"join": "room"}) == {"joined": "room"}
        assert await ask(bob, {"join": "room"}) == {"joined": "room"}
        await all_settled(a, b)
        with pytest.raises(CodecError, match="cannot cross nodes"):
            a.send_info(Channel("room"), object())
        assert a.send_info(Channel("room"), {"plain": ["data", 1]}) == 1
        # Neither the local member nor the other node got anything of the refused info.
        assert await recv(alice) == {"got_info": {"plain": ["data", 1]}}
        assert await recv(bob) == {"got_info": {"plain": ["data", 1]}}
        assert broker(b).stats.received == 1


async def test_infos_reach_users_channels_and_groups_on_other_nodes(redis: RedisServer) -> None:
    async with (
        nodes(redis.url) as (a, b),
        ws_open(a.url + "?user=alice") as alice,
        ws_open(b.url + "?user=bob") as bob,
    ):
        assert await ask(bob, {"group": "admins"}) == {"grouped": "admins"}
        assert await ask(bob, {"join": "room"}) == {"joined": "room"}
        await all_settled(a, b)
        for dest in (["group", "admins"], ["user", "bob"], ["channel", "room"]):
            info = {"for": dest, "n": [1, 2.5, None, True]}
            assert await ask(alice, {"info": info, "to": dest}) == {"reached": 0}
            assert await recv(bob) == {"got_info": info}
        assert a.publish("admins", "published") == 0
        assert await recv(bob) == {"got_info": "published"}


async def test_delivery_calls_never_wait_and_count_local_connections(redis: RedisServer) -> None:
    async with (
        nodes(redis.url) as (a, b),
        ws_open(a.url + "?user=alice") as alice,
        ws_open(b.url + "?user=alice") as alice2,
    ):
        await all_settled(a, b)
        with trio.testing.assert_no_checkpoints():
            assert a.deliver_user("alice", "x") == 1
            assert b.deliver_user("alice", "y") == 1
            assert a.send_info(User("alice"), "z") == 1
        got_a = [await recv(alice) for _ in range(3)]
        got_b = [await recv(alice2) for _ in range(3)]
        assert sorted(map(str, got_a)) == sorted(map(str, got_b))
        assert {"got_info": "z"} in got_a


async def test_a_join_leave_storm_leaves_exactly_the_subscriptions_still_needed(
    redis: RedisServer,
) -> None:
    async with nodes(redis.url, n=1) as (a,):
        prefix = a.config.broker_prefix
        async with ws_open(a.url + "?user=storm") as ws:
            assert await ask(ws, {"join": "keep"}) == {"joined": "keep"}
            conn = a.connections()[0]
            before = broker(a).stats.subscribe_commands + broker(a).stats.unsubscribe_commands
            # 10,000 memberships in one task step, and 10,000 more over many steps.
            for i in range(10_000):
                conn.join_channel(f"s{i}")
            for i in range(10_000):
                if i % 100:
                    conn.leave_channel(f"s{i}")
                if i % 1000 == 0:
                    await trio.lowlevel.checkpoint()
            await all_settled(a)
            for i in range(0, 10_000, 100):
                conn.leave_channel(f"s{i}")
                conn.join_channel(f"t{i}")
            await all_settled(a)
            needed = {f"{prefix}:c:t{i}".encode() for i in range(0, 10_000, 100)}
            needed |= {f"{prefix}:c:keep".encode(), f"{prefix}:u:storm".encode()}
            session = f"{prefix}:s:5:storm{conn.session_id}".encode()
            needed.add(session)
            needed.add(f"{prefix}:node:{a.node_id}".encode())
            in_redis = set(command(redis.port, "PUBSUB", "CHANNELS", f"{prefix}:*"))
            assert in_redis == needed
            commands = broker(a).stats.subscribe_commands + broker(a).stats.unsubscribe_commands
            assert commands - before < 40  # batched: never one command per membership
        await wait_for(lambda: len(broker(a).subscribed) == 0, "unsubscribed after leaving")
        in_redis = set(command(redis.port, "PUBSUB", "CHANNELS", f"{prefix}:*"))
        assert in_redis == {f"{prefix}:node:{a.node_id}".encode()}
