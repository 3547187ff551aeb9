"""Codecs: each codec's own errors, then every codec over real sockets.

Over the wire: the default JSON codec, raw text, raw binary, raw (both), CBOR (decoded with
cbor2 on the client side) and a user codec that subclasses nothing. Frames of a type the
codec does not accept and payloads it cannot decode are ignored and counted, or close the
connection (1003 / 1007) with ``invalid_message="close"``; an object the codec cannot encode
raises CodecError in the handler before anything is sent.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import pytest
import trio

from riverside_trio import (
    CBORCodec,
    Codec,
    CodecError,
    Connection,
    Handler,
    JSONCodec,
    RawBinaryCodec,
    RawCodec,
    RawTextCodec,
    RiversideError,
    Server,
    TerminateReason,
)

from ._helpers import NO_TIMERS, RawClient, client_frame, running, ws_open

OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8

# ------------------------------------------------------------------ codecs on their own


def test_codec_error_is_a_riverside_error() -> None:
    assert issubclass(CodecError, RiversideError)


@pytest.mark.parametrize(
    ("codec", "frame_type", "accepts"),
    [
        (JSONCodec(), "text", {"text"}),
        (RawTextCodec(), "text", {"text"}),
        (RawBinaryCodec(), "binary", {"binary"}),
        (RawCodec(), "binary", {"text", "binary"}),
        (CBORCodec(), "binary", {"binary"}),
    ],
)
def test_builtin_codecs_declare_frame_type_and_accepted_types(
    codec: Any, frame_type: str, accepts: set[str]
) -> None:
    assert isinstance(codec, Codec)
    assert codec.frame_type == frame_type
    assert set(codec.accepts) == accepts


@pytest.mark.parametrize(
    "value", [None, True, 0, -1.5, "é😀", [1, [2, {}]], {"a": {"b": [None, "x"]}}]
)
def test_json_codec_round_trips_json_values(value: Any) -> None:
    codec = JSONCodec()
    encoded = codec.encode(value)
    assert isinstance(encoded, str)
    assert json.loads(encoded) == value
    assert codec.decode(encoded) == value


def test_json_codec_keeps_non_ascii_text_as_is() -> None:
    assert "é😀" in JSONCodec().encode({"k": "é😀"})


@pytest.mark.parametrize("payload", ["", "{", "[1,]", "1 2", "{'a': 1}", "undefined"])
def test_json_codec_decode_rejects_invalid_json(payload: str) -> None:
    with pytest.raises(CodecError):
        JSONCodec().decode(payload)


def test_json_codec_decode_rejects_bytes() -> None:
    with pytest.raises(CodecError):
        JSONCodec().decode(b"{}")


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "obj",
    [object(), {1, 2}, b"bytes", {(1, 2): "tuple key"}, _circular()],
    ids=["object", "set", "bytes", "tuple-key", "circular"],
)
def test_json_codec_encode_raises_codec_error_for_what_json_cannot_hold(obj: Any) -> None:
    with pytest.raises(CodecError):
        JSONCodec().encode(obj)


def test_json_codec_encode_refuses_nan_and_infinity() -> None:
    """RFC 8259 has no NaN or Infinity: ``JSON.parse`` in a browser rejects them."""
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(CodecError):
            JSONCodec().encode({"x": value})


def test_json_codec_decode_refuses_nan_and_infinity() -> None:
    for payload in ("NaN", "Infinity", "-Infinity", "[NaN]"):
        with pytest.raises(CodecError):
            JSONCodec().decode(payload)


def test_raw_text_codec_passes_str_and_refuses_everything_else() -> None:
    codec = RawTextCodec()
    assert codec.decode("é") == "é"
    assert codec.encode("é") == "é"
    with pytest.raises(CodecError):
        codec.decode(b"x")
    for obj in (b"x", 1, None, ["x"]):
        with pytest.raises(CodecError):
            codec.encode(obj)


def test_raw_binary_codec_passes_bytes_and_refuses_text() -> None:
    codec = RawBinaryCodec()
    assert codec.decode(b"\x00\xff") == b"\x00\xff"
    assert codec.encode(b"\x00") == b"\x00"
    assert codec.encode(bytearray(b"ab")) == b"ab"
    assert type(codec.encode(bytearray(b"ab"))) is bytes
    assert codec.encode(memoryview(b"cd")) == b"cd"
    with pytest.raises(CodecError):
        codec.decode("x")
    for obj in ("x", 1, None, [1]):
        with pytest.raises(CodecError):
            codec.encode(obj)


def test_raw_codec_keeps_the_type_and_refuses_other_objects() -> None:
    codec = RawCodec()
    assert codec.decode("t") == "t"
    assert codec.decode(b"b") == b"b"
    assert codec.encode("t") == "t"
    assert codec.encode(b"b") == b"b"
    assert codec.encode(bytearray(b"b")) == b"b"
    for obj in (1, None, ["x"], {"a": 1}):
        with pytest.raises(CodecError):
            codec.encode(obj)


@pytest.mark.parametrize(
    "value", [None, 1, -(2**70), 1.5, "é", b"\x00\xff", [1, [b"x"]], {"a": {"b": [1.0]}}]
)
def test_cbor_codec_round_trips(value: Any) -> None:
    codec = CBORCodec()
    encoded = codec.encode(value)
    assert isinstance(encoded, bytes)
    assert cbor2.loads(encoded) == value
    assert codec.decode(encoded) == value


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff", b"\x82\x01", b"\x1b\x00"],
    ids=["empty", "break", "truncated-array", "truncated-int"],
)
def test_cbor_codec_decode_rejects_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(CodecError):
        CBORCodec().decode(payload)


def test_cbor_codec_decode_rejects_trailing_bytes_after_the_item() -> None:
    """One message is one data item; a second item would be silently dropped."""
    with pytest.raises(CodecError):
        CBORCodec().decode(b"\x01\x02")


def test_cbor_codec_decode_rejects_text() -> None:
    with pytest.raises(CodecError):
        CBORCodec().decode("\x01")


def test_cbor_codec_encode_raises_codec_error_for_unknown_types() -> None:
    with pytest.raises(CodecError):
        CBORCodec().encode(object())


# ------------------------------------------------------------------ a codec of one's own


class PairCodec:
    """A user codec, subclassing nothing: two big-endian uint16 in a binary frame."""

    frame_type = "binary"
    accepts = frozenset({"binary"})

    def decode(self, data: str | bytes) -> Any:
        if not isinstance(data, bytes) or len(data) != 4:
            raise ValueError("expected 4 bytes")
        return struct.unpack("!HH", data)

    def encode(self, obj: Any) -> bytes:
        try:
            return struct.pack("!HH", *obj)
        except (struct.error, TypeError) as exc:
            raise CodecError(str(exc)) from exc


class StrReturningNonsense:
    """A broken user codec: encode returns neither str nor bytes."""

    frame_type = "text"
    accepts = frozenset({"text"})

    def decode(self, data: str | bytes) -> Any:
        return data

    def encode(self, obj: Any) -> Any:
        return 42


def test_server_refuses_a_codec_missing_decode() -> None:
    class NoDecode:
        frame_type = "text"
        accepts = frozenset({"text"})

        def encode(self, obj: Any) -> str:
            return str(obj)

    class H(Handler):
        codec = NoDecode()  # type: ignore[assignment]

    with pytest.raises(TypeError, match="decode"):
        Server(H())


@pytest.mark.parametrize(
    ("frame_type", "accepts"),
    [("json", {"text"}), ("text", set()), ("text", {"text", "pictures"})],
)
def test_server_refuses_a_codec_with_wrong_frame_types(frame_type: str, accepts: set[str]) -> None:
    class Odd:
        def decode(self, data: str | bytes) -> Any:
            return data

        def encode(self, obj: Any) -> Any:
            return obj

    codec = Odd()
    codec.frame_type = frame_type  # type: ignore[attr-defined]
    codec.accepts = frozenset(accepts)  # type: ignore[attr-defined]

    class H(Handler):
        pass

    handler = H()
    handler.codec = codec  # type: ignore[misc]
    with pytest.raises(TypeError):
        Server(handler)


# ------------------------------------------------------------------ over the wire


class Echo(Handler):
    """Echoes decoded messages; a handful of messages ask for an unencodable send."""

    def __init__(self, codec: Any = None) -> None:
        if codec is not None:
            self.codec = codec  # type: ignore[misc]
        self.messages: list[Any] = []
        self.errors: list[CodecError] = []
        self.reasons: list[TerminateReason] = []
        self.terminated = trio.Event()

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        self.messages.append(msg)
        unencodable = self.unencodable(msg)
        if unencodable is not None:
            try:
                conn.send(unencodable[0])
            except CodecError as exc:
                self.errors.append(exc)
                conn.send(unencodable[1])
            return
        conn.send(msg)

    def unencodable(self, msg: Any) -> tuple[Any, Any] | None:
        """(something this codec cannot encode, a marker it can) when asked, else None."""
        return None

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append(reason)
        self.terminated.set()


@asynccontextmanager
async def upgraded(server: Server) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(server)
    try:
        status, _, _ = await client.upgrade()
        assert status == 101
        yield client
    finally:
        await client.aclose()


async def test_json_is_the_default_codec_and_round_trips() -> None:
    value = {"text": "é😀", "list": [1, 2.5, None, True], "nested": {"a": []}}
    handler = Echo()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(client_frame(OP_TEXT, json.dumps(value).encode()))
            op, payload, _ = await client.read_frame()
    assert op == OP_TEXT
    assert json.loads(payload.decode()) == value
    assert handler.messages == [value]


async def test_raw_text_codec_round_trips_text() -> None:
    handler = Echo(RawTextCodec())
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with ws_open(server.url) as ws:
                await ws.send_message("not json: {")
                assert await ws.get_message() == "not json: {"
    assert handler.messages == ["not json: {"]


async def test_raw_binary_codec_round_trips_bytes() -> None:
    handler = Echo(RawBinaryCodec())
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with ws_open(server.url) as ws:
                await ws.send_message(b"\x00\xff\x80")
                assert await ws.get_message() == b"\x00\xff\x80"
    assert handler.messages == [b"\x00\xff\x80"]


async def test_raw_codec_keeps_text_as_text_and_binary_as_binary() -> None:
    handler = Echo(RawCodec())
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(client_frame(OP_TEXT, "é".encode()))
            await client.send(client_frame(OP_BINARY, b"\xc3\xa9"))
            assert await client.read_frame() == (OP_TEXT, "é".encode(), True)
            assert await client.read_frame() == (OP_BINARY, b"\xc3\xa9", True)
    assert handler.messages == ["é", b"\xc3\xa9"]


async def test_cbor_codec_round_trips_with_cbor2_on_the_client() -> None:
    value = {"n": 1, "blob": b"\x00\xff", "list": [1.5, "é", None]}
    handler = Echo(CBORCodec())
    async with running(handler, **NO_TIMERS) as server:
        with trio.fail_after(5):
            async with ws_open(server.url) as ws:
                await ws.send_message(cbor2.dumps(value))
                reply = await ws.get_message()
    assert isinstance(reply, bytes)
    assert cbor2.loads(reply) == value
    assert handler.messages == [value]


async def test_user_codec_decodes_and_encodes_over_the_wire() -> None:
    class Swap(Echo):
        async def handle_message(self, msg: Any, conn: Connection) -> None:
            self.messages.append(msg)
            conn.send((msg[1], msg[0]))

    handler = Swap(PairCodec())
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(client_frame(OP_BINARY, struct.pack("!HH", 1, 65535)))
            assert await client.read_frame() == (OP_BINARY, struct.pack("!HH", 65535, 1), True)
    assert handler.messages == [(1, 65535)]


# ------------------------------------------------------------------ invalid incoming messages


WRONG_TYPE = [
    pytest.param(JSONCodec, client_frame(OP_BINARY, b"{}"), client_frame(OP_TEXT, b"1"), id="json"),
    pytest.param(
        RawTextCodec, client_frame(OP_BINARY, b"x"), client_frame(OP_TEXT, b"1"), id="raw-text"
    ),
    pytest.param(
        RawBinaryCodec, client_frame(OP_TEXT, b"x"), client_frame(OP_BINARY, b"1"), id="raw-bin"
    ),
    pytest.param(
        CBORCodec, client_frame(OP_TEXT, b"x"), client_frame(OP_BINARY, b"\x01"), id="cbor"
    ),
]


UNDECODABLE = [
    pytest.param(
        JSONCodec, client_frame(OP_TEXT, b"{not json"), client_frame(OP_TEXT, b"1"), id="json"
    ),
    pytest.param(
        CBORCodec, client_frame(OP_BINARY, b"\xff"), client_frame(OP_BINARY, b"\x01"), id="cbor"
    ),
    pytest.param(
        PairCodec, client_frame(OP_BINARY, b"\x00"), client_frame(OP_BINARY, b"\0" * 4), id="user"
    ),
]

# A message the codec refuses: (kind counted in invalid_messages, close code with
# invalid_message="close").
INVALID = [
    pytest.param(*p.values, "wrong_type", 1003, id=f"wrong-type-{p.id}") for p in WRONG_TYPE
] + [pytest.param(*p.values, "undecodable", 1007, id=f"undecodable-{p.id}") for p in UNDECODABLE]
OTHER_KIND = {"wrong_type": "undecodable", "undecodable": "wrong_type"}


@pytest.mark.parametrize(("codec", "bad", "good", "kind", "close_code"), INVALID)
async def test_invalid_message_is_ignored_and_counted(
    codec: type[Any], bad: bytes, good: bytes, kind: str, close_code: int
) -> None:
    handler = Echo(codec())
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(bad + good)
            op, _, _ = await client.read_frame()  # only the good one is echoed
            assert op == good[0] & 0x0F
    assert len(handler.messages) == 1
    assert server.metrics.invalid_messages[kind] == 1
    assert server.metrics.invalid_messages[OTHER_KIND[kind]] == 0


@pytest.mark.parametrize(("codec", "bad", "good", "kind", "close_code"), INVALID)
async def test_invalid_message_closes_with_invalid_message_close(
    codec: type[Any], bad: bytes, good: bytes, kind: str, close_code: int
) -> None:
    handler = Echo(codec())
    async with (
        running(handler, invalid_message="close", **NO_TIMERS) as server,
        upgraded(server) as client,
    ):
        with trio.fail_after(5):
            await client.send(bad + good)
            code, _ = await client.read_close()  # nothing echoed before the close
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            assert await client.at_eof()
            await handler.terminated.wait()
    assert code == close_code
    assert handler.messages == []
    assert server.metrics.invalid_messages[kind] == 1
    assert len(handler.reasons) == 1
    assert (handler.reasons[0].kind, handler.reasons[0].code) == ("invalid_message", close_code)


# ------------------------------------------------------------------ unencodable outgoing objects


class JSONUnencodable(Echo):
    def unencodable(self, msg: Any) -> tuple[Any, Any] | None:
        if msg == "object":
            return object(), "marker"
        if msg == "nan":
            return math.nan, "marker"
        if msg == "surrogate":
            return "\ud800", "marker"
        return None


class TextUnencodable(Echo):
    def unencodable(self, msg: Any) -> tuple[Any, Any] | None:
        if msg == "bytes":
            return b"bytes", "marker"
        if msg == "surrogate":
            return "a\udc80b", "marker"
        return None


class BinaryUnencodable(Echo):
    def unencodable(self, msg: Any) -> tuple[Any, Any] | None:
        return ("text", b"marker") if msg == b"text" else None


class CBORUnencodable(Echo):
    def unencodable(self, msg: Any) -> tuple[Any, Any] | None:
        return (object(), "marker") if msg == "object" else None


class NonsenseUnencodable(Echo):
    async def handle_message(self, msg: Any, conn: Connection) -> None:
        self.messages.append(msg)
        try:
            conn.send(msg)
        except CodecError as exc:
            self.errors.append(exc)
            conn.close(4000, "marker")


UNENCODABLE = [
    pytest.param(JSONUnencodable, None, b'"object"', (OP_TEXT, b'"marker"'), id="json-object"),
    pytest.param(JSONUnencodable, None, b'"nan"', (OP_TEXT, b'"marker"'), id="json-nan"),
    pytest.param(
        JSONUnencodable, None, b'"surrogate"', (OP_TEXT, b'"marker"'), id="json-lone-surrogate"
    ),
    pytest.param(TextUnencodable, RawTextCodec, b"bytes", (OP_TEXT, b"marker"), id="text-bytes"),
    pytest.param(
        TextUnencodable, RawTextCodec, b"surrogate", (OP_TEXT, b"marker"), id="text-surrogate"
    ),
    pytest.param(
        BinaryUnencodable, RawBinaryCodec, b"text", (OP_BINARY, b"marker"), id="binary-str"
    ),
    pytest.param(
        CBORUnencodable,
        CBORCodec,
        cbor2.dumps("object"),
        (OP_BINARY, cbor2.dumps("marker")),
        id="cbor-object",
    ),
]


@pytest.mark.parametrize(("handler_type", "codec_type", "payload", "marker"), UNENCODABLE)
async def test_unencodable_send_raises_codec_error_and_sends_nothing(
    handler_type: type[Echo],
    codec_type: type[Any] | None,
    payload: bytes,
    marker: tuple[int, bytes],
) -> None:
    handler = handler_type(codec_type() if codec_type is not None else None)
    opcode = OP_BINARY if isinstance(handler.codec, RawBinaryCodec | CBORCodec) else OP_TEXT
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(client_frame(opcode, payload))
            assert await client.read_frame() == (*marker, True)
            # and the connection goes on
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            assert (await client.read_frame())[0] == OP_CLOSE
    assert len(handler.errors) == 1
    assert server.metrics.outgoing_text + server.metrics.outgoing_binary == 1


async def test_codec_returning_neither_str_nor_bytes_raises_codec_error_and_sends_nothing() -> None:
    handler = NonsenseUnencodable(StrReturningNonsense())
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(client_frame(OP_TEXT, b"go"))
            code, reason = await client.read_close()
    assert (code, reason) == (4000, "marker")
    assert len(handler.errors) == 1


async def test_unencodable_delivery_raises_codec_error_and_reaches_nobody() -> None:
    handler = Echo()
    async with running(handler, **NO_TIMERS) as server, upgraded(server) as client:
        with trio.fail_after(5):
            await client.send(client_frame(OP_TEXT, b'"sync"'))
            assert await client.read_frame() == (OP_TEXT, b'"sync"', True)
            user = server.connections()[0].user_id
            with pytest.raises(CodecError):
                server.deliver_user(user, {"not": object()})
            assert server.deliver_user(user, "after") == 1
            assert await client.read_frame() == (OP_TEXT, b'"after"', True)
