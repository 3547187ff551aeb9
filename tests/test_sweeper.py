"""The server's sweeper: every connection's idle, age and close deadlines, on a MockClock.

The sweeper ticks every tenth of the shortest period in use (0.1 s for the 1 s periods
here); the clock moves only when a test moves it, in steps shorter than a tick.
"""

from __future__ import annotations

from typing import Any

import trio
from trio.testing import MockClock

from riverside_trio import Accept, AuthRequest, Connection, Handler, RawCodec, TerminateReason

from ._helpers import (
    OP_CLOSE,
    OP_TEXT,
    RawClient,
    advance,
    client_frame,
    fail_after_real,
    running,
    wait_until,
)

STEP = 0.05


class Users(Handler):
    """The user id is the path's query string; "close" asks the server to close; records ends."""

    codec = RawCodec()

    def __init__(self) -> None:
        self.reasons: dict[str, TerminateReason] = {}
        self.opened: dict[str, trio.Event] = {}

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query["user"])

    async def init(self, conn: Connection) -> None:
        self.opened.setdefault(conn.user_id, trio.Event()).set()

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        if msg == "close":
            conn.close(4001, "asked to")
        else:
            conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons[conn.user_id] = reason


async def open_client(server: Any, handler: Users, user: str) -> RawClient:
    client = await RawClient.connect(server)
    status, _, _ = await client.upgrade(f"/ws?user={user}")
    assert status == 101
    await handler.opened.setdefault(user, trio.Event()).wait()
    return client


async def test_each_connection_meets_its_own_idle_deadline(mock_clock: MockClock) -> None:
    handler = Users()
    settings = {"idle_timeout": 1.0, "ping_interval": None}
    async with running(handler, **settings) as server, fail_after_real():
        early = await open_client(server, handler, "early")  # t = 0
        await advance(mock_clock, 0.5, step=STEP)
        late = await open_client(server, handler, "late")  # t = 0.5
        try:
            await advance(mock_clock, 0.8, step=STEP)  # t = 1.3
            assert await early.read_close() == (1000, "idle_timeout")
            assert await late.received_nothing()
            assert "late" not in handler.reasons
            await advance(mock_clock, 0.5, step=STEP)  # t = 1.8
            assert await late.read_close() == (1000, "idle_timeout")
        finally:
            await early.aclose()
            await late.aclose()
        await wait_until(lambda: len(handler.reasons) == 2)
    assert handler.reasons["early"].kind == handler.reasons["late"].kind == "idle_timeout"


async def test_a_client_that_ignores_our_close_is_cut_off_after_close_timeout(
    mock_clock: MockClock,
) -> None:
    handler = Users()
    settings = {"idle_timeout": None, "ping_interval": None, "close_timeout": 1.0}
    async with running(handler, **settings) as server, fail_after_real():
        client = await open_client(server, handler, "deaf")
        polite = await open_client(server, handler, "polite")
        try:
            for c in (client, polite):
                await c.send(client_frame(OP_TEXT, b"close"))
                assert await c.read_close() == (4001, "asked to")
            await polite.send(client_frame(OP_CLOSE, b"\x03\xe8"))  # answers: ends at once
            assert await polite.at_eof()
            # the deaf one never answers: the server waits close_timeout, then closes TCP
            await advance(mock_clock, 0.8, step=STEP)
            assert await client.received_nothing()
            assert "deaf" not in handler.reasons
            await advance(mock_clock, 0.4, step=STEP)
            assert await client.at_eof()
        finally:
            await client.aclose()
            await polite.aclose()
        await wait_until(lambda: len(handler.reasons) == 2)
    assert handler.reasons == {
        "deaf": TerminateReason("closed", 4001, "asked to"),
        "polite": TerminateReason("closed", 4001, "asked to"),
    }
