"""schemathesis against the live control API, from the document the server serves.

A real server (a Trio run in a thread, on a free loopback port) with the API on and one
WebSocket client connected (so that sends, subscriptions and /info reach someone);
schemathesis loads ``GET /api/openapi.json`` over HTTP with the key and, for every
operation, sends a fixed number of generated requests (valid and invalid ones, derandomized:
the same requests on every run), each checked: no 5xx, a status the document lists for the
operation, a body matching that status's schema (an error's ``errorCode`` among the codes
listed for it), the documented headers (``X-Request-ID``), 401 without a key, 405 with
``Allow`` for an undocumented method.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import trio
from schemathesis.config import SchemathesisConfig

import riverside_trio
from riverside_trio import Config, Connection, Handler
from riverside_trio.api._openapi import openapi_document

from ._helpers import NO_TIMERS, ws_open
from ._http import KEY, api

EXAMPLES = 25  # per operation and phase: bounded, the suite stays fast


class Echo(Handler):
    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


class LiveServer:
    """A server in a Trio run of its own thread, so that blocking clients can call it."""

    def __init__(self) -> None:
        self.port = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by stop()
            self._errors.append(exc)
            self._ready.put(None)

    async def _main(self) -> None:
        config = Config(host="127.0.0.1", port=0, api_key=KEY, **NO_TIMERS)
        async with trio.open_nursery() as nursery:
            server = await nursery.start(riverside_trio.serve, Echo, config)
            self.port = server.port
            reply = await api(self.port, "POST", "/claim", {"user": "u", "channels": "c"})
            claim = reply.json["claim"]["id"]
            self._stop = trio.Event()
            async with ws_open(f"{server.url}?claim={claim}") as ws:
                self.connection_id = (await api(self.port, "GET", "/info", {"user": "u"})).json[
                    "connections"
                ][0]["id"]
                self._token = trio.lowlevel.current_trio_token()
                self._ready.put(None)
                async with trio.open_nursery() as readers:
                    readers.start_soon(self._drain, ws)
                    await self._stop.wait()
                    readers.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    @staticmethod
    async def _drain(ws: Any) -> None:
        while True:
            await ws.get_message()

    def __enter__(self) -> LiveServer:
        self._ready: queue.Queue[None] = queue.Queue()
        self._thread.start()
        self._ready.get(timeout=60)
        if self._errors:
            raise self._errors[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(60)
        assert not self._thread.is_alive()
        if self._errors:
            raise self._errors[0]


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with LiveServer() as server:
        yield server


CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 1,
        "cache": {"enabled": False},  # no replay of an earlier run's failures: the same run
        "generation": {
            "mode": "all",
            "max-examples": EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "auth": {
            "openapi": {
                "bearer": {"bearer": KEY},
                "apiKeyHeader": {"api_key": KEY},
                "apiKeyQuery": {"api_key": KEY},
            }
        },
        "checks": {
            # the schema cannot say that one of id, channel or user is needed
            "positive_data_acceptance": {"enabled": False},
            # a request head over max_header_size is refused before the API reads it
            "negative_data_rejection": {"expected-statuses": [400, 401, 413, 431]},
        },
    }
)
# The document the server serves (tests/test_openapi.py checks it is this one); the server's
# port is known only when it runs, so the base URL is given to each call.
schema = schemathesis.openapi.from_dict(openapi_document("/api"), config=CONFIG)


@schema.parametrize()
def test_the_live_api_matches_its_openapi_document(
    case: schemathesis.Case, live: LiveServer
) -> None:
    case.call_and_validate(base_url=f"http://127.0.0.1:{live.port}/api", timeout=30)
