"""request_timeout in the connection's request task: one cancel scope whose deadline each
request moves, a fresh one after a timeout. Each request gets its own full timeout, a
timeout or an overrun never leaks into the next request, and signals have none. Over
memory streams, on a MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from riverside_trio import Connection, ErrorCode, RequestError, RPCHandler, request, signal

from ._helpers import NO_TIMERS, running
from ._rpc_helpers import memory_client


class App(RPCHandler):
    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        self.order: list[str] = []
        self.done = trio.Event()

    @request("sleep")
    async def sleep(self, payload: Any, conn: Connection) -> Any:
        start = trio.current_time()
        await trio.sleep(payload)
        self.order.append(f"slept {trio.current_time() - start:g}")
        return payload

    @request("overrun")
    async def overrun(self, payload: Any, conn: Connection) -> Any:
        self.clock.jump(payload)  # past its deadline, without a checkpoint
        return "finished"

    @request("swallow")
    async def swallow(self, payload: Any, conn: Connection) -> Any:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:  # a handler that should not do this
            return "swallowed"

    @signal("slow")
    async def slow(self, payload: Any, conn: Connection) -> None:
        await trio.sleep(payload)
        self.order.append(f"signal slept {payload}")
        self.done.set()


async def test_each_request_gets_its_whole_timeout_and_a_timeout_ends_only_its_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = App(autojump_clock)
    async with (
        running(app, request_timeout=30, **NO_TIMERS) as server,
        memory_client(server, reconnect=False) as client,
    ):
        assert await client.request("sleep", 20, timeout=1000) == 20
        assert await client.request("sleep", 25, timeout=1000) == 25  # 45 s after the first
        with pytest.raises(RequestError) as info:
            await client.request("sleep", 31, timeout=1000)
        assert info.value.code == ErrorCode.TIMEOUT
        assert await client.request("sleep", 29, timeout=1000) == 29
        # Idle for longer than request_timeout: the last deadline passes, nothing breaks.
        await trio.sleep(100)
        assert await client.request("sleep", 1, timeout=1000) == 1
    assert app.order == ["slept 20", "slept 25", "slept 29", "slept 1"]


async def test_requests_queued_behind_others_get_their_timeout_from_when_they_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = App(autojump_clock)
    async with (
        running(app, request_timeout=30, **NO_TIMERS) as server,
        memory_client(server, reconnect=False) as client,
    ):
        results: dict[int, Any] = {}
        async with trio.open_nursery() as nursery:

            async def ask(n: int, name: str, payload: Any) -> None:
                results[n] = await client.request(name, payload, timeout=1000)

            nursery.start_soon(ask, 1, "sleep", 20)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, 2, "overrun", 100)  # waits for 1, then overruns
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, 3, "sleep", 20)  # waits; not cancelled by 2's overrun
        assert results == {1: 20, 2: "finished", 3: 20}


async def test_a_handler_that_swallows_its_cancellation_does_not_time_out_the_next_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = App(autojump_clock)
    async with (
        running(app, request_timeout=30, **NO_TIMERS) as server,
        memory_client(server, reconnect=False) as client,
    ):
        results: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def ask(name: str, payload: Any) -> None:
                results[name] = await client.request(name, payload, timeout=1000)

            nursery.start_soon(ask, "swallow", None)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, "sleep", 10)  # queued when "swallow" returns
        assert results == {"swallow": "swallowed", "sleep": 10}


async def test_signals_have_no_timeout(autojump_clock: trio.testing.MockClock) -> None:
    app = App(autojump_clock)
    async with (
        running(app, request_timeout=30, **NO_TIMERS) as server,
        memory_client(server, reconnect=False) as client,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.request, "sleep", 10)
            await trio.testing.wait_all_tasks_blocked()
            await client.signal("slow", 100)  # runs right after the request, no timeout
        with trio.fail_after(1000):  # on the mock clock: a cancelled signal fails here
            await app.done.wait()
        assert await client.request("sleep", 10, timeout=1000) == 10
    assert app.order == ["slept 10", "signal slept 100", "slept 10"]
