"""webwire's binary protocol (v2.0): a client written to webwire's protocol document talks
to an RPCHandler whose codec is WebwireCodec; byte layouts as in
../shared/notes/webwire-protocol.md, over real connections."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from trio_websocket import ConnectionClosed as WSClosed

from riverside_trio import (
    Connection,
    RequestError,
    RPCHandler,
    WebwireCodec,
    open_client,
    request,
    signal,
)
from riverside_trio.rpc._webwire import parse_session_json

from ._helpers import NO_TIMERS, running, ws_open
from ._rpc_helpers import until

ID = b"\x00\x01\x02\x03\x04\x05\x06\x07"


class WW(RPCHandler):
    codec = WebwireCodec()

    def __init__(self) -> None:
        self.signals: list[tuple[str, Any]] = []

    @request("echo")
    async def echo(self, payload: Any, conn: Connection) -> Any:
        return payload

    @request("fail")
    async def fail(self, payload: Any, conn: Connection) -> Any:
        raise RequestError("E_NOPE", "nöpe")

    @request("crash")
    async def crash(self, payload: Any, conn: Connection) -> Any:
        raise RuntimeError("internal detail")

    @request("login")
    async def login(self, payload: Any, conn: Connection) -> Any:
        session = await conn.create_session({"user": payload})
        return session.key

    @request("empty")
    async def empty(self, payload: Any, conn: Connection) -> Any:
        return None

    @signal("note")
    async def note(self, payload: Any, conn: Connection) -> None:
        self.signals.append(("note", payload))


def req(t: int, name: bytes, payload: bytes, rid: bytes = ID) -> bytes:
    return bytes((t,)) + rid + bytes((len(name),)) + name + payload


async def test_the_first_message_is_accept_conf_with_version_timeout_and_buffer_size() -> None:
    async with (
        running(WW(), idle_timeout=30, max_message_size=4096) as server,
        ws_open(server.url) as ws,
    ):
        conf = await ws.get_message()
        assert isinstance(conf, bytes) and len(conf) >= 11
        assert struct.unpack_from("<BBBII", conf) == (23, 2, 0, 30_000, 4096)


async def test_requests_in_each_encoding_get_replies_of_the_matching_encoding() -> None:
    async with running(WW(), **NO_TIMERS) as server, ws_open(server.url) as ws:
        await ws.get_message()  # accept conf
        await ws.send_message(req(128, b"echo", "héllo".encode()))
        assert await ws.get_message() == b"\xc0" + ID + "héllo".encode()
        await ws.send_message(req(127, b"echo", b"\x00\xff"))
        assert await ws.get_message() == b"\xbf" + ID + b"\x00\xff"
        # UTF-16: the name "echo" is even, so no pad byte; a str reply goes out as UTF-8.
        await ws.send_message(req(129, b"echo", "hé".encode("utf-16-le")))
        assert await ws.get_message() == b"\xc0" + ID + "hé".encode()
        await ws.send_message(req(129, b"ech", b"\x00" + "hé".encode("utf-16-le")))  # pad
        reply = await ws.get_message()
        assert reply[0] == 0 and b"unknown_name" in reply  # the name "ech" has no handler
        await ws.send_message(req(128, b"empty", b""))
        assert await ws.get_message() == b"\xbf" + ID  # an empty reply is legal


async def test_error_replies_use_their_own_types() -> None:
    async with running(WW(), **NO_TIMERS) as server, ws_open(server.url) as ws:
        await ws.get_message()
        await ws.send_message(req(128, b"fail", b"x"))
        code = b"E_NOPE"
        assert await ws.get_message() == b"\x00" + ID + bytes((len(code),)) + code + "nöpe".encode()
        await ws.send_message(req(128, b"crash", b"x"))
        assert await ws.get_message() == b"\x02" + ID  # internal error: nothing leaks


async def test_signals_reach_their_handler() -> None:
    app = WW()
    async with running(app, **NO_TIMERS) as server, ws_open(server.url) as ws:
        await ws.get_message()
        await ws.send_message(b"\x40\x04note" + b"hi")
        await ws.send_message(b"\x21")  # a heartbeat: nothing to answer
        await ws.send_message(req(128, b"echo", b"after"))
        assert await ws.get_message() == b"\xc0" + ID + b"after"
        assert app.signals == [("note", "hi")]


async def test_sessions_created_restored_refused_and_closed_in_webwire_bytes() -> None:
    async with (
        running(WW(), max_session_connections=2, **NO_TIMERS) as server,
        ws_open(server.url) as a,
        ws_open(server.url) as b,
        ws_open(server.url) as c,
    ):
        for ws in (a, b, c):
            await ws.get_message()
        await a.send_message(req(128, b"login", b"ann"))
        created = await a.get_message()
        assert created[0] == 21
        obj = json.loads(created[1:])
        assert set(obj) == {"k", "c", "l", "i"} and obj["i"] == {"user": "ann"}
        key = obj["k"].encode()
        assert len(key) == 64
        assert await a.get_message() == b"\xc0" + ID + key
        parse_session_json(created[1:])  # RFC 3339 times
        await b.send_message(b"\x20" + ID + key)
        restored = await b.get_message()
        assert restored[:9] == b"\xc0" + ID and json.loads(restored[9:])["k"] == obj["k"]
        await c.send_message(b"\x20" + ID + key)
        assert await c.get_message() == b"\x04" + ID  # max session connections
        await c.send_message(b"\x20" + ID + b"n" * 64)
        assert await c.get_message() == b"\x03" + ID  # not found
        await b.send_message(b"\x1f" + ID)
        assert await b.get_message() == b"\xbf" + ID  # closed: empty reply
        await c.send_message(b"\x20" + ID + key)  # a holds it still: now there is room
        assert (await c.get_message())[:9] == b"\xc0" + ID


async def test_restore_with_sessions_off_is_type_5_and_shutdown_is_type_1() -> None:
    async with running(WW(), sessions=False, **NO_TIMERS) as server, ws_open(server.url) as ws:
        await ws.get_message()
        await ws.send_message(b"\x20" + ID + b"k" * 64)
        assert await ws.get_message() == b"\x05" + ID
        server._core.shutting_down = True  # the state a graceful shutdown is in
        await ws.send_message(req(128, b"echo", b"x"))
        assert await ws.get_message() == b"\x01" + ID
        server._core.shutting_down = False


@pytest.mark.parametrize(
    "bad",
    [
        b"\x63",  # an unknown type
        b"\x80" + ID,  # a request with neither name nor payload (min 11 bytes)
        b"\x80" + ID + b"\x09ab",  # a name longer than the message
        b"\x15{}",  # a server-only message
        b"\x20" + ID,  # restore without a key
    ],
)
async def test_a_protocol_violation_closes_the_connection(bad: bytes) -> None:
    async with running(WW(), **NO_TIMERS) as server, ws_open(server.url) as ws:
        await ws.get_message()
        await ws.send_message(bad)
        with pytest.raises(WSClosed) as info:
            await ws.get_message()
        assert (info.value.reason.code, info.value.reason.reason) == (1008, "invalid_envelope")


async def test_the_trio_client_speaks_webwire_and_restores_its_session() -> None:
    async with (
        running(WW(), **NO_TIMERS) as server,
        open_client(server.url, codec=WebwireCodec(), backoff_min=0.001) as client,
    ):
        assert await client.request("echo", b"\x01\x02") == b"\x01\x02"
        assert await client.request("echo", "text") == "text"
        with pytest.raises(RequestError) as info:
            await client.request("crash", "x")
        assert info.value.code == "internal_error"
        assert client.welcome is not None and client.welcome.major == 2
        key = await client.request("login", "zed")
        assert (await client.wait_session()).key == key
        server.connections()[0].close(1012)
        await until(lambda: client.connects == 2)
        await client.wait_connected()
        assert client.session is not None and client.session.key == key
        assert client.session.info == {"user": "zed"}
