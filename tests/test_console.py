"""``riverside-trio client URL``, the console client, run as a real subprocess against a
real server: lines written to its standard input, what it prints read from its output."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from riverside_trio import (
    Accept,
    AuthError,
    AuthRequest,
    CloseConnection,
    Connection,
    RequestError,
    RPCHandler,
    request,
    signal,
)

from ._helpers import NO_TIMERS, REAL_TIMEOUT, running

COMMAND = [sys.executable, "-m", "riverside_trio", "client"]


class App(RPCHandler):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, str]] = []

    async def authenticate(self, req: AuthRequest) -> Accept:
        if req.bearer_token != "tok":
            raise AuthError(403, body="bad token\n")
        return Accept(user_id="console", state={"room": req.headers.get("x-room")})

    @request("add")
    async def add(self, payload: Any, conn: Connection) -> Any:
        return payload[0] + payload[1]

    @request("nope")
    async def nope(self, payload: Any, conn: Connection) -> Any:
        raise RequestError("not_found", "no such thing")

    @request("ask")
    async def ask(self, payload: Any, conn: Connection) -> Any:
        try:
            return await conn.request("double", payload, timeout=30)
        except RequestError as exc:
            return f"the client said {exc.code}"

    @signal("note")
    async def note(self, payload: Any, conn: Connection) -> None:
        conn.send({"noted": payload})

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        self.seen.append((msg, conn.state["room"]))
        if msg == {"bye": True}:
            raise CloseConnection(4001, "asked to leave")
        conn.send({"echo": msg})


class Lines:
    """The lines a stream of the subprocess prints, as they come."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[str](1000)
        self.all: list[str] = []

    async def collect(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8", "replace")
                self.all.append(line)
                await self.send.send(line)
        self.send.close()

    async def expect(self, wanted: str) -> str:
        """Skip lines until one starts with ``wanted``; return it."""
        with trio.fail_after(REAL_TIMEOUT):
            async for line in self.receive:
                if line.startswith(wanted):
                    return line
        raise AssertionError(f"no line starting {wanted!r}; printed: {self.all}")


class Console:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.out = Lines()
        self.err = Lines()

    async def type(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def exit_status(self) -> int:
        with trio.fail_after(REAL_TIMEOUT):
            return await self.process.wait()


@asynccontextmanager
async def console(url: str, *args: str) -> AsyncIterator[Console]:
    process = await trio.lowlevel.open_process(
        [*COMMAND, url, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    con = Console(process)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(con.out.collect, process.stdout)
            nursery.start_soon(con.err.collect, process.stderr)
            yield con
            await con.exit_status()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def run_console(url: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    with trio.fail_after(REAL_TIMEOUT):
        done = await trio.run_process(
            [*COMMAND, url, *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_console_sends_requests_and_signals_and_shows_what_arrives() -> None:
    app = App()
    async with (
        running(app, **NO_TIMERS) as server,
        console(server.url, "--token", "tok", "-H", "X-Room: blue") as con,
    ):
        await con.err.expect(f"connected to {server.url}")
        await con.type('{"hi": 1}')
        assert await con.out.expect("<") == '< {"echo": {"hi": 1}}'
        assert app.seen == [({"hi": 1}, "blue")]
        await con.type("/request add [2, 3]")
        assert await con.out.expect("<") == "< reply 1 (add): 5"
        await con.type("/request nope")
        assert await con.out.expect("<") == "< error 2 (nope): not_found: no such thing"
        await con.type('/signal note {"n": 3}')
        assert await con.out.expect("<") == '< {"noted": {"n": 3}}'
        # pushes from the server, whenever they come
        (conn,) = server.connections()
        conn.signal("news", {"x": 1})
        assert await con.out.expect("<") == '< signal news: {"x": 1}'
        assert server.deliver_user("console", ["pushed"]) == 1
        assert await con.out.expect("<") == '< ["pushed"]'
        # a request from the server: the console cannot answer, and says so
        await con.type("/request ask 2")
        assert await con.out.expect("<") == "< request 1 double: 2 (answered unknown_name)"
        assert await con.out.expect("<") == '< reply 3 (ask): "the client said unknown_name"'
        # local mistakes are reported and nothing is sent
        await con.type("/request add [1,")
        assert (await con.err.expect("not sent")).startswith("not sent: not JSON")
        await con.type("/frobnicate")
        await con.err.expect("unknown command '/frobnicate'")
        await con.type("/quit")
        assert await con.exit_status() == 0
    assert await con.err.expect("connection closed") == "connection closed: 1000"
    assert len(app.seen) == 1


async def test_a_close_by_the_server_or_the_end_of_input_ends_the_console() -> None:
    app = App()
    async with running(app, **NO_TIMERS) as server:
        async with console(server.url, "--token", "tok") as con:
            await con.type('{"bye": true}')
            assert await con.exit_status() == 1
        assert con.err.all[-1] == "connection closed: 4001 asked to leave"
        status, _, err = await run_console(server.url, "--token", "tok", stdin=b"[1]\n")
        assert (status, err.splitlines()[-1]) == (0, "connection closed: 1000")
    assert [msg for msg, _ in app.seen] == [{"bye": True}, [1]]


async def test_a_refused_or_impossible_connection_is_one_line_and_status_2() -> None:
    async with running(App(), **NO_TIMERS) as server:
        status, out, err = await run_console(server.url, "--token", "wrong")
        assert (status, out) == (2, "")
        assert err == (
            f"riverside-trio: error: {server.url} refused the connection with status 403: "
            "bad token\n"
        )
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, out, err = await run_console(f"ws://127.0.0.1:{port}/ws")
    assert (status, out) == (2, "")
    assert err.startswith(f"riverside-trio: error: cannot connect to ws://127.0.0.1:{port}/ws: ")
    assert "refused" in err.lower() and len(err.splitlines()) == 1
    status, _, err = await run_console("http://127.0.0.1/ws")
    assert status == 2 and "URL: expected ws://" in err
    status, _, err = await run_console(f"ws://127.0.0.1:{port}/ws", "--header", "no colon")
    assert status == 2 and "--header: expected 'NAME: VALUE'" in err
    assert "Traceback" not in err
