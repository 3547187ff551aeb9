"""The reading half's limits over real sockets, a hostile client beside a well-behaved one:
control frames against ``control_frame_limit``, and fair reads (a flood yields to others
after 64 frames or 64 KiB of input in one wake-up)."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from riverside_trio import Connection, Server, TerminateReason

from ._helpers import NO_TIMERS, RawClient, running
from ._hostile import (
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Recorder,
    advance,
    close_frame,
    connected,
    fail_after_real,
    masked,
    read_until_close,
    wait_until,
)

# ---------------------------------------------------------------- control frames


async def pongs(client: RawClient, count: int) -> list[bytes]:
    got = []
    with fail_after_real():
        while len(got) < count:
            op, payload, _ = await client.read_frame()
            assert op == OP_PONG, (op, payload)
            got.append(payload)
    return got


async def test_pings_past_the_control_frame_limit_close_1008_and_a_polite_pinger_is_served(
    mock_clock: trio.testing.MockClock,
) -> None:
    handler = Recorder()
    async with (
        running(handler, control_frame_limit=10, **NO_TIMERS) as server,
        connected(server, "hostile") as hostile,
        connected(server, "polite") as polite,
    ):
        # Ten pings a second, for five (mock) seconds: every one answered, never closed.
        for second in range(5):
            burst = [b"p%d-%d" % (second, i) for i in range(10)]
            await polite.send(b"".join(masked(p, OP_PING) for p in burst))
            assert await pongs(polite, 10) == burst
            await advance(mock_clock, 1.0)
        # Fifty in one go (the clock stands still: no token comes back meanwhile): ten
        # answered, then the close frame with the reason to branch on.
        await hostile.send(b"".join(masked(b"h%d" % i, OP_PING) for i in range(50)))
        assert await pongs(hostile, 10) == [b"h%d" % i for i in range(10)]
        texts, code, reason = await read_until_close(hostile)
        assert (texts, code, reason) == ([], 1008, "too_many_control_frames")
        await hostile.send(close_frame())
        with fail_after_real():
            assert await hostile.at_eof()
        await wait_until(lambda: "hostile" in handler.reasons)
        kind = "too_many_control_frames"
        assert handler.reasons["hostile"] == TerminateReason(kind, 1008, kind)
        assert server.metrics.disconnects[kind] == 1
        assert server.metrics.incoming_control["ping"] == 50 + 50  # every ping is counted
        # The polite one is still served.
        await polite.send(masked(b"hello"))
        with fail_after_real():
            assert await polite.read_frame() == (OP_TEXT, b"hello", True)
        assert "polite" not in handler.reasons


async def test_unsolicited_pongs_count_against_the_control_frame_limit(
    mock_clock: trio.testing.MockClock,
) -> None:
    handler = Recorder()
    async with (
        running(handler, control_frame_limit=5, **NO_TIMERS) as server,
        connected(server, "hostile") as hostile,
    ):
        await hostile.send(masked(b"", OP_PONG) * 5)
        await hostile.send(masked(b"still fine"))
        with fail_after_real():
            assert await hostile.read_frame() == (OP_TEXT, b"still fine", True)
        await hostile.send(masked(b"", OP_PONG))
        _, code, reason = await read_until_close(hostile)
        assert (code, reason) == (1008, "too_many_control_frames")
        assert server.metrics.incoming_control["pong"] == 6


async def test_a_control_frame_limit_of_zero_answers_every_ping(
    mock_clock: trio.testing.MockClock,
) -> None:
    handler = Recorder()
    async with (
        running(handler, control_frame_limit=0, **NO_TIMERS) as server,
        connected(server, "pinger") as pinger,
    ):
        burst = [b"%d" % i for i in range(300)]
        await pinger.send(b"".join(masked(p, OP_PING) for p in burst))
        assert await pongs(pinger, 300) == burst
        assert not handler.conns["pinger"].closed


# ---------------------------------------------------------------- fair reads

# What one connection may take of one wake-up (the README's promise, not the module's
# constants, so that the tests see a change to them).
EVENTS_PER_CHECKPOINT = 64
READ_BYTES_PER_CHECKPOINT = 64 * 1024


@asynccontextmanager
async def plain_socket(server: Server, user: str) -> AsyncIterator[socket.socket]:
    """An upgraded connection as a plain socket, to write floods in one synchronous step."""
    async with connected(server, user, sndbuf=4 << 20) as client:
        sock: socket.socket = client.stream.socket._sock  # type: ignore[attr-defined]
        # trio.SocketStream keeps unsent bytes to 16 KiB (TCP_NOTSENT_LOWAT): lift that.
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25), 1 << 30)
        yield sock


def write_now(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data`` without yielding to Trio (the kernel takes it, or we fail)."""
    view = memoryview(data)
    while view:
        view = view[sock.send(view) :]


class Steps(trio.abc.Instrument):
    """Numbers Trio's task steps: messages handled in one step of one task were handled
    without letting any other task run."""

    def __init__(self) -> None:
        self.step = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.step += 1


class StepRecorder(Recorder):
    def __init__(self, steps: Steps) -> None:
        super().__init__()
        self.steps = steps
        self.flood_steps: Counter[int] = Counter()  # task step -> flood messages in it

    async def handle_message(self, msg: str, conn: Connection) -> None:
        await super().handle_message(msg, conn)
        if conn.user_id == "quiet-flood":
            self.flood_steps[self.steps.step] += 1


async def flood_beside_one_message(count: int, size: int) -> tuple[list[int], int, int]:
    """A flooder writes ``count`` messages of ``size`` bytes and, in the same step, a polite
    client writes one. Returns the flood in the order handled, where the polite message
    came, and the most flood messages handled in one task step."""
    steps = Steps()
    handler = StepRecorder(steps)
    trio.lowlevel.add_instrument(steps)
    try:
        async with (
            running(handler, transmission_limit=0, **NO_TIMERS) as server,
            plain_socket(server, "quiet-flood") as flooder,
            plain_socket(server, "quiet-polite") as polite,
        ):
            await wait_until(lambda: len(handler.conns) == 2)
            body = b"x" * max(0, size - 7)
            flood = b"".join(masked(b"%06d " % i + body) for i in range(count))
            write_now(flooder, flood)
            write_now(polite, masked(b"polite"))
            await wait_until(lambda: len(handler.handled) == count + 1)
    finally:
        trio.lowlevel.remove_instrument(steps)
    order = [u for u, _ in handler.handled]
    flooded = [int(m[:6]) for u, m in handler.handled if u == "quiet-flood"]
    return flooded, order.index("quiet-polite"), max(handler.flood_steps.values())


async def test_a_flood_of_small_messages_yields_to_another_client_every_64_frames() -> None:
    flooded, polite_at, most_in_a_step = await flood_beside_one_message(3000, 8)
    assert flooded == list(range(3000))
    # The flood is handled 64 messages per task step at most, so a client that became
    # readable with it is handled after at most one such share, not after all 3000.
    assert most_in_a_step <= EVENTS_PER_CHECKPOINT
    assert polite_at <= EVENTS_PER_CHECKPOINT


async def test_a_flood_of_big_messages_yields_to_another_client_every_64_kib() -> None:
    size = 16 * 1024
    flooded, polite_at, most_in_a_step = await flood_beside_one_message(24, size)
    assert flooded == list(range(24))
    # A step reads 64 KiB at most: with the piece of a message left from the step before,
    # four messages of 16 KiB at most.
    assert most_in_a_step <= READ_BYTES_PER_CHECKPOINT // size
    assert polite_at <= READ_BYTES_PER_CHECKPOINT // size


async def test_a_flooder_at_the_limits_is_closed_while_another_client_is_served(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Pings and messages in one flood: the first limit reached closes the flooder (here
    the control frames'), and the other client's messages are answered meanwhile."""
    handler = Recorder()
    settings = {"control_frame_limit": 20, "transmission_limit": 1000, **NO_TIMERS}
    async with (
        running(handler, **settings) as server,
        plain_socket(server, "quiet-flood") as flooder,
        connected(server, "polite") as polite,
    ):
        await wait_until(lambda: len(handler.conns) == 2)
        flood = b"".join(masked(b"%d" % i) + masked(b"", OP_PING) for i in range(100))
        write_now(flooder, flood)
        await polite.send(masked(b"hello"))
        with fail_after_real():
            assert await polite.read_frame() == (OP_TEXT, b"hello", True)
        await wait_until(lambda: handler.conns["quiet-flood"].closed)
        handled = [m for u, m in handler.handled if u == "quiet-flood"]
        assert handled == [str(i) for i in range(21)]  # the 21st ping found no token
        assert server.metrics.disconnects["too_many_control_frames"] == 0  # still closing
        flooder.close()
        await wait_until(lambda: "quiet-flood" in handler.reasons)
        assert handler.reasons["quiet-flood"].kind == "too_many_control_frames"
        assert server.metrics.disconnects["too_many_control_frames"] == 1
