"""Request/reply and signals over real connections: replies, error replies, routing,
concurrency, timeouts, shutdown, calls from the server to the client, and the documented
outcome of every kind of bad input."""

from __future__ import annotations

from typing import Any

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
    Handler,
    RequestError,
    RequestTimeout,
    RPCHandler,
    open_client,
    request,
    signal,
)
from riverside_trio.testing import Riverside

from ._helpers import NO_TIMERS, running
from ._rpc_helpers import raw_json, recv_json, send_json, until


class App(RPCHandler):
    def __init__(self) -> None:
        self.signals: list[Any] = []
        self.got_signal = trio.Event()
        self.order: list[str] = []
        self.release = trio.Event()
        self.started = trio.Event()
        self.server_call: list[Any] = []
        self.server_call_done = trio.Event()

    @request("add")
    async def add(self, payload: Any, conn: Connection) -> Any:
        return payload[0] + payload[1]

    @request("nope")
    async def nope(self, payload: Any, conn: Connection) -> Any:
        raise RequestError("not_found", "no such thing")

    @request("boom")
    async def boom(self, payload: Any, conn: Connection) -> Any:
        raise KeyError("the database password is hunter2")

    @request("block")
    async def block(self, payload: Any, conn: Connection) -> Any:
        self.order.append(f"start {payload}")
        self.started.set()
        await self.release.wait()
        self.order.append(f"end {payload}")
        return payload

    @request("ask_client")
    async def ask_client(self, payload: Any, conn: Connection) -> Any:
        return await conn.request("double", payload, timeout=payload.get("timeout", 60))

    @request("ask_forever")
    async def ask_forever(self, payload: Any, conn: Connection) -> Any:
        try:
            self.started.set()
            await conn.request("hang", None, timeout=1000)
        except ConnectionClosed as exc:
            self.server_call.append(exc)
        finally:
            self.server_call_done.set()
        return None

    @request("big")
    async def big(self, payload: Any, conn: Connection) -> Any:
        return "x" * payload

    @request("poke")
    async def poke(self, payload: Any, conn: Connection) -> Any:
        conn.signal("poked", payload)
        return "ok"

    @signal("note")
    async def note(self, payload: Any, conn: Connection) -> None:
        self.signals.append(payload)
        self.got_signal.set()

    @signal("bad_signal")
    async def bad_signal(self, payload: Any, conn: Connection) -> None:
        raise ValueError("signal handler bug")

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send({"echo": msg})


@pytest.mark.parametrize("codec", [None, CBORCodec()], ids=["json", "cbor"])
async def test_a_request_gets_the_handlers_return_value_as_its_reply(codec: Any) -> None:
    class Handler_(App):
        pass

    if codec is not None:
        Handler_.codec = codec
    async with running(Handler_(), **NO_TIMERS) as server:
        kw = {} if codec is None else {"codec": codec}
        async with open_client(server.url, reconnect=False, **kw) as client:
            assert await client.request("add", [2, 3]) == 5
            assert await client.request("add", [10, -1]) == 9


async def test_request_error_is_an_error_reply_with_its_code_and_message(
    riverside: Riverside,
) -> None:
    async with (
        riverside.serve(App, transport="tcp", **NO_TIMERS) as server,
        server.connect() as client,
    ):
        with pytest.raises(RequestError) as info:
            await client.request("nope")
        assert (info.value.code, info.value.message) == ("not_found", "no such thing")


async def test_any_other_exception_is_an_internal_error_reply_that_leaks_nothing() -> None:
    async with (
        running(App(), **NO_TIMERS) as server,
        open_client(server.url, reconnect=False) as client,
    ):
        with structlog.testing.capture_logs() as logs, pytest.raises(RequestError) as info:
            await client.request("boom")
        assert info.value.code == ErrorCode.INTERNAL
        assert "hunter2" not in info.value.message and "KeyError" not in info.value.message
        assert any(e["event"] == "request_failed" and e["name"] == "boom" for e in logs)
        assert await client.request("add", [1, 1]) == 2  # the connection carries on


async def test_an_unknown_name_gets_the_unknown_name_error_reply(riverside: Riverside) -> None:
    async with (
        riverside.serve(App, transport="tcp", **NO_TIMERS) as server,
        server.connect() as client,
    ):
        with pytest.raises(RequestError) as info:
            await client.request("no_such_request", 1)
        assert info.value.code == ErrorCode.UNKNOWN_NAME
        assert "no_such_request" in info.value.message


async def test_plain_messages_still_reach_handle_message_beside_envelopes(
    riverside: Riverside,
) -> None:
    async with (
        riverside.serve(App, transport="tcp", **NO_TIMERS) as server,
        server.connect() as client,
    ):
        await client.send({"type": "hello"})
        assert await client.request("add", [1, 2]) == 3
        assert await client.receive() == {"echo": {"type": "hello"}}
        await client.send([1, 2, 3])
        assert await client.receive() == {"echo": [1, 2, 3]}


async def test_signals_reach_their_handler_and_failing_or_unknown_ones_change_nothing() -> None:
    app = App()
    async with (
        running(app, **NO_TIMERS) as server,
        open_client(server.url, reconnect=False) as client,
    ):
        with structlog.testing.capture_logs() as logs:
            await client.signal("bad_signal", 1)
            await client.signal("no_such_signal", 2)
            await client.signal("note", {"n": 3})
            await app.got_signal.wait()
            assert await client.request("add", [1, 1]) == 2
        assert app.signals == [{"n": 3}]
        events = [e["event"] for e in logs]
        assert "signal_failed" in events and "unknown_signal" in events


async def test_the_server_calls_the_client_from_a_request_handler_and_signals_it() -> None:
    async with (
        running(App(), **NO_TIMERS) as server,
        open_client(server.url, reconnect=False) as client,
    ):
        poked: list[Any] = []
        got = trio.Event()

        @client.on_request("double")
        async def double(payload: Any) -> Any:
            return payload["n"] * 2

        @client.on_signal("poked")
        async def on_poke(payload: Any) -> None:
            poked.append(payload)
            got.set()

        assert await client.request("ask_client", {"n": 21}) == 42
        assert await client.request("poke", "you") == "ok"
        await got.wait()
        assert poked == ["you"]


async def test_a_clients_error_reply_raises_request_error_in_the_server() -> None:
    async with (
        running(App(), **NO_TIMERS) as server,
        open_client(server.url, reconnect=False) as client,
    ):

        @client.on_request("double")
        async def double(payload: Any) -> Any:
            raise RequestError("no_doubles", "not today")

        with pytest.raises(RequestError) as info:
            await client.request("ask_client", {"n": 1})
        # The server's handler let the client's RequestError through: same code.
        assert (info.value.code, info.value.message) == ("no_doubles", "not today")


async def test_a_pending_server_request_fails_with_connection_closed_when_the_client_goes() -> None:
    async with (
        running(App(), **NO_TIMERS) as server,
        open_client(server.url, reconnect=False) as client,
    ):
        asked = trio.Event()

        @client.on_request("hang")
        async def hang(payload: Any) -> Any:
            asked.set()
            await trio.sleep_forever()

        (conn,) = server.connections()
        async with trio.open_nursery() as nursery:

            async def close_when_asked() -> None:
                await asked.wait()
                await client.aclose()

            nursery.start_soon(close_when_asked)
            with pytest.raises(ConnectionClosed) as info:
                await conn.request("hang", None, timeout=1000)
        assert info.value.code == 1000
        with pytest.raises(ConnectionClosed):
            await conn.request("hang")  # the connection is over


async def test_a_request_handler_waiting_on_the_client_is_cancelled_when_it_goes() -> None:
    app = App()
    async with running(app, **NO_TIMERS) as server:
        async with open_client(server.url, reconnect=False) as client:

            @client.on_request("hang")
            async def hang(payload: Any) -> Any:
                await trio.sleep_forever()

            async with trio.open_nursery() as nursery:

                async def ask() -> None:
                    with pytest.raises(ConnectionClosed):
                        await client.request("ask_forever")

                nursery.start_soon(ask)
                await app.started.wait()
                await client.aclose()
        await app.server_call_done.wait()
        assert app.server_call == []  # cancelled with its connection, no reply attempted


async def test_a_client_that_never_answers_raises_request_timeout(
    riverside: Riverside, autojump_clock: trio.testing.MockClock
) -> None:
    async with riverside.serve(App, **NO_TIMERS) as server, server.connect() as client:

        @client.on_request("double")
        async def double(payload: Any) -> Any:
            await trio.sleep_forever()

        with pytest.raises(RequestError) as info:
            await client.request("ask_client", {"n": 1, "timeout": 5}, timeout=100)
        # The server's RequestTimeout is a RequestError: it reached the client as such.
        assert info.value.code == "timeout"


async def test_a_request_over_request_timeout_gets_the_timeout_error_reply(
    riverside: Riverside, autojump_clock: trio.testing.MockClock
) -> None:
    app = App()
    async with (
        riverside.serve(app, request_timeout=30, **NO_TIMERS) as server,
        server.connect() as client,
    ):
        with pytest.raises(RequestError) as info:
            await client.request("block", 1, timeout=100)
        assert info.value.code == ErrorCode.TIMEOUT
        assert trio.current_time() == pytest.approx(30)
        assert app.order == ["start 1"]  # cancelled, never finished
        assert await client.request("add", [1, 1]) == 2


async def test_the_clients_own_timeout_raises_request_timeout(
    riverside: Riverside, autojump_clock: trio.testing.MockClock
) -> None:
    async with riverside.serve(App, **NO_TIMERS) as server, server.connect() as client:
        with pytest.raises(RequestTimeout):
            await client.request("block", 1, timeout=5)
        assert trio.current_time() == pytest.approx(5)


async def test_requests_of_one_connection_run_one_at_a_time_by_default() -> None:
    app = App()
    async with (
        running(app, **NO_TIMERS) as server,
        open_client(server.url, reconnect=False) as client,
    ):
        results: list[Any] = []
        async with trio.open_nursery() as nursery:

            async def ask(n: int) -> None:
                results.append(await client.request("block", n))

            nursery.start_soon(ask, 1)
            await app.started.wait()
            nursery.start_soon(ask, 2)
            # The second waits in the queue: everything is idle, and it has not started.
            await trio.testing.wait_all_tasks_blocked()
            assert app.order == ["start 1"]
            app.release.set()
        assert app.order == ["start 1", "end 1", "start 2", "end 2"]
        assert results == [1, 2]


async def test_request_concurrency_lets_requests_of_one_connection_overlap() -> None:
    app = App()
    async with (
        running(app, request_concurrency=2, **NO_TIMERS) as server,
        open_client(server.url, reconnect=False) as client,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.request, "block", 1)
            nursery.start_soon(client.request, "block", 2)
            await until(lambda: len(app.order) == 2)
            assert sorted(app.order) == ["start 1", "start 2"]
            app.release.set()
        assert sorted(app.order[2:]) == ["end 1", "end 2"]


async def test_more_waiting_requests_than_outbox_size_get_too_many_requests() -> None:
    app = App()
    async with running(app, outbox_size=2, **NO_TIMERS) as server, raw_json(server) as ws:
        await send_json(ws, {"$": "req", "id": 1, "name": "block", "data": 1})
        await app.started.wait()
        for i in (2, 3, 4):
            await send_json(ws, {"$": "req", "id": i, "name": "add", "data": [i, 0]})
        reply = await recv_json(ws)
        assert reply == {
            "$": "err",
            "id": 4,
            "code": "too_many_requests",
            "message": "too many waiting",
        }
        app.release.set()
        replies = [await recv_json(ws) for _ in range(3)]
        assert replies == [
            {"$": "rep", "id": 1, "data": 1},
            {"$": "rep", "id": 2, "data": 2},
            {"$": "rep", "id": 3, "data": 3},
        ]


async def test_shutdown_answers_new_requests_and_lets_running_ones_finish() -> None:
    app = App()
    async with running(app, **NO_TIMERS) as server:
        async with raw_json(server) as ws:
            await send_json(ws, {"$": "req", "id": "a", "name": "block", "data": 1})
            await app.started.wait()
            server.shutdown()
            await until(lambda: server._core.shutting_down)
            await send_json(ws, {"$": "req", "id": "b", "name": "add", "data": [1, 2]})
            await send_json(ws, {"$": "sig", "name": "note", "data": 1})  # dropped
            assert await recv_json(ws) == {
                "$": "err",
                "id": "b",
                "code": "shutdown",
                "message": "server shutting down",
            }
            app.release.set()
            assert await recv_json(ws) == {"$": "rep", "id": "a", "data": 1}
            with pytest.raises(WSClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1001
        assert app.signals == []


async def test_a_reply_to_an_unknown_id_is_dropped_and_logged() -> None:
    async with running(App(), **NO_TIMERS) as server, raw_json(server) as ws:
        with structlog.testing.capture_logs() as logs:
            await send_json(ws, {"$": "rep", "id": 999, "data": "late"})
            await send_json(ws, {"$": "err", "id": 998, "code": "x", "message": ""})
            await send_json(ws, {"$": "req", "id": 1, "name": "add", "data": [1, 1]})
            assert await recv_json(ws) == {"$": "rep", "id": 1, "data": 2}
        assert any(e["event"] == "unknown_reply_id" for e in logs)


@pytest.mark.parametrize(
    "bad",
    [
        {"$": "req", "id": 1},  # no name
        {"$": "req", "name": "add"},  # no id
        {"$": "req", "id": [1], "name": "add"},  # an id that is not int or str
        {"$": "req", "id": True, "name": "add"},
        {"$": "err", "id": 1},  # no code
        {"$": "sig"},
        {"$": "restore", "id": 1},
        {"$": "what"},
        {"$": "session", "key": "k"},  # only the server sends this
        {"$": "session_closed"},
    ],
)
async def test_a_malformed_envelope_closes_with_1008_invalid_envelope(bad: Any) -> None:
    async with running(App(), **NO_TIMERS) as server:
        async with raw_json(server) as ws:
            await send_json(ws, bad)
            with pytest.raises(WSClosed) as info:
                await ws.get_message()
            assert (info.value.reason.code, info.value.reason.reason) == (1008, "invalid_envelope")
        assert server.metrics.invalid_messages["envelope"] == 1


async def test_an_oversized_request_closes_with_1009() -> None:
    async with (
        running(App(), max_message_size=1000, **NO_TIMERS) as server,
        open_client(server.url, reconnect=False) as client,
    ):
        with pytest.raises(ConnectionClosed) as info:
            await client.request("add", ["x" * 2000, ""])
        assert info.value.code == 1009


async def test_a_reply_over_the_clients_limit_is_refused_by_the_client_with_1009() -> None:
    async with (
        running(App(), **NO_TIMERS) as server,
        open_client(server.url, reconnect=False, max_message_size=1000) as client,
    ):
        assert await client.request("big", 10) == "x" * 10
        with pytest.raises(ConnectionClosed) as info:
            await client.request("big", 5000)
        assert info.value.code == 1009


async def test_conn_request_needs_an_rpc_handler() -> None:
    errors: list[BaseException] = []
    done = trio.Event()

    class Plain(Handler):
        async def handle_message(self, msg: Any, conn: Connection) -> None:
            try:
                await conn.request("x")
            except RuntimeError as exc:
                errors.append(exc)
            done.set()

    async with running(Plain(), **NO_TIMERS) as server, raw_json(server) as ws:
        await send_json(ws, {"$": "req", "id": 1, "name": "x"})
        await done.wait()
    assert "RPCHandler" in str(errors[0])
