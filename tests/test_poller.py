"""The fast path's own edge-triggered readiness (Linux), over real sockets: registration once
per connection, unregistration on every way a connection ends, readers parked and woken,
cancelled while parked, fairness under a flood, the fallback to Trio's wait_readable."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest
import trio
import trio.testing

from riverside_trio import Connection, Handler, RawTextCodec, Server, TerminateReason
from riverside_trio.server import _poller
from riverside_trio.server._poller import BATCH, Poller

from ._helpers import NO_TIMERS, RawClient, client_frame, running

pytestmark = pytest.mark.skipif(not _poller.AVAILABLE, reason="no epoll on this platform")

OP_TEXT, OP_CLOSE = 0x1, 0x8


class Echo(Handler):
    codec = RawTextCodec()

    def __init__(self) -> None:
        self.reasons: list[TerminateReason] = []
        self.ended = trio.Event()
        self.handled = 0

    async def handle_message(self, msg: str, conn: Connection) -> None:
        self.handled += 1
        if msg == "close":
            conn.close(1000, "asked")
        elif msg == "fail":
            raise RuntimeError("handler bug")
        else:
            conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append(reason)
        self.ended.set()


def poller_of(server: Server) -> Poller:
    poller = server._core.poller
    assert poller is not None, "the server runs without its poller"
    return poller


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` at every scheduling round; the caller bounds the wait."""
    while not predicate():
        await trio.sleep(0)


async def open_client(server: Server) -> RawClient:
    client = await RawClient.connect(server)
    status, _, _ = await client.upgrade("/ws")
    assert status == 101
    return client


async def echo(client: RawClient, text: str) -> None:
    await client.send(client_frame(OP_TEXT, text.encode()))
    assert await client.read_frame() == (OP_TEXT, text.encode(), True)


def reset_on_close(client: RawClient) -> None:
    client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# ---------------------------------------------------------------- registration


async def test_many_connections_each_registered_once_and_all_unregistered_at_the_end() -> None:
    handler = Echo()
    count = 60

    async def talk(client: RawClient, i: int) -> None:
        for round_ in range(3):
            await echo(client, f"{i}.{round_}")

    async with running(handler, **NO_TIMERS) as server:
        poller = poller_of(server)
        clients = [await open_client(server) for _ in range(count)]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i, client in enumerate(clients):
                    nursery.start_soon(talk, client, i)
            assert poller.watched == count
            assert server.connection_count == count
            for client in clients:
                await client.aclose()
            await until(lambda: server.connection_count == 0)
        assert poller.watched == 0
        assert len(handler.reasons) == count


async def test_every_way_a_connection_ends_unregisters_its_socket() -> None:
    handler = Echo()
    async with running(handler, **NO_TIMERS) as server:
        poller = poller_of(server)
        with trio.fail_after(10):
            # The client's closing handshake.
            client = await open_client(server)
            await echo(client, "a")
            assert poller.watched == 1
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            assert (await client.read_frame())[0] == OP_CLOSE
            assert await client.at_eof()
            await until(lambda: len(handler.reasons) == 1)
            assert poller.watched == 0
            await client.aclose()
            # A close the handler starts.
            client = await open_client(server)
            await client.send(client_frame(OP_TEXT, b"close"))
            assert await client.read_close() == (1000, "asked")
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            assert await client.at_eof()
            await until(lambda: len(handler.reasons) == 2)
            assert poller.watched == 0
            await client.aclose()
            # A handler error (1011).
            client = await open_client(server)
            await client.send(client_frame(OP_TEXT, b"fail"))
            assert (await client.read_close())[0] == 1011
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1011)))
            await until(lambda: len(handler.reasons) == 3)
            assert poller.watched == 0
            await client.aclose()
            # A TCP reset.
            client = await open_client(server)
            await echo(client, "b")
            reset_on_close(client)
            await client.aclose()
            await until(lambda: len(handler.reasons) == 4)
            assert poller.watched == 0
            # A protocol violation (unmasked frame): 1002 and TCP closed at once.
            client = await open_client(server)
            await client.send(client_frame(OP_TEXT, b"x", mask=False))
            assert (await client.read_close())[0] == 1002
            assert await client.at_eof()
            await until(lambda: len(handler.reasons) == 5)
            assert poller.watched == 0
            await client.aclose()
        kinds = [r.kind for r in handler.reasons]
        assert kinds == ["remote", "closed", "internal_error", "remote", "protocol_error"]


async def test_a_half_closed_client_gets_its_answers_and_the_server_sees_the_end() -> None:
    handler = Echo()
    async with running(handler, **NO_TIMERS) as server:
        poller = poller_of(server)
        client = await open_client(server)
        with trio.fail_after(10):
            await client.send(client_frame(OP_TEXT, b"last words"))
            await client.stream.send_eof()  # FIN: EPOLLRDHUP for the server
            assert await client.read_frame() == (OP_TEXT, b"last words", True)
            await handler.ended.wait()
            assert await client.at_eof()
        assert handler.reasons == [TerminateReason("remote", 1006, "")]
        assert poller.watched == 0
        await client.aclose()


async def test_a_cancelled_server_cancels_parked_readers_and_closes_its_poller() -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with running(handler, **NO_TIMERS) as server:
            poller = poller_of(server)
            clients = [await open_client(server) for _ in range(5)]
            for client in clients:
                await echo(client, "parked next")
            assert poller.watched == 5
        # running() cancelled the server with every reader parked on the poller.
        assert poller.closed
        assert poller.watched == 0
        assert server._core.poller is None
        assert handler.reasons == [TerminateReason("remote", 1006, "")] * 5
        for client in clients:
            assert await client.at_eof()
            await client.aclose()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time at the pace of real time, moved on by the test when it likes."""
    return trio.testing.MockClock(rate=1.0)


async def test_a_reader_cancelled_while_parked_unparks_cleanly_under_mock_clock(
    clock: trio.testing.MockClock,
) -> None:
    """The client never answers our close frame: after close_timeout (moved on by the
    MockClock) the connection is aborted while its reader is parked on the poller."""
    handler = Echo()
    settings = {**NO_TIMERS, "close_timeout": 3600.0}
    async with running(handler, **settings) as server:
        poller = poller_of(server)
        client = await open_client(server)
        other = await open_client(server)
        with trio.fail_after(10):
            await echo(client, "hello")
            await client.send(client_frame(OP_TEXT, b"close"))
            assert await client.read_close() == (1000, "asked")
            assert poller.watched == 2
        clock.jump(3601)  # the close deadline passes; the sweeper aborts
        with trio.fail_after(10):
            await handler.ended.wait()
            assert await client.at_eof()
            await until(lambda: poller.watched == 1)
            await echo(other, "still served")
        assert handler.reasons == [TerminateReason("closed", 1000, "asked")]
        await client.aclose()
        await other.aclose()


# ---------------------------------------------------------------- fairness


async def test_flooding_clients_do_not_starve_a_quiet_one() -> None:
    handler = Echo()
    chunk = b"".join(client_frame(OP_TEXT, b"%d" % i) for i in range(200))
    async with running(handler, transmission_limit=0, **NO_TIMERS) as server:
        floods = [await open_client(server) for _ in range(8)]
        quiet = await open_client(server)
        done = trio.Event()

        async def flood(client: RawClient) -> None:
            while not done.is_set():
                await client.send(chunk)

        async def drain(client: RawClient) -> None:
            while not done.is_set():
                if not await client._fill():
                    return
                client.buf.clear()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for client in floods:
                    nursery.start_soon(flood, client)
                    nursery.start_soon(drain, client)
                await until(lambda: handler.handled >= 5000)
                for i in range(20):
                    await echo(quiet, f"quiet {i}")
                done.set()
                nursery.cancel_scope.cancel()
        for client in [*floods, quiet]:
            await client.aclose()


# ---------------------------------------------------------------- the poller itself


async def test_a_parked_reader_whose_watch_is_unregistered_gets_closed_resource_error() -> None:
    poller = Poller()
    a, b = socket.socketpair()
    try:
        watch = poller.register(a)
        assert watch is not None
        assert poller.watched == 1
        watch.ready = False
        errors: list[BaseException] = []

        async def park() -> None:
            watch.task = trio.lowlevel.current_task()
            try:
                await trio.lowlevel.wait_task_rescheduled(watch)
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(park)
            await trio.testing.wait_all_tasks_blocked()
            watch.unregister()
            watch.unregister()  # idempotent
        assert len(errors) == 1
        assert poller.watched == 0
    finally:
        poller.close()
        a.close()
        b.close()
    assert poller.closed
    assert poller.register(a) is None  # closed: readers fall back to wait_readable


async def test_the_poller_wakes_at_most_a_batch_then_lets_them_run() -> None:
    """More ready sockets than one batch: every parked reader is woken all the same."""
    poller = Poller()
    pairs = [socket.socketpair() for _ in range(BATCH + 10)]
    woken = 0
    try:
        watches = [poller.register(a) for a, _ in pairs]

        async def park(watch: _poller.Watch) -> None:
            nonlocal woken
            watch.ready = False
            watch.task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(watch)
            woken += 1

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for watch in watches:
                    assert watch is not None
                    nursery.start_soon(park, watch)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(poller.run)
                for _, b in pairs:
                    b.send(b"x")
                await until(lambda: woken == len(pairs))
                nursery.cancel_scope.cancel()
    finally:
        poller.close()
        for a, b in pairs:
            a.close()
            b.close()


# ---------------------------------------------------------------- not process-wide, fallback


async def test_two_servers_in_one_run_have_pollers_of_their_own() -> None:
    async with running(Echo(), **NO_TIMERS) as one, running(Echo(), **NO_TIMERS) as two:
        assert poller_of(one) is not poller_of(two)
        a, b = await open_client(one), await open_client(two)
        with trio.fail_after(10):
            await echo(a, "one")
            await echo(b, "two")
        assert (poller_of(one).watched, poller_of(two).watched) == (1, 1)
        await a.aclose()
        await b.aclose()


@pytest.mark.parametrize("how", ["setting", "platform"])
async def test_without_the_poller_readers_use_trio_wait_readable(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dict(NO_TIMERS)
    if how == "setting":
        settings["poller"] = "trio"
    else:
        monkeypatch.setattr(_poller, "AVAILABLE", False)  # as where there is no epoll
    async with running(Echo(), **settings) as server:
        assert server._core.poller is None
        client = await open_client(server)
        with trio.fail_after(10):
            for i in range(5):
                await echo(client, f"wait_readable {i}")
        await client.aclose()
