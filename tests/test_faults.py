"""Faults over real sockets: slow and flooding clients, crowds, huge channels, churn, resets.

Every fault is bounded in count and time (``trio.fail_after`` around every wait). Each test
proves three things: the server stays responsive to the others while the fault lasts, its
memory for the faulty client stays bounded, and no message is delivered twice, out of order
or to a connection that has left.

The two crowd tests (thousands of connections) run the server as a subprocess, so that the
server's and the clients' file descriptors do not share one process's RLIMIT_NOFILE.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import riverside_trio
from riverside_trio import (
    Accept,
    AuthRequest,
    Connection,
    Handler,
    RawTextCodec,
    Server,
    TerminateReason,
)

from ._helpers import (
    NO_TIMERS,
    RawClient,
    client_frame,
    running,
    start_cli,
    upgrade_request,
    wait_until,
)
from ._hostile import masked
from ._tls import Certs

OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9
REMOTE_DROP = TerminateReason("remote", 1006, "")
# Real-time guards on whole stress runs: they only turn a hang into a failure, so they leave
# room for a machine running several suites and CPU hogs at once (no result depends on them).
GUARD = 600

# The in-process faults run twice: over plain TCP (the fast path) and over TLS, with the
# same connection logic, limits and close semantics. The ``scheme`` fixture sets this.
_TLS: Certs | None = None


@pytest.fixture(params=["ws", "wss"])
def scheme(request: pytest.FixtureRequest, tls_certs: Certs) -> Iterator[str]:
    """Run the test over plain TCP (ws) and over TLS (wss)."""
    global _TLS
    _TLS = tls_certs if request.param == "wss" else None
    try:
        yield request.param
    finally:
        _TLS = None


over_tls_too = pytest.mark.usefixtures("scheme")


def serving(handler: Handler, **settings: Any) -> AbstractAsyncContextManager[Server]:
    """``running`` over the scheme of the test: plain TCP, or TLS."""
    ssl_context = _TLS.server_context() if _TLS is not None else None
    return running(handler, ssl_context=ssl_context, **settings)


# ---------------------------------------------------------------------------- frames


def text(data: str) -> bytes:
    return masked(data.encode())


def close_frame(code: int = 1000) -> bytes:
    return client_frame(OP_CLOSE, struct.pack("!H", code))


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove every complete (unmasked, unfragmented) server frame from ``buf``."""
    frames = []
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        assert not b1 & 0x80, "server frames must not be masked"
        assert b0 & 0x80, "these tests never expect fragmented server frames"
        n, start = b1 & 0x7F, pos + 2
        if n == 126:
            if end - pos < 4:
                break
            n, start = struct.unpack_from("!H", buf, pos + 2)[0], pos + 4
        elif n == 127:
            if end - pos < 10:
                break
            n, start = struct.unpack_from("!Q", buf, pos + 2)[0], pos + 10
        if end - start < n:
            break
        frames.append((b0 & 0x0F, bytes(buf[start : start + n])))
        pos = start + n
    del buf[:pos]
    return frames


class Reader:
    """Frames from a RawClient, in order, read in big chunks."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.pending: list[tuple[int, bytes]] = []

    async def frame(self) -> tuple[int, bytes]:
        while not self.pending:
            self.pending = parse_frames(self.client.buf)  # it may hold frames already
            self.pending.reverse()
            if not self.pending and not await self.client._fill():
                raise EOFError("connection closed")
        return self.pending.pop()

    async def text(self) -> str:
        op, payload = await self.frame()
        assert op == OP_TEXT, (op, payload[:80])
        return payload.decode()


# ---------------------------------------------------------------------------- in-process


class Faulty(Handler):
    """Plain text. The user id is the ``user`` query parameter, the connection's name (what
    ``conns`` and ``reasons`` are keyed by) is ``name``, else the user id; ``join`` joins
    a channel at init.

    - ``join C`` / ``leave C`` join or leave channel C and answer ``joined C <n>`` /
      ``left C <n>``, where n is ``published``: the number the test's publisher gives its
      next message. The marker is sent in the same synchronous step as the join or leave,
      so a client knows the exact boundary of its membership in its own stream.
    - A user whose id starts with ``flooder`` is counted, not answered: its messages are
      recorded (they are sequence numbers) and ``done`` answers ``count <n>``.
    - Anything else is echoed.
    """

    codec = RawTextCodec()

    def __init__(self) -> None:
        self.conns: dict[str, Connection] = {}
        self.reasons: list[tuple[str, TerminateReason]] = []
        self.flooded: list[int] = []
        self.published = 0

    async def authenticate(self, req: AuthRequest) -> Accept:
        # ``name`` tells apart several connections (devices) of one user.
        return Accept(user_id=req.query["user"], state=req.query.get("name", req.query["user"]))

    async def init(self, conn: Connection) -> None:
        self.conns[conn.state] = conn
        channel = conn.handshake.query.get("join")
        if channel:
            conn.join_channel(channel)

    async def handle_message(self, msg: str, conn: Connection) -> None:
        if conn.user_id.startswith("flooder"):
            if msg == "done":
                conn.send(f"count {len(self.flooded)}")
            else:
                self.flooded.append(int(msg))
            return
        command, _, channel = msg.partition(" ")
        if command == "join":
            conn.join_channel(channel)
            conn.send(f"joined {channel} {self.published}")
        elif command == "leave":
            conn.leave_channel(channel)
            conn.send(f"left {channel} {self.published}")
        else:
            conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append((conn.state, reason))

    def reasons_of(self, user: str) -> list[TerminateReason]:
        return [r for u, r in self.reasons if u == user]


@asynccontextmanager
async def connected(
    server: Server,
    user: str,
    *,
    join: str | None = None,
    name: str | None = None,
    rcvbuf: int | None = None,
) -> AsyncIterator[RawClient]:
    """An upgraded RawClient, closed on exit; ``rcvbuf`` shrinks its receive buffer."""
    sock = trio.socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", server.port))
    except BaseException:
        sock.close()
        raise
    stream: trio.abc.Stream = trio.SocketStream(sock)
    if _TLS is not None:
        stream = trio.SSLStream(stream, _TLS.client_context(), server_hostname="127.0.0.1")
    client = RawClient(stream)
    try:
        query = f"?user={user}" + (f"&join={join}" if join else "")
        query += f"&name={name}" if name else ""
        status, _, _ = await client.upgrade("/ws" + query)
        assert status == 101
        yield client
    finally:
        await client.aclose()


async def reset(client: RawClient) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(client.stream)  # no close_notify over TLS: a plain reset


async def echo_probes(client: RawClient, count: int, done: trio.Event) -> None:
    """``count`` round trips, each answered within its own bound."""
    reader = Reader(client)
    for i in range(count):
        with trio.fail_after(5):
            await client.send(text(f"probe {i}"))
            assert await reader.text() == f"probe {i}"
    done.set()


def seq_of(payload: str) -> int:
    return int(payload.split(" ", 1)[0])


# ---------------------------------------------------------------- 1. slow consumer


@over_tls_too
@pytest.mark.parametrize("per_step", [1, 25], ids=["one-per-step", "bursts"])
@pytest.mark.parametrize("via", ["channel", "user"])
async def test_a_client_that_stops_reading_is_shed_and_nobody_else_notices(
    via: str, per_step: int
) -> None:
    """Flooded through a channel both are members of, or as two devices of one user; one
    delivery per task step, or bursts that the cork coalesces into one write per client."""
    handler = Faulty()
    user, join = ("a", "flood") if via == "channel" else ("crowd", None)

    def deliver(obj: str) -> int:
        if via == "channel":
            return server.deliver_channel("flood", obj)
        return server.deliver_user("crowd", obj)

    outbox_bytes = 32 * 1024
    pad = "x" * 1000
    frame_len = 4 + len(f"{0:08d} {pad}")  # 2-byte header + 16-bit length + payload
    window = 16 + per_step  # messages the publisher lets the fast reader fall behind
    settings = {"outbox_size": 64, "outbox_bytes": outbox_bytes, "close_timeout": 30}
    max_messages = 200_000
    async with (
        serving(handler, **settings, **NO_TIMERS) as server,
        connected(server, user, join=join, name="slow", rcvbuf=4096) as slow,
        connected(server, user, join=join, name="fast") as fast,
        connected(server, "echo") as echo,
    ):
        with trio.fail_after(5):
            await wait_until(lambda: len(handler.conns) == 3)
        slow_conn = handler.conns["slow"]
        got: list[int] = []
        probes_done = trio.Event()
        sent = 0
        reached: list[int] = []
        max_queued = max_held = 0

        async def read_fast() -> None:
            reader = Reader(fast)
            while (payload := await reader.text()) != "end":
                got.append(seq_of(payload))

        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_fast)
                nursery.start_soon(echo_probes, echo, 30, probes_done)
                # Until the slow client is shed, every probe answered, and the flood went on
                # for a while after the shed.
                after_shed = 0
                while not (after_shed >= 500 and probes_done.is_set()):
                    assert sent < max_messages, "the slow consumer was never shed"
                    after_shed += slow_conn.closed
                    if sent - len(got) >= window:
                        await wait_until(lambda n=sent: n - len(got) < window)
                    for _ in range(per_step):  # one task step
                        reached.append(deliver(f"{sent:08d} {pad}"))
                        sent += 1
                    for conn in server.connections():
                        if conn.state == "slow":
                            queued = conn._outbox.queued_bytes
                            held = conn._writer.held_bytes
                            max_queued = max(max_queued, queued)
                            max_held = max(max_held, held)
                    await trio.lowlevel.checkpoint()
                assert deliver("end") == 1

        # The fast client got every message once, in order; the flood reached the slow one
        # until it was shed and nobody after that.
        assert got == list(range(sent))
        shed_at = reached.index(1)
        assert set(reached[:shed_at]) == {2}
        assert set(reached[shed_at:]) == {1}
        # The server held at most outbox_bytes (plus the one frame the direct write had
        # started) in the slow client's outbox. Bytes the writer task had taken out of the
        # outbox and not yet sent are held too: at most that much again.
        assert 0 < max_queued <= outbox_bytes + frame_len
        assert max_held <= 2 * (outbox_bytes + frame_len)

        # The slow client, reading at last.
        with trio.fail_after(30):
            reader = Reader(slow)
            seqs = []
            while True:
                op, payload = await reader.frame()
                if op == OP_CLOSE:
                    break
                seqs.append(seq_of(payload.decode()))
            # Everything it accepted before the shed, once and in order; then the close.
            assert seqs == list(range(shed_at))
            assert struct.unpack("!H", payload[:2])[0] == 1008
            await slow.send(close_frame())
            assert await slow.at_eof()
            await wait_until(lambda: bool(handler.reasons_of("slow")))
    slow_reason = TerminateReason("slow_consumer", 1008, "slow_consumer")
    assert handler.reasons_of("slow") == [slow_reason]
    assert server.metrics.disconnects["slow_consumer"] == 1
    assert handler.reasons_of("fast") == [REMOTE_DROP]
    assert handler.reasons_of("echo") == [REMOTE_DROP]
    assert server._core.budget.used == 0  # every queued (or, over TLS, pending) byte let go


# ---------------------------------------------------------------- 2. flooding client


def flood_chunk(start: int, count: int) -> bytes:
    return b"".join(masked(str(i).encode()) for i in range(start, start + count))


@over_tls_too
async def test_a_flooding_client_is_served_in_order_without_starving_the_others() -> None:
    handler = Faulty()
    chunk = 2000
    min_messages, max_messages = 20_000, 2_000_000
    async with (
        serving(handler, transmission_limit=0, **NO_TIMERS) as server,
        connected(server, "flooder") as flooder,
        connected(server, "echo") as echo,
    ):
        probes_done = trio.Event()
        sent = 0
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_probes, echo, 30, probes_done)
                # The flood goes on until every probe was answered, so they all overlap it.
                while sent < min_messages or not probes_done.is_set():
                    assert sent < max_messages, "the probes never finished"
                    await flooder.send(flood_chunk(sent, chunk))
                    sent += chunk
            await flooder.send(text("done"))
            assert await Reader(flooder).text() == f"count {sent}"
        assert handler.flooded == list(range(sent))
        assert handler.reasons == []


@over_tls_too
async def test_a_flooding_client_over_the_transmission_limit_is_closed_1008_alone() -> None:
    handler = Faulty()
    settings = {"transmission_limit": 50, "transmission_period": 3600.0, "close_timeout": 10}
    async with (
        serving(handler, **settings, **NO_TIMERS) as server,
        connected(server, "flooder") as flooder,
        connected(server, "echo") as echo,
        connected(server, "polite") as polite,
    ):
        probes_done = trio.Event()
        total = 1000

        async def politely() -> None:
            reader = Reader(polite)
            for i in range(40):  # under its own limit of 50
                with trio.fail_after(5):
                    await polite.send(text(f"hello {i}"))
                    assert await reader.text() == f"hello {i}"

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_probes, echo, 20, probes_done)
                nursery.start_soon(politely)
                await flooder.send(flood_chunk(0, total))
                op, payload = await Reader(flooder).frame()
                assert op == OP_CLOSE
                assert struct.unpack("!H", payload[:2])[0] == 1008
                await flooder.send(close_frame())
                assert await flooder.at_eof()
                await wait_until(lambda: bool(handler.reasons_of("flooder")))
        # The bucket held 50 tokens and refills at 50 an hour: the first 50 (and no more than
        # a token or two that refilled meanwhile) were handled, in order; the rest dropped.
        handled = len(handler.flooded)
        assert 50 <= handled < total
        assert handler.flooded == list(range(handled))
        reason = handler.reasons_of("flooder")
        assert reason == [TerminateReason("too_many_messages", 1008, "too_many_messages")]
        assert server.metrics.disconnects["too_many_messages"] == 1
        assert handler.reasons_of("echo") == handler.reasons_of("polite") == []


@over_tls_too
async def test_a_client_that_pings_without_reading_is_held_to_the_outbox_limits() -> None:
    handler = Faulty()
    outbox_bytes = 64 * 1024
    pong_len = 2 + 125
    chunk = masked(b"p" * 125, OP_PING) * 500
    # Pings without limit here (control_frame_limit has its own test): what is held back?
    settings = {
        "outbox_size": 64,
        "outbox_bytes": outbox_bytes,
        "transmission_limit": 0,
        "control_frame_limit": 0,
    }
    async with (
        serving(handler, **settings, **NO_TIMERS) as server,
        connected(server, "pinger", rcvbuf=4096) as pinger,
        connected(server, "echo") as echo,
    ):
        with trio.fail_after(5):
            await wait_until(lambda: "pinger" in handler.conns)
        conn = handler.conns["pinger"]
        probes = trio.Event()
        with trio.fail_after(GUARD):
            for i in range(200):  # at most 100,000 pings: 12.7 MB of pongs if all were kept
                if conn.closed:
                    break
                await pinger.send(chunk)
                for c in server.connections():
                    if c.state == "pinger":
                        held = c._writer.held_bytes
                        assert held <= 2 * (outbox_bytes + pong_len), (
                            f"{held} bytes held for a client that reads nothing"
                        )
                if i % 50 == 0:
                    await echo_probes(echo, 2, probes)
        # Either the pongs it does not read are dropped (RFC 6455 5.5.3 allows answering only
        # the latest ping) or it is shed as a slow consumer; the server held little either way.
        if conn.closed:
            with trio.fail_after(30):
                reader = Reader(pinger)
                while (frame := await reader.frame())[0] != OP_CLOSE:
                    pass
                assert struct.unpack("!H", frame[1][:2])[0] == 1008
                await pinger.send(close_frame())
                assert await pinger.at_eof()
    shed = TerminateReason("slow_consumer", 1008, "slow_consumer")
    assert handler.reasons_of("pinger") in ([shed], [REMOTE_DROP])


# ---------------------------------------------------------------- subprocess server

SUBPROCESS_HANDLER = '''
"""The handler the crowd tests run in a subprocess server."""

from riverside_trio import Handler, RawTextCodec


class Crowd(Handler):
    codec = RawTextCodec()

    async def handle_message(self, msg, conn):
        if msg == "join":
            conn.join_channel("big")
            conn.send("joined")
        elif msg == "leave":
            conn.leave_channel("big")
            conn.send("left")
        elif msg.startswith("pub "):
            seq = msg[4:]
            n = conn.deliver_channel("big", "m " + seq)
            conn.send(f"sent {seq} {n}")
        else:
            conn.send(msg)
'''


def raise_open_files_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; skip below ``needed``."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard RLIMIT_NOFILE is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@asynccontextmanager
async def subprocess_server(tmp_path: Path) -> AsyncIterator[int]:
    """``python -m riverside_trio serve`` with the crowd handler; yields its port."""
    (tmp_path / "crowd_handler.py").write_text(SUBPROCESS_HANDLER, encoding="utf-8")
    src = str(Path(riverside_trio.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSIDE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), src) if p)
    command = [sys.executable, "-m", "riverside_trio", "serve", "crowd_handler:Crowd"]
    command += ["--port", "0", "--log-format", "json", "--max-connections", "20000"]
    command += ["--idle-timeout", "off", "--ping-interval", "off", "--transmission-limit", "0"]
    command += ["--backlog", "4096"]
    # Every simulated client comes from 127.0.0.1: lift the per-address cap of handshakes.
    command += ["--max-pending-per-address", "1024"]
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            process, port = await start_cli(nursery, command, env, lines, cwd=str(tmp_path))
        try:
            yield port
            assert process.returncode is None, "\n".join(lines)
        finally:
            process.kill()
    errors = [line for line in lines if line.startswith("{") and is_error(line)]
    assert not errors, "\n".join(errors)


def is_error(line: str) -> bool:
    try:
        return json.loads(line).get("level") in ("error", "critical")
    except ValueError:
        return False


class Peer:
    """A raw WebSocket client on a bare trio socket: cheap enough for thousands."""

    __slots__ = ("buf", "frames", "sock")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.frames: list[tuple[int, bytes]] = []

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view) :]

    async def text(self) -> str:
        while not self.frames:
            self.frames = parse_frames(self.buf)  # the buffer may hold frames already
            self.frames.reverse()
            if self.frames:
                break
            chunk = await self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        op, payload = self.frames.pop()
        assert op == OP_TEXT, (op, payload[:80])
        return payload.decode()

    def close(self) -> None:
        self.sock.close()


async def open_peer(port: int, opened: list[Peer], first: bytes = b"") -> Peer:
    """Connect, upgrade (``first`` pipelined after the request) and check for 101.

    The peer is appended to ``opened`` as soon as it has a socket, so the caller closes it
    whatever happens.
    """
    sock = trio.socket.socket()
    peer = Peer(sock)
    opened.append(peer)
    await sock.connect(("127.0.0.1", port))
    await peer.send(upgrade_request() + first)
    while b"\r\n\r\n" not in peer.buf:
        chunk = await sock.recv(4096)
        if not chunk:
            raise EOFError("connection closed before the response head")
        peer.buf += chunk
    head, _, rest = bytes(peer.buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head[:100]
    peer.buf = bytearray(rest)
    return peer


async def each(items: list[Any], work: Callable[[Any], Any], in_flight: int) -> None:
    """Run ``await work(item)`` for every item, ``in_flight`` at a time."""
    todo = iter(items)

    async def worker() -> None:
        for item in todo:  # one iterator shared by every worker
            await work(item)

    async with trio.open_nursery() as nursery:
        for _ in range(min(in_flight, len(items))):
            nursery.start_soon(worker)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
    try:
        await client.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status, _, body = await client.read_head()
        return status, body
    finally:
        await client.aclose()


async def connected_gauge(port: int) -> float:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    match = re.search(rb"^riverside_connected_sessions_count (\S+)$", body, re.MULTILINE)
    assert match is not None, body[:500]
    return float(match.group(1))


async def wait_for_gauge(port: int, value: int) -> None:
    """Ask /metrics until the connected gauge reads ``value`` (bounded by the caller).

    The server is another process: each request's round trip paces the next one.
    """
    while await connected_gauge(port) != value:
        await trio.lowlevel.checkpoint()


@pytest.fixture
async def open_peers() -> AsyncIterator[list[Peer]]:
    """Peers a test opens; every one is closed at the end, whatever happened."""
    peers: list[Peer] = []
    yield peers
    for peer in peers:
        peer.close()


# ---------------------------------------------------------------- 3. many connections


async def test_five_thousand_connections_at_once(tmp_path: Path, open_peers: list[Peer]) -> None:
    total, in_flight = 5000, 150
    raise_open_files_limit(total + 500)
    health: list[int] = []
    async with subprocess_server(tmp_path) as port:

        async def check_health() -> None:
            with trio.fail_after(10):
                status, body = await http_get(port, "/health")
            health.append(status)
            assert (status, body) == (200, b"OK")

        async def open_one(i: int) -> None:
            if i % 1000 == 500:  # while the next handshakes are in flight
                nursery.start_soon(check_health)
            await open_peer(port, open_peers)

        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                await each(list(range(total)), open_one, in_flight)
            assert len(open_peers) == total
            assert health == [200] * 5
            await wait_for_gauge(port, total)
            assert await http_get(port, "/health") == (200, b"OK")
            for peer in open_peers:
                peer.close()
            await wait_for_gauge(port, 0)


# ---------------------------------------------------------------- 4. a huge channel


async def test_a_channel_of_ten_thousand_members(tmp_path: Path, open_peers: list[Peer]) -> None:
    members_n, n, in_flight = 10_000, 20, 200
    raise_open_files_limit(members_n + 500)
    async with subprocess_server(tmp_path) as port:
        members: list[Peer] = []

        async def join(_: int) -> None:
            peer = await open_peer(port, open_peers, first=text("join"))
            assert await peer.text() == "joined"
            members.append(peer)

        async def publish(publisher: Peer, seqs: range, reached: int) -> None:
            await publisher.send(b"".join(text(f"pub {i}") for i in seqs))
            for i in seqs:
                assert await publisher.text() == f"sent {i} {reached}"

        def expect(seqs: range) -> Callable[[Peer], Any]:
            async def check(peer: Peer) -> None:
                assert [await peer.text() for _ in seqs] == [f"m {i}" for i in seqs]

            return check

        async def leave(peer: Peer) -> None:
            await peer.send(text("leave"))
            assert await peer.text() == "left"

        async def nothing_more(peer: Peer) -> None:
            """Per-connection order: anything queued for it would come before the echo."""
            await peer.send(text("probe"))
            assert await peer.text() == "probe"

        with trio.fail_after(GUARD):
            await each(list(range(members_n)), join, in_flight)
            publisher = await open_peer(port, open_peers)
            await publish(publisher, range(n), members_n)
            await each(members, expect(range(n)), in_flight)

            leavers, stayers = members[::2], members[1::2]
            await each(leavers, leave, in_flight)
            await publish(publisher, range(n, 2 * n), len(stayers))
            await each(stayers, expect(range(n, 2 * n)), in_flight)
            await each(members, nothing_more, in_flight)


# ---------------------------------------------------------------- 5. join/leave churn

MARKERS = {"join": "joined", "leave": "left"}


class Churner:
    """One client's view: its membership windows per channel and what it received.

    ``windows[channel]`` lists ``[joined at, left at]`` (None while still a member) in the
    publisher's sequence numbers, read from the handler's markers.
    """

    def __init__(self, user: str, client: RawClient) -> None:
        self.user = user
        self.client = client
        self.reader = Reader(client)
        self.windows: dict[str, list[list[int | None]]] = {}
        self.received: dict[str, list[int]] = {}

    def member_of(self) -> set[str]:
        return {c for c, w in self.windows.items() if w[-1][1] is None}

    def on_frame(self, payload: str) -> tuple[str, str]:
        """Record one frame; return its (kind, channel)."""
        kind, channel, seq = payload.split(" ")
        spans = self.windows.get(channel)
        member = spans is not None and spans[-1][1] is None
        if kind == "msg":
            assert member, f"{self.user} got {payload!r} while not a member"
            self.received.setdefault(channel, []).append(int(seq))
        elif kind == "joined":
            assert not member
            self.windows.setdefault(channel, []).append([int(seq), None])
        else:
            assert kind == "left" and member and spans is not None, (self.user, payload)
            spans[-1][1] = int(seq)
        return kind, channel

    async def command(self, verb: str, channel: str) -> None:
        """Send ``verb channel`` and read up to its marker, recording what came before."""
        await self.client.send(text(f"{verb} {channel}"))
        while self.on_frame(await self.reader.text()) != (MARKERS[verb], channel):
            pass

    async def nothing_more(self) -> None:
        """Read up to the echo of a probe: whatever was queued for it comes first."""
        await self.client.send(text("probe"))
        while (payload := await self.reader.text()) != "probe":
            self.on_frame(payload)


@over_tls_too
async def test_join_leave_churn_leaves_no_empty_channels_and_no_late_messages() -> None:
    handler = Faulty()
    channels = [f"c{i}" for i in range(5)]
    # Over TLS the test's own clients (trio.SSLStream) cost most of the time: fewer of them.
    clients_n, rounds = (200, 40) if _TLS is None else (50, 20)
    churners: list[Churner] = []
    rounds_done = trio.Semaphore(0)  # released once per client that finished its rounds
    second_phase = trio.Event()
    stop_publishing = trio.Event()

    async def publisher(server: Server) -> None:
        while not stop_publishing.is_set():
            for _ in range(5):  # a burst per scheduling round
                seq = handler.published
                channel = channels[seq % len(channels)]
                server.deliver_channel(channel, f"msg {channel} {seq}")
                handler.published += 1
            await trio.lowlevel.checkpoint()

    async def churn(server: Server, i: int) -> None:
        rng = random.Random(i)
        async with connected(server, f"u{i}") as client:
            me = Churner(f"u{i}", client)
            churners.append(me)
            for _ in range(rounds):
                channel = rng.choice(channels)
                await me.command("leave" if channel in me.member_of() else "join", channel)
            rounds_done.release()
            await second_phase.wait()
            if i % 2:
                return  # disconnect while still a member of its channels
            for channel in sorted(me.member_of()):
                await me.command("leave", channel)
            await me.nothing_more()

    # 200 clients from one address connect at once: lift the per-address cap of handshakes.
    async with serving(handler, max_pending_per_address=clients_n, **NO_TIMERS) as server:
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher, server)
                async with trio.open_nursery() as clients:
                    for i in range(clients_n):
                        clients.start_soon(churn, server, i)
                    for _ in range(clients_n):
                        await rounds_done.acquire()
                    # Every client is between commands while the publisher goes on: the
                    # registry holds exactly the channels somebody is in, none empty.
                    expected: dict[str, set[str]] = {}
                    for me in churners:
                        for channel in me.member_of():
                            expected.setdefault(channel, set()).add(me.user)
                    registry = server._core.registry.channels
                    assert all(registry.values()), "an empty channel group was left behind"
                    actual = {
                        name: {conn.state for conn in group.values()}
                        for name, group in registry.items()
                    }
                    assert actual == expected
                    second_phase.set()
                stop_publishing.set()
            await wait_until(lambda: len(handler.reasons) == clients_n)
            assert server._core.registry.channels == {}

    assert all(reason == REMOTE_DROP for _, reason in handler.reasons)
    assert len(churners) == clients_n
    published = handler.published
    for me in churners:
        for channel, spans in me.windows.items():
            index = channels.index(channel)
            due: list[int] = []
            for joined, left in spans:
                assert joined is not None
                end = published if left is None else left
                due += [s for s in range(joined, end) if s % len(channels) == index]
            got = me.received.get(channel, [])
            if spans[-1][1] is None:
                # Disconnected while a member: what it had read is a prefix of its due.
                assert got == due[: len(got)], (me.user, channel)
            else:
                # Every message published while it was a member, once, in order; none else.
                assert got == due, (me.user, channel)


# ---------------------------------------------------------------- 6. abrupt disconnects


@over_tls_too
async def test_resets_during_delivery_are_absorbed() -> None:
    handler = Faulty()
    pad = "y" * 300
    window = 16
    sent = 0
    progress: dict[str, list[int]] = {}
    victims = ["stalled", "reading", "shed"] * 3
    with structlog.testing.capture_logs() as logs:
        async with (
            serving(handler, **NO_TIMERS) as server,
            connected(server, "w0", join="feed") as w0,
            connected(server, "w1", join="feed") as w1,
            connected(server, "w2", join="feed") as w2,
        ):
            watchers = {"w0": w0, "w1": w1, "w2": w2}
            publishing = trio.Event()

            async def watch(user: str, client: RawClient) -> None:
                seqs = progress.setdefault(user, [])
                reader = Reader(client)
                while (payload := await reader.text()) != "end":
                    seqs.append(seq_of(payload))

            async def publish() -> None:
                nonlocal sent
                while not publishing.is_set():
                    slowest = min(len(s) for s in progress.values())
                    if sent - slowest >= window:
                        await wait_until(
                            lambda n=sent: n - min(len(s) for s in progress.values()) < window
                        )
                        continue
                    server.deliver_channel("feed", f"{sent} {pad}")
                    sent += 1
                    await trio.lowlevel.checkpoint()

            async def victim(user: str, kind: str) -> None:
                async with connected(server, user, join="feed", rcvbuf=4096) as client:
                    await wait_until(lambda: user in handler.conns)
                    conn = handler.conns[user]
                    if kind == "stalled":
                        # Reset while the writer task holds frames the kernel would not take.
                        await wait_until(lambda: conn._outbox.queued_frames > 0)
                    elif kind == "shed":
                        # Reset after it was shed, while the server waits for its close frame.
                        await wait_until(lambda: conn.closed)
                    else:
                        # Reset while reading, with deliveries arriving.
                        reader = Reader(client)
                        for _ in range(5):
                            await reader.text()
                    await reset(client)
                    await wait_until(lambda: bool(handler.reasons_of(user)))

            with trio.fail_after(GUARD):
                async with trio.open_nursery() as nursery:
                    for user, client in watchers.items():
                        nursery.start_soon(watch, user, client)
                    await wait_until(lambda: len(progress) == 3)
                    nursery.start_soon(publish)
                    for k, kind in enumerate(victims):
                        await victim(f"v{k}", kind)
                    # Still serving: a newcomer's echo, while the feed goes on.
                    async with connected(server, "late") as late:
                        done = trio.Event()
                        await echo_probes(late, 3, done)
                    publishing.set()
                    assert server.deliver_channel("feed", "end") == 3
            for user in watchers:
                assert progress[user] == list(range(sent)), user
        assert server.metrics.disconnects["slow_consumer"] == victims.count("shed")
    # terminate ran exactly once for each, with the reason of the first close.
    shed = TerminateReason("slow_consumer", 1008, "slow_consumer")
    for k, kind in enumerate(victims):
        assert handler.reasons_of(f"v{k}") == [shed if kind == "shed" else REMOTE_DROP], kind
    bad = [e for e in logs if e["log_level"] in ("error", "critical", "exception")]
    assert bad == []
    assert server._core.budget.used == 0
