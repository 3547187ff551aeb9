"""Request and signal handlers that never await run inline, in the connection's reader:
which ones do, that they keep the order and the limits of the request task, and that
every outcome (reply, error reply, internal error, timeout rules) is the same on both
paths. Over real connections."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import pytest
import structlog
import trio
import trio.testing
from trio_websocket import ConnectionClosed as WSClosed

from riverside_trio import (
    CBORCodec,
    Connection,
    ConnectionClosed,
    ErrorCode,
    RequestError,
    RPCHandler,
    request,
    signal,
)
from riverside_trio.testing import Riverside

from ._helpers import NO_TIMERS, RawClient, running, settle, ws_open
from ._hostile import masked
from ._rpc_helpers import raw_json, recv_json, send_json, until


async def _gen() -> AsyncIterator[int]:
    yield 1


class App(RPCHandler):
    def __init__(self) -> None:
        self.tasks: dict[str, trio.lowlevel.Task] = {}
        self.order: list[str] = []
        self.started = trio.Event()
        self.release = trio.Event()
        self.clock: trio.testing.MockClock | None = None

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        self.tasks["reader"] = trio.lowlevel.current_task()

    @request("plain")
    async def plain(self, payload: Any, conn: Connection) -> Any:
        self.tasks["plain"] = trio.lowlevel.current_task()
        self.order.append(f"plain {payload}")
        return payload

    @request("awaits")
    async def awaits(self, payload: Any, conn: Connection) -> Any:
        self.tasks["awaits"] = trio.lowlevel.current_task()
        await trio.lowlevel.checkpoint()
        return payload

    @request("async_with")
    async def async_with(self, payload: Any, conn: Connection) -> Any:
        self.tasks["async_with"] = trio.lowlevel.current_task()
        async with trio.Lock():
            return payload

    @request("async_for")
    async def async_for(self, payload: Any, conn: Connection) -> Any:
        self.tasks["async_for"] = trio.lowlevel.current_task()
        return [x async for x in _gen()]

    @request("block")
    async def block(self, payload: Any, conn: Connection) -> Any:
        self.order.append(f"start {payload}")
        self.started.set()
        await self.release.wait()
        self.order.append(f"end {payload}")
        return payload

    @request("overrun")
    async def overrun(self, payload: Any, conn: Connection) -> Any:
        assert self.clock is not None
        self.clock.jump(payload)  # past request_timeout, without a checkpoint
        return "finished"

    @request("overrun_await")
    async def overrun_await(self, payload: Any, conn: Connection) -> Any:
        assert self.clock is not None
        self.clock.jump(payload)
        await trio.sleep_forever()

    @request("unencodable")
    async def unencodable(self, payload: Any, conn: Connection) -> Any:
        return {1, 2}

    @request("unencodable_await")
    async def unencodable_await(self, payload: Any, conn: Connection) -> Any:
        await trio.lowlevel.checkpoint()
        return {1, 2}

    @request("closed")
    async def closed(self, payload: Any, conn: Connection) -> Any:
        raise ConnectionClosed(1000, "not this connection")

    @request("closed_await")
    async def closed_await(self, payload: Any, conn: Connection) -> Any:
        await trio.lowlevel.checkpoint()
        raise ConnectionClosed(1000, "not this connection")

    @signal("note")
    async def note(self, payload: Any, conn: Connection) -> None:
        self.tasks["note"] = trio.lowlevel.current_task()
        self.order.append(f"note {payload}")


async def test_handlers_that_never_await_run_in_the_reader_the_others_in_the_request_task() -> None:
    app = App()
    async with running(app, **NO_TIMERS) as server, raw_json(server) as ws:
        await send_json(ws, {"plain": "message"})
        for i, name in enumerate(["plain", "awaits", "async_with", "async_for"]):
            await send_json(ws, {"$": "req", "id": i, "name": name, "data": i})
            assert await recv_json(ws) == {"$": "rep", "id": i, "data": [1] if i == 3 else i}
        await send_json(ws, {"$": "sig", "name": "note", "data": 0})
        await send_json(ws, {"$": "req", "id": 9, "name": "plain", "data": 9})
        assert await recv_json(ws) == {"$": "rep", "id": 9, "data": 9}
    reader = app.tasks["reader"]
    assert app.tasks["plain"] is reader and app.tasks["note"] is reader
    for name in ("awaits", "async_with", "async_for"):
        assert app.tasks[name] is not reader
    assert app.tasks["awaits"] is app.tasks["async_with"] is app.tasks["async_for"]


async def test_requests_and_signals_that_never_await_wait_behind_a_running_request() -> None:
    app = App()
    async with running(app, **NO_TIMERS) as server, raw_json(server) as ws:
        await send_json(ws, {"$": "req", "id": 1, "name": "block", "data": 1})
        await app.started.wait()
        await send_json(ws, {"$": "req", "id": 2, "name": "plain", "data": 2})
        await send_json(ws, {"$": "sig", "name": "note", "data": 3})
        await send_json(ws, {"$": "req", "id": 4, "name": "plain", "data": 4})
        await settle()
        assert app.order == ["start 1"]
        app.release.set()
        replies = [await recv_json(ws) for _ in range(3)]
    assert [r["id"] for r in replies] == [1, 2, 4]
    assert app.order == ["start 1", "end 1", "plain 2", "note 3", "plain 4"]


async def test_a_request_read_together_with_a_queued_one_never_runs_ahead_of_it() -> None:
    # One TCP segment: the reader sees both before the request task has started "block".
    app = App()
    async with running(app, **NO_TIMERS) as server:
        client = await RawClient.connect(server)
        try:
            status, _, _ = await client.upgrade()
            assert status == 101
            frames = [
                {"$": "req", "id": 1, "name": "block", "data": 1},
                {"$": "req", "id": 2, "name": "plain", "data": 2},
            ]
            await client.send(b"".join(masked(json.dumps(f).encode()) for f in frames))
            await app.started.wait()
            await settle()
            assert app.order == ["start 1"]
            app.release.set()
            replies = [json.loads((await client.read_frame())[1]) for _ in range(2)]
        finally:
            await client.aclose()
    assert [r["id"] for r in replies] == [1, 2]
    assert app.order == ["start 1", "end 1", "plain 2"]


async def test_with_request_concurrency_a_request_runs_inline_only_below_the_limit() -> None:
    app = App()
    async with (
        running(app, request_concurrency=2, **NO_TIMERS) as server,
        raw_json(server) as ws,
    ):
        await send_json(ws, {"$": "req", "id": 1, "name": "block", "data": 1})
        await app.started.wait()
        await send_json(ws, {"$": "req", "id": 2, "name": "plain", "data": 2})
        assert await recv_json(ws) == {"$": "rep", "id": 2, "data": 2}  # 1 still runs
        await send_json(ws, {"$": "req", "id": 3, "name": "block", "data": 3})
        await send_json(ws, {"$": "req", "id": 4, "name": "plain", "data": 4})
        await settle()
        assert app.order == ["start 1", "plain 2", "start 3"]  # 4 waits for a free slot
        app.release.set()
        replies = [await recv_json(ws) for _ in range(3)]
    assert sorted(r["id"] for r in replies) == [1, 3, 4]
    assert sorted(app.order[3:]) == ["end 1", "end 3", "plain 4"]
    first_end = min(app.order.index("end 1"), app.order.index("end 3"))
    assert app.order.index("plain 4") > first_end


async def test_a_handler_that_never_awaits_is_answered_even_past_request_timeout(
    riverside: Riverside, autojump_clock: trio.testing.MockClock
) -> None:
    app = App()
    app.clock = autojump_clock
    async with (
        riverside.serve(app, request_timeout=30, **NO_TIMERS) as server,
        server.connect() as client,
    ):
        # It has no checkpoint to be cancelled at, in the reader as in the request task.
        assert await client.request("overrun", 100, timeout=1000) == "finished"
        with pytest.raises(RequestError) as info:
            await client.request("overrun_await", 100, timeout=1000)
        assert info.value.code == ErrorCode.TIMEOUT
        assert await client.request("plain", 1) == 1


@pytest.mark.parametrize("name", ["unencodable", "unencodable_await"])
async def test_a_reply_the_codec_cannot_encode_becomes_an_internal_error_reply(name: str) -> None:
    async with running(App(), **NO_TIMERS) as server, raw_json(server) as ws:
        with structlog.testing.capture_logs() as logs:
            await send_json(ws, {"$": "req", "id": 1, "name": name})
            assert await recv_json(ws) == {
                "$": "err",
                "id": 1,
                "code": "internal_error",
                "message": "internal error",
            }
        assert any(e["event"] == "reply_not_encodable" for e in logs)


@pytest.mark.parametrize("name", ["closed", "closed_await"])
async def test_connection_closed_raised_on_an_open_connection_is_an_internal_error(
    name: str,
) -> None:
    async with running(App(), **NO_TIMERS) as server, raw_json(server) as ws:
        with structlog.testing.capture_logs() as logs:
            await send_json(ws, {"$": "req", "id": 1, "name": name})
            assert (await recv_json(ws))["code"] == ErrorCode.INTERNAL
        assert any(e["event"] == "request_failed" and e["name"] == name for e in logs)


@pytest.mark.parametrize("rid", ["abc", "", 2**64 - 1, -(2**63), 0])
async def test_every_valid_id_is_echoed_by_an_inline_reply(rid: Any) -> None:
    async with running(App(), **NO_TIMERS) as server, raw_json(server) as ws:
        await send_json(ws, {"$": "req", "id": rid, "name": "plain", "data": "x"})
        assert await recv_json(ws) == {"$": "rep", "id": rid, "data": "x"}


@pytest.mark.parametrize(
    "bad",
    [
        {"$": "req", "id": 2**64, "name": "plain"},
        {"$": "req", "id": -(2**63) - 1, "name": "plain"},
        {"$": "req", "id": "x" * 256, "name": "plain"},
        {"$": "req", "id": 1.5, "name": "plain"},
        {"$": "req", "id": False, "name": "plain"},
        {"$": "req", "id": 1, "name": "p" * 256},
        {"$": "req", "id": 1, "name": 7},
    ],
)
async def test_an_invalid_id_or_name_closes_with_1008_on_the_inline_path_too(bad: Any) -> None:
    async with running(App(), **NO_TIMERS) as server, raw_json(server) as ws:
        await send_json(ws, bad)
        with pytest.raises(WSClosed) as info:
            await ws.get_message()
        assert (info.value.reason.code, info.value.reason.reason) == (1008, "invalid_envelope")


async def test_a_bytes_id_of_cbor_runs_inline_and_is_echoed() -> None:
    class CBORApp(App):
        codec = CBORCodec()

    app = CBORApp()
    async with running(app, **NO_TIMERS) as server, ws_open(server.url) as ws:
        await ws.send_message(cbor2.dumps({"$": "req", "id": b"\x00\x01", "name": "plain"}))
        assert cbor2.loads(await ws.get_message()) == {"$": "rep", "id": b"\x00\x01", "data": None}
        await ws.send_message(cbor2.dumps({"plain": "message"}))
        await ws.send_message(cbor2.dumps({"$": "req", "id": 2, "name": "plain", "data": 2}))
        assert cbor2.loads(await ws.get_message()) == {"$": "rep", "id": 2, "data": 2}
    assert app.tasks["plain"] is app.tasks["reader"]


async def test_shutdown_refuses_requests_that_would_run_inline_while_one_drains() -> None:
    app = App()
    async with running(app, **NO_TIMERS) as server, raw_json(server) as ws:
        await send_json(ws, {"$": "req", "id": 1, "name": "block", "data": 1})
        await app.started.wait()
        server.shutdown()
        await until(lambda: server._core.shutting_down)
        await send_json(ws, {"$": "req", "id": 2, "name": "plain", "data": 2})
        await send_json(ws, {"$": "sig", "name": "note", "data": 3})
        assert await recv_json(ws) == {
            "$": "err",
            "id": 2,
            "code": "shutdown",
            "message": "server shutting down",
        }
        app.release.set()
        assert await recv_json(ws) == {"$": "rep", "id": 1, "data": 1}
        with pytest.raises(WSClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 1001
    assert app.order == ["start 1", "end 1"]
