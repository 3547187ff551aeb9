"""Embedding the server: nursery.start, one start per Server, graceful shutdown, cancellation,
and handler failures that stay with their own connection."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog.testing
import trio
import trio.testing
import websockets.exceptions
import websockets.sync.client
from trio.testing import MockClock
from trio_websocket import ConnectionClosed as ClientConnectionClosed
from trio_websocket import WebSocketConnection, open_websocket_url, wrap_client_stream

import riverside_trio
from riverside_trio import (
    Accept,
    AuthRequest,
    Config,
    Connection,
    Handler,
    Server,
    TerminateReason,
)

from ._helpers import (
    RawClient,
    advance,
    client_frame,
    fail_after_real,
    running,
    upgrade_request,
    wait_until,
)


def config(**settings: Any) -> Config:
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("port", 0)
    return Config(**settings)


class TrackingHandler(Handler):
    """Echoes; fails on purpose when asked; records every terminate."""

    def __init__(self) -> None:
        self.reasons: list[TerminateReason] = []
        self.auth_calls = 0
        self.auth_entered = trio.Event()
        self.auth_release = trio.Event()

    async def authenticate(self, req: AuthRequest) -> Accept:
        self.auth_calls += 1
        if "slow" in req.query:
            self.auth_entered.set()
            await self.auth_release.wait()
        return Accept(user_id=req.query.get("user", "anon"))

    async def init(self, conn: Connection) -> None:
        if "fail_init" in conn.handshake.query:
            raise RuntimeError("init bug")

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        if msg == "boom":
            raise RuntimeError("handle_message bug")
        conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append(reason)
        if "fail_terminate" in conn.handshake.query:
            raise RuntimeError("terminate bug")


@asynccontextmanager
async def trio_websocket(
    server: Server, resource: str = "/ws"
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client on a stream we own and close.

    trio-websocket 0.12 never closes its socket when the server closes first (it waits for
    TCP EOF, then aclose() returns early), which filterwarnings=error turns into a failure.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, "127.0.0.1", resource)
            try:
                yield ws
            finally:
                with trio.move_on_after(5):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


async def wait_connections(server: Server, n: int) -> None:
    await wait_until(lambda: server.connection_count == n)


async def wait_terminated(handler: TrackingHandler, n: int) -> None:
    await wait_until(lambda: len(handler.reasons) >= n)


async def echo_round_trip(server: Server, text: str = "still serving") -> None:
    async with open_websocket_url(server.url) as ws:
        await ws.send_message(json.dumps(text))
        with trio.fail_after(5):
            assert json.loads(await ws.get_message()) == text


async def port_is_closed(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


# ---------------------------------------------------------------- starting


async def test_nursery_start_returns_the_server_with_its_bound_port() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(riverside_trio.serve, TrackingHandler(), config())
            assert isinstance(server, Server)
            assert server.port > 0
            assert server.url == f"ws://127.0.0.1:{server.port}/ws"
            async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ws") as ws:
                await ws.send_message('"hello"')
                with trio.fail_after(5):
                    assert await ws.get_message() == '"hello"'
            server.shutdown()
        # the nursery exited: serve returned after the shutdown
        assert await port_is_closed(server.port)


async def test_two_servers_on_port_0_get_different_ports_and_a_taken_port_raises() -> None:
    async with running(TrackingHandler) as first, running(TrackingHandler) as second:
        assert first.port != second.port
        with pytest.raises(OSError):
            await Server(TrackingHandler(), config(port=first.port)).serve()
        await echo_round_trip(first)


async def test_serve_accepts_a_handler_class_and_refuses_anything_else() -> None:
    async with running(TrackingHandler) as server:
        assert isinstance(server.handler, TrackingHandler)
        await echo_round_trip(server)
    with pytest.raises(TypeError, match="Handler"):
        Server(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Handler"):
        await riverside_trio.serve(object(), config())  # type: ignore[arg-type]


async def test_serving_a_server_twice_raises_runtime_error() -> None:
    server = Server(TrackingHandler(), config())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(server.serve) is server
            with pytest.raises(RuntimeError, match="once"):
                await server.serve()
            await echo_round_trip(server)  # the running one is unaffected
            server.shutdown()
        with pytest.raises(RuntimeError, match="once"):
            await server.serve()


# ---------------------------------------------------------------- graceful shutdown


def _websockets_client(url: str, ready: trio.Event) -> int | None:
    """Runs in a thread: connect, report ready, wait for the server to close; its code."""
    with websockets.sync.client.connect(url, proxy=None, open_timeout=5, close_timeout=5) as ws:
        trio.from_thread.run_sync(ready.set)
        try:
            ws.recv(timeout=10)
        except websockets.exceptions.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
    return -1  # pragma: no cover - got a message instead of a close


async def test_shutdown_closes_every_client_with_1001_and_terminates_with_shutdown() -> None:
    handler = TrackingHandler()
    codes: dict[str, int | None] = {}
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(riverside_trio.serve, handler, config())

            async def trio_websocket_client(ready: trio.Event) -> None:
                async with trio_websocket(server) as ws:
                    ready.set()
                    with pytest.raises(ClientConnectionClosed) as info:
                        await ws.get_message()
                    codes["trio-websocket"] = info.value.reason.code

            async def websockets_client(ready: trio.Event) -> None:
                codes["websockets"] = await trio.to_thread.run_sync(
                    _websockets_client, server.url, ready
                )

            for client in (trio_websocket_client, websockets_client):
                ready = trio.Event()
                nursery.start_soon(client, ready)
                await ready.wait()
            raw = await RawClient.connect(server)
            try:
                status, _, _ = await raw.upgrade()
                assert status == 101
                await wait_connections(server, 3)

                server.shutdown()

                codes["raw"], reason = await raw.read_close()
                assert reason == "shutdown"
                await raw.send(client_frame(8, struct.pack("!H", 1001)))
                assert await raw.at_eof()
            finally:
                await raw.aclose()
            await server.wait_stopped()
    assert codes == {"trio-websocket": 1001, "websockets": 1001, "raw": 1001}
    assert len(handler.reasons) == 3
    assert {(r.kind, r.code) for r in handler.reasons} == {("shutdown", 1001)}
    assert server.connection_count == 0
    assert server.metrics.disconnects["shutdown"] == 3
    assert await port_is_closed(server.port)


async def test_shutdown_without_clients_returns_and_wait_stopped_wakes() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(riverside_trio.serve, TrackingHandler(), config())
            stopped = trio.Event()

            async def waiter() -> None:
                await server.wait_stopped()
                stopped.set()

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not stopped.is_set()
            server.shutdown()
        assert stopped.is_set()


async def test_upgrades_reaching_the_server_during_shutdown_get_503() -> None:
    handler = TrackingHandler()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(riverside_trio.serve, handler, config())
            # in_auth is inside authenticate when the shutdown begins; late has sent half
            # of its request head
            in_auth = await RawClient.connect(server)
            late = await RawClient.connect(server)
            try:
                await in_auth.send(upgrade_request("/ws?slow"))
                await handler.auth_entered.wait()
                head = upgrade_request()
                await late.send(head[:20])
                await trio.testing.wait_all_tasks_blocked()

                server.shutdown()
                await trio.testing.wait_all_tasks_blocked()

                await late.send(head[20:])
                status, headers, _ = await late.read_head()
                assert status == 503
                assert "retry-after" in headers
                assert handler.auth_calls == 1  # refused before authenticate

                handler.auth_release.set()
                status, headers, _ = await in_auth.read_head()
                assert status == 503
                assert "sec-websocket-accept" not in headers
            finally:
                await in_auth.aclose()
                await late.aclose()
    assert server.metrics.rejected[503] == 2
    assert handler.reasons == []  # no connection was ever opened


async def test_shutdown_cuts_off_clients_that_ignore_the_close_after_drain_timeout(
    mock_clock: MockClock,
) -> None:
    handler = TrackingHandler()
    stopped = trio.Event()
    with fail_after_real():
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                riverside_trio.serve, handler, config(drain_timeout=2.0, close_timeout=30)
            )

            async def note_stopped() -> None:
                await server.wait_stopped()
                stopped.set()

            nursery.start_soon(note_stopped)
            raw = await RawClient.connect(server)
            try:
                assert (await raw.upgrade())[0] == 101
                await wait_connections(server, 1)
                server.shutdown()
                assert await raw.read_close() == (1001, "shutdown")
                # never answer: the server waits drain_timeout, then stops anyway
                await advance(mock_clock, 1.9, step=0.1)
                assert not stopped.is_set()
                assert handler.reasons == []
                assert server.connection_count == 1
                await advance(mock_clock, 0.2)
                with fail_after_real():
                    await stopped.wait()
                assert await raw.at_eof()
            finally:
                await raw.aclose()
    assert handler.reasons == [TerminateReason("shutdown", 1001, "shutdown")]


async def test_shutdown_cancels_an_authenticate_that_outlasts_drain_timeout(
    mock_clock: MockClock,
) -> None:
    cancelled = trio.Event()

    class Stuck(TrackingHandler):
        async def authenticate(self, req: AuthRequest) -> Accept:
            self.auth_entered.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()

    handler = Stuck()
    with fail_after_real():
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                riverside_trio.serve, handler, config(drain_timeout=2.0)
            )
            raw = await RawClient.connect(server)
            try:
                await raw.send(upgrade_request())
                await handler.auth_entered.wait()
                server.shutdown()
                await advance(mock_clock, 1.9, step=0.1)
                assert not cancelled.is_set()
                assert await raw.received_nothing()
                await advance(mock_clock, 0.2)
                await server.wait_stopped()
                assert cancelled.is_set()
                assert await raw.at_eof()
            finally:
                await raw.aclose()
    assert handler.reasons == []


# ---------------------------------------------------------------- cancellation


async def test_cancelling_the_serve_nursery_stops_the_server() -> None:
    handler = TrackingHandler()
    with trio.fail_after(10):
        raw = None
        try:
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(riverside_trio.serve, handler, config())
                raw = await RawClient.connect(server)
                assert (await raw.upgrade())[0] == 101
                await wait_connections(server, 1)
                nursery.cancel_scope.cancel()
            # serve returned: TCP is closed, the listener is gone, terminate ran once
            assert await raw.at_eof()
        finally:
            if raw is not None:
                await raw.aclose()
        await server.wait_stopped()
    assert await port_is_closed(server.port)
    assert len(handler.reasons) == 1
    assert server.connection_count == 0


async def test_cancelling_during_authenticate_stops_the_server() -> None:
    handler = TrackingHandler()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(riverside_trio.serve, handler, config())
            raw = await RawClient.connect(server)
            try:
                await raw.send(upgrade_request("/ws?slow"))
                await handler.auth_entered.wait()
                nursery.cancel_scope.cancel()
            finally:
                await raw.aclose()
    assert await port_is_closed(server.port)
    assert handler.reasons == []


# ---------------------------------------------------------------- handler failures


async def test_init_raising_closes_that_client_with_1011_and_others_are_served() -> None:
    handler = TrackingHandler()
    async with running(handler) as server, open_websocket_url(server.url) as bystander:
        async with trio_websocket(server, "/ws?fail_init") as victim:
            with trio.fail_after(5), pytest.raises(ClientConnectionClosed) as info:
                await victim.get_message()
            assert info.value.reason.code == 1011
        await wait_terminated(handler, 1)
        assert (handler.reasons[0].kind, handler.reasons[0].code) == ("init_failed", 1011)
        await bystander.send_message('"bystander"')
        with trio.fail_after(5):
            assert await bystander.get_message() == '"bystander"'
        await echo_round_trip(server)


async def test_handle_message_raising_closes_that_client_with_1011_and_others_are_served() -> None:
    handler = TrackingHandler()
    async with running(handler) as server, open_websocket_url(server.url) as bystander:
        raw = await RawClient.connect(server)
        try:
            assert (await raw.upgrade())[0] == 101
            await raw.send(client_frame(1, b'"boom"'))
            with trio.fail_after(5):
                assert await raw.read_close() == (1011, "internal_error")
        finally:
            await raw.aclose()
        await wait_terminated(handler, 1)
        assert (handler.reasons[0].kind, handler.reasons[0].code) == ("internal_error", 1011)
        await bystander.send_message('"after the crash"')
        with trio.fail_after(5):
            assert await bystander.get_message() == '"after the crash"'
        await echo_round_trip(server)
        assert server.connection_count == 1


async def test_terminate_raising_is_contained_and_the_server_keeps_serving() -> None:
    handler = TrackingHandler()
    async with running(handler) as server:
        async with open_websocket_url(server.url + "?fail_terminate") as ws:
            await ws.send_message('"x"')
            with trio.fail_after(5):
                assert await ws.get_message() == '"x"'
        await wait_terminated(handler, 1)
        assert handler.reasons[0].kind == "remote"
        await echo_round_trip(server)
        await wait_terminated(handler, 2)


# -- connection log ------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
async def test_connections_are_logged_open_and_closed(enabled: bool, mock_clock: MockClock) -> None:
    handler = TrackingHandler()
    with structlog.testing.capture_logs() as logs:
        async with running(handler, log_connections=enabled) as server:
            async with trio_websocket(server, "/ws?user=ada") as ws:
                await ws.send_message(json.dumps("hi"))
                with fail_after_real():
                    assert json.loads(await ws.get_message()) == "hi"
                await advance(mock_clock, 2.5, step=0.5)
            await wait_terminated(handler, 1)
    events = [e for e in logs if e["event"] in ("connection_open", "connection_closed")]
    if not enabled:
        assert events == []
        return
    opened, closed = events
    assert opened["event"] == "connection_open"
    assert opened["log_level"] == "info"
    assert opened["peer"].startswith("127.0.0.1:")
    assert (opened["user_id"], opened["path"]) == ("ada", "/ws")
    assert opened["session_id"]
    assert closed["event"] == "connection_closed"
    assert (closed["peer"], closed["user_id"]) == (opened["peer"], "ada")
    assert (closed["code"], closed["reason"]) == (1000, "remote")
    assert closed["duration"] == 2.5
