"""riverside_trio.testing and its pytest plugin: handlers served over memory streams and TCP,
clients with timeouts, the server's insides, mock clocks; the plugin stays inert until a test
asks for ``riverside``; the README's example test runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from riverside_trio import (
    Accept,
    AuthError,
    AuthRequest,
    CloseConnection,
    Connection,
    ConnectionClosed,
    Handler,
    RawTextCodec,
    RPCHandler,
    request,
    signal,
)
from riverside_trio.testing import (
    Rejected,
    Riverside,
    TestServer,
    advance,
    open_test_server,
    wait_until,
)

pytest_plugins = ["pytester"]

README = Path(__file__).parent.parent / "README.md"


class Room(Handler):
    """``{"join": room}``, ``{"say": text, "room": room}``, ``{"bye": code}``; tokens are users."""

    def __init__(self) -> None:
        self.heard: list[Any] = []

    async def authenticate(self, req: AuthRequest) -> Accept:
        if req.bearer_token in (None, "wrong"):
            raise AuthError(403, body="go away\n")
        return Accept(user_id=req.bearer_token or "", state={"q": dict(req.query)})

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        self.heard.append(msg)
        match msg:
            case {"join": str(room)}:
                conn.join_channel(room)
            case {"say": text, "room": str(room)}:
                conn.deliver_channel(room, {"from": conn.user_id, "said": text})
            case {"bye": int(code)}:
                raise CloseConnection(code, "asked to")
            case {"query": _}:
                conn.send(conn.state["q"])
            case _:
                conn.send(msg)


class Calc(RPCHandler):
    @request("add")
    async def add(self, payload: Any, conn: Connection) -> Any:
        return payload[0] + payload[1]

    @request("poke")
    async def poke(self, payload: Any, conn: Connection) -> Any:
        conn.signal("poked", payload)
        return await conn.request("double", payload)

    @signal("note")
    async def note(self, payload: Any, conn: Connection) -> None:
        conn.send({"noted": payload})


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_a_handler_is_served_and_its_clients_talk_to_it(
    riverside: Riverside, transport: Any
) -> None:
    async with (
        riverside.serve(Room, transport=transport, idle_timeout=None) as server,
        server.connect(token="ann") as ann,
        server.connect(token="bob", query={"x": "1"}) as bob,
    ):
        await ann.send({"join": "lobby"})
        await bob.send({"join": "lobby"})
        await riverside.wait_until(lambda: len(server.channels().get("lobby", [])) == 2)
        assert [c.user_id for c in server.channels()["lobby"]] == ["ann", "bob"]
        await bob.send({"say": "hi", "room": "lobby"})
        assert await ann.receive() == {"from": "bob", "said": "hi"}
        assert await bob.receive() == {"from": "bob", "said": "hi"}
        await bob.send({"query": 1})
        assert await bob.receive() == {"x": "1"}
        assert server.connection_count == 2
        assert [c.user_id for c in server.connections()] == ["ann", "bob"]
        assert server.metrics.incoming_text == 4
        assert isinstance(server.handler, Room)
        assert server.handler.heard[-1] == {"query": 1}


async def test_the_handlers_codec_is_the_clients(riverside: Riverside) -> None:
    class Echo(Handler):
        codec = RawTextCodec()

        async def handle_message(self, msg: str, conn: Connection) -> None:
            conn.send(msg.upper())

    async with riverside.serve(Echo) as server, server.connect() as client:
        await client.send("shout")
        assert await client.receive() == "SHOUT"


async def test_a_refused_upgrade_raises_rejected_with_the_status_and_body(
    riverside: Riverside,
) -> None:
    async with riverside.serve(Room) as server:
        with pytest.raises(Rejected) as refused:
            async with server.connect(token="wrong"):
                pass
        assert (refused.value.status, refused.value.body) == (403, b"go away\n")
        assert refused.value.headers["content-type"].startswith("text/plain")
        with pytest.raises(Rejected) as refused:
            async with server.connect("/elsewhere", token="ann"):
                pass
        assert refused.value.status == 404
        assert server.metrics.rejected[403] == 1


async def test_wait_closed_and_receive_report_the_servers_close_code(riverside: Riverside) -> None:
    async with riverside.serve(Room) as server, server.connect(token="ann") as client:
        await client.send({"bye": 4321})
        closed = await client.wait_closed()
        assert (closed.code, closed.reason) == (4321, "asked to")
        with pytest.raises(ConnectionClosed) as info:
            await client.receive()
        assert info.value.code == 4321


async def test_expect_nothing_passes_on_silence_and_fails_on_a_message(
    riverside: Riverside,
) -> None:
    async with riverside.serve(Room) as server, server.connect(token="ann") as client:
        await client.send({"join": "quiet"})
        await client.expect_nothing()
        await client.send("echo me")
        with pytest.raises(AssertionError, match="echo me"):
            await client.expect_nothing()
        await client.send("one")
        await client.send("two")
        assert await client.receive_all() == ["one", "two"]
        assert await client.receive_all() == []


async def test_receive_times_out_on_the_runs_clock(
    riverside: Riverside, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        riverside.serve(Room, idle_timeout=None) as server,
        server.connect(token="ann", timeout=25) as client,
    ):
        with pytest.raises(trio.TooSlowError, match="25 s"):
            await client.receive()
        assert trio.current_time() == pytest.approx(25)
        with pytest.raises(trio.TooSlowError):
            await client.wait_closed(timeout=5)
        with pytest.raises(trio.TooSlowError):
            await riverside.wait_until(lambda: False, timeout=1)


async def test_requests_signals_and_calls_from_the_server(riverside: Riverside) -> None:
    async with riverside.serve(Calc) as server, server.connect() as client:
        pokes: list[Any] = []

        @client.on_request("double")
        async def double(payload: Any) -> Any:
            return payload * 2

        @client.on_signal("poked")
        async def poked(payload: Any) -> None:
            pokes.append(payload)

        assert await client.request("add", [2, 3]) == 5
        assert await client.request("poke", 21) == 42
        await client.signal("note", "n")
        assert await client.receive() == {"noted": "n"}
        assert pokes == [21]
        assert server.connection_count == 1


async def test_advance_moves_the_mock_clock_and_runs_the_timers_due(
    riverside: Riverside, mock_clock: trio.testing.MockClock
) -> None:
    async with (
        riverside.serve(Room, idle_timeout=30, ping_interval=None) as server,
        server.connect(token="ann") as client,
    ):
        await riverside.advance(29)
        assert server.connection_count == 1
        await riverside.advance(2, step=1)
        closed = await client.wait_closed()
        assert (closed.code, closed.reason) == (1000, "idle_timeout")
        assert trio.current_time() == pytest.approx(31)


@pytest.mark.parametrize("ticks", [1, 2])
async def test_a_client_leaving_on_the_tick_of_a_keepalive_ping_closes_cleanly(
    riverside: Riverside, autojump_clock: trio.testing.MockClock, ticks: int
) -> None:
    # The server's ping crosses the client's close frame: trio-websocket alone would answer
    # it after its close and crash the client's nursery (trio-websocket #184).
    async with (
        riverside.serve(Room, idle_timeout=None, ping_interval=30) as server,
        server.connect(token="ann") as client,
    ):
        await trio.sleep(30 * ticks)
    assert (await client.client.wait_closed()).code == 1000


async def test_what_a_block_raises_comes_out_of_it_as_it_is(
    riverside: Riverside, mock_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with riverside.serve(Room) as server, server.connect(token="ann"):
            raise KeyError("mine")
    with pytest.raises(KeyError, match="also mine"):
        async with riverside.serve(Room):
            raise KeyError("also mine")
    # the teardown let the clock jump; the test's clock is as it was
    assert mock_clock.autojump_threshold == float("inf")


async def test_advance_needs_a_mock_clock() -> None:
    with pytest.raises(RuntimeError, match="mock_clock"):
        await advance(1)


async def test_shutdown_closes_every_client_with_1001(riverside: Riverside) -> None:
    async with riverside.serve(Room) as server, server.connect(token="ann") as client:
        await server.shutdown()
        assert (await client.wait_closed()).code == 1001


async def test_open_test_server_takes_a_config_settings_and_an_instance() -> None:
    from riverside_trio import Config

    room = Room()
    async with open_test_server(
        room, config=Config(max_message_size=100), transport="tcp", idle_timeout=None
    ) as server:
        assert isinstance(server, TestServer)
        assert server.handler is room
        assert (server.config.max_message_size, server.config.idle_timeout) == (100, None)
        assert server.url == f"ws://127.0.0.1:{server.server.port}/ws"
        async with server.connect(token="ann") as client:
            await client.send("x" * 200)
            assert (await client.wait_closed()).code == 1009
    with pytest.raises(ValueError, match="transport"):
        async with open_test_server(Room, transport="pigeon"):  # type: ignore[arg-type]
            pass


async def test_wait_until_sees_a_change_made_by_another_task() -> None:
    seen: list[int] = []

    async def later() -> None:
        await trio.sleep(0)
        seen.append(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        await wait_until(lambda: seen == [1])


# -- the plugin -------------------------------------------------------------------------


def test_the_plugin_is_inert_until_a_test_asks_for_its_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_nothing_is_imported_and_no_hook_is_registered(request):
            manager = request.config.pluginmanager
            plugin = manager.get_plugin("riverside_trio")
            assert plugin is not None
            assert manager.get_hookcallers(plugin) == []
            assert sorted(m for m in sys.modules if m.startswith("riverside_trio")) == []

        def test_the_fixture_imports_on_demand(riverside):
            assert type(riverside).__module__ == "riverside_trio.testing._fixture"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_fixture_works_without_trio_mode_on_marked_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from riverside_trio import Connection, Handler

        class Echo(Handler):
            async def handle_message(self, msg, conn: Connection) -> None:
                conn.send(msg)

        @pytest.mark.trio
        async def test_echo(riverside):
            async with riverside.serve(Echo) as server, server.connect() as client:
                await client.send({"hi": 1})
                assert await client.receive() == {"hi": 1}
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_readme_example_test_runs_as_written(pytester: pytest.Pytester) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Testing your handler", 1)[1].split("\n## ", 1)[0]
    blocks = {
        m.group(2): m.group(3)
        for m in re.finditer(r"```(\w+)\n# (\S+)\n(.*?)```", text, re.S)
        if m.group(2) == "chat.py" or m.group(0) in section
    }
    assert sorted(blocks) == ["chat.py", "pyproject.toml", "test_chat.py"]
    for name, code in blocks.items():
        pytester.path.joinpath(name).write_text(code, encoding="utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider")
    tests = len(re.findall(r"^async def test_", blocks["test_chat.py"], re.M))
    assert tests >= 3
    result.assert_outcomes(passed=tests)
