"""Limits before the handshake: pending sockets (globally and per address), the deadline of
the request head, authenticate's time limit, header count, bodies on upgrades, and
X-Forwarded-For behind trusted proxies.

Real sockets on 127.0.0.1 (clients bind 127.0.0.x to be other addresses) and ::1; a hostile
client and a well-behaved one side by side. Every timer runs on pytest-trio's ``mock_clock``
(its time moves only when a test jumps it) and tests wait on events or on the server's state
settling (``wait_until``), never on sleeps; ``fail_after_real`` turns a hang into a failure.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import socket
import ssl
import subprocess
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from riverside_trio import (
    Accept,
    AuthRequest,
    Config,
    Connection,
    Handler,
    HTTPRequest,
    HTTPResponse,
    Server,
)
from riverside_trio.server._admission import Admission, TrustedProxies, address_key

from ._helpers import (
    NO_TIMERS,
    RawClient,
    fail_after_real,
    running,
    settle,
    upgrade_request,
    wait_until,
    ws_open,
)


class EchoHandler(Handler):
    """Echoes; ``authenticate`` records every request and waits forever for a client that
    asks for ``/ws?slow`` (``slow_waiting`` counts those waiting now)."""

    def __init__(self) -> None:
        self.slow_waiting = 0
        self.requests: list[AuthRequest] = []

    async def authenticate(self, req: AuthRequest) -> Accept:
        self.requests.append(req)
        if "slow" in req.query:
            self.slow_waiting += 1
            try:
                await trio.sleep_forever()
            finally:
                self.slow_waiting -= 1
        return Accept(user_id="u")

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


# ---------------------------------------------------------------- helpers


async def connect_from(server: Server, source: str = "127.0.0.1") -> trio.SocketStream:
    """A TCP connection to ``server`` from the local address ``source``."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    sock = trio.socket.socket(family)
    await sock.bind((source, 0))
    await sock.connect((server.config.host, server.port))
    return trio.SocketStream(sock)


async def received_until_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


HALF_A_HEAD = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr"


def gauge(body: bytes, name: str) -> float:
    match = re.search(rb"^" + re.escape(name.encode()) + rb" (\S+)$", body, re.MULTILINE)
    assert match is not None, body.decode()
    return float(match.group(1))


async def scrape(server: Server, source: str = "127.0.0.1") -> bytes:
    client = RawClient(await connect_from(server, source))
    try:
        await client.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, body = await client.read_head()
    finally:
        await client.aclose()
    assert status == 200
    return body


async def echo_once(server: Server, text: str = "still served") -> None:
    async with ws_open(server.url) as ws:
        await ws.send_message(f'"{text}"')
        assert await ws.get_message() == f'"{text}"'


def server_tasks(server: Server) -> int:
    nursery = server._core.nursery
    assert nursery is not None
    return len(nursery.child_tasks)


# ---------------------------------------------------------------- pending sockets


async def test_slowloris_from_one_address_is_capped_while_other_clients_are_served(
    mock_clock: trio.testing.MockClock,
) -> None:
    cap, extra = 8, 20
    with fail_after_real():
        async with running(EchoHandler, max_pending_per_address=cap, **NO_TIMERS) as server:
            idle_tasks = server_tasks(server)
            hostile = []
            for _ in range(cap):
                stream = await connect_from(server, "127.0.0.2")
                await stream.send_all(HALF_A_HEAD)
                hostile.append(stream)
            await wait_until(lambda: server.metrics.pending_handshakes == cap)

            refused = [await connect_from(server, "127.0.0.2") for _ in range(extra)]
            for stream in refused:
                assert await received_until_eof(stream) == b""  # closed, nothing written
                await stream.aclose()
            assert server.metrics.refused_sockets["pending_per_address"] == extra
            assert server.metrics.refused_sockets["pending_global"] == 0
            # Bounded: a refused socket costs no task and no table entry.
            assert server.metrics.pending_handshakes == cap
            assert server_tasks(server) == idle_tasks + cap
            assert server._core.admission.addresses == 1

            # The well-behaved client, from another address, is served all along.
            await echo_once(server)
            body = await scrape(server)
            assert (
                gauge(body, 'riverside_refused_sockets_total{reason="pending_per_address"}')
                == extra
            )
            assert gauge(body, 'riverside_refused_sockets_total{reason="pending_global"}') == 0
            assert gauge(body, "riverside_pending_handshakes_count") == cap + 1  # + the scrape

            # The head's deadline frees every hostile slot; the address may come back.
            mock_clock.jump(server.config.handshake_timeout)
            for stream in hostile:
                status, _, _ = await RawClient(stream).read_head()
                assert status == 408
                await stream.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)
            assert server._core.admission.addresses == 0
            client = RawClient(await connect_from(server, "127.0.0.2"))
            assert (await client.upgrade())[0] == 101
            await client.aclose()


async def test_global_cap_refuses_new_sockets_until_slots_free_and_open_connections_go_on(
    mock_clock: trio.testing.MockClock,
) -> None:
    cap = 6
    with fail_after_real():
        async with running(EchoHandler, max_pending_handshakes=cap, **NO_TIMERS) as server:
            async with ws_open(server.url) as established:
                assert server.metrics.pending_handshakes == 0  # a WebSocket is not pending
                hostile = []
                for i in range(cap):  # one socket from each of six addresses
                    stream = await connect_from(server, f"127.0.0.{10 + i}")
                    await stream.send_all(HALF_A_HEAD)
                    hostile.append(stream)
                await wait_until(lambda: server.metrics.pending_handshakes == cap)

                latecomers = [await connect_from(server, "127.0.0.1") for _ in range(3)]
                for stream in latecomers:
                    assert await received_until_eof(stream) == b""
                    await stream.aclose()
                assert server.metrics.refused_sockets == {"pending_global": 3}

                # A WebSocket opened before the flood is not pending: it goes on.
                await established.send_message('"through the flood"')
                assert await established.get_message() == '"through the flood"'

                mock_clock.jump(server.config.handshake_timeout)
                for stream in hostile:
                    assert (await RawClient(stream).read_head())[0] == 408
                    await stream.aclose()
                await wait_until(lambda: server.metrics.pending_handshakes == 0)

            await echo_once(server, "after the flood")
            body = await scrape(server)
            assert gauge(body, 'riverside_refused_sockets_total{reason="pending_global"}') == 3
            assert gauge(body, "riverside_pending_handshakes_count") == 1  # the scrape itself


async def test_head_deadline_counts_from_the_accept_not_from_the_first_byte(
    mock_clock: trio.testing.MockClock,
) -> None:
    with fail_after_real():
        async with running(EchoHandler, handshake_timeout=10, **NO_TIMERS) as server:
            client = RawClient(await connect_from(server))
            await wait_until(lambda: server.metrics.pending_handshakes == 1)
            mock_clock.jump(6)
            await client.send(HALF_A_HEAD)
            await settle()
            mock_clock.jump(3.5)  # 9.5 s after the accept, 3.5 s after the first byte
            await settle()
            assert await client.received_nothing()
            mock_clock.jump(1)
            assert (await client.read_head())[0] == 408
            await client.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)


async def test_a_stream_client_meets_the_same_caps(mock_clock: trio.testing.MockClock) -> None:
    with fail_after_real():
        async with running(EchoHandler, max_pending_per_address=1, **NO_TIMERS) as server:
            first_client, first_server = trio.testing.memory_stream_pair()
            second_client, second_server = trio.testing.memory_stream_pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.serve_stream, first_server, ("192.0.2.1", 1))
                await wait_until(lambda: server.metrics.pending_handshakes == 1)
                await server.serve_stream(second_server, ("192.0.2.1", 2))  # refused: returns
                assert server.metrics.refused_sockets["pending_per_address"] == 1
                assert await second_client.receive_some(1) == b""  # closed, nothing written
                await second_client.aclose()
                await first_client.aclose()
            assert server.metrics.pending_handshakes == 0


# ---------------------------------------------------------------- IPv6


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("2001:db8:1:2::5", "2001:db8:1:2:ffff:ffff:ffff:ffff", True),
        ("2001:db8:1:2::5", "2001:db8:1:3::5", False),
        ("::1", "::2", True),
        ("fe80::1%eth0", "fe80::2", True),
        ("::ffff:192.0.2.1", "192.0.2.1", True),
        ("192.0.2.1", "192.0.2.2", False),
    ],
)
def test_ipv6_addresses_are_grouped_by_their_64(a: str, b: str, same: bool) -> None:
    assert (address_key(a) == address_key(b)) is same


async def test_one_ipv6_64_shares_one_per_address_allowance() -> None:
    refused: Counter[str] = Counter()
    admission = Admission(Config(max_pending_per_address=2), refused)
    one = admission.admit("2001:db8:0:7::1")
    two = admission.admit("2001:db8:0:7:8000::2")
    assert one is not None and two is not None
    assert admission.admit("2001:db8:0:7::3") is None  # the same /64
    assert admission.admit("2001:db8:0:8::1") is not None  # the next /64
    assert refused == {"pending_per_address": 1}
    one.release()
    one.release()  # idempotent
    assert admission.admit("2001:db8:0:7::3") is not None
    assert admission.pending == 3


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_per_address_cap_over_ipv6(mock_clock: trio.testing.MockClock) -> None:
    with fail_after_real():
        async with running(
            EchoHandler, host="::1", max_pending_per_address=2, **NO_TIMERS
        ) as server:
            hostile = [await connect_from(server, "::1") for _ in range(2)]
            await wait_until(lambda: server.metrics.pending_handshakes == 2)
            refused = await connect_from(server, "::1")
            assert await received_until_eof(refused) == b""
            await refused.aclose()
            assert server.metrics.refused_sockets == {"pending_per_address": 1}
            for stream in hostile:
                await stream.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)
            client = RawClient(await connect_from(server, "::1"))
            assert (await client.upgrade())[0] == 101
            await client.aclose()


# ---------------------------------------------------------------- authenticate_timeout


async def test_authenticate_past_its_time_limit_gets_504_while_others_are_served(
    mock_clock: trio.testing.MockClock,
) -> None:
    handler = EchoHandler()
    with fail_after_real():
        async with running(handler, authenticate_timeout=5, **NO_TIMERS) as server:
            slow = RawClient(await connect_from(server))
            await slow.send(upgrade_request("/ws?slow"))
            await wait_until(lambda: handler.slow_waiting == 1)
            assert server.metrics.pending_handshakes == 1

            await echo_once(server, "not held up")  # while authenticate hangs for the other

            mock_clock.jump(4.5)
            await settle()
            assert await slow.received_nothing()
            assert (server.metrics.pending_handshakes, handler.slow_waiting) == (1, 1)
            mock_clock.jump(1)
            status, headers, body = await slow.read_head()
            assert (status, body) == (504, b"authenticate took too long\n")
            assert headers["connection"] == "close"
            await slow.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)
            assert handler.slow_waiting == 0  # authenticate was cancelled
            assert server.metrics.rejected[504] == 1
            assert server.connection_count == 0
            body = await scrape(server)
            assert gauge(body, 'riverside_rejected_connections_total{status="504"}') == 1


# ---------------------------------------------------------------- TLS


@pytest.fixture
def tls_config(tmp_path: Path) -> Config:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key)]
    command += ["-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return Config(tls_certfile=str(cert), tls_keyfile=str(key))


async def test_tls_handshake_counts_against_the_head_deadline_and_frees_the_slot(
    mock_clock: trio.testing.MockClock, tls_config: Config
) -> None:
    assert tls_config.tls_certfile is not None
    settings = {"tls_certfile": tls_config.tls_certfile, "tls_keyfile": tls_config.tls_keyfile}
    with fail_after_real():
        async with running(EchoHandler, handshake_timeout=10, **settings, **NO_TIMERS) as server:
            silent = await connect_from(server)  # never starts TLS
            await wait_until(lambda: server.metrics.pending_handshakes == 1)
            mock_clock.jump(9)
            await settle()
            assert server.metrics.pending_handshakes == 1
            assert await RawClient(silent).received_nothing()
            mock_clock.jump(1)
            assert await received_until_eof(silent) == b""  # nothing can be said before TLS
            await silent.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)

            ctx = ssl.create_default_context(cafile=tls_config.tls_certfile)
            stream = trio.SSLStream(await connect_from(server), ctx, server_hostname="127.0.0.1")
            client = RawClient(stream)  # type: ignore[arg-type]
            assert (await client.upgrade())[0] == 101
            await client.aclose()


# ---------------------------------------------------------------- header count, bodies


async def exchange(server: Server, data: bytes) -> tuple[int, bytes]:
    client = RawClient(await connect_from(server))
    try:
        await client.send(data)
        status, _, body = await client.read_head()
    finally:
        await client.aclose()
    return status, body


def with_headers(n: int) -> bytes:
    """An upgrade request with ``n`` header fields in all."""
    head = upgrade_request().partition(b"\r\n\r\n")[0]
    pad = b"".join(b"\r\nX-Pad-%d: x" % i for i in range(n - head.count(b"\r\n")))
    return head + pad + b"\r\n\r\n"


async def test_max_headers_allows_exactly_that_many_and_answers_431_beyond() -> None:
    handler = EchoHandler()
    async with running(handler, max_headers=10, **NO_TIMERS) as server:
        assert with_headers(10).count(b": ") == 10
        assert (await exchange(server, with_headers(10)))[0] == 101
        status, body = await exchange(server, with_headers(11))
        assert (status, body) == (431, b"more than 10 header fields\n")
        plain = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 10 + b"\r\n"
        assert (await exchange(server, plain))[0] == 431
    assert len(handler.requests) == 1


NO_BODY = b"a WebSocket upgrade carries no body: no Content-Length other than 0, no "
NO_BODY += b"Transfer-Encoding\n"


@pytest.mark.parametrize(
    ("headers", "answer"),
    [
        ({"Content-Length": "5"}, NO_BODY),
        ({"Content-Length": "1"}, NO_BODY),
        ({"Transfer-Encoding": "chunked"}, NO_BODY),
        # h11 refuses any other transfer coding itself
        ({"Transfer-Encoding": "gzip"}, None),
        ({"Transfer-Encoding": "gzip, chunked"}, None),
    ],
)
async def test_an_upgrade_carrying_a_body_answers_400_without_authenticating(
    headers: dict[str, str], answer: bytes | None
) -> None:
    handler = EchoHandler()
    async with running(handler, **NO_TIMERS) as server:
        status, body = await exchange(server, upgrade_request(headers=headers) + b"hello")
        assert status == 400
        assert answer is None or body == answer
        for zero in ("0", "00"):
            head = upgrade_request(headers={"Content-Length": zero})
            assert (await exchange(server, head))[0] == 101
    assert len(handler.requests) == 2  # only the last two


# Characters str.strip() drops that h11 lets through in a header value.
@pytest.mark.parametrize("junk", ["\xa0", "\x85", "\x1c", "\x1f"])
async def test_header_values_are_trimmed_of_sp_and_htab_only(junk: str) -> None:
    handler = EchoHandler()
    async with running(handler, **NO_TIMERS) as server:
        upgrade = f"{junk}websocket".encode("latin-1")
        head = upgrade_request().replace(b"Upgrade: websocket", b"Upgrade: " + upgrade)
        assert (await exchange(server, head))[0] == 426  # a plain GET: no "websocket" token
        offered = f"chat{junk}, \tmail".encode("latin-1")
        head = upgrade_request(headers={"Sec-WebSocket-Protocol": offered.decode("latin-1")})
        assert (await exchange(server, head.decode("utf-8").encode("latin-1")))[0] == 101
    [req] = handler.requests
    assert req.subprotocols == (f"chat{junk}", "mail")


# ---------------------------------------------------------------- X-Forwarded-For


@pytest.mark.parametrize(
    ("trusted", "values", "client"),
    [
        # the right-most address that is not a trusted proxy
        (["10.0.0.0/8"], ["203.0.113.7, 10.0.0.2"], "203.0.113.7"),
        (["10.0.0.0/8"], ["1.1.1.1, 203.0.113.7, 10.0.0.2, 10.0.0.3"], "203.0.113.7"),
        (["10.0.0.0/8"], ["198.51.100.9", "203.0.113.7,10.0.0.2"], "203.0.113.7"),
        # a forged left-most entry does not win over the address the proxy saw
        (["10.0.0.0/8"], ["10.9.9.9, 203.0.113.7"], "203.0.113.7"),
        # every entry a trusted proxy: the left-most
        (["10.0.0.0/8"], ["10.0.0.5, 10.0.0.2"], "10.0.0.5"),
        # ports, brackets, IPv6, whitespace (SP and HTAB only)
        (["10.0.0.0/8"], ["203.0.113.7:4711"], "203.0.113.7"),
        (["10.0.0.0/8"], ["[2001:db8::7]:443 ,\t10.0.0.2"], "2001:db8::7"),
        (["2001:db8:ffff::/48"], ["2001:DB8::7, 2001:db8:ffff::1"], "2001:db8::7"),
        (["10.0.0.0/8"], ["::ffff:203.0.113.7"], "203.0.113.7"),
        # nothing usable
        (["10.0.0.0/8"], [], None),
        (["10.0.0.0/8"], [" , "], None),
        (["10.0.0.0/8"], ["unknown, 10.0.0.2"], None),
        (["10.0.0.0/8"], ["203.0.113.7\xa0"], None),
        (["10.0.0.0/8"], ["[2001:db8::7"], None),
        (["10.0.0.0/8"], ["203.0.113.7:http"], None),
        (["10.0.0.0/8"], ["203.0.113.7, not-an-ip"], None),
        (["10.0.0.0/8"], ["01.2.3.4"], None),  # leading zeros: octal to some parsers
    ],
)
def test_x_forwarded_for_gives_the_right_most_untrusted_address(
    trusted: list[str], values: list[str], client: str | None
) -> None:
    assert TrustedProxies(trusted).client_address(values) == client


def test_trusted_proxies_match_addresses_of_their_networks() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"])
    assert proxies.trusts("10.200.0.1") and proxies.trusts("192.0.2.1")
    assert proxies.trusts("2001:db8:5::1") and proxies.trusts("::ffff:10.0.0.1")
    assert not proxies.trusts("192.0.2.2") and not proxies.trusts("2001:db9::1")
    assert not proxies.trusts("") and not proxies.trusts("proxy")
    assert not TrustedProxies([]).trusts("10.0.0.1")


async def test_x_forwarded_for_is_read_only_from_a_trusted_proxy(
    mock_clock: trio.testing.MockClock,
) -> None:
    handler = EchoHandler()
    forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    with fail_after_real():
        async with running(
            handler, trusted_proxies=["127.0.0.2"], max_pending_per_address=2, **NO_TIMERS
        ) as server:
            for source in ("127.0.0.2", "127.0.0.3"):
                client = RawClient(await connect_from(server, source))
                assert (await client.upgrade(headers=forwarded))[0] == 101
                await client.aclose()
            proxied, direct = handler.requests
            assert (proxied.peer[0], proxied.forwarded_for) == ("127.0.0.2", "203.0.113.7")
            assert (direct.peer[0], direct.forwarded_for) == ("127.0.0.3", None)

            # Before its head, a proxy's socket meets only the global cap ...
            held = []
            for _ in range(3):
                stream = await connect_from(server, "127.0.0.2")
                await stream.send_all(HALF_A_HEAD)
                held.append(stream)
            await wait_until(lambda: server.metrics.pending_handshakes == 3)
            assert server.metrics.refused_sockets["pending_per_address"] == 0
            for stream in held:
                await stream.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)

            # ... after it, the client it names meets the per-address cap (503).
            slow = [RawClient(await connect_from(server, "127.0.0.2")) for _ in range(3)]
            for client in slow[:2]:
                await client.send(upgrade_request("/ws?slow", headers=forwarded))
            await wait_until(lambda: handler.slow_waiting == 2)
            await slow[2].send(upgrade_request("/ws?slow", headers=forwarded))
            status, headers, body = await slow[2].read_head()
            assert (status, headers["retry-after"]) == (503, "5")
            assert body == b"too many pending requests from your address\n"
            assert server.metrics.refused_sockets["pending_per_address"] == 1
            assert handler.slow_waiting == 2
            # Another client behind the same proxy is not held up by them.
            other = RawClient(await connect_from(server, "127.0.0.2"))
            assert (await other.upgrade(headers={"X-Forwarded-For": "192.0.2.50"}))[0] == 101
            for client in (*slow, other):
                await client.aclose()
            await wait_until(lambda: server.metrics.pending_handshakes == 0)
            assert handler.slow_waiting == 0


class BigPageHandler(Handler):
    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        return HTTPResponse(body=b"x" * (32 << 20))  # far more than the socket buffers hold


async def test_a_response_the_client_does_not_read_is_cut_off_and_frees_the_slot(
    mock_clock: trio.testing.MockClock,
) -> None:
    with fail_after_real():
        async with running(BigPageHandler, handshake_timeout=10, **NO_TIMERS) as server:
            client = await connect_from(server)
            await client.send_all(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert len(await client.receive_some(1)) == 1  # the server is writing
            await settle()
            mock_clock.jump(9)
            await settle()
            assert server.metrics.pending_handshakes == 1  # still writing, never read
            mock_clock.jump(1)
            await wait_until(lambda: server.metrics.pending_handshakes == 0)
            received = await received_until_eof(client)
            assert 0 < len(received) < 32 << 20
            await client.aclose()
            assert gauge(await scrape(server), "riverside_pending_handshakes_count") == 1


def _riverside_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Bytes more held by allocations made in riverside_trio's own code."""
    return sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if "riverside_trio" in stat.traceback[0].filename
    )


CROWD = 100


async def test_what_clients_send_before_the_handshake_leaves_nothing_behind(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Distinct addresses, header names and values, refused and timed-out sockets: a second
    crowd of such clients leaves the server holding no more than the first did (no cache
    that clients fill; the tables it has are bounded by the caps). A cache of header values
    would hold some 30 KiB more here."""
    handler = EchoHandler()
    stalled: list[trio.SocketStream] = []

    async def crowd(server: Server) -> None:
        for i in range(CROWD):
            source = f"127.0.1.{i + 1}"
            client = RawClient(await connect_from(server, source))
            value = os.urandom(24).hex()
            head = upgrade_request(headers={f"X-Junk-{value[:8]}": value, "X-V": value})
            await client.send(head)
            assert (await client.read_head())[0] == 101
            await client.aclose()
            stream = await connect_from(server, source)  # pending until the deadline
            await stream.send_all(HALF_A_HEAD)
            stalled.append(stream)
            refused = await connect_from(server, source)  # over its address's cap
            assert await received_until_eof(refused) == b""
            await refused.aclose()
        mock_clock.jump(server.config.handshake_timeout)
        for stream in stalled:
            await received_until_eof(stream)  # the 408, then the close
            await stream.aclose()
        stalled.clear()
        await wait_until(lambda: server.metrics.pending_handshakes == 0)
        await wait_until(lambda: server.connection_count == 0)
        handler.requests.clear()
        gc.collect()

    with fail_after_real(120):
        async with running(handler, max_pending_per_address=1, **NO_TIMERS) as server:
            tracemalloc.start()
            try:
                await crowd(server)
                first = tracemalloc.take_snapshot()
                await crowd(server)
                second = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            assert server.metrics.refused_sockets["pending_per_address"] == 2 * CROWD
            assert server._core.admission.addresses == 0
            growth = _riverside_growth(first, second)
            assert growth < 2048, f"{growth} bytes more held after {CROWD} more clients"
