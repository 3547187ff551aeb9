"""Helpers for the limit tests: a hostile client and a well-behaved one side by side, over
real sockets, on a server whose clock the test moves (pytest-trio's ``mock_clock``)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from riverside_trio import (
    Accept,
    AuthRequest,
    Connection,
    Handler,
    RawTextCodec,
    Server,
    TerminateReason,
)

from ._helpers import RawClient, advance, fail_after_real, wait_until

__all__ = ["advance", "fail_after_real", "wait_until"]  # re-exported for the limit tests

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


async def settle() -> None:
    """Let every task run until all are blocked, waiting up to a millisecond of real time
    for I/O at a go (bytes in flight between the kernel's sockets arrive); never the clock."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.001)


def masked(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A masked client frame (XOR as one big integer: fast enough for floods)."""
    n = len(payload)
    key = os.urandom(4)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if not n:
        return head + key
    stream = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + body


def close_frame(code: int = 1000) -> bytes:
    return masked(struct.pack("!H", code), OP_CLOSE)


class Recorder(Handler):
    """Plain text. The user id is the ``user`` query parameter; ``join`` joins a channel at
    init. Every message is recorded as ``(user, text)`` in ``handled`` and echoed unless
    the user's name starts with ``quiet``; every end is recorded in ``reasons``."""

    codec = RawTextCodec()

    def __init__(self) -> None:
        self.conns: dict[str, Connection] = {}
        self.handled: list[tuple[str, str]] = []
        self.reasons: dict[str, TerminateReason] = {}

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query["user"])

    async def init(self, conn: Connection) -> None:
        self.conns[conn.user_id] = conn
        channel = conn.handshake.query.get("join")
        if channel:
            conn.join_channel(channel)

    async def handle_message(self, msg: str, conn: Connection) -> None:
        self.handled.append((conn.user_id, msg))
        if not conn.user_id.startswith("quiet"):
            conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons[conn.user_id] = reason


@asynccontextmanager
async def connected(
    server: Server,
    user: str,
    *,
    join: str | None = None,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
) -> AsyncIterator[RawClient]:
    """An upgraded RawClient (closed on exit); ``rcvbuf`` shrinks its receive buffer, so
    that a client that does not read backs its bytes up into the server; ``sndbuf`` sets
    its send buffer (a flood written at once)."""
    sock = trio.socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        await sock.connect(("127.0.0.1", server.port))
    except BaseException:
        sock.close()
        raise
    client = RawClient(trio.SocketStream(sock))
    try:
        query = f"?user={user}" + (f"&join={join}" if join else "")
        with fail_after_real():
            status, _, _ = await client.upgrade("/ws" + query)
        assert status == 101
        yield client
    finally:
        await client.aclose()


async def read_until_close(client: RawClient) -> tuple[list[str], int, str]:
    """Every text message until the server's close frame, then its code and reason."""
    texts = []
    with fail_after_real():
        while True:
            op, payload, _ = await client.read_frame()
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0]
                return texts, code, payload[2:].decode()
            if op == OP_TEXT:
                texts.append(payload.decode())
