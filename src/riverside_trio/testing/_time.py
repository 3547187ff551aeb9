"""Waiting in tests without sleeping: let every task run, move a mock clock, wait for a
condition that some other task makes true."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

__all__ = ["advance", "settle", "wait_until"]


async def settle() -> None:
    """Let every task run until all of them wait (on I/O, an event or the clock). A checkpoint.

    Over in-memory streams this means the server and its clients have handled everything
    that was sent: a message that has not arrived by now will not arrive without a timer
    or new input.
    """
    await trio.testing.wait_all_tasks_blocked()


async def advance(seconds: float, *, step: float | None = None) -> None:
    """Move the run's :class:`trio.testing.MockClock` on by ``seconds``, settling after each
    jump of at most ``step`` (all of it at once when None). A checkpoint.

    After each jump the server's timers whose deadlines passed (idle timeout, keepalive
    pings, request timeouts, session expiry) run, and whatever they start, until every task
    waits again. Use a ``step`` no longer than the timer you test when it matters which
    tick sees a deadline.

    Raises:
        RuntimeError: the run does not use a MockClock (pytest-trio: ask for the
            ``mock_clock`` or ``autojump_clock`` fixture).
        ValueError: ``seconds`` is negative or ``step`` is not positive.
    """
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        raise RuntimeError(
            "advance() needs a trio.testing.MockClock: with pytest-trio, ask for the "
            "mock_clock or autojump_clock fixture"
        )
    if seconds < 0:
        raise ValueError(f"seconds must be 0 or more, got {seconds}")
    if step is not None and step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    left = seconds
    await settle()
    while left > 1e-9:
        jump = left if step is None else min(step, left)
        clock.jump(jump)
        left -= jump
        await settle()


class _StepWatch(trio.abc.Instrument):
    """Wakes the tasks in :func:`wait_until` whenever any other task has taken a step."""

    def __init__(self) -> None:
        self.waiters: dict[trio.lowlevel.Task, trio.Event] = {}

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task not in self.waiters:
            for event in self.waiters.values():
                event.set()


_WATCH: trio.lowlevel.RunVar[_StepWatch] = trio.lowlevel.RunVar("riverside_trio_step_watch")


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` is true, checking it each time another task has run. A
    checkpoint.

    Whatever makes the predicate true runs in some task (bytes arriving wake the task that
    reads them), so nothing is missed and nothing spins: while every other task waits, so
    does this. An instrument watches the run only while someone waits here.

    Raises:
        trio.TooSlowError: still false after ``timeout`` seconds of the run's clock (on an
            autojumping MockClock that is as soon as nothing else can happen).
    """
    with trio.move_on_after(timeout) as scope:
        await _until(predicate)
    if scope.cancelled_caught:
        raise trio.TooSlowError(f"the condition was still false after {timeout} s")


async def _until(predicate: Callable[[], bool]) -> None:
    """:func:`wait_until` without a time limit (the caller sets one). A checkpoint."""
    if predicate():
        await trio.lowlevel.checkpoint()
        return
    try:
        watch = _WATCH.get()
    except LookupError:
        watch = _StepWatch()
        _WATCH.set(watch)
    me = trio.lowlevel.current_task()
    if not watch.waiters:
        trio.lowlevel.add_instrument(watch)
    try:
        while not predicate():
            event = watch.waiters[me] = trio.Event()
            await event.wait()
    finally:
        watch.waiters.pop(me, None)
        if not watch.waiters:
            trio.lowlevel.remove_instrument(watch)
