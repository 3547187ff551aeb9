"""The node's memory budget in the hot path: ``Budget`` and what outboxes charge to it.

Behaviour tests run once per implementation (``frames_impl``); the property test drives the
compiled module and its pure-Python twin with the same operations and compares everything
they report. The server's use of it (shedding) is tested over real sockets in
``test_limits.py``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riverside_trio.wire import _frames_py

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
