"""permessage-deflate (RFC 7692): negotiation, round trips with real clients, compress once
per delivery, and deflate bombs."""

from __future__ import annotations

import json
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from websockets.sync.client import connect as ws_connect

from riverside_trio import Connection, Handler, RawCodec, TerminateReason
from riverside_trio.errors import ProtocolError
from riverside_trio.wire.deflate import Compressor, Inflater, negotiate

from ._helpers import RawClient, client_frame, running, wait_until

DEFLATE: dict[str, Any] = {"permessage_deflate": True, "idle_timeout": None, "ping_interval": None}


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def compressed_frame(opcode: int, data: bytes) -> bytes:
    """A masked client frame with RSV1 set: the payload is ``data`` deflated."""
    return client_frame(opcode, deflate(data), rsv=4)


class Room(Handler):
    """Echoes; b"fanout:<text>" goes to the channel "all" that everyone joins."""

    codec = RawCodec()

    def __init__(self) -> None:
        self.reasons: list[TerminateReason] = []
        self.done = trio.Event()

    async def init(self, conn: Connection) -> None:
        conn.join_channel("all")

    async def handle_message(self, msg: str | bytes, conn: Connection) -> None:
        if isinstance(msg, str) and msg.startswith("fanout:"):
            conn.deliver_channel("all", msg[len("fanout:") :])
        else:
            conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append(reason)
        self.done.set()


# ------------------------------------------------------------------ negotiation


@pytest.mark.parametrize(
    ("offers", "expected"),
    [
        (["permessage-deflate"], ("permessage-deflate; server_no_context_takeover", False)),
        (
            ["permessage-deflate; client_max_window_bits"],
            ("permessage-deflate; server_no_context_takeover", False),
        ),
        (
            ["permessage-deflate; client_no_context_takeover"],
            ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", True),
        ),
        (
            ["permessage-deflate; server_max_window_bits=10, permessage-deflate"],
            ("permessage-deflate; server_no_context_takeover", False),
        ),
        (["permessage-deflate; server_max_window_bits=10"], None),
        (["permessage-deflate; unknown_param"], None),
        (["permessage-deflate; client_max_window_bits=99"], None),
        (["permessage-deflate; server_no_context_takeover=1"], None),
        (["permessage-deflate; client_no_context_takeover; client_no_context_takeover"], None),
        (["x-webkit-deflate-frame"], None),
        ([], None),
    ],
)
def test_negotiate_accepts_the_first_offer_it_can_honour(
    offers: list[str], expected: tuple[str, bool] | None
) -> None:
    assert negotiate(offers) == expected


def test_compressor_output_inflates_message_by_message_with_a_fresh_inflater() -> None:
    compressor = Compressor()
    for message in (b"a" * 1000, b"hello " * 300, bytes(range(256)) * 8):
        payload = compressor.compress(message)
        assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == message


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """The peak of memory allocated inside the block, in bytes (tracemalloc), as ``[peak]``."""
    result = [0]
    tracemalloc.start()
    try:
        yield result
        result[0] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_inflater_caps_the_output_while_inflating_and_refuses_corrupt_data() -> None:
    bomb = deflate(bytes(50_000_000))  # 50 MB of zeros in about 50 KB
    assert len(bomb) < 100_000
    with peak_memory() as peak, pytest.raises(ProtocolError) as info:
        Inflater(1_000_000, reset=False).inflate(bomb)
    assert (info.value.code, info.value.reason) == (1009, "message too big")
    # It stopped at the cap: it never held the 50 MB (nor 10 MB) it would inflate to.
    assert peak[0] < 5_000_000
    with pytest.raises(ProtocolError) as info:
        Inflater(1_000_000, reset=False).inflate(b"\xff\xff\xff\xff not deflate")
    assert info.value.code == 1007


@pytest.mark.parametrize("reset", [False, True])
def test_inflater_accepts_exactly_max_size_and_refuses_one_byte_more(reset: bool) -> None:
    assert Inflater(1000, reset=reset).inflate(deflate(b"a" * 1000)) == b"a" * 1000
    with pytest.raises(ProtocolError) as info:
        Inflater(1000, reset=reset).inflate(deflate(b"a" * 1001))
    assert info.value.code == 1009
    # the limit is on each message, with the context kept between them
    inflater = Inflater(1000, reset=reset)
    c = zlib.compressobj(wbits=-15)
    for _ in range(5):
        payload = (c.compress(b"b" * 1000) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        if reset:
            c = zlib.compressobj(wbits=-15)
        assert inflater.inflate(payload) == b"b" * 1000


def test_inflater_starts_afresh_after_a_final_deflate_block() -> None:
    inflater = Inflater(1000, reset=False)
    for message in (b"first", b"second"):
        c = zlib.compressobj(wbits=-15)
        final = c.compress(message) + c.flush(zlib.Z_FINISH)  # BFINAL set: the stream ends
        assert inflater.inflate(final) == message


def test_inflater_keeps_the_context_when_the_client_does() -> None:
    c = zlib.compressobj(wbits=-15)
    inflater = Inflater(10_000, reset=False)
    for message in (b"repeat me " * 20, b"repeat me " * 20):
        payload = (c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert inflater.inflate(payload) == message


# ------------------------------------------------------------------ over the wire


def websockets_round_trip(url: str, messages: list[str | bytes]) -> tuple[Any, list[Any]]:
    with ws_connect(url, max_size=None) as ws:  # the websockets client offers deflate
        got = []
        for m in messages:
            ws.send(m)
            got.append(ws.recv(timeout=10))
        return ws.response.headers.get("Sec-WebSocket-Extensions"), got


async def test_websockets_client_negotiates_deflate_and_round_trips() -> None:
    messages: list[str | bytes] = [
        "short",
        json.dumps({"text": "compressible " * 500}),
        bytes(100_000),
        "ünïcödé ✓ " * 200,
    ]
    async with running(Room(), **DEFLATE) as server:
        with trio.fail_after(20):
            extensions, got = await trio.to_thread.run_sync(
                websockets_round_trip, server.url, messages
            )
    assert extensions is not None and extensions.startswith("permessage-deflate")
    assert "server_no_context_takeover" in extensions
    assert got == messages


async def test_deflate_is_not_negotiated_when_off() -> None:
    async with running(Room(), idle_timeout=None, ping_interval=None) as server:
        with trio.fail_after(20):
            extensions, got = await trio.to_thread.run_sync(
                websockets_round_trip, server.url, ["x" * 1000]
            )
    assert extensions is None
    assert got == ["x" * 1000]


async def test_fan_out_compresses_once_and_serves_plain_and_deflate_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    original = Compressor.compress

    def counting(self: Compressor, payload: bytes) -> bytes:
        calls.append(len(payload))
        return original(self, payload)

    monkeypatch.setattr(Compressor, "compress", counting)
    text = "to everyone " * 100
    async with running(Room(), **DEFLATE) as server:
        plain = await RawClient.connect(server)
        squeezed = await RawClient.connect(server)
        try:
            with trio.fail_after(10):
                status, headers, _ = await plain.upgrade()
                assert status == 101 and "sec-websocket-extensions" not in headers
                status, headers, _ = await squeezed.upgrade(
                    headers={"Sec-WebSocket-Extensions": "permessage-deflate"}
                )
                assert status == 101
                assert headers["sec-websocket-extensions"].startswith("permessage-deflate")
                await wait_until(lambda: server.connection_count == 2)
                calls.clear()
                await plain.send(client_frame(0x1, f"fanout:{text}".encode()))
                op, payload, _ = await plain.read_frame()
                assert (op, payload.decode()) == (0x1, text)
                # the deflate client's copy has RSV1 set and inflates to the same text
                op, payload, _ = await squeezed.read_frame()
                assert squeezed.last_first_byte & 0x40
                inflated = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                assert (op, inflated.decode()) == (0x1, text)
                assert calls == [len(text.encode())]  # compressed once for the delivery
        finally:
            await plain.aclose()
            await squeezed.aclose()


async def test_a_deflate_bomb_is_closed_1009_without_inflating_it() -> None:
    handler = Room()
    bomb = compressed_frame(0x2, bytes(50_000_000))  # 50 MB of zeros in about 50 KB
    async with running(handler, max_message_size=1 << 20, **DEFLATE) as server:
        client = await RawClient.connect(server)
        try:
            with trio.fail_after(30):
                status, _, _ = await client.upgrade(
                    headers={"Sec-WebSocket-Extensions": "permessage-deflate"}
                )
                assert status == 101
                with peak_memory() as peak:
                    await client.send(bomb)
                    assert await client.read_close() == (1009, "message_too_big")
                    await handler.done.wait()
                assert handler.reasons == [
                    TerminateReason("message_too_big", 1009, "message_too_big")
                ]
                assert server.metrics.disconnects["message_too_big"] == 1
        finally:
            await client.aclose()
    # The server stopped inflating at max_message_size (1 MiB): far from the bomb's 50 MB.
    assert peak[0] < 10_000_000


async def test_a_message_inflating_to_exactly_max_message_size_is_delivered() -> None:
    handler = Room()
    async with running(handler, max_message_size=100_000, **DEFLATE) as server:
        client = await RawClient.connect(server)
        try:
            with trio.fail_after(30):
                status, _, _ = await client.upgrade(
                    headers={"Sec-WebSocket-Extensions": "permessage-deflate"}
                )
                assert status == 101
                await client.send(compressed_frame(0x2, b"z" * 100_000))
                op, payload, _ = await client.read_frame()
                assert client.last_first_byte & 0x40  # compressed back
                inflated = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                assert (op, inflated) == (0x2, b"z" * 100_000)
                await client.send(compressed_frame(0x2, b"z" * 100_001))
                assert await client.read_close() == (1009, "message_too_big")
        finally:
            await client.aclose()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(0x2, b"\xff\xff\xff\xff garbage", rsv=4), 1007),
        (compressed_frame(0x1, b"\xff\xfe not utf-8"), 1007),
        (client_frame(0x9, b"ping", rsv=4), 1002),
    ],
    ids=["corrupt deflate data", "invalid utf-8 after inflating", "rsv1 on a ping"],
)
async def test_bad_compressed_input_gets_its_close_code(frame: bytes, code: int) -> None:
    handler = Room()
    async with running(handler, **DEFLATE) as server:
        client = await RawClient.connect(server)
        try:
            with trio.fail_after(10):
                status, _, _ = await client.upgrade(
                    headers={"Sec-WebSocket-Extensions": "permessage-deflate"}
                )
                assert status == 101
                await client.send(frame)
                got, _ = await client.read_close()
                assert got == code
                await handler.done.wait()
        finally:
            await client.aclose()
