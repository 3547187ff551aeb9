"""HTTP/1.1 keep-alive for the health check, the metrics and the control API: real sockets
to a real server, h11 framing both sides (tests/_http.py), httpx's pool when installed."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio.testing import MockClock

from riverside_trio import Accept, AuthRequest, Connection, Handler

from ._helpers import NO_TIMERS, advance, fail_after_real, running, upgrade_request, wait_until
from ._http import KEY, KeptAlive, http

SETTINGS: dict[str, Any] = {**NO_TIMERS, "api_key": KEY, "metrics_path": "/metrics"}


class EchoHandler(Handler):
    """Everyone may connect (as user "u"); messages are echoed."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id="u")

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


def _kept(reply: Any) -> None:
    assert reply.headers["connection"] == "keep-alive"
    assert int(reply.headers["content-length"]) == len(reply.body)


def _closing(reply: Any) -> None:
    assert reply.headers["connection"] == "close"
    assert int(reply.headers["content-length"]) == len(reply.body)


async def test_one_connection_serves_api_health_and_metrics_in_turn() -> None:
    with fail_after_real():
        async with running(EchoHandler, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            ports = set()
            for _ in range(3):
                ping = await client.request("GET", "/api/ping")
                assert (ping.status, ping.body) == (200, b"pong")
                _kept(ping)
                health = await client.request("GET", "/health")
                assert (health.status, health.body) == (200, b"OK")
                _kept(health)
                head = await client.request("HEAD", "/health")
                assert head.status == 200 and head.body == b""
                assert head.headers["content-length"] == "2"  # the GET's length
                sent = await client.request(
                    "POST", "/api/send?user=nobody&type=text", body=b"hello"
                )
                assert sent.status == 200, sent.body
                _kept(sent)
                metrics = await client.request("GET", "/metrics")
                _kept(metrics)
                assert b"riverside_api_requests_total" in metrics.body
                ports.add(client.stream.socket.getsockname()[1])
            assert len(ports) == 1
            # While it waits for its next request, the socket keeps its pending slot.
            assert server.metrics.pending_handshakes == 1
            await client.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)


async def test_connection_close_and_http_1_0_are_honoured() -> None:
    with fail_after_real():
        async with running(EchoHandler, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            assert (await client.request("GET", "/api/ping")).status == 200
            last = await client.request("GET", "/api/ping", headers=[("Connection", "close")])
            assert last.status == 200
            _closing(last)
            assert await client.at_eof()
            await client.aclose()

            for request in (
                b"GET /health HTTP/1.0\r\n\r\n",
                b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                await stream.send_all(request)
                received = b""
                while chunk := await stream.receive_some(65536):
                    received += chunk  # to the EOF: the server closes
                assert received.startswith(b"HTTP/1.1 200 ")
                assert b"\r\nConnection: close\r\n" in received
                assert received.endswith(b"\r\n\r\nOK")
                await stream.aclose()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    mock_clock: MockClock,
) -> None:
    with fail_after_real():
        async with running(EchoHandler, http_keepalive_timeout=5.0, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            assert (await client.request("GET", "/api/ping")).status == 200
            await advance(mock_clock, 4.9)
            # Still open: a request just before the timeout is served, and restarts it.
            assert (await client.request("GET", "/health")).status == 200
            await advance(mock_clock, 4.9)
            assert server.metrics.pending_handshakes == 1
            await advance(mock_clock, 0.2)
            assert await client.at_eof()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)
            await client.aclose()


async def test_keepalive_timeout_0_turns_keepalive_off() -> None:
    with fail_after_real():
        async with running(EchoHandler, http_keepalive_timeout=0, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            reply = await client.request("GET", "/api/ping")
            assert reply.status == 200
            _closing(reply)
            assert await client.at_eof()
            await client.aclose()


async def test_the_last_of_http_keepalive_requests_closes_the_connection() -> None:
    with fail_after_real():
        async with running(EchoHandler, http_keepalive_requests=3, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            _kept(await client.request("GET", "/api/ping"))
            _kept(await client.request("GET", "/api/ping"))
            _closing(await client.request("GET", "/api/ping"))
            assert await client.at_eof()
            await client.aclose()


async def test_pipelined_requests_are_answered_in_order() -> None:
    with fail_after_real():
        async with running(EchoHandler, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            requests: list[tuple[str, str, list[tuple[str, str]], bytes]] = [
                ("POST", "/api/send?user=nobody&type=text", [("X-Request-ID", f"r{n}")], b"x")
                for n in range(3)
            ]
            requests.append(("GET", "/health", [], b""))
            # Every request in one write: each one's bytes from a throwaway h11 client.
            data = b"".join(
                KeptAlive(client.stream, server.port).request_bytes(m, t, h, b)
                for m, t, h, b in requests
            )
            await client.stream.send_all(data)
            for n, (method, target, headers, body) in enumerate(requests):
                client.request_bytes(method, target, headers, body)  # (sent above already)
                reply = await client.reply()
                assert reply.status == 200, reply.body
                _kept(reply)
                if n < 3:
                    assert reply.headers["x-request-id"] == f"r{n}"
                else:
                    assert reply.body == b"OK"
            await client.aclose()


async def _until_eof(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def test_a_bad_second_request_gets_its_error_and_others_are_served() -> None:
    with fail_after_real():
        async with running(EchoHandler, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            assert (await client.request("GET", "/api/ping")).status == 200
            await client.stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            received = await _until_eof(client.stream)
            assert received.startswith(b"HTTP/1.1 400 ")
            assert b"\r\nConnection: close\r\n" in received
            await client.aclose()
            # An unknown route, a wrong key: errors that keep the connection.
            other = await KeptAlive.open(server.port)
            missing = await other.request("GET", "/api/nowhere")
            assert missing.status == 404
            _kept(missing)
            wrong = await other.request("GET", "/api/ping", key="wrong-key")
            assert wrong.status == 401
            _kept(wrong)
            assert (await other.request("GET", "/api/ping")).status == 200
            assert (await http(server.port, "GET", "/health")).status == 200
            await other.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)


async def test_a_body_not_read_to_its_end_closes_the_connection() -> None:
    with fail_after_real():
        async with running(EchoHandler, api_max_body=10, **SETTINGS) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            # Declared over api_max_body: 413 before the body is read; then a close.
            await stream.send_all(
                b"POST /api/send?user=u HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode()
                + b"\r\nContent-Length: 100\r\n\r\n"
            )
            received = await _until_eof(stream)
            assert received.startswith(b"HTTP/1.1 413 ")
            assert b"\r\nConnection: close\r\n" in received
            await stream.aclose()
            # A body a route does not read, but that arrived whole, is dropped: kept alive.
            client = await KeptAlive.open(server.port)
            _kept(await client.request("GET", "/api/ping", body=b"ignored"))
            _kept(await client.request("GET", "/api/ping"))
            await client.aclose()


async def test_shutdown_closes_an_idle_kept_alive_connection_at_once(
    mock_clock: MockClock,
) -> None:
    with fail_after_real():
        async with running(EchoHandler, drain_timeout=60, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            assert (await client.request("GET", "/api/ping")).status == 200
            server.shutdown()
            # No clock moves: the close does not wait for http_keepalive_timeout.
            assert await client.at_eof()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)
            await client.aclose()


async def test_an_upgrade_after_an_api_request_on_the_same_connection_is_served() -> None:
    with fail_after_real():
        async with running(EchoHandler, **SETTINGS) as server:
            client = await KeptAlive.open(server.port)
            assert (await client.request("GET", "/api/ping")).status == 200
            assert server.metrics.pending_handshakes == 1
            await client.stream.send_all(upgrade_request("/ws"))
            received = b""
            while b"\r\n\r\n" not in received:
                received += await client.stream.receive_some(65536)
            assert received.startswith(b"HTTP/1.1 101 ")
            # Now a WebSocket: its slot was given back, and the API reaches it.
            await wait_until(lambda: len(server._core.registry) == 1)
            assert server.metrics.pending_handshakes == 0
            other = await KeptAlive.open(server.port)
            sent = await other.request("POST", "/api/send?user=u&type=text", body=b"hi")
            assert sent.json["connections"] == 1, sent.body
            while b"hi" not in received:
                received += await client.stream.receive_some(65536)
            await other.aclose()
            await client.aclose()


async def test_kept_alive_sockets_count_under_max_pending_per_address() -> None:
    with fail_after_real():
        async with running(EchoHandler, max_pending_per_address=2, **SETTINGS) as server:
            pool = [await KeptAlive.open(server.port) for _ in range(2)]
            for client in pool:
                assert (await client.request("GET", "/api/ping")).status == 200
            extra = await trio.open_tcp_stream("127.0.0.1", server.port)
            assert await _until_eof(extra) == b""  # closed at the accept, nothing written
            assert server.metrics.refused_sockets["pending_per_address"] == 1
            await extra.aclose()
            await pool.pop().aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 1)
            assert (await http(server.port, "GET", "/health")).status == 200
            await pool[0].aclose()


async def test_a_trusted_proxys_connection_is_charged_to_each_requests_client() -> None:
    settings = {**SETTINGS, "trusted_proxies": ["127.0.0.1/32"], "max_pending_per_address": 1}
    with fail_after_real():
        async with running(EchoHandler, **settings) as server:
            admission = server._core.admission
            proxy = await KeptAlive.open(server.port)
            for client in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):
                xff = [("X-Forwarded-For", client)]
                reply = await proxy.request("GET", "/api/ping", headers=xff)
                assert reply.status == 200
                _kept(reply)
                # Charged while it answers; waiting, charged to no client (as at the accept).
                await wait_until(lambda: admission.addresses == 0)
            # So its idle slot does not count against 192.0.2.1.
            other = await KeptAlive.open(server.port)
            xff = [("X-Forwarded-For", "192.0.2.1")]
            assert (await other.request("GET", "/health", headers=xff)).status == 200
            await other.aclose()
            await proxy.aclose()


async def test_an_httpx_pool_sends_its_requests_on_one_connection() -> None:
    httpx = pytest.importorskip("httpx")
    with fail_after_real():
        async with running(EchoHandler, **SETTINGS) as server:
            base = f"http://127.0.0.1:{server.port}"
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(base_url=base, headers=headers) as client:
                ports = set()
                for _ in range(5):
                    reply = await client.post(
                        "/api/send", params={"user": "u", "type": "text"}, content=b"x"
                    )
                    assert reply.status_code == 200
                    assert reply.headers["connection"] == "keep-alive"
                    stream = reply.extensions["network_stream"]
                    ports.add(stream.get_extra_info("client_addr")[1])
                assert len(ports) == 1
