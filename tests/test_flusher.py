"""The cork without a Trio instrument: its wake callback, the flusher task, readers that
flush before they park; over real sockets."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from types import ModuleType

import pytest
import trio

from riverside_trio import Connection, Handler, RawTextCodec

from ._helpers import NO_TIMERS, RawClient, client_frame, running


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    client.setblocking(False)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def recv_now(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""


class Calls:
    def __init__(self, error: BaseException | None = None) -> None:
        self.calls = 0
        self.error = error

    def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


# ---------------------------------------------------------------- the cork's wake callback


def test_the_cork_wakes_once_per_flush_on_the_first_noted_outbox(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    wake = Calls()
    cork = frames_impl.Cork(wake=wake)
    cork.active = True
    other = socket.socketpair()
    try:
        other[0].setblocking(False)
        first = frames_impl.Outbox(pair[0], 8, 1 << 20, Calls(), cork=cork)
        second = frames_impl.Outbox(other[0], 8, 1 << 20, Calls(), cork=cork)
        assert first.push(b"a") == frames_impl.PUSH_QUEUED
        assert wake.calls == 1
        assert first.push(b"b") == second.push(b"c") == frames_impl.PUSH_QUEUED
        assert wake.calls == 1  # noted already: no more wake-ups until the flush
        assert cork.flush() == 2
        assert (recv_now(pair[1]), other[1].recv(10)) == (b"ab", b"c")
        assert second.push(b"d") == frames_impl.PUSH_QUEUED
        assert wake.calls == 2
    finally:
        other[0].close()
        other[1].close()


def test_a_failing_cork_wake_reaches_the_push_and_the_frame_stays_queued(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    cork = frames_impl.Cork(wake=Calls(RuntimeError("no flusher")))
    cork.active = True
    outbox = frames_impl.Outbox(pair[0], 8, 1 << 20, Calls(), cork=cork)
    with pytest.raises(RuntimeError, match="no flusher"):
        outbox.push(b"kept")
    assert (outbox.queued_frames, cork.pending) == (1, 1)
    assert cork.flush() == 1
    assert recv_now(pair[1]) == b"kept"


def test_the_cork_wake_is_optional_settable_and_checked(frames_impl: ModuleType) -> None:
    cork = frames_impl.Cork()
    assert cork.wake is None
    wake = Calls()
    cork.wake = wake
    assert cork.wake is wake
    with pytest.raises(TypeError, match="wake must be callable"):
        frames_impl.Cork(wake=42)
    with pytest.raises(TypeError):
        frames_impl.Cork(Calls())  # keyword-only


# ---------------------------------------------------------------- the server


class Echo(Handler):
    codec = RawTextCodec()

    def __init__(self) -> None:
        self.release = trio.Event()

    async def handle_message(self, msg: str, conn: Connection) -> None:
        if msg == "send, then wait":
            conn.send("before the wait")
            await self.release.wait()
            conn.send("after the wait")
        else:
            conn.send(msg)


async def open_client(server) -> RawClient:  # type: ignore[no-untyped-def]
    client = await RawClient.connect(server)
    status, _, _ = await client.upgrade("/ws")
    assert status == 101
    return client


async def test_a_server_adds_no_instrument_to_the_trio_run() -> None:
    # Trio has no public way to list instruments: read the runner's table directly.
    from trio._core._run import GLOBAL_RUN_CONTEXT

    before = {hook: dict(table) for hook, table in GLOBAL_RUN_CONTEXT.runner.instruments.items()}
    async with running(Echo(), **NO_TIMERS) as server:
        client = await open_client(server)
        await client.send(client_frame(0x1, b"hello"))
        with trio.fail_after(5):
            assert await client.read_frame() == (0x1, b"hello", True)
        during = {hook: dict(t) for hook, t in GLOBAL_RUN_CONTEXT.runner.instruments.items()}
        assert during == before
        await client.aclose()


async def test_frames_held_back_for_a_program_task_leave_without_that_task_parking() -> None:
    """A task of the program delivers, then keeps running: the flusher sends the frames
    as soon as that task lets others run, not when it next waits for anything."""
    async with running(Echo(), **NO_TIMERS) as server:
        client = await open_client(server)
        with trio.fail_after(5):
            while server.connection_count == 0:
                await trio.lowlevel.checkpoint()
        got: list[object] = []

        async def read() -> None:
            for _ in range(3):
                got.append((await client.read_frame())[1])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            conn = server.connections()[0]
            for i in range(3):
                assert conn.send(str(i)) == 1
            assert conn._outbox.queued_frames == 3  # corked: nothing sent yet
            with trio.fail_after(5):
                while len(got) < 3:
                    await trio.lowlevel.checkpoint()  # a checkpoint, never a park of this task
        assert got == [b"0", b"1", b"2"]
        await client.aclose()


async def test_a_handler_that_waits_after_sending_gets_its_frame_out_first() -> None:
    handler = Echo()
    async with running(handler, **NO_TIMERS) as server:
        client = await open_client(server)
        await client.send(client_frame(0x1, b"send, then wait"))
        with trio.fail_after(5):
            assert (await client.read_frame())[1] == b"before the wait"
        handler.release.set()
        with trio.fail_after(5):
            assert (await client.read_frame())[1] == b"after the wait"
        await client.send(client_frame(0x1, b"still echoing"))
        with trio.fail_after(5):
            assert (await client.read_frame())[1] == b"still echoing"
        await client.aclose()


async def test_a_burst_to_many_clients_from_one_program_task_arrives_whole_and_in_order() -> None:
    async with running(Echo(), **NO_TIMERS) as server:
        clients = [await open_client(server) for _ in range(20)]
        with trio.fail_after(5):
            while server.connection_count < 20:
                await trio.lowlevel.checkpoint()
        for conn in server.connections():
            conn.join_channel("all")
        for i in range(40):
            assert server.deliver_channel("all", json.dumps(i)) == 20
        for client in clients:
            with trio.fail_after(5):
                got = [json.loads((await client.read_frame())[1]) for _ in range(40)]
            assert got == list(range(40))
            await client.aclose()
