"""The writing half over the stream path (``Server.serve_stream``: what TLS uses), when a
client is shed: its close frame goes out behind what it may still get, the writer ends
instead of spinning, and every byte it held is credited back to the node's budget."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio
import trio.testing

from riverside_trio import Accept, AuthRequest, Connection, Handler, RawTextCodec, Server

from ._helpers import NO_TIMERS, RawClient, running
from ._hostile import close_frame, fail_after_real, masked, read_until_close, wait_until


class Burst(Handler):
    """``burst <n> <size>`` sends n messages of that size in one step."""

    codec = RawTextCodec()

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.reasons: list[Any] = []

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id="stream")

    async def init(self, conn: Connection) -> None:
        self.conns.append(conn)

    async def handle_message(self, msg: str, conn: Connection) -> None:
        _, n, size = msg.split()
        for i in range(int(n)):
            conn.send(f"{i:06d} " + "z" * (int(size) - 7))

    async def terminate(self, reason: Any, conn: Connection) -> None:
        self.reasons.append(reason)


@contextmanager
def no_spinning(seconds: float = 30.0) -> Iterator[None]:
    """Fail (not hang) if the run stops yielding: a task that spins never lets
    ``fail_after_real`` in, but a signal handler runs between any two bytecodes."""

    def ring(signum: int, frame: object) -> None:
        raise TimeoutError(f"the Trio run did not come back within {seconds} s: a spin?")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@asynccontextmanager
async def stream_client(
    server: Server, pair: Any = trio.testing.memory_stream_pair
) -> AsyncIterator[RawClient]:
    """A RawClient on one end of an in-memory stream pair, the server on the other."""
    client_end, server_end = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_end)
        client = RawClient(client_end)
        with fail_after_real():
            status, _, _ = await client.upgrade("/ws")
        assert status == 101
        yield client
        nursery.cancel_scope.cancel()


async def test_a_stream_client_shed_for_a_full_outbox_gets_its_close_frame() -> None:
    """Over a stream everything waits for the writer task: a burst past outbox_size fills
    the outbox in one step, and the close frame then goes past it with what was queued.
    The writer used to see that work and never do it: a spin that froze the whole server."""
    handler = Burst()
    settings = {"outbox_size": 8, "close_timeout": 30.0, **NO_TIMERS}
    with no_spinning():
        async with running(handler, **settings) as server, stream_client(server) as client:
            await client.send(masked(b"burst 20 100"))
            texts, code, reason = await read_until_close(client)
            assert [int(t[:6]) for t in texts] == list(range(8))
            assert (code, reason) == (1008, "slow_consumer")
            await client.send(close_frame())
            await wait_until(lambda: bool(handler.reasons))
            assert handler.reasons[0].kind == "slow_consumer"
            assert server.metrics.queued_bytes == 0


async def test_a_stream_client_that_does_not_read_is_shed_for_the_budget(
    mock_clock: trio.testing.MockClock,
) -> None:
    """In lockstep (a send waits until the client reads) the writer holds one batch (64 KiB
    at most) while the client reads nothing, and the rest stays queued; the next burst takes
    the node over its budget. The client is closed 1008 memory_budget: its queue is dropped
    at once, the batch being written goes out, then the close frame; nothing stays charged."""
    handler = Burst()
    limit = 160 * 1024
    settings = {"max_queued_bytes": limit, "outbox_bytes": 1 << 20, **NO_TIMERS}
    frame = 4096 + 4  # a 4 KiB text message and its header
    with no_spinning():
        async with (
            running(handler, **settings) as server,
            stream_client(server, trio.testing.lockstep_stream_pair) as client,
        ):
            await client.send(masked(b"burst 30 4096"))  # 120 KiB: under the budget
            writer = handler.conns[0]._writer
            await wait_until(lambda: writer.held_bytes > writer.outbox.queued_bytes)
            batch = writer.held_bytes - writer.outbox.queued_bytes
            assert batch == (64 * 1024 // frame) * frame  # whole frames, 64 KiB at most
            assert server.metrics.queued_bytes == 30 * frame
            await client.send(masked(b"burst 30 4096"))  # 120 KiB more: over it
            await wait_until(lambda: handler.conns[0].closed)
            assert server.metrics.memory_shed_connections == 1
            # What is left: the batch the writer holds, and the close frame.
            assert server.metrics.queued_bytes == batch + 2 + 2 + len("memory_budget")
            texts, code, reason = await read_until_close(client)
            assert [int(t[:6]) for t in texts] == list(range(batch // frame))
            assert (code, reason) == (1008, "memory_budget")
            await client.send(close_frame())
            await wait_until(lambda: bool(handler.reasons))
            assert handler.reasons[0].kind == "memory_budget"
            assert server.metrics.queued_bytes == 0
