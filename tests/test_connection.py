"""One connection over real sockets: RFC 6455 framing, close codes, limits, timers, callbacks.

Every close test checks both sides: the close frame the client receives and the
TerminateReason that ``Handler.terminate`` gets, exactly once per upgraded connection.
Hostile frames are written by hand (RawClient); trio-websocket and the ``websockets``
library (its sync client, in a worker thread) are two independent real clients.
"""

from __future__ import annotations

import itertools
import secrets
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
import trio
import websockets.exceptions
from trio.testing import MockClock
from trio_websocket import ConnectionClosed as WSClosed
from websockets.sync.client import connect as ws_connect

from riverside_trio import (
    Accept,
    AuthRequest,
    CloseConnection,
    Connection,
    ConnectionClosed,
    Handler,
    RawCodec,
    Server,
    TerminateReason,
)

from ._helpers import (
    NO_TIMERS,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    advance,
    client_frame,
    fail_after_real,
    running,
    settle,
    upgrade_request,
    wait_until,
    ws_open,
)


class Scripted(Handler):
    """Echoes text and binary as they came; a few text commands act instead.

    The user id comes from the ``user`` query parameter. Every terminate is recorded
    with its user id, so tests can check it ran exactly once per connection.
    """

    codec = RawCodec()

    def __init__(self, *, fail_init: bool = False, fail_terminate: bool = False) -> None:
        self.fail_init = fail_init
        self.fail_terminate = fail_terminate
        self.messages: list[str | bytes] = []
        self.reasons: list[tuple[str, TerminateReason]] = []
        self.terminated = trio.Event()
        self.opened = trio.Event()
        self.conns: dict[str, Connection] = {}
        self.late: Any = None

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query.get("user") or secrets.token_hex(8))

    async def init(self, conn: Connection) -> None:
        self.conns[conn.user_id] = conn
        self.opened.set()
        if self.fail_init:
            raise RuntimeError("init broke")

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        self.messages.append(msg)
        if msg == "stop":
            raise CloseConnection(4000, "bye")
        if msg == "stop-long":
            raise CloseConnection(4000, "é" * 100)
        if msg == "stop-invalid-code":
            raise CloseConnection(1005, "no status is not sendable")
        if msg == "close":
            conn.close(4001, "closing")
        elif msg == "close-invalid-code":
            try:
                conn.close(1006)
            except ValueError:
                conn.send("ValueError")
        elif msg == "boom":
            raise RuntimeError("handler broke")
        elif msg == "close-then-send":
            conn.close(4001, "closing")
            try:
                conn.send("late")
            except ConnectionClosed as exc:
                self.late = exc
        elif msg == "close-then-deliver":
            conn.close(4001, "closing")
            self.late = conn.deliver_user(conn.user_id, "late")
        else:
            conn.send(msg)

    async def handle_info(self, info: Any, conn: Connection) -> None:
        if info == "stop":
            raise CloseConnection(4002, "info says stop")
        if info == "boom":
            raise RuntimeError("handle_info broke")
        conn.send(f"info {info}")

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append((conn.user_id, reason))
        self.terminated.set()
        if self.fail_terminate:
            raise RuntimeError("terminate broke")

    def reasons_of(self, user: str) -> list[TerminateReason]:
        return [r for u, r in self.reasons if u == user]

    def only_reason(self) -> TerminateReason:
        """The one TerminateReason of the one connection a test opened."""
        assert len(self.reasons) == 1, self.reasons
        return self.reasons[0][1]


def close_frame(code: int | None = None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return client_frame(OP_CLOSE, payload)


def text(data: str) -> bytes:
    return client_frame(OP_TEXT, data.encode())


@asynccontextmanager
async def upgraded(server: Server, user: str | None = None) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(server)
    try:
        status, _, _ = await client.upgrade("/ws" + (f"?user={user}" if user else ""))
        assert status == 101
        yield client
    finally:
        await client.aclose()


async def expect_close_then_eof(client: RawClient) -> tuple[int | None, str]:
    """The next frame is a close frame, and the server closes TCP right after it."""
    op, payload, fin = await client.read_frame()
    assert (op, fin) == (OP_CLOSE, True), (op, payload)
    with pytest.raises(EOFError):
        await client.read_frame()
    if not payload:
        return None, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


async def answer_close(client: RawClient) -> None:
    """Complete a closing handshake the server started; the server then closes TCP."""
    await client.send(close_frame(1000))
    with pytest.raises(EOFError):
        await client.read_frame()


def ws_url(server: Server, user: str) -> str:
    return f"{server.url}?user={user}"


# ------------------------------------------------------------------ echo and framing


async def test_text_and_binary_echo_over_trio_websocket() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with ws_open(ws_url(server, "a")) as ws:
                await ws.send_message("héllo")
                assert await ws.get_message() == "héllo"
                await ws.send_message(b"\x00\xff")
                assert await ws.get_message() == b"\x00\xff"
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("remote", 1000, "")


async def test_text_and_binary_echo_over_websockets_library() -> None:
    handler = Scripted()

    def client(url: str) -> list[Any]:
        with ws_connect(url, proxy=None, open_timeout=5, close_timeout=5) as ws:
            ws.send("héllo")
            first = ws.recv(timeout=5)
            ws.send(b"\x00\xff")
            second = ws.recv(timeout=5)
        return [first, second]

    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(10):
            got = await trio.to_thread.run_sync(client, ws_url(server, "a"))
            await handler.terminated.wait()
    assert got == ["héllo", b"\x00\xff"]
    assert handler.only_reason() == TerminateReason("remote", 1000, "")


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))])
async def test_ping_is_answered_with_a_pong_carrying_the_same_payload(payload: bytes) -> None:
    async with running(Scripted(), **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(client_frame(OP_PING, payload))
            assert await client.read_frame() == (OP_PONG, payload, True)


async def test_fragmented_text_is_reassembled_with_a_character_split_across_fragments() -> None:
    handler = Scripted()
    data = "hé€😀!".encode()
    # cut inside "é", inside "€" and inside "😀"
    cuts = [0, 2, 5, 9, len(data)]
    frames = [
        client_frame(OP_TEXT if i == 0 else OP_CONT, data[a:b], fin=b == len(data))
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
    ]
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            for frame in frames:
                await client.send(frame)
            assert await client.read_frame() == (OP_TEXT, data, True)
    assert handler.messages == ["hé€😀!"]


async def test_fragmented_binary_is_reassembled() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(client_frame(OP_BINARY, b"\x00\x01", fin=False))
            await client.send(client_frame(OP_CONT, b"", fin=False))
            await client.send(client_frame(OP_CONT, b"\x02\xff"))
            assert await client.read_frame() == (OP_BINARY, b"\x00\x01\x02\xff", True)
    assert handler.messages == [b"\x00\x01\x02\xff"]


async def test_control_frames_between_fragments_are_answered_and_the_message_stays_whole() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(
                client_frame(OP_TEXT, b"frag", fin=False)
                + client_frame(OP_PING, b"p1")
                + client_frame(OP_CONT, b"men", fin=False)
                + client_frame(OP_PONG, b"unsolicited")
                + client_frame(OP_PING, b"p2")
                + client_frame(OP_CONT, b"ted")
            )
            assert await client.read_frame() == (OP_PONG, b"p1", True)
            assert await client.read_frame() == (OP_PONG, b"p2", True)
            assert await client.read_frame() == (OP_TEXT, b"fragmented", True)
    assert handler.messages == ["fragmented"]


async def test_frames_pipelined_in_one_write_are_all_handled_in_order() -> None:
    handler = Scripted()
    count = 300
    async with (
        running(handler, transmission_limit=0, **NO_TIMERS) as server,
        upgraded(server) as client,
    ):
        with trio.fail_after(5):
            await client.send(b"".join(text(f"m{i}") for i in range(count)))
            for i in range(count):
                assert await client.read_frame() == (OP_TEXT, f"m{i}".encode(), True)
    assert handler.messages == [f"m{i}" for i in range(count)]


async def test_handshake_and_first_frames_in_one_write_are_all_handled() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server:
        client = await RawClient.connect(server)
        try:
            with trio.fail_after(5):
                await client.send(upgrade_request() + text("one") + text("two"))
                status, _, _ = await client.read_head()
                assert status == 101
                assert await client.read_frame() == (OP_TEXT, b"one", True)
                assert await client.read_frame() == (OP_TEXT, b"two", True)
        finally:
            await client.aclose()


async def test_one_mebibyte_messages_round_trip_over_trio_websocket() -> None:
    big_text = "x€" * (1 << 18)  # 1 MiB of UTF-8
    big_binary = secrets.token_bytes(1 << 20)
    async with running(Scripted(), max_message_size=4 << 20, **NO_TIMERS) as server:
        with trio.fail_after(10):
            async with ws_open(ws_url(server, "a"), max_message_size=8 << 20) as ws:
                await ws.send_message(big_text)
                assert await ws.get_message() == big_text
                await ws.send_message(big_binary)
                assert await ws.get_message() == big_binary


async def test_one_mebibyte_messages_round_trip_over_websockets_library() -> None:
    big_text = "x€" * (1 << 18)
    big_binary = secrets.token_bytes(1 << 20)

    def client(url: str) -> list[Any]:
        with ws_connect(url, proxy=None, open_timeout=5, close_timeout=5, max_size=None) as ws:
            ws.send(big_text)
            first = ws.recv(timeout=5)
            ws.send(big_binary)
            second = ws.recv(timeout=5)
        return [first, second]

    async with running(Scripted(), max_message_size=4 << 20, **NO_TIMERS) as server:
        with trio.fail_after(10):
            got = await trio.to_thread.run_sync(client, ws_url(server, "a"))
    assert got == [big_text, big_binary]


# ------------------------------------------------------------------ closing on purpose


async def test_handler_raising_close_connection_closes_with_its_code_and_reason_stop() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with ws_open(ws_url(server, "a")) as ws:
                await ws.send_message("stop")
                with pytest.raises(WSClosed) as info:
                    await ws.get_message()
                assert (info.value.reason.code, info.value.reason.reason) == (4000, "bye")
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("stop", 4000, "bye")


async def test_close_connection_seen_by_websockets_library_client() -> None:
    handler = Scripted()

    def client(url: str) -> tuple[int | None, str | None]:
        with ws_connect(url, proxy=None, open_timeout=5, close_timeout=5) as ws:
            ws.send("stop")
            with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
                ws.recv(timeout=5)
            rcvd = info.value.rcvd
            return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)

    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(10):
            got = await trio.to_thread.run_sync(client, ws_url(server, "a"))
            await handler.terminated.wait()
    assert got == (4000, "bye")
    assert handler.only_reason() == TerminateReason("stop", 4000, "bye")


async def test_close_reason_longer_than_a_close_frame_is_cut_at_a_character_boundary() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(text("stop-long"))
            code, reason = await client.read_close()
            await answer_close(client)
    assert code == 4000
    assert reason == "é" * 61  # 122 bytes: the 62nd "é" would pass 123
    assert handler.only_reason().kind == "stop"


async def test_close_connection_with_a_code_a_server_may_not_send_closes_1011() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(text("stop-invalid-code"))
            code, _ = await client.read_close()
            await answer_close(client)
            await handler.terminated.wait()
    assert code == 1011
    assert handler.only_reason().kind == "internal_error"


async def test_conn_close_sends_its_code_and_terminate_gets_closed() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with ws_open(ws_url(server, "a")) as ws:
                await ws.send_message("close")
                with pytest.raises(WSClosed) as info:
                    await ws.get_message()
                assert (info.value.reason.code, info.value.reason.reason) == (4001, "closing")
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("closed", 4001, "closing")


async def test_conn_close_with_a_reserved_code_raises_value_error_and_stays_open() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(text("close-invalid-code"))
            assert await client.read_frame() == (OP_TEXT, b"ValueError", True)
            await client.send(text("still open"))
            assert await client.read_frame() == (OP_TEXT, b"still open", True)


async def test_send_after_close_raises_connection_closed() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(text("close-then-send"))
            code, _ = await client.read_close()
            await answer_close(client)
    assert code == 4001
    assert isinstance(handler.late, ConnectionClosed)
    assert handler.late.code == 4001


async def test_no_data_frame_follows_the_close_frame_when_delivering_after_close() -> None:
    """RFC 6455 5.5.1: after sending a close frame, an endpoint sends no more data frames."""
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server, "a") as client:
        with trio.fail_after(5):
            await client.send(text("close-then-deliver"))
            op, payload, _ = await client.read_frame()
            assert op == OP_CLOSE
            assert struct.unpack("!H", payload[:2])[0] == 4001
            await client.send(close_frame(1000))
            frames = []
            while True:
                try:
                    frames.append(await client.read_frame())
                except EOFError:
                    break
    assert frames == []
    assert handler.late == 0  # the closing connection was not counted as reached


# ------------------------------------------------------------------ the client closes


async def test_client_close_is_echoed_and_terminate_gets_remote_with_code_and_reason() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(close_frame(1000, b"done"))
            code, _ = await expect_close_then_eof(client)
            await handler.terminated.wait()
    assert code == 1000
    assert handler.only_reason() == TerminateReason("remote", 1000, "done")


async def test_client_close_with_an_application_code_is_echoed() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(close_frame(4321, b"app"))
            code, _ = await expect_close_then_eof(client)
    assert code == 4321
    assert handler.only_reason() == TerminateReason("remote", 4321, "app")


async def test_client_close_over_websockets_library_is_echoed() -> None:
    handler = Scripted()

    def client(url: str) -> tuple[int, str]:
        with ws_connect(url, proxy=None, open_timeout=5, close_timeout=5) as ws:
            ws.close(1000, "done")
            return ws.close_code, ws.close_reason

    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(10):
            got = await trio.to_thread.run_sync(client, ws_url(server, "a"))
            await handler.terminated.wait()
    assert got[0] == 1000
    assert handler.only_reason() == TerminateReason("remote", 1000, "done")


async def test_client_close_without_payload_is_answered_with_an_empty_close() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(close_frame())
            assert await client.read_frame() == (OP_CLOSE, b"", True)
            with pytest.raises(EOFError):
                await client.read_frame()
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("remote", 1005, "")


async def test_tcp_drop_terminates_with_remote_1006() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with upgraded(server) as client:
                await client.send(text("hi"))
                assert await client.read_frame() == (OP_TEXT, b"hi", True)
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("remote", 1006, "")


async def test_tcp_drop_in_the_middle_of_a_fragmented_message_terminates_with_1006() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with upgraded(server) as client:
                await client.send(client_frame(OP_TEXT, b"half", fin=False))
                await client.send(client_frame(OP_PING, b"sync"))
                assert await client.read_frame() == (OP_PONG, b"sync", True)
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("remote", 1006, "")
    assert handler.messages == []


# ------------------------------------------------------------------ timers


async def test_idle_timeout_closes_1000_idle_timeout(mock_clock: MockClock) -> None:
    handler = Scripted()
    # idle_timeout 1 s: the sweeper ticks every 0.1 s
    async with running(handler, idle_timeout=1.0, ping_interval=None) as server:
        with fail_after_real():
            async with upgraded(server, "a") as client:
                await handler.opened.wait()
                await advance(mock_clock, 0.9, step=0.05)
                assert await client.received_nothing()
                await advance(mock_clock, 0.4, step=0.05)  # the sweeper may see it a tick late
                assert await client.read_close() == (1000, "idle_timeout")
                await answer_close(client)
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("idle_timeout", 1000, "idle_timeout")
    assert server.metrics.disconnects["idle_timeout"] == 1


async def test_a_client_that_keeps_sending_is_not_idle(mock_clock: MockClock) -> None:
    handler = Scripted()
    async with running(handler, idle_timeout=1.0, ping_interval=None) as server:
        with fail_after_real():
            async with upgraded(server, "a") as client:
                # a message every 0.5 s for 10 s: ten idle timeouts, none of them idle
                for i in range(20):
                    await advance(mock_clock, 0.5, step=0.05)
                    await client.send(text(f"m{i}"))
                    assert await client.read_frame() == (OP_TEXT, f"m{i}".encode(), True)
                assert handler.reasons == []
                # then silence: closed one idle timeout (and at most a tick or two) later
                await advance(mock_clock, 0.9, step=0.05)
                assert await client.received_nothing()
                await advance(mock_clock, 0.4, step=0.05)  # the sweeper may see it a tick late
                assert await client.read_close() == (1000, "idle_timeout")
                await answer_close(client)
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("idle_timeout", 1000, "idle_timeout")


async def test_max_connection_age_closes_an_active_connection_1000_over_age(
    mock_clock: MockClock,
) -> None:
    handler = Scripted()
    settings = {"max_connection_age": 1.0, "transmission_limit": 0}
    async with running(handler, **settings, **NO_TIMERS) as server:
        with fail_after_real():
            async with upgraded(server, "a") as client:
                # busy all along: a round trip every 0.05 s
                for i in range(18):
                    await client.send(text(f"busy{i}"))
                    assert await client.read_frame() == (OP_TEXT, f"busy{i}".encode(), True)
                    await advance(mock_clock, 0.05)
                assert await client.received_nothing()
                await advance(mock_clock, 0.4, step=0.05)
                assert await client.read_close() == (1000, "over_age")
                await answer_close(client)
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("over_age", 1000, "over_age")
    assert server.metrics.disconnects["over_age"] == 1


async def test_keepalive_closes_1011_when_pings_are_not_answered(mock_clock: MockClock) -> None:
    handler = Scripted()
    settings = {"ping_interval": 1.0, "ping_timeout": 2.0, "idle_timeout": None}
    async with running(handler, **settings) as server, upgraded(server) as client:
        with fail_after_real():
            await handler.opened.wait()
            await advance(mock_clock, 0.9, step=0.05)
            assert await client.received_nothing()
            await advance(mock_clock, 0.3, step=0.05)  # t = 1.2
            assert await client.read_frame() == (OP_PING, b"riverside", True)
            # no pong: the server waits ping_timeout after the ping (sent at 1.0 to 1.2)
            await advance(mock_clock, 1.7, step=0.05)  # t = 2.9
            assert await client.received_nothing()
            await advance(mock_clock, 0.5, step=0.05)  # t = 3.4
            assert await client.read_close() == (1011, "keepalive_timeout")
            await answer_close(client)
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("keepalive_timeout", 1011, "keepalive_timeout")
    assert server.metrics.disconnects["keepalive_timeout"] == 1


async def test_keepalive_keeps_a_client_that_answers_pings_open(mock_clock: MockClock) -> None:
    handler = Scripted()
    settings = {"ping_interval": 1.0, "ping_timeout": 2.0, "idle_timeout": None}
    async with running(handler, **settings) as server, upgraded(server) as client:
        with fail_after_real():
            await handler.opened.wait()
            # five pings, each answered within ping_timeout (2 s) of being sent
            for pongs in range(1, 6):
                await advance(mock_clock, 1.2, step=0.05)  # a ping is due within this
                op, payload, _ = await client.read_frame()
                assert op == OP_PING, (pongs, payload)
                await advance(mock_clock, 0.5, step=0.05)  # at most 1.7 s after the ping
                await client.send(client_frame(OP_PONG, payload))
                await wait_until(lambda: server.metrics.incoming_control["pong"] == pongs)  # noqa: B023
            await client.send(text("still here"))
            assert await client.read_frame() == (OP_TEXT, b"still here", True)
            assert handler.reasons == []
            await client.send(close_frame(1000))
            assert await client.read_close() == (1000, "")
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("remote", 1000, "")


async def test_server_shutdown_closes_every_connection_1001_shutdown() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with (
                ws_open(ws_url(server, "a")) as ws,
                upgraded(server, "b") as raw,
            ):
                await ws.send_message("sync")
                assert await ws.get_message() == "sync"
                server.shutdown()
                with pytest.raises(WSClosed) as info:
                    await ws.get_message()
                assert info.value.reason.code == 1001
                code, _ = await raw.read_close()
                assert code == 1001
                await answer_close(raw)
            await server.wait_stopped()
    for user in ("a", "b"):
        reasons = handler.reasons_of(user)
        assert len(reasons) == 1
        assert (reasons[0].kind, reasons[0].code) == ("shutdown", 1001)


# ------------------------------------------------------------------ limits


async def test_transmission_limit_refills_over_transmission_period(mock_clock: MockClock) -> None:
    handler = Scripted()
    # 3 messages per 3 s: one more message each second
    settings = {"transmission_limit": 3, "transmission_period": 3.0}
    async with (
        running(handler, **settings, **NO_TIMERS) as server,
        upgraded(server) as client,
        fail_after_real(),
    ):
        for burst in ("a", "b"):
            await client.send(b"".join(text(f"{burst}{i}") for i in range(3)))
            for i in range(3):
                assert await client.read_frame() == (OP_TEXT, f"{burst}{i}".encode(), True)
            await advance(mock_clock, 3.0)  # full again
        await advance(mock_clock, 100.0)  # never more than full
        await client.send(b"".join(text(f"c{i}") for i in range(3)))
        for i in range(3):
            assert await client.read_frame() == (OP_TEXT, f"c{i}".encode(), True)
        await advance(mock_clock, 1.5)  # one and a half tokens
        await client.send(text("d0"))
        assert await client.read_frame() == (OP_TEXT, b"d0", True)
        await client.send(text("d1"))  # half a token left: one too many
        assert await client.read_close() == (1008, "too_many_messages")
        await answer_close(client)
        await handler.terminated.wait()
    assert handler.messages == ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2", "d0"]
    assert handler.only_reason() == TerminateReason("too_many_messages", 1008, "too_many_messages")


async def test_transmission_limit_closes_1008_on_the_message_over_the_limit() -> None:
    handler = Scripted()
    async with (
        running(handler, transmission_limit=3, transmission_period=60, **NO_TIMERS) as server,
        upgraded(server) as client,
    ):
        with trio.fail_after(5):
            await client.send(b"".join(text(f"m{i}") for i in range(4)))
            for i in range(3):
                assert await client.read_frame() == (OP_TEXT, f"m{i}".encode(), True)
            code, _ = await client.read_close()
            await client.send(text("dropped while closing"))
            await answer_close(client)
            await handler.terminated.wait()
    assert code == 1008
    assert handler.messages == ["m0", "m1", "m2"]
    reason = handler.only_reason()
    assert (reason.kind, reason.code) == ("too_many_messages", 1008)


async def test_slow_consumer_is_shed_cut_off_after_close_timeout_and_others_are_served(
    mock_clock: MockClock,
) -> None:
    handler = Scripted()
    blob = b"\x00" * (256 << 10)
    settings = {"outbox_size": 4, "outbox_bytes": 1 << 20, "close_timeout": 1.0}
    async with running(handler, **settings, **NO_TIMERS) as server:
        with fail_after_real():
            async with (
                ws_open(ws_url(server, "fast")) as fast,
                upgraded(server, "slow"),  # never reads
            ):
                await fast.send_message("before")
                assert await fast.get_message() == "before"
                sent = 0
                while server.deliver_user("slow", blob):  # 0 once it is shed
                    sent += 1
                    await settle()
                assert 4 <= sent < 100
                # shed: its close frame waits behind what it does not read, for close_timeout
                await advance(mock_clock, 0.8, step=0.05)
                assert handler.reasons_of("slow") == []
                await advance(mock_clock, 0.4, step=0.05)
                await wait_until(lambda: bool(handler.reasons_of("slow")))
                await fast.send_message("after")
                assert await fast.get_message() == "after"
                assert handler.reasons_of("fast") == []
    assert handler.reasons_of("slow") == [TerminateReason("slow_consumer", 1008, "slow_consumer")]
    assert server.metrics.disconnects["slow_consumer"] == 1


async def test_message_of_exactly_max_message_size_is_accepted() -> None:
    handler = Scripted()
    async with (
        running(handler, max_message_size=1000, **NO_TIMERS) as server,
        upgraded(server) as client,
    ):
        with trio.fail_after(5):
            await client.send(client_frame(OP_BINARY, b"b" * 1000))
            assert await client.read_frame() == (OP_BINARY, b"b" * 1000, True)
            await client.send(text("é" * 500))  # 1000 bytes of UTF-8
            assert await client.read_frame() == (OP_TEXT, "é".encode() * 500, True)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(client_frame(OP_BINARY, b"b" * 1001), id="binary-frame"),
        pytest.param(client_frame(OP_TEXT, "é".encode() * 501), id="text-frame-utf8-bytes"),
        pytest.param(
            client_frame(OP_BINARY, b"b" * 400, fin=False)
            + client_frame(OP_CONT, b"b" * 400, fin=False)
            + client_frame(OP_CONT, b"b" * 400),
            id="fragmented",
        ),
        pytest.param(
            client_frame(OP_TEXT, b"t" * 600, fin=False) + client_frame(OP_CONT, b"t" * 401),
            id="fragmented-text",
        ),
    ],
)
async def test_message_over_max_message_size_closes_1009(frames: bytes) -> None:
    handler = Scripted()
    async with (
        running(handler, max_message_size=1000, **NO_TIMERS) as server,
        upgraded(server) as client,
    ):
        with trio.fail_after(5):
            await client.send(frames)
            code, _ = await expect_close_then_eof(client)
            await handler.terminated.wait()
    assert code == 1009
    assert handler.messages == []
    reason = handler.only_reason()
    assert (reason.kind, reason.code) == ("message_too_big", 1009)


async def test_frame_header_declaring_too_big_a_payload_closes_1009_at_once() -> None:
    """The declared length already says the message is too big: no need to wait for it."""
    handler = Scripted()
    async with (
        running(handler, max_message_size=1000, **NO_TIMERS) as server,
        upgraded(server) as client,
    ):
        with trio.fail_after(5):
            await client.send(client_frame(OP_BINARY, b"b" * 10, length=1 << 20))
            code, _ = await expect_close_then_eof(client)
            await handler.terminated.wait()
    assert code == 1009
    reason = handler.only_reason()
    assert (reason.kind, reason.code) == ("message_too_big", 1009)


# ------------------------------------------------------------------ protocol violations


def _close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


PROTOCOL_ERRORS = [
    pytest.param(client_frame(OP_TEXT, b"hi", mask=False), 1002, id="unmasked"),
    pytest.param(client_frame(0x3, b""), 1002, id="reserved-opcode-3"),
    pytest.param(client_frame(0xB, b""), 1002, id="reserved-opcode-0xB"),
    pytest.param(client_frame(OP_TEXT, b"hi", rsv=4), 1002, id="rsv1"),
    pytest.param(client_frame(OP_TEXT, b"hi", rsv=2), 1002, id="rsv2"),
    pytest.param(client_frame(OP_TEXT, b"hi", rsv=1), 1002, id="rsv3"),
    pytest.param(client_frame(OP_PING, b"", fin=False), 1002, id="fragmented-ping"),
    pytest.param(client_frame(OP_PING, b"p" * 126), 1002, id="ping-over-125"),
    pytest.param(client_frame(OP_CLOSE, b"c" * 126), 1002, id="close-over-125"),
    pytest.param(client_frame(OP_CONT, b"x"), 1002, id="continuation-without-start"),
    pytest.param(
        client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"),
        1002,
        id="new-message-inside-fragmented-one",
    ),
    pytest.param(
        client_frame(OP_BINARY, b"a", fin=False) + client_frame(OP_TEXT, b"b"),
        1002,
        id="text-inside-fragmented-binary",
    ),
    pytest.param(client_frame(OP_CLOSE, b"\x03"), 1002, id="close-1-byte-payload"),
    pytest.param(client_frame(OP_CLOSE, _close_payload(1005)), 1002, id="close-code-1005"),
    pytest.param(client_frame(OP_CLOSE, _close_payload(1006)), 1002, id="close-code-1006"),
    pytest.param(client_frame(OP_CLOSE, _close_payload(1015)), 1002, id="close-code-1015"),
    pytest.param(client_frame(OP_CLOSE, _close_payload(999)), 1002, id="close-code-999"),
    pytest.param(client_frame(OP_CLOSE, _close_payload(2000)), 1002, id="close-code-2000"),
    pytest.param(client_frame(OP_CLOSE, _close_payload(5000)), 1002, id="close-code-5000"),
    pytest.param(
        client_frame(OP_CLOSE, _close_payload(1000, b"\xff\xfe")), 1007, id="close-reason-bad-utf8"
    ),
    pytest.param(client_frame(OP_TEXT, b"ok\xff"), 1007, id="text-bad-utf8"),
    pytest.param(client_frame(OP_TEXT, b"\xed\xa0\x80"), 1007, id="text-surrogate"),
    pytest.param(client_frame(OP_TEXT, "é".encode()[:1]), 1007, id="text-ends-mid-character"),
    pytest.param(
        client_frame(OP_TEXT, b"fine", fin=False) + client_frame(OP_CONT, b"\xc3\x28"),
        1007,
        id="fragment-bad-utf8",
    ),
]


@pytest.mark.parametrize(("frames", "expected"), PROTOCOL_ERRORS)
async def test_protocol_violation_sends_its_close_code_then_closes_tcp(
    frames: bytes, expected: int
) -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(frames)
            code, _ = await expect_close_then_eof(client)
            await handler.terminated.wait()
    assert code == expected
    assert handler.messages == []
    reason = handler.only_reason()
    assert (reason.kind, reason.code) == ("protocol_error", expected)


async def test_messages_after_a_protocol_violation_are_not_handled() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(text("before") + client_frame(0x3, b"") + text("after"))
            assert await client.read_frame() == (OP_TEXT, b"before", True)
            code, _ = await expect_close_then_eof(client)
    assert code == 1002
    assert handler.messages == ["before"]


async def test_protocol_violation_after_the_server_started_closing_still_ends_the_connection() -> (
    None
):
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(text("close"))
            code, _ = await client.read_close()
            assert code == 4001
            await client.send(client_frame(OP_TEXT, b"x", mask=False))
            with pytest.raises(EOFError):
                await client.read_frame()
            await handler.terminated.wait()
    assert handler.only_reason() == TerminateReason("closed", 4001, "closing")


# ------------------------------------------------------------------ handler failures


async def test_handle_message_exception_closes_1011_and_other_connections_go_on() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with (
                ws_open(ws_url(server, "ok")) as ok,
                ws_open(ws_url(server, "bad")) as bad,
            ):
                await bad.send_message("boom")
                with pytest.raises(WSClosed) as info:
                    await bad.get_message()
                assert info.value.reason.code == 1011
                await ok.send_message("fine")
                assert await ok.get_message() == "fine"
                assert handler.reasons_of("ok") == []
    assert handler.reasons_of("bad") == [TerminateReason("internal_error", 1011, "internal_error")]
    assert len(handler.reasons_of("ok")) == 1


async def test_init_exception_closes_1011_init_failed() -> None:
    handler = Scripted(fail_init=True)
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            code, _ = await client.read_close()
            await answer_close(client)
            await handler.terminated.wait()
    assert code == 1011
    reason = handler.only_reason()
    assert (reason.kind, reason.code) == ("init_failed", 1011)


async def test_handle_info_runs_for_posted_infos_and_can_close_the_connection() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server, "a") as client:
        with trio.fail_after(5):
            await client.send(text("sync"))
            assert await client.read_frame() == (OP_TEXT, b"sync", True)
            conn = handler.conns["a"]
            conn.send_info(1)
            conn.send_info(2)
            assert await client.read_frame() == (OP_TEXT, b"info 1", True)
            assert await client.read_frame() == (OP_TEXT, b"info 2", True)
            conn.send_info("stop")
            code, reason = await client.read_close()
            await answer_close(client)
            await handler.terminated.wait()
    assert (code, reason) == (4002, "info says stop")
    assert handler.only_reason() == TerminateReason("stop", 4002, "info says stop")


async def test_handle_info_exception_closes_1011_internal_error() -> None:
    handler = Scripted()
    async with running(handler, **NO_TIMERS) as server, upgraded(server, "a") as client:
        with trio.fail_after(5):
            await client.send(text("sync"))
            assert await client.read_frame() == (OP_TEXT, b"sync", True)
            handler.conns["a"].send_info("boom")
            code, _ = await client.read_close()
            await answer_close(client)
            await handler.terminated.wait()
    assert code == 1011
    reason = handler.only_reason()
    assert (reason.kind, reason.code) == ("internal_error", 1011)


async def test_terminate_exception_is_contained_and_the_server_keeps_serving() -> None:
    handler = Scripted(fail_terminate=True)
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with upgraded(server, "first") as client:
                await client.send(close_frame(1000))
                await expect_close_then_eof(client)
            await handler.terminated.wait()
            async with upgraded(server, "second") as client:
                await client.send(text("still serving"))
                assert await client.read_frame() == (OP_TEXT, b"still serving", True)
    assert handler.reasons_of("first") == [TerminateReason("remote", 1000, "")]


class StuckInTerminate(Scripted):
    """terminate never returns by itself for the user "first"."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = trio.Event()
        self.cancelled = trio.Event()

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append((conn.user_id, reason))
        if conn.user_id != "first":
            return
        self.entered.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()


async def test_terminate_is_cancelled_after_terminate_timeout(mock_clock: MockClock) -> None:
    handler = StuckInTerminate()
    with structlog.testing.capture_logs() as logs:
        async with (
            running(handler, terminate_timeout=2.0, **NO_TIMERS) as server,
            fail_after_real(),
        ):
            async with upgraded(server, "first") as client:
                await client.send(close_frame(1000))
                await expect_close_then_eof(client)
            await handler.entered.wait()
            await advance(mock_clock, 1.9, step=0.1)
            assert not handler.cancelled.is_set()
            await advance(mock_clock, 0.2)
            assert handler.cancelled.is_set()
            async with upgraded(server, "second") as client:
                await client.send(text("still serving"))
                assert await client.read_frame() == (OP_TEXT, b"still serving", True)
    assert handler.reasons_of("first") == [TerminateReason("remote", 1000, "")]
    assert [e["user_id"] for e in logs if e["event"] == "terminate_timeout"] == ["first"]


# ------------------------------------------------------------------ callbacks never overlap


class Interleaved(Handler):
    """Every callback yields to the scheduler several times while counting who is inside."""

    codec = RawCodec()

    def __init__(self, infos_expected: int) -> None:
        self.conns: dict[str, Connection] = {}
        self.most_inside = 0
        self.infos = 0
        self.infos_expected = infos_expected
        self.all_infos = trio.Event()
        self.terminations = 0
        self.all_terminated = trio.Event()

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query["user"])

    async def _inside(self, conn: Connection) -> None:
        conn.state["inside"] = conn.state.get("inside", 0) + 1
        self.most_inside = max(self.most_inside, conn.state["inside"])
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        conn.state["inside"] -= 1

    async def init(self, conn: Connection) -> None:
        self.conns[conn.user_id] = conn
        await self._inside(conn)

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        await self._inside(conn)
        if msg.startswith("poke "):
            self.conns[msg.removeprefix("poke ")].send_info("from another connection")
        conn.send(msg)

    async def handle_info(self, info: Any, conn: Connection) -> None:
        await self._inside(conn)
        self.infos += 1
        if self.infos == self.infos_expected:
            self.all_infos.set()

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        await self._inside(conn)
        self.terminations += 1
        if self.terminations == 2:
            self.all_terminated.set()


async def test_callbacks_of_one_connection_never_overlap() -> None:
    rounds = 60
    handler = Interleaved(infos_expected=2 * rounds)
    async with running(handler, transmission_limit=0, **NO_TIMERS) as server:
        with trio.fail_after(10):
            async with (
                ws_open(ws_url(server, "a")) as a,
                ws_open(ws_url(server, "b")) as b,
            ):
                await a.send_message("hello")
                assert await a.get_message() == "hello"
                conn_a = handler.conns["a"]

                async def post_infos() -> None:
                    for i in range(rounds):
                        conn_a.send_info(i)
                        await trio.lowlevel.checkpoint()

                async def a_talks() -> None:
                    for i in range(rounds):
                        await a.send_message(f"a{i}")
                    for i in range(rounds):
                        assert await a.get_message() == f"a{i}"

                async def b_pokes_a() -> None:
                    for _ in range(rounds):
                        await b.send_message("poke a")
                    for _ in range(rounds):
                        assert await b.get_message() == "poke a"

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(post_infos)
                    nursery.start_soon(a_talks)
                    nursery.start_soon(b_pokes_a)
                await handler.all_infos.wait()
            await handler.all_terminated.wait()
    assert handler.infos == 2 * rounds
    assert handler.most_inside == 1
    assert handler.terminations == 2
