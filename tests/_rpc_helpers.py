"""Helpers of the request/reply tests: bare WebSockets for hand-written envelopes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from trio_websocket import WebSocketConnection

from riverside_trio import Server

from ._helpers import ws_open


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
