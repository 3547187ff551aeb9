"""A connection over ``trio.testing.memory_stream_pair``, served by ``Server.serve_stream``:
no socket between the client and the server, every rule of a real connection.

The client is the RawClient of the socket tests, on the other end of the memory stream.
Timers run on ``trio.testing.MockClock`` (the ``autojump_clock`` fixture): they move only
when every task waits, so no test sleeps.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from riverside_trio import (
    Accept,
    AuthError,
    AuthRequest,
    Connection,
    Handler,
    RawTextCodec,
    Server,
    TerminateReason,
)

from ._helpers import NO_TIMERS, RawClient, client_frame, running, upgrade_request

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Echo(Handler):
    """Echoes text; ``close <code>`` closes with it; ``flood <n>`` sends n messages at once."""

    codec = RawTextCodec()

    def __init__(self) -> None:
        self.reasons: list[TerminateReason] = []
        self.requests: list[AuthRequest] = []
        self.terminated = trio.Event()

    async def authenticate(self, req: AuthRequest) -> Accept:
        self.requests.append(req)
        if req.query.get("token") == "bad":
            raise AuthError(403, body="forbidden\n")
        return Accept(user_id="memory")

    async def handle_message(self, msg: str, conn: Connection) -> None:
        verb, _, arg = msg.partition(" ")
        if verb == "close":
            conn.close(int(arg), "asked to")
        elif verb == "flood":
            for i in range(int(arg)):
                conn.send(f"{i:06d} " + "z" * 1000)
        else:
            conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append(reason)
        self.terminated.set()


@asynccontextmanager
async def over_memory(server: Server) -> AsyncIterator[tuple[RawClient, trio.Event]]:
    """A RawClient on one end of a memory stream pair, the server on the other; the event
    is set when ``serve_stream`` returned."""
    client_end, server_end = trio.testing.memory_stream_pair()
    served = trio.Event()

    async def serve() -> None:
        try:
            await server.serve_stream(server_end, ("10.0.0.7", 4242))
        finally:
            served.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        yield RawClient(client_end), served
        await served.wait()


async def test_handshake_echo_and_a_client_close_over_a_memory_stream() -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with running(handler, **NO_TIMERS) as server, over_memory(server) as (client, done):
            status, headers, _ = await client.upgrade("/ws?x=1")
            assert status == 101
            assert headers["upgrade"].lower() == "websocket"
            for i in range(10):
                await client.send(client_frame(OP_TEXT, f"hello {i}".encode()))
                assert await client.read_frame() == (OP_TEXT, f"hello {i}".encode(), True)
            await client.send(client_frame(OP_PING, b"p"))
            assert await client.read_frame() == (OP_PONG, b"p", True)
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 4100) + b"bye"))
            assert await client.read_close() == (4100, "")
            assert await client.at_eof()
            await done.wait()
            assert server.connection_count == 0
    assert handler.requests[0].peer == ("10.0.0.7", 4242)
    assert handler.requests[0].query == {"x": "1"}
    assert handler.reasons == [TerminateReason("remote", 4100, "bye")]


async def test_a_server_close_waits_for_the_clients_close_frame() -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with running(handler, **NO_TIMERS) as server, over_memory(server) as (client, done):
            assert (await client.upgrade())[0] == 101
            await client.send(client_frame(OP_TEXT, b"close 4200"))
            assert await client.read_close() == (4200, "asked to")
            # Data after the server's close frame is dropped; the stream stays open until
            # the client's close frame.
            await client.send(client_frame(OP_TEXT, b"ignored"))
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 4200)))
            assert await client.at_eof()
            await done.wait()
    assert handler.reasons == [TerminateReason("closed", 4200, "asked to")]


async def test_plain_http_and_a_refused_upgrade_over_a_memory_stream() -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with running(handler, **NO_TIMERS) as server:
            async with over_memory(server) as (client, _done):
                await client.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await client.read_head())[0::2] == (200, b"OK")
                assert await client.at_eof()
            async with over_memory(server) as (client, _done):
                status, _, body = await client.upgrade("/ws?token=bad")
                assert (status, body) == (403, b"forbidden\n")
                assert await client.at_eof()
    assert handler.reasons == []
    assert server.metrics.rejected[403] == 1


@pytest.mark.parametrize(
    ("frame", "code", "kind"),
    [
        (client_frame(OP_TEXT, b"x" * 2000), 1009, "message_too_big"),
        (client_frame(OP_TEXT, b"\xff\xfe"), 1007, "protocol_error"),
        (client_frame(OP_TEXT, b"unmasked", mask=False), 1002, "protocol_error"),
    ],
    ids=["too-big", "bad-utf8", "unmasked"],
)
async def test_bad_frames_get_their_close_code_then_the_stream_closes(
    frame: bytes, code: int, kind: str
) -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with (
            running(handler, max_message_size=1000, **NO_TIMERS) as server,
            over_memory(server) as (client, done),
        ):
            assert (await client.upgrade())[0] == 101
            await client.send(frame)
            got_code, _ = await client.read_close()
            assert got_code == code
            assert await client.at_eof()  # no waiting for the client's close frame
            await done.wait()
    assert [(r.kind, r.code) for r in handler.reasons] == [(kind, code)]


async def test_the_transmission_limit_over_a_memory_stream() -> None:
    handler = Echo()
    settings: dict[str, Any] = {"transmission_limit": 5, "transmission_period": 3600.0}
    with trio.fail_after(10):
        async with (
            running(handler, **settings, **NO_TIMERS) as server,
            over_memory(server) as (client, done),
        ):
            assert (await client.upgrade())[0] == 101
            await client.send(b"".join(client_frame(OP_TEXT, b"m%d" % i) for i in range(20)))
            echoed = []
            while (frame := await client.read_frame())[0] == OP_TEXT:
                echoed.append(frame[1])
            assert frame[0] == OP_CLOSE
            assert struct.unpack("!H", frame[1][:2])[0] == 1008
            assert echoed == [b"m%d" % i for i in range(5)]
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            assert await client.at_eof()
            await done.wait()
    assert [r.kind for r in handler.reasons] == ["too_many_messages"]


async def test_a_burst_bigger_than_one_send_arrives_whole_and_in_order() -> None:
    """200 KB queued in one step: the writer sends it in pieces, in order."""
    handler = Echo()
    settings: dict[str, Any] = {"outbox_size": 1000, "outbox_bytes": 1 << 20}
    with trio.fail_after(20):
        async with (
            running(handler, **settings, **NO_TIMERS) as server,
            over_memory(server) as (client, done),
        ):
            assert (await client.upgrade())[0] == 101
            await client.send(client_frame(OP_TEXT, b"flood 200"))
            for i in range(200):
                op, payload, _ = await client.read_frame()
                assert (op, payload[:7]) == (OP_TEXT, b"%06d " % i)
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            assert await client.read_close() == (1000, "")
            await done.wait()


async def test_a_client_that_stops_reading_is_shed_with_1008() -> None:
    """The outbox limits hold over a stream too: the memory stream's buffer is not
    drained, the outbox fills, the client is shed; its close frame waits behind what it
    was sent, and it gets everything up to it once it reads again."""
    handler = Echo()
    settings: dict[str, Any] = {"outbox_size": 10, "outbox_bytes": 8192, "close_timeout": 60}
    with trio.fail_after(20):
        async with running(handler, **settings, **NO_TIMERS) as server:
            client_end, server_end = trio.testing.lockstep_stream_pair()  # no buffer at all
            client = RawClient(client_end)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.serve_stream, server_end)
                assert (await client.upgrade())[0] == 101
                await client.send(client_frame(OP_TEXT, b"flood 50"))
                while not server.connections()[0].closed:
                    await trio.testing.wait_all_tasks_blocked()
                frames = []
                while (frame := await client.read_frame())[0] == OP_TEXT:
                    frames.append(frame[1][:6])
                assert struct.unpack("!H", frame[1][:2])[0] == 1008
                assert frames == [b"%06d" % i for i in range(len(frames))]
                assert 0 < len(frames) < 50
                await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1008)))
                assert await client.at_eof()
    assert [r.kind for r in handler.reasons] == ["slow_consumer"]


async def test_handshake_timeout_over_a_memory_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Echo()
    async with (
        running(handler, handshake_timeout=10.0, **NO_TIMERS) as server,
        over_memory(server) as (client, done),
    ):
        await client.send(upgrade_request()[:20])  # never finished
        start = trio.current_time()
        status, _, _ = await client.read_head()
        assert status == 408
        assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)
        await done.wait()


async def test_idle_timeout_over_a_memory_stream(autojump_clock: trio.testing.MockClock) -> None:
    handler = Echo()
    async with (
        running(handler, idle_timeout=30.0, ping_interval=None) as server,
        over_memory(server) as (client, done),
    ):
        assert (await client.upgrade())[0] == 101
        start = trio.current_time()
        assert await client.read_close() == (1000, "idle_timeout")
        assert 30.0 <= trio.current_time() - start <= 33.0  # the sweeper's resolution
        await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        assert await client.at_eof()
        await done.wait()
    assert [r.kind for r in handler.reasons] == ["idle_timeout"]


async def test_serve_stream_needs_a_running_server() -> None:
    server = Server(Echo())
    _client_end, server_end = trio.testing.memory_stream_pair()
    with pytest.raises(RuntimeError, match="not running"):
        await server.serve_stream(server_end)
