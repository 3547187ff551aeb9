"""Helpers of the request/reply tests: clients over real sockets or memory streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from trio_websocket import WebSocketConnection

from riverside_trio import Client, Server, open_client

from ._helpers import ws_open


@asynccontextmanager
async def memory_client(server: Server, **kwargs: Any) -> AsyncIterator[Client]:
    """A Trio client whose connections are memory streams into ``server.serve_stream``:
    no socket, so ``MockClock`` moves the timers only when every task waits."""
    async with trio.open_nursery() as nursery:

        async def factory() -> trio.abc.Stream:
            client_end, server_end = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_end)
            return client_end

        async with open_client(server.url, stream_factory=factory, **kwargs) as client:
            yield client
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_json(server: Server) -> AsyncIterator[WebSocketConnection]:
    """A bare WebSocket (trio-websocket) to ``server``, for hand-written envelopes."""
    async with ws_open(server.url) as ws:
        yield ws


async def send_json(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(json.dumps(obj))


async def recv_json(ws: WebSocketConnection) -> Any:
    return json.loads(await ws.get_message())


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, re-checking whenever every task is blocked (no
    sleeps); 30 s is only a safety net for a test that would otherwise hang."""
    with trio.fail_after(30):
        while not condition():
            await trio.testing.wait_all_tasks_blocked()
