"""The node's memory budget in the hot path: ``Budget`` and what outboxes charge to it.

Behaviour tests run once per implementation (``frames_impl``); the property test drives the
compiled module and its pure-Python twin with the same operations and compares everything
they report. The server's use of it (shedding) is tested over real sockets in
``test_limits.py``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riverside_trio import Connection, TerminateReason, User
from riverside_trio.server._budget import held_bytes
from riverside_trio.server._mailbox import INFO_BYTES
from riverside_trio.wire import _frames_py

from ._helpers import NO_TIMERS, RawClient, running
from ._hostile import (
    Recorder,
    advance,
    close_frame,
    connected,
    fail_after_real,
    masked,
    read_until_close,
    settle,
    wait_until,
)

PROPERTY = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


class Over:
    """An ``on_over`` callback that records ``used`` at each call."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.budget: Any = None

    def __call__(self) -> None:
        self.seen.append(self.budget.used)


def make_budget(frames: ModuleType, limit: int) -> tuple[Any, Over]:
    over = Over()
    over.budget = frames.Budget(limit, over)
    return over.budget, over


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected non-blocking socket pair with small buffers (server side, client side)."""
    server, client = socket.socketpair()
    server.setblocking(False)
    client.setblocking(False)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def nothing() -> None:
    pass


# Budget ------------------------------------------------------------------------------------


def test_budget_counts_charges_and_credits(frames_impl: ModuleType) -> None:
    budget, over = make_budget(frames_impl, 100)
    assert (budget.limit, budget.used, budget.over) == (100, 0, False)
    budget.charge(60)
    budget.charge(40)
    assert (budget.used, budget.over, over.seen) == (100, False, [])  # at the limit: not over
    budget.credit(30)
    assert budget.used == 70


def test_budget_calls_on_over_for_every_charge_that_leaves_it_over(
    frames_impl: ModuleType,
) -> None:
    budget, over = make_budget(frames_impl, 100)
    budget.charge(101)
    budget.charge(1)  # still over: reported again
    budget.charge(0)  # nothing charged: nothing reported
    budget.credit(52)  # credits never call
    budget.charge(10)  # 60: under again
    budget.charge(41)
    assert over.seen == [101, 102, 101]
    assert budget.over


def test_budget_rejects_bad_arguments(frames_impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="limit"):
        frames_impl.Budget(-1, nothing)
    with pytest.raises(TypeError, match="on_over"):
        frames_impl.Budget(10, "not callable")
    with pytest.raises(TypeError):
        frames_impl.Budget("10", nothing)
    with pytest.raises(OverflowError):
        frames_impl.Budget(1 << 80, nothing)
    budget = frames_impl.Budget(10, nothing)
    with pytest.raises(ValueError, match="negative"):
        budget.charge(-1)
    budget.charge(5)
    with pytest.raises(ValueError, match="cannot credit 6 bytes: 5 are charged"):
        budget.credit(6)
    with pytest.raises(ValueError):
        budget.credit(-1)
    assert budget.used == 5
    with pytest.raises(AttributeError):
        budget.used = 0
    with pytest.raises(AttributeError):
        budget.limit = 0
    with pytest.raises(TypeError):
        type("Sub", (frames_impl.Budget,), {})


def test_outbox_rejects_a_budget_of_the_wrong_type(frames_impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        frames_impl.Outbox(None, 1, 1, nothing, budget=object())


# Outboxes charge it ------------------------------------------------------------------------


def test_direct_sends_charge_nothing(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    budget, _ = make_budget(frames_impl, 1000)
    outbox = frames_impl.Outbox(server, 10, 1000, nothing, budget=budget)
    assert outbox.push(b"hello") == frames_impl.PUSH_SENT
    assert budget.used == 0
    assert outbox.budget is budget


def test_queued_bytes_are_charged_until_taken_dropped_or_closed(
    frames_impl: ModuleType,
) -> None:
    budget, over = make_budget(frames_impl, 25)
    # Over a stream (no socket) every frame is queued.
    a = frames_impl.Outbox(None, 10, 1000, nothing, budget=budget)
    b = frames_impl.Outbox(None, 10, 1000, nothing, budget=budget)
    a.push(b"a" * 10)
    b.push(b"b" * 10)
    assert budget.used == a.queued_bytes + b.queued_bytes == 20
    a.push(b"a" * 10)  # 30: over
    assert over.seen == [30]  # called once the outbox had queued the frame
    assert a.take() == b"a" * 20
    assert budget.used == 10
    b.push(b"b" * 5)
    assert b.drop_queued() == 2
    assert (b.queued_frames, budget.used) == (0, 0)
    b.push(b"c" * 7)
    b.close()
    assert budget.used == 0
    assert b.push(b"d") == frames_impl.PUSH_CLOSED
    assert budget.used == 0


def test_on_over_sees_the_outbox_state_after_the_push(frames_impl: ModuleType) -> None:
    seen = []
    outbox: Any = None

    def on_over() -> None:
        seen.append((outbox.queued_frames, outbox.queued_bytes))

    budget = frames_impl.Budget(4, on_over)
    outbox = frames_impl.Outbox(None, 10, 1000, nothing, budget=budget)
    outbox.push(b"abc")
    outbox.push(b"de")
    assert seen == [(2, 5)]


def test_take_with_a_limit_takes_whole_frames_that_fit_and_at_least_one(
    frames_impl: ModuleType,
) -> None:
    budget, _ = make_budget(frames_impl, 1000)
    outbox = frames_impl.Outbox(None, 10, 1000, nothing, budget=budget)
    for frame in (b"a" * 10, b"b" * 20, b"c" * 30, b"d" * 5):
        outbox.push(frame)
    assert outbox.take(25) == b"a" * 10  # the next frame would not fit
    assert (outbox.queued_frames, outbox.queued_bytes, budget.used) == (3, 55, 55)
    assert outbox.take(0) == b"b" * 20  # one frame at least
    assert outbox.take(1000) == b"c" * 30 + b"d" * 5
    assert (outbox.queued_frames, budget.used) == (0, 0)
    assert outbox.take(10) == b""
    outbox.push(b"e" * 3)
    outbox.push(b"f" * 3)
    assert outbox.take(-1) == b"eeefff"  # negative: everything
    with pytest.raises(TypeError):
        outbox.take("10")


def test_drop_oldest_credits_what_it_drops(frames_impl: ModuleType) -> None:
    budget, _ = make_budget(frames_impl, 1000)
    outbox = frames_impl.Outbox(None, 2, 1000, nothing, drop_oldest=True, budget=budget)
    for frame in (b"1" * 10, b"2" * 20, b"3" * 30):
        outbox.push(frame)
    assert (outbox.dropped_frames, outbox.queued_bytes, budget.used) == (1, 50, 50)


def test_drop_queued_keeps_the_rest_of_a_partly_sent_frame(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    budget, _ = make_budget(frames_impl, 1 << 30)
    outbox = frames_impl.Outbox(server, 100, 1 << 30, nothing, budget=budget)
    big = frames_impl.encode_frame(frames_impl.OP_BINARY, b"x" * 200_000)
    assert outbox.push(big) == frames_impl.PUSH_QUEUED  # the kernel took part of it
    rest = outbox.queued_bytes
    assert 0 < rest < len(big)
    outbox.push(b"\x82\x01a")
    outbox.push(b"\x82\x01b")
    assert outbox.drop_queued() == 2
    assert (outbox.queued_frames, outbox.queued_bytes, budget.used) == (1, rest, rest)
    assert outbox.dropped_frames == 0 and not outbox.closed
    # What is left ends the torn frame: the peer then gets exactly that frame, whole.
    assert outbox.push(b"\x88\x00") == frames_impl.PUSH_QUEUED
    got = bytearray()
    data = outbox.take()
    assert budget.used == 0
    while data:
        with contextlib.suppress(BlockingIOError):
            data = data[server.send(data) :]
        try:
            while chunk := client.recv(1 << 20):
                got += chunk
        except BlockingIOError:
            pass
    assert bytes(got) == big + b"\x88\x00"  # the big frame whole, then the close frame


def test_a_failed_direct_send_credits_the_queue(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    budget, _ = make_budget(frames_impl, 1 << 30)
    outbox = frames_impl.Outbox(server, 100, 1 << 30, nothing, budget=budget)
    big = frames_impl.encode_frame(frames_impl.OP_BINARY, b"x" * 200_000)
    outbox.push(big)
    assert budget.used > 0
    client.close()
    outbox.writing = False
    outbox.take()  # the writer took it; then a new direct send finds the peer gone
    while outbox.push(b"\x82\x00") != frames_impl.PUSH_CLOSED:
        pass
    assert budget.used == 0


# The compiled module and its twin, side by side -------------------------------------------

budget_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 1), st.integers(0, 300)),
        st.tuples(st.sampled_from(["take", "drop_queued", "close"]), st.integers(0, 1)),
        st.tuples(st.just("take_some"), st.integers(0, 1), st.integers(-1, 700)),
        st.tuples(st.just("writing"), st.integers(0, 1), st.booleans()),
        st.tuples(st.sampled_from(["charge", "credit"]), st.integers(0, 400)),
    ),
    max_size=50,
)


@pytest.mark.c_extension
@PROPERTY
@given(
    limit=st.integers(0, 1500),
    max_frames=st.integers(0, 6),
    max_bytes=st.integers(0, 1200),
    drop_oldest=st.booleans(),
    over_socket=st.booleans(),
    steps=budget_ops,
)
def test_budget_same_in_c_and_python(
    frames_c: ModuleType,
    limit: int,
    max_frames: int,
    max_bytes: int,
    drop_oldest: bool,
    over_socket: bool,
    steps: list[tuple[Any, ...]],
) -> None:
    """Two outboxes share one budget, in each implementation; every operation gives the same
    results, states, ``used`` and ``on_over`` calls, and ``used`` is always what the outboxes
    hold plus what was charged from outside."""
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        sides = []
        for k, module in enumerate((frames_c, _frames_py)):
            budget, over = make_budget(module, limit)
            boxes = []
            for server, client in pairs[2 * k : 2 * k + 2]:
                server.setblocking(False)
                client.setblocking(False)
                sock = server if over_socket else None
                boxes.append(
                    module.Outbox(
                        sock, max_frames, max_bytes, nothing, drop_oldest=drop_oldest, budget=budget
                    )
                )
            sides.append((budget, over, boxes))
        outside = 0  # charged by hand (the writer's share), credited by hand at most that
        for i, step in enumerate(steps):
            op = step[0]
            if op == "credit":
                step = ("credit", min(step[1], outside))
            results: list[Any] = []
            for budget, _, boxes in sides:
                if op == "push":
                    frame = i.to_bytes(2, "big") * (step[2] // 2)
                    results.append(boxes[step[1]].push(frame))
                elif op in ("take", "drop_queued", "close"):
                    results.append(getattr(boxes[step[1]], op)())
                elif op == "take_some":
                    results.append(boxes[step[1]].take(step[2]))
                elif op == "writing":
                    boxes[step[1]].writing = step[2]
                else:
                    getattr(budget, op)(step[1])
            outside += step[1] if op == "charge" else -step[1] if op == "credit" else 0
            assert results[: len(results) // 2] == results[len(results) // 2 :]
            states = [
                (
                    budget.used,
                    budget.over,
                    over.seen,
                    [(b.queued_frames, b.queued_bytes, b.closed, b.dropped_frames) for b in boxes],
                )
                for budget, over, boxes in sides
            ]
            assert states[0] == states[1]
            budget, _, boxes = sides[0]
            assert budget.used == sum(b.queued_bytes for b in boxes) + outside
            assert budget.over == (budget.used > limit)
        for budget, _, boxes in sides:
            for box in boxes:
                box.close()
            assert budget.used == outside
    finally:
        for server, client in pairs:
            server.close()
            client.close()


# The server sheds the connections holding the most -----------------------------------------

KiB = 1024


def held(conn: Any) -> int:
    return int(held_bytes(conn))


def padded(tag: str, i: int, size: int) -> str:
    head = f"{tag} {i:06d} "
    return head + "x" * (size - len(head))


async def test_past_the_budget_the_connection_holding_most_is_shed_and_the_rest_served(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Two clients that do not read hold 300 and 100+ KiB, under a budget of 512 KiB; when
    the second takes the node over, the first (holding most) is closed 1008 memory_budget,
    alone. The second and a well-behaved client keep being served, everything in order."""
    handler = Recorder()
    limit = 512 * KiB
    settings = {
        "max_queued_bytes": limit,
        "outbox_bytes": 8 << 20,  # per-client limits far away: the budget is what bites
        "outbox_size": 100_000,
        **NO_TIMERS,
    }
    async with (
        running(handler, **settings) as server,
        connected(server, "big", rcvbuf=4096) as big,
        connected(server, "small", rcvbuf=4096) as small,
        connected(server, "good") as good,
    ):
        await wait_until(lambda: len(handler.conns) == 3)
        big_conn, small_conn = handler.conns["big"], handler.conns["small"]
        sent: dict[str, int] = {"big": 0, "small": 0}

        async def fill(user: str, until: Callable[[], bool]) -> None:
            while not until():
                assert sent[user] < 2000, f"{user} never held enough"
                assert server.deliver_user(user, padded(user, sent[user], 8 * KiB)) == 1
                sent[user] += 1
                await settle()

        await fill("big", lambda: held(big_conn) >= 300 * KiB)
        await fill("small", lambda: held(small_conn) >= 100 * KiB)
        assert server.metrics.queued_bytes <= limit
        assert server.metrics.memory_shed_connections == 0
        await fill("small", lambda: big_conn.closed)
        # Shed: the biggest alone, and the node back under its budget but for the batch the
        # shed client's writer still holds (it goes once written, or at close_timeout).
        assert not small_conn.closed
        assert server.metrics.memory_shed_connections == 1
        assert server.metrics.queued_bytes - held(big_conn) <= limit
        assert big_conn._outbox.queued_frames <= 2  # a torn frame's rest and the close frame

        # The well-behaved client is served meanwhile.
        await good.send(masked(b"still there?"))
        texts = []
        with fail_after_real():
            while not texts:
                _op, payload, _ = await good.read_frame()
                texts.append(payload.decode())
        assert texts == ["still there?"]

        # The small one gets everything it was sent, in order.
        with fail_after_real():
            for i in range(sent["small"]):
                _op, payload, _ = await small.read_frame()
                assert payload.decode() == padded("small", i, 8 * KiB)

        # The big one: a prefix of what it was sent (its queue was dropped), every frame whole,
        # then the close frame with the reason it can branch on.
        texts, code, reason = await read_until_close(big)
        assert texts == [padded("big", i, 8 * KiB) for i in range(len(texts))]
        assert 0 < len(texts) < sent["big"]
        assert (code, reason) == (1008, "memory_budget")
        await big.send(close_frame(1000))
        with fail_after_real():
            assert await big.at_eof()
        await wait_until(lambda: "big" in handler.reasons)
        assert handler.reasons["big"] == TerminateReason("memory_budget", 1008, "memory_budget")
        assert server.metrics.disconnects["memory_budget"] == 1
        # Every byte was credited back: nothing is queued for anyone now.
        await wait_until(lambda: server.metrics.queued_bytes == 0)
        assert "small" not in handler.reasons and "good" not in handler.reasons


class Hoarder(Recorder):
    """``handle_info`` of user ``hoard`` waits (its mailbox fills); others echo the info."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()

    async def handle_info(self, info: Any, conn: Connection) -> None:
        if conn.user_id == "hoard":
            await self.release.wait()
        else:
            conn.send(f"info {info}")


async def test_infos_waiting_in_a_mailbox_count_against_the_budget(
    mock_clock: trio.testing.MockClock,
) -> None:
    handler = Hoarder()
    limit = 16 * INFO_BYTES
    settings = {"max_queued_bytes": limit, "mailbox_size": 1000, **NO_TIMERS}
    async with (
        running(handler, **settings) as server,
        connected(server, "hoard") as hoard,
        connected(server, "good") as good,
    ):
        await wait_until(lambda: len(handler.conns) == 2)
        hoard_conn = handler.conns["hoard"]
        posted = 0
        while not hoard_conn.closed:
            assert posted < 100, "the mailbox was never shed"
            assert server.send_info(User("hoard"), posted) == 1
            posted += 1
            await settle()
            await good.send(masked(f"ping {posted}".encode()))  # served, one at a time
            with fail_after_real():
                _op, payload, _ = await good.read_frame()
            assert payload.decode() == f"ping {posted}"
        # The first info runs (and waits); 16 more fill the budget; the 18th takes it over.
        assert posted == 18
        _, code, reason = await read_until_close(hoard)
        assert (code, reason) == (1008, "memory_budget")
        assert server.metrics.memory_shed_connections == 1
        await hoard.send(close_frame())
        await wait_until(lambda: "hoard" in handler.reasons)
        assert handler.reasons["hoard"].kind == "memory_budget"
        assert server.metrics.queued_bytes == 0
        assert server.send_info(User("good"), "after") == 1
        with fail_after_real():
            _op, payload, _ = await good.read_frame()
        assert payload.decode() == "info after"
        assert "good" not in handler.reasons


async def scrape(server: Any) -> str:
    with fail_after_real():
        client = await RawClient.connect(server)
        try:
            await client.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await client.read_head()
        finally:
            await client.aclose()
    assert status == 200
    return body.decode()


def seq(text: str) -> int:
    return int(text.split(" ", 2)[1])


async def test_clients_that_stop_reading_cannot_take_the_node_past_its_budget(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Four members of a channel read nothing, one reads everything; the channel is flooded.
    The readers that stopped are shed as the node reaches its budget (not by their own
    outbox limits, set far higher), cut off after close_timeout, and every byte they held
    is released; the reader gets every message, in order."""
    handler = Recorder()
    limit = 256 * KiB
    outbox_bytes = 1024 * KiB  # far above the budget's share of each: the budget bites first
    settings = {
        "max_queued_bytes": limit,
        "outbox_bytes": outbox_bytes,
        "outbox_size": 100_000,
        "close_timeout": 5.0,
        **NO_TIMERS,
    }
    size = 4 * KiB
    async with (
        running(handler, **settings) as server,
        connected(server, "good", join="room") as good,
        AsyncExitStack() as stack,
    ):
        for i in range(4):
            await stack.enter_async_context(
                connected(server, f"stopped{i}", join="room", rcvbuf=4096)
            )
        await wait_until(lambda: len(handler.conns) == 5)
        stopped = [handler.conns[f"stopped{i}"] for i in range(4)]
        got: list[int] = []
        sent = 0
        most = 0  # the most the node held, over the whole flood
        most_live = 0  # ... for connections not on their way out

        async def read_good() -> None:
            while True:
                _op, payload, _ = await good.read_frame()
                got.append(seq(payload.decode()))

        with fail_after_real(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_good)
                after = 0
                while after < 200:
                    assert sent < 20_000, "the clients that stopped were never shed"
                    after += all(c.closed for c in stopped)
                    while sent - len(got) > 16:  # the good reader keeps up
                        await settle()
                    assert server.deliver_channel("room", padded("m", sent, size)) >= 1
                    sent += 1
                    await settle()
                    most = max(most, server.metrics.queued_bytes)
                    live = [held(c) for c in stopped if not c.closed]
                    most_live = max(most_live, sum(live))
                while len(got) < sent:
                    await settle()
                nursery.cancel_scope.cancel()
        assert got == list(range(sent))
        assert server.metrics.memory_shed_connections == 4
        # Bounded: what the live clients held never passed the budget by more than one
        # step's deliveries; what the shed ones still held (their writers' batches) is
        # bounded by their outbox limits, and goes at close_timeout.
        assert most_live <= limit + 5 * (size + 4)
        assert most <= limit + 4 * 2 * (outbox_bytes + size)
        assert server.metrics.queued_bytes > 0
        await advance(mock_clock, 6.0)
        await wait_until(lambda: len(handler.reasons) == 4)
        shed = TerminateReason("memory_budget", 1008, "memory_budget")
        assert handler.reasons == {f"stopped{i}": shed for i in range(4)}
        assert server.metrics.queued_bytes == 0
        text = await scrape(server)
        assert "riverside_memory_shed_connections_total 4.0" in text
        assert "riverside_queued_bytes 0.0" in text
        assert 'riverside_disconnects_total{reason="memory_budget"} 4.0' in text
