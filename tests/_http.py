"""A small real HTTP/1.1 client over Trio sockets (h11 frames it), for the control API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import h11
import trio

KEY = "test-api-key-1"
OTHER_KEY = "test-api-key-2"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def http(
    port: int,
    method: str,
    target: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Reply:
    """One request on a new connection; the whole answer (the server closes after it)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        all_headers = [("Host", f"127.0.0.1:{port}"), *(headers or [])]
        if method == "POST" or body:
            all_headers.append(("Content-Length", str(len(body))))
        data = conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        status, got, out = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                return Reply(101, {k.decode().lower(): v.decode() for k, v in event.headers}, b"")
            if isinstance(event, h11.Response):
                status = event.status_code
                got = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                out += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return Reply(status, got, bytes(out))


async def api(
    port: int,
    method: str,
    route: str,
    params: dict[str, Any] | None = None,
    *,
    key: str | None = KEY,
    json_body: dict[str, Any] | None = None,
    form: dict[str, Any] | None = None,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    prefix: str = "/api",
) -> Reply:
    """A control API call: ``params`` in the query string, the key as a Bearer header."""
    all_headers = list(headers or [])
    if key is not None:
        all_headers.append(("Authorization", f"Bearer {key}"))
    if json_body is not None:
        body = json.dumps(json_body).encode()
        all_headers.append(("Content-Type", "application/json"))
    elif form is not None:
        body = urlencode(form).encode()
        all_headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    target = prefix + route + ("?" + urlencode(params) if params else "")
    return await http(port, method, target, headers=all_headers, body=body)


async def upgrade(port: int, target: str) -> Reply:
    """A WebSocket upgrade request; its answer (101: the socket is closed right after)."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    return await http(port, "GET", target, headers=headers)


async def refused_upgrade(port: int, target: str) -> Reply:
    """A WebSocket upgrade request that the server is expected to refuse: its answer."""
    reply = await upgrade(port, target)
    assert reply.status != 101, "the upgrade was accepted"
    return reply


class KeptAlive:
    """One HTTP/1.1 connection that sends requests one after another (h11 frames them)."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> KeptAlive:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), port)

    def request_bytes(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        key: str | None = KEY,
    ) -> bytes:
        """A request's bytes (the h11 state moves on: send them)."""
        all_headers = [("Host", f"127.0.0.1:{self.port}"), *(headers or [])]
        if key is not None:
            all_headers.append(("Authorization", f"Bearer {key}"))
        if method == "POST" or body:
            all_headers.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        return data + self.conn.send(h11.EndOfMessage())

    async def request(self, method: str, target: str, **kw: Any) -> Reply:
        """Send one request and read its answer; ready for the next one when kept alive."""
        await self.stream.send_all(self.request_bytes(method, target, **kw))
        return await self.reply()

    async def reply(self) -> Reply:
        """Read the next answer; start h11's next cycle when the server keeps the connection."""
        status, got, out = 0, {}, bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                got = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                out += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return Reply(status, got, bytes(out))
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("closed before an answer")

    async def at_eof(self) -> bool:
        """Whether the server closed the connection (nothing more to read)."""
        return await self.stream.receive_some(65536) == b""

    async def aclose(self) -> None:
        await self.stream.aclose()
