"""Shared test helpers: start a real server on 127.0.0.1 port 0, talk to it over sockets."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import trio
import trio.testing
from trio_websocket import WebSocketConnection, open_websocket_url

import riverside_trio
from riverside_trio import Config, Handler, Server
from riverside_trio.testing._time import _until

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Settings that keep timers out of tests that are not about them.
NO_TIMERS: dict[str, Any] = {"idle_timeout": None, "ping_interval": None}

# A bound on real-time waits for I/O: generous, since it only turns a hang into a failure.
REAL_TIMEOUT = 30.0


# ------------------------------------------------------------------ time
#
# Timers are tested on pytest-trio's ``mock_clock`` fixture (a ``trio.testing.MockClock`` that
# stands still until the test moves it) or ``autojump_clock`` (jumps whenever every task is
# blocked; only for tests with no other process or thread sending to the server). On a mock
# clock, ``trio.fail_after`` never fires while the test waits for the kernel, so waits for
# I/O are bounded with ``fail_after_real`` instead, and the clock moves only in ``advance``.


class fail_after_real:
    """Like ``trio.fail_after``, on the wall clock: a bound on waits for real I/O.

    A thread cancels the block after ``seconds`` of real time, whatever the run's clock says,
    and ``trio.TooSlowError`` is raised. It only turns a hang into a failure; no test result
    depends on it. Works with ``with`` and ``async with`` (to share a line with ``running``).
    """

    def __init__(self, seconds: float = REAL_TIMEOUT) -> None:
        self.seconds = seconds
        self.scope = trio.CancelScope()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> trio.CancelScope:
        token = trio.lowlevel.current_trio_token()
        scope = self.scope

        def expire() -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

        scope.__enter__()
        self._timer = threading.Timer(self.seconds, expire)
        self._timer.daemon = True
        self._timer.start()
        return scope

    def __exit__(self, *exc_info: Any) -> bool:
        assert self._timer is not None
        self._timer.cancel()
        handled = self.scope.__exit__(*exc_info)
        if self.scope.cancelled_caught:
            raise trio.TooSlowError(f"not done after {self.seconds} s of real time")
        return bool(handled)

    async def __aenter__(self) -> trio.CancelScope:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> bool:
        return self.__exit__(*exc_info)


async def settle() -> None:
    """Let every task run until all are blocked (on I/O, events or the clock)."""
    await trio.testing.wait_all_tasks_blocked()


async def advance(
    clock: trio.testing.MockClock, seconds: float, *, step: float | None = None
) -> None:
    """Move ``clock`` on by ``seconds``, in jumps of at most ``step``, settling after each.

    After each jump the tasks whose deadlines passed (the server's sweeper, timeouts) run, and
    so does whatever they start, until every task is blocked again. Use a ``step`` no longer
    than the sweeper's tick when a test depends on which tick sees a deadline.
    """
    step = seconds if step is None else step
    left = seconds
    while left > 1e-9:
        jump = min(step, left)
        clock.jump(jump)
        left -= jump
        await settle()


async def wait_until(predicate: Callable[[], bool], *, seconds: float = REAL_TIMEOUT) -> None:
    """Wait until ``predicate()`` holds, checking it each time another task has run.

    Whatever can make the predicate true runs in some task (bytes from the kernel wake the
    task that reads them), so the check follows every step of every other task; while they
    are all blocked, this waits too, without spinning and without looking at the clock.
    Bounded by ``seconds`` of real time.
    """
    with fail_after_real(seconds):
        await _until(predicate)


@asynccontextmanager
async def running(
    handler: Handler | type[Handler],
    *,
    ssl_context: ssl.SSLContext | None = None,
    **settings: Any,
) -> AsyncIterator[Server]:
    """A server on 127.0.0.1:0 for the duration of the block; cancelled afterwards.

    With ``ssl_context`` it serves ``wss://``."""
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("port", 0)
    config = Config(**settings)
    serve = partial(riverside_trio.serve, ssl_context=ssl_context)
    clock = trio.lowlevel.current_clock()
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, handler, config)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
            if isinstance(clock, trio.testing.MockClock):
                # Shielded waits of the teardown (terminate_timeout, the last flush) must
                # not wait for a clock that only the test moves.
                threshold, clock.autojump_threshold = clock.autojump_threshold, 0
    if isinstance(clock, trio.testing.MockClock):
        clock.autojump_threshold = threshold


def upgrade_request(
    path: str = "/ws",
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    version: str = "HTTP/1.1",
) -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    base = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    base.update(headers or {})
    lines += [f"{k}: {v}" for k, v in base.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """A client frame, masked by default; ``length`` overrides the declared length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A raw TCP client: hand-written handshakes and frames, for hostile-input tests."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.last_first_byte = 0

    @classmethod
    async def connect(cls, server: Server, ssl_context: ssl.SSLContext | None = None) -> RawClient:
        """Connect over TCP, or over TLS with ``ssl_context`` (the handshake is done)."""
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        if ssl_context is None:
            return cls(stream)
        tls = trio.SSLStream(stream, ssl_context, server_hostname="127.0.0.1")
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return cls(tls)

    @property
    def socket(self) -> trio.socket.SocketType:
        """The TCP socket under the stream (TLS or not)."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        assert isinstance(stream, trio.SocketStream)
        return stream.socket

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def read_head(self) -> tuple[int, dict[str, str], bytes]:
        """Read an HTTP response: (status, lower-cased headers, body so far/complete)."""
        while b"\r\n\r\n" not in self.buf:
            if not await self._fill():
                raise EOFError("connection closed before a response head")
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n and await self._fill():
                pass
            body = bytes(self.buf[:n])
            del self.buf[:n]
        else:
            body = b""
        return status, headers, body

    async def upgrade(self, path: str = "/ws", **kw: Any) -> tuple[int, dict[str, str], bytes]:
        await self.send(upgrade_request(path, **kw))
        return await self.read_head()

    async def read_frame(self) -> tuple[int, bytes, bool]:
        """(opcode, payload, fin) of the next server frame. EOFError at EOF."""
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert not b1 & 0x80, "server frames must not be masked"
                n, pos = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
                if (n < 126 or pos > 2) and len(self.buf) >= pos + n:
                    payload = bytes(self.buf[pos : pos + n])
                    del self.buf[: pos + n]
                    self.last_first_byte = b0  # FIN, RSV bits and opcode of that frame
                    return b0 & 0x0F, payload, bool(b0 & 0x80)
            if not await self._fill():
                raise EOFError("connection closed")

    async def read_close(self) -> tuple[int | None, str]:
        """Skip data frames until a close frame; return its (code, reason)."""
        while True:
            op, payload, _ = await self.read_frame()
            if op == 8:
                if len(payload) >= 2:
                    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
                return None, ""

    async def received_nothing(self) -> bool:
        """True when nothing came from the server: nothing buffered and nothing to read.

        Settles first, so every frame the server's tasks have written is in the kernel.
        """
        await settle()
        if self.buf:
            return False
        peek = socket.fromfd(self.stream.socket.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        try:
            peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        finally:
            peek.close()
        return False  # data, or b"" at EOF

    async def at_eof(self) -> bool:
        """True once the server closed TCP (reads until EOF, dropping data)."""
        while await self._fill():
            self.buf.clear()
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()


def raw_socket_connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port))


@asynccontextmanager
async def ws_open(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    """trio-websocket's client, made to close its TCP stream when the server closed first.

    trio-websocket 0.12 leaves the stream open (a ResourceWarning) when the server starts the
    closing handshake: its ``aclose`` returns early once a close reason is set.
    """
    async with open_websocket_url(url, **kwargs) as ws:
        try:
            yield ws
        finally:
            if ws.closed is not None:
                await ws._stream.aclose()


async def start_cli(
    nursery: trio.Nursery, command: list[str], env: dict[str, str], lines: list[str], **kw: Any
) -> tuple[trio.Process, int]:
    """Start ``command`` (a server's command line) in ``nursery``, its log lines collected
    into ``lines``: the process, and the port its ``listening`` event names."""
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
            env=env,
            **kw,
        )
    )
    assert process.stderr is not None
    port: int = await nursery.start(read_listening_port, process.stderr, lines)
    return process, port


async def read_listening_port(
    stream: trio.abc.ReceiveStream,
    lines: list[str],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Collect the server's log lines; report the port of its ``listening`` event."""
    buffer = b""
    started = False
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not started and event.get("event") == "listening":
                started = True
                task_status.started(event["port"])
    if not started:
        raise AssertionError("the server exited before listening:\n" + "\n".join(lines))
