"""The front door: every HTTP answer before (and instead of) the WebSocket upgrade.

Real sockets on 127.0.0.1: ``RawClient`` writes hand-made and hostile requests; trio-websocket
and the ``websockets`` library act as independent, well-behaved clients.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import websockets.sync.client
from trio.testing import MockClock
from trio_websocket import ConnectionRejected, open_websocket_url, wrap_client_stream

from riverside_trio import (
    Accept,
    AuthRequest,
    Connection,
    Handler,
    HTTPRequest,
    HTTPResponse,
    Server,
)

from ._helpers import (
    RawClient,
    advance,
    client_frame,
    fail_after_real,
    running,
    settle,
    upgrade_request,
    wait_until,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


class EchoHandler(Handler):
    """Echoes every message; counts authenticate calls."""

    def __init__(self) -> None:
        self.auth_calls = 0

    async def authenticate(self, req: AuthRequest) -> Accept:
        self.auth_calls += 1
        return await super().authenticate(req)

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


class RouteHandler(Handler):
    """Answers plain HTTP on /hello, /none, /boom, /bad-header; records requests."""

    def __init__(self) -> None:
        self.requests: list[HTTPRequest] = []

    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        self.requests.append(req)
        if req.path == "/hello":
            return HTTPResponse(
                status=201,
                body='{"hello": "world"}',
                headers=[("X-Custom", "yes"), ("Cache-Control", "no-store")],
                content_type="application/json",
            )
        if req.path == "/echo":
            return HTTPResponse(body=req.body)
        if req.path == "/boom":
            raise RuntimeError("handler bug")
        if req.path == "/bad-header":
            return HTTPResponse(headers=[("X-Evil", "a\r\nInjected: 1")])
        if req.path == "/own-length":
            return HTTPResponse(body=b"12345", headers=[("Content-Length", "3")])
        if req.path == "/own-type":
            return HTTPResponse(body=b"{}", headers=[("Content-Type", "application/json")])
        if req.path == "/not-a-response":
            return "just a string"  # type: ignore[return-value]
        return None


async def exchange(server: Server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` on a new connection; return the response head and body."""
    client = await RawClient.connect(server)
    try:
        await client.send(data)
        with trio.fail_after(5):
            return await client.read_head()
    finally:
        await client.aclose()


async def trio_websocket_rejection(server: Server, resource: str = "/ws") -> ConnectionRejected:
    """Connect with trio-websocket and return the rejection it raises.

    The stream is our own: trio-websocket 0.12 does not close its socket on a rejection.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    rejections: list[ConnectionRejected] = []
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await wrap_client_stream(nursery, stream, "127.0.0.1", resource)
    except* ConnectionRejected as group:
        rejections = list(_leaves(group))
    finally:
        await stream.aclose()
    assert rejections, "the upgrade was not rejected"
    return rejections[0]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


async def status_of(server: Server, data: bytes) -> int:
    """The status the server answers ``data`` with."""
    return (await exchange(server, data))[0]


async def exchange_raw(server: Server, data: bytes) -> tuple[list[str], bytes]:
    """Send ``data`` on a new connection; return the response head lines and the body.

    Reads until the server closes, so repeated headers stay visible.
    """
    received = bytearray()
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(data)
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


def header_lines(lines: list[str], name: str) -> list[str]:
    """The values of every ``name`` header line."""
    prefix = name.lower() + ":"
    return [line.split(":", 1)[1].strip() for line in lines if line.lower().startswith(prefix)]


def plain(method: str, path: str, *extra: str, version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def accept_for(key: str) -> str:
    digest = hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return base64.b64encode(digest).decode()


# ---------------------------------------------------------------- plain HTTP


async def test_health_answers_200_ok_as_text_plain() -> None:
    async with running(EchoHandler) as server:
        status, headers, body = await exchange(server, plain("GET", "/health"))
    assert status == 200
    assert body == b"OK"
    assert headers["content-type"].startswith("text/plain")
    assert headers["content-length"] == "2"


async def test_head_health_sends_the_headers_without_a_body() -> None:
    async with running(EchoHandler) as server:
        client = await RawClient.connect(server)
        try:
            await client.send(plain("HEAD", "/health", "Connection: close"))
            with trio.fail_after(5):
                status, headers, body = await client.read_head()
                assert await client.at_eof()
        finally:
            await client.aclose()
    assert status == 200
    assert headers["content-length"] == "2"
    assert body == b""


async def test_plain_http_connection_is_closed_after_one_response() -> None:
    # (health, metrics and the API keep their connections alive: tests/test_keepalive.py)
    async with running(EchoHandler) as server:
        client = await RawClient.connect(server)
        try:
            await client.send(plain("GET", "/riverside.js") + plain("GET", "/health"))
            with trio.fail_after(5):
                status, _, _ = await client.read_head()
                assert status == 200
                assert await client.at_eof()
            assert client.buf == b""
        finally:
            await client.aclose()


async def test_metrics_answers_prometheus_text_with_riverside_metrics() -> None:
    async with running(EchoHandler) as server:
        status, headers, body = await exchange(server, plain("GET", "/metrics"))
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    text = body.decode()
    assert "# TYPE riverside_connected_sessions_count gauge" in text
    for name in (
        "riverside_connected_sessions_count",
        "riverside_sessions_total",
        "riverside_incoming_messages_total",
        "riverside_outgoing_messages_total",
        "riverside_connected_duration_seconds_bucket",
        "riverside_invalid_messages_total",
    ):
        assert f"\n{name}" in text, name


async def test_metrics_reports_the_open_connections() -> None:
    async with running(EchoHandler) as server, open_websocket_url(server.url) as ws:
        await ws.send_message('"ping"')
        with trio.fail_after(5):
            assert await ws.get_message() == '"ping"'
        _, _, body = await exchange(server, plain("GET", "/metrics"))
    lines = body.decode().splitlines()
    assert "riverside_connected_sessions_count 1.0" in lines
    assert "riverside_sessions_total 1.0" in lines
    assert 'riverside_incoming_messages_total{frame_type="text"} 1.0' in lines


async def test_metrics_path_can_be_turned_off() -> None:
    async with running(EchoHandler, metrics_path=None) as server:
        status, _, _ = await exchange(server, plain("GET", "/metrics"))
    assert status == 404


async def test_health_and_metrics_follow_the_configured_paths() -> None:
    async with running(EchoHandler, health_path="/livez", metrics_path="/prom") as server:
        assert await status_of(server, plain("GET", "/livez")) == 200
        status, _, body = await exchange(server, plain("GET", "/prom"))
        assert status == 200
        assert b"riverside_connected_sessions_count" in body
        assert await status_of(server, plain("GET", "/health")) == 404


async def test_unknown_path_answers_404() -> None:
    async with running(EchoHandler) as server:
        status, _, _ = await exchange(server, plain("GET", "/nowhere"))
    assert status == 404


async def test_plain_get_on_the_websocket_path_answers_426_with_upgrade_header() -> None:
    async with running(EchoHandler) as server:
        status, headers, _ = await exchange(server, plain("GET", "/ws"))
    assert status == 426
    assert headers["upgrade"].lower() == "websocket"


async def test_post_on_the_websocket_path_answers_405_allowing_get() -> None:
    async with running(EchoHandler) as server:
        status, headers, _ = await exchange(
            server, plain("POST", "/ws", "Content-Length: 2") + b"{}"
        )
    assert status == 405
    assert headers["allow"] == "GET"


async def test_user_route_sends_status_body_headers_and_content_type() -> None:
    handler = RouteHandler()
    async with running(handler) as server:
        status, headers, body = await exchange(server, plain("GET", "/hello"))
    assert status == 201
    assert json.loads(body) == {"hello": "world"}
    assert headers["content-type"] == "application/json"
    assert headers["x-custom"] == "yes"
    assert headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(body))


async def test_user_route_receives_method_path_query_headers_peer_and_body() -> None:
    handler = RouteHandler()
    async with running(handler) as server:
        client = await RawClient.connect(server)
        try:
            local_port = client.stream.socket.getsockname()[1]
            await client.send(
                plain("PUT", "/e%63ho?a=1&b=2&a=3", "X-Token: abc", "Content-Length: 5") + b"hello"
            )
            with trio.fail_after(5):
                status, _, body = await client.read_head()
        finally:
            await client.aclose()
    assert (status, body) == (200, b"hello")
    [req] = handler.requests
    assert req.method == "PUT"
    assert req.path == "/echo"
    assert req.query == {"a": "3", "b": "2"}
    assert req.headers["x-token"] == "abc"
    assert req.headers["X-TOKEN"] == "abc"
    assert req.peer == ("127.0.0.1", local_port)
    assert req.body == b"hello"


async def test_user_route_returning_none_answers_404() -> None:
    handler = RouteHandler()
    async with running(handler) as server:
        status, _, _ = await exchange(server, plain("GET", "/none"))
    assert status == 404
    assert [r.path for r in handler.requests] == ["/none"]


async def test_head_on_a_user_route_omits_the_body() -> None:
    async with running(RouteHandler) as server:
        status, headers, body = await exchange(server, plain("HEAD", "/hello"))
    assert status == 201
    assert int(headers["content-length"]) > 0
    assert body == b""


@pytest.mark.parametrize("path", ["/boom", "/bad-header", "/not-a-response"])
async def test_user_route_failure_answers_500_and_the_server_keeps_serving(path: str) -> None:
    async with running(RouteHandler) as server:
        status, headers, _ = await exchange(server, plain("GET", path))
        assert status == 500
        assert "injected" not in headers
        assert await status_of(server, plain("GET", "/hello")) == 201
        assert await status_of(server, plain("GET", "/health")) == 200


async def test_user_route_header_cannot_add_a_second_content_length() -> None:
    async with running(RouteHandler) as server:
        lines, body = await exchange_raw(server, plain("GET", "/own-length"))
    # one framing header that matches the body, or a 500: never two that disagree
    assert header_lines(lines, "Content-Length") == [str(len(body))]


async def test_user_route_content_type_header_is_the_only_content_type_sent() -> None:
    async with running(RouteHandler) as server:
        lines, body = await exchange_raw(server, plain("GET", "/own-type"))
    assert lines[0].startswith("HTTP/1.1 200")
    assert body == b"{}"
    assert header_lines(lines, "Content-Type") == ["application/json"]


async def test_request_body_over_max_message_size_answers_413() -> None:
    handler = RouteHandler()
    async with running(handler, max_message_size=1000) as server:
        status, _, _ = await exchange(
            server, plain("POST", "/echo", "Content-Length: 2000") + b"x" * 2000
        )
        assert status == 413
        assert handler.requests == []
        status, _, body = await exchange(
            server, plain("POST", "/echo", "Content-Length: 1000") + b"y" * 1000
        )
        assert (status, body) == (200, b"y" * 1000)


async def test_chunked_request_body_over_max_message_size_answers_413() -> None:
    handler = RouteHandler()
    chunk = b"%x\r\n%s\r\n" % (600, b"z" * 600)
    async with running(handler, max_message_size=1000) as server:
        status, _, _ = await exchange(
            server,
            plain("POST", "/echo", "Transfer-Encoding: chunked") + chunk + chunk + b"0\r\n\r\n",
        )
    assert status == 413
    assert handler.requests == []


# ---------------------------------------------------------------- malformed upgrades


def _without(name: str) -> dict[str, Any]:
    return {"headers": {name: None}}


MALFORMED_UPGRADES = {
    "missing key": upgrade_request(**_without("Sec-WebSocket-Key")),
    "key not base64": upgrade_request(key="this is not base64!!!!=="),
    "key of 15 bytes": upgrade_request(key=base64.b64encode(b"x" * 15).decode()),
    "key of 17 bytes": upgrade_request(key=base64.b64encode(b"x" * 17).decode()),
    "key without padding": upgrade_request(key=RFC_KEY.rstrip("=")),
    "two keys": upgrade_request(key=RFC_KEY).replace(
        b"\r\n\r\n", f"\r\nSec-WebSocket-Key: {RFC_KEY}\r\n\r\n".encode()
    ),
    "missing version": upgrade_request(**_without("Sec-WebSocket-Version")),
    "POST": upgrade_request(method="POST"),
    "HTTP/1.0": upgrade_request(version="HTTP/1.0"),
    "no Host": upgrade_request().replace(b"Host: 127.0.0.1\r\n", b""),
    "no Connection: Upgrade": upgrade_request(headers={"Connection": "keep-alive"}),
    "garbage request line": b"HELLO THERE\r\nHost: 127.0.0.1\r\n\r\n",
    "binary garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED_UPGRADES.values(), ids=MALFORMED_UPGRADES)
async def test_malformed_upgrade_answers_400_without_authenticating(request_bytes: bytes) -> None:
    handler = EchoHandler()
    async with running(handler) as server:
        status, _, _ = await exchange(server, request_bytes)
        assert status == 400
        # and the server still accepts a good one
        async with open_websocket_url(server.url) as ws:
            await ws.send_message('"ok"')
            with trio.fail_after(5):
                assert await ws.get_message() == '"ok"'
    assert handler.auth_calls == 1


@pytest.mark.parametrize("version", ["8", "14", "13, 8", ""])
async def test_wrong_websocket_version_answers_400_naming_version_13(version: str) -> None:
    handler = EchoHandler()
    async with running(handler) as server:
        request_bytes = upgrade_request(headers={"Sec-WebSocket-Version": version})
        status, headers, _ = await exchange(server, request_bytes)
    assert status == 400
    assert headers["sec-websocket-version"] == "13"
    assert handler.auth_calls == 0


async def test_upgrade_header_tokens_are_case_insensitive() -> None:
    async with running(EchoHandler) as server:
        request_bytes = upgrade_request(
            headers={"Upgrade": "WebSocket", "Connection": "keep-alive, UPGRADE"}
        )
        status, _, _ = await exchange(server, request_bytes)
    assert status == 101


async def test_upgrade_to_another_path_answers_404() -> None:
    handler = EchoHandler()
    async with running(handler) as server:
        status, _, _ = await exchange(server, upgrade_request("/elsewhere"))
    assert status == 404
    assert handler.auth_calls == 0


async def test_websocket_path_with_star_accepts_every_path_under_the_prefix() -> None:
    async with running(EchoHandler, path="/ws/*") as server:
        assert await status_of(server, upgrade_request("/ws/room/1")) == 101
        assert await status_of(server, upgrade_request("/other")) == 404


async def test_request_head_over_max_header_size_answers_431_when_it_arrives_in_pieces() -> None:
    async with running(EchoHandler, max_header_size=1024) as server:
        # the head never ends: the server gives up once the buffer passes the limit
        big = upgrade_request().replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * 4000)
        status, _, _ = await exchange(server, big)
    assert status == 431


@pytest.mark.parametrize("path", ["/ws", "/health"])
async def test_complete_request_head_over_max_header_size_answers_431(path: str) -> None:
    handler = EchoHandler()
    async with running(handler, max_header_size=1024) as server:
        big = upgrade_request(path, headers={"X-Big": "a" * 4000})
        status, _, _ = await exchange(server, big)
    assert status == 431
    assert handler.auth_calls == 0


async def test_request_head_within_max_header_size_is_accepted() -> None:
    async with running(EchoHandler, max_header_size=2048) as server:
        status, _, _ = await exchange(server, upgrade_request(headers={"X-Pad": "a" * 1000}))
    assert status == 101


async def test_half_a_request_head_answers_408_after_handshake_timeout(
    mock_clock: MockClock,
) -> None:
    handler = EchoHandler()
    async with running(handler, handshake_timeout=2.0) as server, fail_after_real():
        stalled = await RawClient.connect(server)
        late = await RawClient.connect(server)
        try:
            await stalled.send(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
            request = upgrade_request()
            await late.send(request[:40])
            await advance(mock_clock, 1.9)
            assert await stalled.received_nothing()
            assert await late.received_nothing()
            # the rest of the head, within the timeout: upgraded, and never timed out
            await late.send(request[40:])
            status, _, _ = await late.read_head()
            assert status == 101
            await advance(mock_clock, 0.2)
            status, _, body = await stalled.read_head()
            assert await stalled.at_eof()
            assert (status, body) == (408, b"request head took too long\n")
            await advance(mock_clock, 10.0)
            assert await late.received_nothing()
        finally:
            await stalled.aclose()
            await late.aclose()
        assert await status_of(server, plain("GET", "/health")) == 200
    assert handler.auth_calls == 1


async def test_a_request_body_that_stalls_answers_408_after_handshake_timeout(
    mock_clock: MockClock,
) -> None:
    async with running(RouteHandler(), handshake_timeout=2.0) as server, fail_after_real():
        client = await RawClient.connect(server)
        try:
            await client.send(plain("POST", "/echo", "Content-Length: 10") + b"12345")
            await settle()  # the server reads the head (and starts the body's timer) at 0
            await advance(mock_clock, 1.9)
            assert await client.received_nothing()
            await advance(mock_clock, 0.2)
            status, _, body = await client.read_head()
            assert (status, body) == (408, b"request took too long\n")
        finally:
            await client.aclose()


async def test_client_closing_before_a_request_gets_no_answer_and_server_keeps_serving() -> None:
    async with running(EchoHandler) as server:
        client = await RawClient.connect(server)
        try:
            await client.stream.send_eof()
            with trio.fail_after(5):
                assert await client.at_eof()
            assert client.buf == b""
        finally:
            await client.aclose()
        assert await status_of(server, plain("GET", "/health")) == 200


# ---------------------------------------------------------------- Origin


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://app.example.com", 101),
        ("http://localhost:8080", 101),
        ("https://evil.example.com", 403),
        ("https://app.example.com:443", 403),
        ("http://app.example.com", 403),
        ("null", 403),
        (None, 403),
    ],
)
async def test_allowed_origins_admits_only_listed_origins(origin: str | None, status: int) -> None:
    handler = EchoHandler()
    allowed = ["https://app.example.com", "http://localhost:8080"]
    async with running(handler, allowed_origins=allowed) as server:
        got, _, _ = await exchange(server, upgrade_request(headers={"Origin": origin}))  # type: ignore[dict-item]
    assert got == status
    assert handler.auth_calls == (1 if status == 101 else 0)


async def test_allowed_origins_compares_origins_lowercased() -> None:
    async with running(EchoHandler, allowed_origins=["https://App.Example.com"]) as server:
        lower = upgrade_request(headers={"Origin": "https://app.example.com"})
        assert await status_of(server, lower) == 101
        # Config documents the comparison as case-insensitive: the header's case must not matter
        upper = upgrade_request(headers={"Origin": "HTTPS://APP.EXAMPLE.COM"})
        assert await status_of(server, upper) == 101


async def test_without_allowed_origins_any_origin_and_no_origin_are_admitted() -> None:
    async with running(EchoHandler) as server:
        assert await status_of(server, upgrade_request(headers={"Origin": "https://x.y"})) == 101
        assert await status_of(server, upgrade_request()) == 101


async def test_websockets_library_client_sends_origin_and_is_admitted() -> None:
    async with running(EchoHandler, allowed_origins=["https://app.example.com"]) as server:
        url = server.url

        def talk() -> str:
            with websockets.sync.client.connect(
                url, origin="https://app.example.com", proxy=None, open_timeout=5, close_timeout=5
            ) as ws:
                ws.send('"hi"')
                return ws.recv(timeout=5)

        assert await trio.to_thread.run_sync(talk) == '"hi"'


# ---------------------------------------------------------------- max_connections


async def test_upgrade_beyond_max_connections_answers_503_without_authenticating() -> None:
    handler = EchoHandler()
    async with (
        running(handler, max_connections=2) as server,
        open_websocket_url(server.url),
        open_websocket_url(server.url) as second,
    ):
        assert handler.auth_calls == 2
        status, headers, _ = await exchange(server, upgrade_request())
        assert status == 503
        assert "retry-after" in headers
        assert handler.auth_calls == 2
        assert (await trio_websocket_rejection(server)).status_code == 503
        assert handler.auth_calls == 2
        assert server.metrics.rejected[503] == 2
        # plain HTTP is not limited
        assert await status_of(server, plain("GET", "/health")) == 200
        await second.aclose()
        await wait_until(lambda: server.connection_count == 1)
        async with open_websocket_url(server.url) as third:
            await third.send_message('"third"')
            with trio.fail_after(5):
                assert await third.get_message() == '"third"'
    assert handler.auth_calls == 3


# ---------------------------------------------------------------- the 101 response


async def test_101_response_carries_the_rfc_6455_accept_value() -> None:
    assert accept_for(RFC_KEY) == RFC_ACCEPT  # the RFC's own example, section 1.3
    async with running(EchoHandler) as server:
        status, headers, _ = await exchange(server, upgrade_request(key=RFC_KEY))
    assert status == 101
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert "sec-websocket-protocol" not in headers
    assert "sec-websocket-extensions" not in headers


async def test_101_accept_value_follows_the_client_key() -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    async with running(EchoHandler) as server:
        status, headers, _ = await exchange(server, upgrade_request(key=key))
    assert status == 101
    assert headers["sec-websocket-accept"] == accept_for(key)


class SubprotocolHandler(Handler):
    """Selects the subprotocol named in the query (?pick=...)."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id="u", subprotocol=req.query.get("pick"))

    async def init(self, conn: Connection) -> None:
        conn.send({"subprotocol": conn.subprotocol})


async def test_selected_subprotocol_is_sent_in_the_101_and_seen_by_the_client() -> None:
    async with running(SubprotocolHandler) as server:
        status, headers, _ = await exchange(
            server,
            upgrade_request(
                "/ws?pick=chat.v2", headers={"Sec-WebSocket-Protocol": "chat.v1, chat.v2"}
            ),
        )
        assert status == 101
        assert headers["sec-websocket-protocol"] == "chat.v2"
        async with open_websocket_url(
            server.url + "?pick=chat.v1", subprotocols=["chat.v1", "chat.v2"]
        ) as ws:
            assert ws.subprotocol == "chat.v1"
            with trio.fail_after(5):
                assert json.loads(await ws.get_message()) == {"subprotocol": "chat.v1"}


async def test_selecting_a_subprotocol_the_client_did_not_offer_answers_500() -> None:
    async with running(SubprotocolHandler) as server:
        status, headers, _ = await exchange(
            server,
            upgrade_request("/ws?pick=mqtt", headers={"Sec-WebSocket-Protocol": "chat.v1"}),
        )
        assert status == 500
        assert "sec-websocket-protocol" not in headers
        status, _, _ = await exchange(server, upgrade_request("/ws?pick=mqtt"))
        assert status == 500
        assert server.metrics.rejected[500] == 2


async def test_frames_sent_with_the_request_head_in_one_packet_are_processed() -> None:
    async with running(EchoHandler) as server:
        client = await RawClient.connect(server)
        try:
            await client.send(
                upgrade_request()
                + client_frame(1, b'"first"')
                + client_frame(1, b"[1, 2]")
                + client_frame(8, b"\x03\xe8bye")
            )
            with trio.fail_after(5):
                status, _, _ = await client.read_head()
                assert status == 101
                assert await client.read_frame() == (1, b'"first"', True)
                assert await client.read_frame() == (1, b"[1,2]", True)
                op, payload, _ = await client.read_frame()
                assert (op, payload[:2]) == (8, b"\x03\xe8")
                assert await client.at_eof()
        finally:
            await client.aclose()


async def test_independent_clients_complete_the_handshake_and_echo() -> None:
    async with running(EchoHandler) as server:
        async with open_websocket_url(server.url) as ws:
            await ws.send_message('{"via": "trio-websocket"}')
            with trio.fail_after(5):
                assert json.loads(await ws.get_message()) == {"via": "trio-websocket"}

        url = server.url

        def talk() -> str:
            with websockets.sync.client.connect(
                url, proxy=None, open_timeout=5, close_timeout=5
            ) as ws:
                ws.send('{"via": "websockets"}')
                return ws.recv(timeout=5)

        assert json.loads(await trio.to_thread.run_sync(talk)) == {"via": "websockets"}
