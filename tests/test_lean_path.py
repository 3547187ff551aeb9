"""The lean path of a message: ``Outbox.push_message`` (compiled and twin alike), and
``Connection.send`` / the reader's dispatch in their common case, over real sockets."""

from __future__ import annotations

import contextlib
import importlib
import socket
import struct
from collections.abc import Iterator
from types import ModuleType

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from riverside_trio import (
    CloseConnection,
    CodecError,
    Connection,
    Handler,
    JSONCodec,
    RawBinaryCodec,
    RawCodec,
    RawTextCodec,
)

from ._helpers import NO_TIMERS, RawClient, client_frame, running

OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    client.setblocking(False)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        chunks.append(chunk)


def implementations() -> list[ModuleType]:
    mods = [importlib.import_module("riverside_trio.wire._frames_py")]
    with contextlib.suppress(ImportError):
        mods.append(importlib.import_module("riverside_trio._frames_c"))
    return mods


# ---------------------------------------------------------------- Outbox.push_message


def test_push_message_frames_str_as_text_and_bytes_as_binary(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    outbox = frames_impl.Outbox(pair[0], 8, 1 << 20, lambda: None)
    assert outbox.push_message("héllo") == frames_impl.PUSH_SENT
    assert outbox.push_message(b"\x00\xff") == frames_impl.PUSH_SENT
    assert outbox.push_message("") == frames_impl.PUSH_SENT
    assert recv_all(pair[1]) == (
        frames_impl.encode_frame(frames_impl.OP_TEXT, "héllo".encode())
        + frames_impl.encode_frame(frames_impl.OP_BINARY, b"\x00\xff")
        + b"\x81\x00"
    )


class Text(str):
    pass


@pytest.mark.parametrize("payload", [bytearray(b"x"), memoryview(b"x"), 1, None, Text("x")])
def test_push_message_takes_str_and_bytes_only(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket], payload: object
) -> None:
    outbox = frames_impl.Outbox(pair[0], 8, 1 << 20, lambda: None)
    with pytest.raises(TypeError, match="payload must be str or bytes, not"):
        outbox.push_message(payload)
    with pytest.raises(TypeError):
        outbox.push_message(payload=b"x")  # positional only
    assert recv_all(pair[1]) == b""


def test_push_message_refuses_lone_surrogates_alike(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    errors = []
    for frames in implementations():
        outbox = frames.Outbox(pair[0], 8, 1 << 20, lambda: None)
        with pytest.raises(UnicodeEncodeError) as info:
            outbox.push_message("a\ud800b")
        errors.append((type(info.value), info.value.args))
        assert outbox.queued_frames == 0
    assert len(set(errors)) == 1
    assert recv_all(pair[1]) == b""


@settings(max_examples=40, deadline=None)
@given(
    payloads=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=20_000)), max_size=12),
    max_frames=st.integers(1, 20),
    max_bytes=st.integers(1, 1 << 18),
)
def test_push_message_is_push_of_encode_frame_in_c_and_python(
    payloads: list[str | bytes], max_frames: int, max_bytes: int
) -> None:
    """The same statuses, queues and bytes on the wire as push(encode_frame(...)), for both
    implementations."""
    seen = []
    for frames in implementations():
        for lean in (True, False):
            a, b = socket.socketpair()
            try:
                a.setblocking(False)
                b.setblocking(False)
                outbox = frames.Outbox(a, max_frames, max_bytes, lambda: None)
                statuses = []
                for p in payloads:
                    if lean:
                        statuses.append(outbox.push_message(p))
                    else:
                        opcode = frames.OP_TEXT if isinstance(p, str) else frames.OP_BINARY
                        data = p.encode() if isinstance(p, str) else p
                        statuses.append(outbox.push(frames.encode_frame(opcode, data)))
                wire = recv_all(b)
                seen.append((statuses, outbox.queued_frames, outbox.queued_bytes, wire))
            finally:
                a.close()
                b.close()
    assert all(s == seen[0] for s in seen)


# ---------------------------------------------------------------- the server


class Sender(Handler):
    """Sends back what the message names; records what each handler call raised."""

    def __init__(self, codec: object) -> None:
        self.codec = codec  # type: ignore[assignment]
        self.errors: list[BaseException] = []

    async def handle_message(self, msg: object, conn: Connection) -> None:
        if msg == "surrogate":
            try:
                conn.send("\ud800")
            except CodecError as exc:
                self.errors.append(exc)
                conn.send("refused")
        elif msg == "bytearray":
            conn.send(bytearray(b"ba"))
        elif msg == "stop":
            raise CloseConnection(4000, "asked to stop")
        elif msg == "crash":
            raise RuntimeError("handler bug")
        elif msg == b"binary":
            conn.send(b"back")
        else:
            conn.send(msg)


class Bytes(RawCodec):
    """A raw codec whose encode returns bytearray (framed through the hub)."""

    def encode(self, obj: object) -> bytearray:  # type: ignore[override]
        return bytearray(obj.encode() if isinstance(obj, str) else obj)  # type: ignore[union-attr]


async def open_client(server) -> RawClient:  # type: ignore[no-untyped-def]
    client = await RawClient.connect(server)
    status, _, _ = await client.upgrade("/ws")
    assert status == 101
    return client


@pytest.mark.parametrize(
    ("codec", "sent", "frame"),
    [
        (RawCodec(), (OP_TEXT, b"hi"), (OP_TEXT, b"hi")),
        (RawCodec(), (OP_BINARY, b"binary"), (OP_BINARY, b"back")),
        (RawTextCodec(), (OP_TEXT, "é".encode()), (OP_TEXT, "é".encode())),
        (RawBinaryCodec(), (OP_BINARY, b"\x00"), (OP_BINARY, b"\x00")),
        (JSONCodec(), (OP_TEXT, b'{"a": [1]}'), (OP_TEXT, b'{"a":[1]}')),
        (Bytes(), (OP_TEXT, b"via the hub"), (OP_BINARY, b"via the hub")),
        (RawCodec(), (OP_TEXT, b"bytearray"), (OP_BINARY, b"ba")),
    ],
    ids=[
        "raw-text",
        "raw-binary",
        "raw-text-codec",
        "raw-binary-codec",
        "json",
        "bytearray",
        "raw-bytearray",
    ],
)
async def test_send_frames_what_the_codec_gives_and_counts_it(
    codec: object, sent: tuple[int, bytes], frame: tuple[int, bytes]
) -> None:
    async with running(Sender(codec), **NO_TIMERS) as server:
        client = await open_client(server)
        with trio.fail_after(10):
            await client.send(client_frame(*sent))
            assert (await client.read_frame())[:2] == frame
        metrics = server.metrics
        assert (metrics.incoming_text, metrics.incoming_binary) == (
            (1, 0) if sent[0] == OP_TEXT else (0, 1)
        )
        assert (metrics.outgoing_text, metrics.outgoing_binary) == (
            (1, 0) if frame[0] == OP_TEXT else (0, 1)
        )
        await client.aclose()


async def test_send_of_a_lone_surrogate_raises_codec_error_and_sends_nothing() -> None:
    handler = Sender(RawCodec())
    async with running(handler, **NO_TIMERS) as server:
        client = await open_client(server)
        with trio.fail_after(10):
            await client.send(client_frame(OP_TEXT, b"surrogate"))
            assert (await client.read_frame())[:2] == (OP_TEXT, b"refused")
        assert [str(e) for e in handler.errors] == [
            "text is not valid UTF-8: 'utf-8' codec can't encode character '\\ud800' in "
            "position 0: surrogates not allowed"
        ]
        assert server.metrics.outgoing_text == 1
        await client.aclose()


@pytest.mark.parametrize(
    ("message", "code", "kind"),
    [(b"stop", 4000, "stop"), (b"crash", 1011, "internal_error")],
)
async def test_a_handler_that_raises_on_the_lean_path_closes_as_before(
    message: bytes, code: int, kind: str
) -> None:
    handler = Sender(RawCodec())
    async with running(handler, **NO_TIMERS) as server:
        client = await open_client(server)
        with trio.fail_after(10):
            await client.send(client_frame(OP_TEXT, b"first"))
            assert (await client.read_frame())[:2] == (OP_TEXT, b"first")
            await client.send(client_frame(OP_TEXT, message))
            got_code, reason = await client.read_close()
            assert (got_code, reason) == (code, "asked to stop" if kind == "stop" else kind)
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", code)))
            assert await client.at_eof()
        assert server.metrics.disconnects[kind] == 1
        await client.aclose()
