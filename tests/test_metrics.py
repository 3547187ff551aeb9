"""Metrics after known sequences of events: ``server.metrics`` and the /metrics scrape.

The scrape is read over plain HTTP on the WebSocket port and parsed with prometheus_client's
own parser, so names, labels and types are checked as Prometheus would see them.
"""

from __future__ import annotations

import struct
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock
from trio_websocket import open_websocket_url

from riverside_trio import (
    Accept,
    AuthError,
    AuthRequest,
    CloseConnection,
    Connection,
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
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Counted(Handler):
    """Needs ``?token=ok``; answers each text message with one text message, binary with none."""

    codec = RawCodec()

    def __init__(self) -> None:
        self.ended: dict[str, trio.Event] = {}

    async def authenticate(self, req: AuthRequest) -> Accept:
        if req.query.get("token") != "ok":
            raise AuthError(401)
        user = req.query["user"]
        self.ended[user] = trio.Event()
        return Accept(user_id=user)

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        if msg == "stop":
            raise CloseConnection(4000, "bye")
        if msg == "join":
            conn.join_channel("room")
        if isinstance(msg, str):
            conn.send(f"ack {msg}")

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.ended[conn.user_id].set()


async def scrape(server: Server) -> Samples:
    """GET /metrics and return every sample as {(name, sorted labels): value}."""
    client = await RawClient.connect(server)
    try:
        await client.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = await client.read_head()
    finally:
        await client.aclose()
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    return parse(body.decode())


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Every sample of ``name`` by the value of its one label."""
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def url(server: Server, user: str) -> str:
    return f"{server.url}?token=ok&user={user}"


async def test_metrics_after_a_known_sequence_of_connections_and_messages() -> None:
    handler = Counted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(10):
            rejected = await RawClient.connect(server)
            try:
                status, _, _ = await rejected.upgrade("/ws?token=bad&user=x")
                assert status == 401
            finally:
                await rejected.aclose()

            async with open_websocket_url(url(server, "b")) as b:
                async with open_websocket_url(url(server, "a")) as a:
                    for i in range(3):
                        await a.send_message(f"t{i}")
                    for i in range(2):
                        await a.send_message(bytes([i]))
                    await a.send_message("last")  # answered after the binaries were read
                    for i in range(3):
                        assert await a.get_message() == f"ack t{i}"
                    assert await a.get_message() == "ack last"
                    assert server.deliver_user("b", b"\x00blob") == 1
                    assert await b.get_message() == b"\x00blob"
                await handler.ended["a"].wait()

                samples = await scrape(server)
                m = server.metrics

                assert value(samples, "riverside_connected_sessions_count") == 1
                assert value(samples, "riverside_sessions_total") == 2
                assert labelled(samples, "riverside_incoming_messages_total", "frame_type") == {
                    "text": 4,
                    "binary": 2,
                    "ping": 0,
                    "pong": 0,
                    "close": 1,
                }
                assert labelled(samples, "riverside_outgoing_messages_total", "frame_type") == {
                    "text": 4,
                    "binary": 1,
                }
                assert value(samples, "riverside_connected_duration_seconds_count") == 1
                assert value(samples, "riverside_connected_duration_seconds_bucket", le="+Inf") == 1
                assert labelled(samples, "riverside_rejected_connections_total", "status") == {
                    "401": 1
                }
                assert labelled(samples, "riverside_disconnects_total", "reason") == {"remote": 1}
                assert labelled(samples, "riverside_invalid_messages_total", "kind") == {
                    "wrong_type": 0,
                    "undecodable": 0,
                    "envelope": 0,
                }

                assert m.connected == 1
                assert m.sessions_total == 2
                assert (m.incoming_text, m.incoming_binary) == (4, 2)
                assert m.incoming_control["close"] == 1
                assert (m.outgoing_text, m.outgoing_binary) == (4, 1)
                assert dict(m.rejected) == {401: 1}
                assert dict(m.disconnects) == {"remote": 1}
            await handler.ended["b"].wait()

    # both gone: what Metrics.render() (the /metrics body) says now
    after = parse(server.metrics.render().decode())
    assert value(after, "riverside_connected_sessions_count") == 0
    assert value(after, "riverside_connected_duration_seconds_count") == 2
    assert labelled(after, "riverside_disconnects_total", "reason") == {"remote": 2}
    assert value(after, "riverside_incoming_messages_total", frame_type="close") == 2


async def test_connection_durations_are_observed_in_their_buckets(mock_clock: MockClock) -> None:
    handler = Counted()
    async with running(handler, **NO_TIMERS) as server, fail_after_real():
        short = await RawClient.connect(server)
        long = await RawClient.connect(server)
        try:
            for client, user in ((short, "short"), (long, "long")):
                status, _, _ = await client.upgrade(f"/ws?token=ok&user={user}")
                assert status == 101
            await advance(mock_clock, 0.5)
            await short.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            await handler.ended["short"].wait()
            await advance(mock_clock, 19.5, step=0.5)
            await long.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            await handler.ended["long"].wait()
        finally:
            await short.aclose()
            await long.aclose()
        samples = parse(server.metrics.render().decode())
    buckets = labelled(samples, "riverside_connected_duration_seconds_bucket", "le")
    assert (buckets["0.1"], buckets["1.0"], buckets["10.0"], buckets["60.0"]) == (0, 1, 1, 2)
    assert buckets["+Inf"] == value(samples, "riverside_connected_duration_seconds_count") == 2
    assert value(samples, "riverside_connected_duration_seconds_sum") == 20.5


async def test_fragmented_message_counts_once_and_control_frames_count_by_type() -> None:
    handler = Counted()
    async with running(handler, **NO_TIMERS) as server:
        client = await RawClient.connect(server)
        try:
            with trio.fail_after(5):
                status, _, _ = await client.upgrade("/ws?token=ok&user=raw")
                assert status == 101
                await client.send(
                    client_frame(OP_TEXT, b"fr", fin=False)
                    + client_frame(OP_PING, b"p")
                    + client_frame(OP_CONT, b"ag", fin=False)
                    + client_frame(OP_CONT, b"ment")
                    + client_frame(OP_PONG, b"")
                    + client_frame(OP_BINARY, b"\x01", fin=False)
                    + client_frame(OP_CONT, b"\x02")
                    + client_frame(OP_CLOSE, struct.pack("!H", 1000))
                )
                assert await client.read_frame() == (OP_PONG, b"p", True)
                assert await client.read_frame() == (OP_TEXT, b"ack fragment", True)
                assert (await client.read_frame())[0] == OP_CLOSE
                await handler.ended["raw"].wait()
        finally:
            await client.aclose()
        samples = await scrape(server)
    assert labelled(samples, "riverside_incoming_messages_total", "frame_type") == {
        "text": 1,
        "binary": 1,
        "ping": 1,
        "pong": 1,
        "close": 1,
    }
    # the pong and the close echo are control frames, not messages
    assert labelled(samples, "riverside_outgoing_messages_total", "frame_type") == {
        "text": 1,
        "binary": 0,
    }


async def test_fan_out_counts_one_outgoing_message_per_recipient() -> None:
    handler = Counted()
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with (
                open_websocket_url(url(server, "a")) as a,
                open_websocket_url(url(server, "b")) as b,
            ):
                for ws in (a, b):
                    await ws.send_message("join")
                    assert await ws.get_message() == "ack join"
                assert server.deliver_channel("room", b"\x07") == 2
                assert await a.get_message() == b"\x07"
                assert await b.get_message() == b"\x07"
                samples = await scrape(server)
    assert labelled(samples, "riverside_outgoing_messages_total", "frame_type") == {
        "text": 2,
        "binary": 2,
    }


async def test_disconnects_and_rejections_are_labelled_by_reason_and_status() -> None:
    handler = Counted()
    async with running(handler, allowed_origins=["http://good.example"], **NO_TIMERS) as server:
        with trio.fail_after(5):
            for query, headers, expected in [
                ("token=bad&user=x", {"Origin": "http://good.example"}, 401),
                ("token=bad&user=y", {"Origin": "http://good.example"}, 401),
                ("token=ok&user=z", {"Origin": "http://evil.example"}, 403),
            ]:
                client = await RawClient.connect(server)
                try:
                    status, _, _ = await client.upgrade(f"/ws?{query}", headers=headers)
                    assert status == expected
                finally:
                    await client.aclose()

            for user, frame in [
                ("stopper", client_frame(OP_TEXT, b"stop")),  # the handler raises CloseConnection
                ("violator", client_frame(0x3, b"")),  # a reserved opcode
            ]:
                client = await RawClient.connect(server)
                try:
                    status, _, _ = await client.upgrade(
                        f"/ws?token=ok&user={user}", headers={"Origin": "http://good.example"}
                    )
                    assert status == 101
                    await client.send(frame)
                    await client.read_close()
                    await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
                    await handler.ended[user].wait()
                finally:
                    await client.aclose()
            samples = await scrape(server)
    assert labelled(samples, "riverside_rejected_connections_total", "status") == {
        "401": 2,
        "403": 1,
    }
    assert labelled(samples, "riverside_disconnects_total", "reason") == {
        "stop": 1,
        "protocol_error": 1,
    }
    assert value(samples, "riverside_sessions_total") == 2
    assert value(samples, "riverside_connected_duration_seconds_count") == 2
