"""Infos from anywhere: send_info, names, groups, publish, disconnect, child tasks,
handle_control, and the outbox policies."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from riverside_trio import (
    Accept,
    AuthRequest,
    Channel,
    Connection,
    ControlFrame,
    Group,
    Handler,
    Name,
    NameInUseError,
    RawBinaryCodec,
    Session,
    TaskFailed,
    TaskResult,
    TerminateReason,
    User,
)

from ._helpers import (
    NO_TIMERS,
    RawClient,
    advance,
    client_frame,
    fail_after_real,
    running,
    wait_until,
    ws_open,
)


class Hub(Handler):
    """Commands in JSON; every info is sent back to the client as {"info": ...}."""

    def __init__(self) -> None:
        self.terminated: dict[str, TerminateReason] = {}
        self.controls: list[ControlFrame] = []
        self.gone = trio.Event()

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query["user"], session_id=req.query.get("session"))

    async def handle_message(self, msg: dict[str, Any], conn: Connection) -> None:
        op = msg["op"]
        if op == "name":
            try:
                conn.register_name(msg["name"])
                conn.send({"named": msg["name"]})
            except NameInUseError as exc:
                conn.send({"taken": exc.name})
        elif op == "unname":
            conn.send({"unnamed": conn.unregister_name(msg["name"])})
        elif op == "join_group":
            conn.send({"joined": conn.join_group(msg["group"])})
        elif op == "leave_group":
            conn.send({"left": conn.leave_group(msg["group"])})
        elif op == "join_channel":
            conn.send({"joined": conn.join_channel(msg["channel"])})
        elif op == "task":
            conn.start_task(self.work, msg["value"], name="work")
        elif op == "crash":
            conn.start_task(self.crash, name="crash")
        elif op == "ready":
            conn.send({"ready": True})

    async def work(self, value: int) -> int:
        await trio.lowlevel.checkpoint()
        return value * 2

    async def crash(self) -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("boom")

    async def handle_info(self, info: Any, conn: Connection) -> None:
        if isinstance(info, TaskResult):
            conn.send({"result": [info.name, info.value]})
        elif isinstance(info, TaskFailed):
            conn.send({"failed": [info.name, repr(info.error)]})
        else:
            conn.send({"info": info})

    async def handle_control(self, frame: ControlFrame, conn: Connection) -> None:
        self.controls.append(frame)
        conn.send({"control": [frame.kind, frame.payload.decode()]})

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.terminated[conn.session_id] = reason
        self.gone.set()


def url(server: Any, user: str, session: str | None = None) -> str:
    return f"{server.url}?user={user}" + (f"&session={session}" if session else "")


async def ask(ws: Any, msg: dict[str, Any]) -> Any:
    await ws.send_message(json.dumps(msg))
    return json.loads(await ws.get_message())


async def recv(ws: Any) -> Any:
    return json.loads(await ws.get_message())


async def test_send_info_reaches_handle_info_by_name_user_session_channel_and_group() -> None:
    hub = Hub()
    async with running(hub, **NO_TIMERS) as server:
        with trio.fail_after(10):
            async with (
                ws_open(url(server, "alice", "phone")) as phone,
                ws_open(url(server, "alice", "laptop")) as laptop,
                ws_open(url(server, "bob", "b1")) as bob,
            ):
                assert await ask(phone, {"op": "name", "name": "alice-phone"}) == {
                    "named": "alice-phone"
                }
                assert await ask(laptop, {"op": "join_group", "group": "admins"}) == {
                    "joined": True
                }
                assert await ask(bob, {"op": "join_group", "group": "admins"}) == {"joined": True}
                assert await ask(bob, {"op": "join_channel", "channel": "room"}) == {"joined": True}

                assert server.send_info("alice-phone", 1) == 1
                assert await recv(phone) == {"info": 1}
                assert server.send_info(Name("alice-phone"), 2) == 1
                assert await recv(phone) == {"info": 2}
                assert server.send_info(User("alice"), 3) == 2
                assert await recv(phone) == {"info": 3}
                assert await recv(laptop) == {"info": 3}
                assert server.send_info(Session("alice", "laptop"), 4) == 1
                assert await recv(laptop) == {"info": 4}
                assert server.send_info(Channel("room"), 5) == 1
                assert await recv(bob) == {"info": 5}
                assert server.publish("admins", 6) == 2
                assert await recv(laptop) == {"info": 6}
                assert await recv(bob) == {"info": 6}
                assert server.send_info(Group("admins"), 7) == 2
                assert await recv(laptop) == {"info": 7}
                assert await recv(bob) == {"info": 7}
                assert server.send_info("nobody", 8) == 0
                assert server.publish("nobody", 8) == 0
                # nothing else arrived anywhere: each client's next message is its own answer
                for ws in (phone, laptop, bob):
                    assert await ask(ws, {"op": "ready"}) == {"ready": True}
        with pytest.raises(TypeError):
            server.send_info(42, "x")  # type: ignore[arg-type]


async def test_a_unique_name_refuses_a_second_holder_and_frees_itself_on_disconnect() -> None:
    hub = Hub()
    async with running(hub, **NO_TIMERS) as server:
        with trio.fail_after(10):
            async with ws_open(url(server, "a", "s2")) as second:
                async with ws_open(url(server, "a", "s1")) as first:
                    assert await ask(first, {"op": "name", "name": "worker"}) == {"named": "worker"}
                    assert await ask(first, {"op": "name", "name": "worker"}) == {"named": "worker"}
                    assert await ask(second, {"op": "name", "name": "worker"}) == {
                        "taken": "worker"
                    }
                await hub.gone.wait()
                # first has left: the name is free again
                assert server.send_info("worker", "x") == 0
                assert await ask(second, {"op": "name", "name": "worker"}) == {"named": "worker"}
                assert server.send_info("worker", "y") == 1
                assert await recv(second) == {"info": "y"}
                assert await ask(second, {"op": "unname", "name": "worker"}) == {"unnamed": True}
                assert server.send_info("worker", "z") == 0


async def test_groups_join_twice_deliver_once_and_leaving_stops_infos() -> None:
    hub = Hub()
    async with running(hub, **NO_TIMERS) as server:
        with trio.fail_after(10):
            async with ws_open(url(server, "a")) as ws:
                assert await ask(ws, {"op": "join_group", "group": "g"}) == {"joined": True}
                assert await ask(ws, {"op": "join_group", "group": "g"}) == {"joined": False}
                assert server.publish("g", "once") == 1
                assert await recv(ws) == {"info": "once"}
                assert await ask(ws, {"op": "leave_group", "group": "g"}) == {"left": True}
                assert server.publish("g", "never") == 0
                assert await ask(ws, {"op": "ready"}) == {"ready": True}
                assert server._core.registry.groups == {}


async def test_disconnect_closes_every_connection_of_a_user_or_one_session() -> None:
    hub = Hub()
    async with running(hub, **NO_TIMERS) as server:
        with trio.fail_after(10):
            async with (
                ws_open(url(server, "alice", "phone")) as phone,
                ws_open(url(server, "alice", "laptop")) as laptop,
                ws_open(url(server, "bob", "b1")) as bob,
            ):
                for ws in (phone, laptop, bob):
                    assert await ask(ws, {"op": "ready"}) == {"ready": True}
                with pytest.raises(ValueError):
                    server.disconnect("alice", code=1005)
                assert server.disconnect("alice", "laptop", 4001, "bye laptop") == 1
                while "laptop" not in hub.terminated:
                    await hub.gone.wait()
                    hub.gone = trio.Event()
                assert hub.terminated["laptop"] == TerminateReason("closed", 4001, "bye laptop")
                assert laptop.closed is not None and laptop.closed.code == 4001
                assert server.disconnect("alice") == 1
                while "phone" not in hub.terminated:
                    await hub.gone.wait()
                    hub.gone = trio.Event()
                assert hub.terminated["phone"].kind == "closed"
                assert server.disconnect("nobody") == 0
                assert await ask(bob, {"op": "ready"}) == {"ready": True}


async def test_child_task_results_and_crashes_arrive_in_handle_info() -> None:
    hub = Hub()
    async with running(hub, **NO_TIMERS) as server:
        with trio.fail_after(10):
            async with ws_open(url(server, "a")) as ws:
                assert await ask(ws, {"op": "task", "value": 21}) == {"result": ["work", 42]}
                assert await ask(ws, {"op": "crash"}) == {"failed": ["crash", "ValueError('boom')"]}
                # the connection is unharmed
                assert await ask(ws, {"op": "ready"}) == {"ready": True}


async def test_handle_control_sees_pings_after_the_automatic_pong_and_pongs() -> None:
    hub = Hub()
    async with running(hub, **NO_TIMERS) as server:
        client = await RawClient.connect(server)
        try:
            with trio.fail_after(10):
                status, _, _ = await client.upgrade(path="/ws?user=a")
                assert status == 101
                await client.send(client_frame(0x9, b"hello"))
                op, payload, _ = await client.read_frame()
                assert (op, payload) == (0xA, b"hello")  # the pong comes first
                op, payload, _ = await client.read_frame()
                assert json.loads(payload) == {"control": ["ping", "hello"]}
                await client.send(client_frame(0xA, b"unsolicited"))
                op, payload, _ = await client.read_frame()
                assert json.loads(payload) == {"control": ["pong", "unsolicited"]}
                assert [c.kind for c in hub.controls] == ["ping", "pong"]
        finally:
            await client.aclose()


class Flood(Handler):
    """Sends ``count`` binary messages of ``size`` bytes, numbered, then b"DONE", when asked."""

    codec = RawBinaryCodec()

    def __init__(self) -> None:
        self.done = trio.Event()
        self.terminated: list[TerminateReason] = []

    async def handle_message(self, msg: bytes, conn: Connection) -> None:
        count, size = int.from_bytes(msg[:4], "big"), int.from_bytes(msg[4:8], "big")
        for i in range(count):
            conn.send(i.to_bytes(4, "big") + bytes(size - 4))
        conn.send(b"DONE")
        self.done.set()

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.terminated.append(reason)


def flood_request(count: int, size: int) -> bytes:
    return client_frame(0x2, count.to_bytes(4, "big") + size.to_bytes(4, "big"))


async def flood_unread_client(policy: str) -> tuple[Flood, list[bytes], Any]:
    """A client asks for a flood and reads nothing until the handler has sent it all; then it
    reads every frame that was not dropped (the metric says how many were)."""
    handler = Flood()
    settings = dict(NO_TIMERS, outbox_policy=policy, outbox_size=8, outbox_bytes=1 << 20)
    async with running(handler, **settings) as server:
        client = await RawClient.connect(server)
        try:
            with trio.fail_after(30):
                status, _, _ = await client.upgrade()
                assert status == 101
                count = 400  # 400 x 64 KiB = 26 MB: far more than socket buffers hold
                await client.send(flood_request(count, 65536))
                await handler.done.wait()
                expected = count + 1 - server.metrics.dropped  # the b"DONE" may be dropped
                got = []
                for _ in range(expected):
                    op, payload, fin = await client.read_frame()
                    assert fin and op == 0x2, "every frame arrives whole"
                    got.append(payload)
                assert not handler.terminated
                return handler, got, server.metrics
        finally:
            await client.aclose()


def numbers_of(frames: list[bytes]) -> list[int]:
    return [int.from_bytes(p[:4], "big") for p in frames if p != b"DONE"]


async def test_drop_newest_keeps_the_connection_and_counts_what_it_dropped() -> None:
    _, got, metrics = await flood_unread_client("drop_newest")
    numbers = numbers_of(got)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert metrics.dropped > 0
    assert numbers[0] == 0  # the oldest were kept, the newest dropped


async def test_drop_oldest_keeps_the_newest_messages_in_order() -> None:
    _, got, metrics = await flood_unread_client("drop_oldest")
    numbers = numbers_of(got)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert metrics.dropped > 0
    assert got[-1] == b"DONE"  # the newest were kept
    assert numbers[-1] == 399


async def test_close_policy_sheds_the_slow_consumer_and_cuts_it_off_after_close_timeout(
    mock_clock: MockClock,
) -> None:
    handler = Flood()
    settings = dict(NO_TIMERS, outbox_size=8, outbox_bytes=1 << 20, close_timeout=2.0)
    async with running(handler, **settings) as server:
        client = await RawClient.connect(server)
        try:
            with fail_after_real():
                status, _, _ = await client.upgrade()
                assert status == 101
                await client.send(
                    client_frame(0x2, (400).to_bytes(4, "big") + (65536).to_bytes(4, "big"))
                )
                await wait_until(lambda: server.connections()[0].closed)
                # shed, but its close frame is queued behind what it does not read: the
                # server waits close_timeout for the closing handshake, then cuts it off
                await advance(mock_clock, 1.9, step=0.1)
                assert handler.terminated == []
                await advance(mock_clock, 0.2)
                await wait_until(lambda: bool(handler.terminated))
                assert not handler.done.is_set()  # send() raised ConnectionClosed once shed
                assert handler.terminated[0].kind == "slow_consumer"
                assert handler.terminated[0].code == 1008
                assert server.metrics.disconnects["slow_consumer"] == 1
                assert server.metrics.dropped == 0
        finally:
            await client.aclose()
