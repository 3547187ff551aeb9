"""Restorable sessions over real connections: creation, restore by key after a drop and
after an automatic reconnect, closing by either side, every refusal with its own error
reply, the connection limit per session, turning sessions off, and expiry in the store."""

from __future__ import annotations

import re
from typing import Any

import pytest

from riverside_trio import (
    Connection,
    ErrorCode,
    MemoryStore,
    RequestError,
    RPCHandler,
    SessionData,
    SessionError,
    open_client,
    request,
)

from ._helpers import NO_TIMERS, running
from ._rpc_helpers import raw_json, recv_json, send_json, until


class SessionApp(RPCHandler):
    @request("login")
    async def login(self, payload: Any, conn: Connection) -> Any:
        session = await conn.create_session({"user": payload})
        return session.key

    @request("whoami")
    async def whoami(self, payload: Any, conn: Connection) -> Any:
        return conn.session.info if conn.session is not None else None

    @request("logout")
    async def logout(self, payload: Any, conn: Connection) -> Any:
        return await conn.close_session()


class FailingStore(MemoryStore):
    async def restore(
        self, key: str, ttl: float | None, max_connections: int
    ) -> SessionData | None:
        raise OSError("a bug of the store")


async def test_a_session_has_a_64_character_url_safe_key_and_its_info_reaches_the_client() -> None:
    app = SessionApp()
    async with running(app, **NO_TIMERS) as server, open_client(server.url) as client:
        key = await client.request("login", "alice")
        assert re.fullmatch(r"[A-Za-z0-9_-]{64}", key)
        session = await client.wait_session()
        assert (session.key, session.info) == (key, {"user": "alice"})
        assert await client.request("whoami") == {"user": "alice"}
        assert app.sessions.count(key) == 1 and app.sessions.active_count == 1
        with pytest.raises(RequestError) as info:
            await client.request("login", "again")  # no silent overwrite
        assert info.value.code == ErrorCode.SESSION_EXISTS


async def test_a_dropped_connection_keeps_the_session_restorable_by_key() -> None:
    app = SessionApp()
    async with running(app, **NO_TIMERS) as server:
        async with open_client(server.url, reconnect=False) as first:
            key = await first.request("login", "bob")
        await until(lambda: app.sessions.count(key) == 0)  # the server saw it end
        async with open_client(server.url, reconnect=False) as second:
            assert await second.request("whoami") is None
            restored = await second.restore_session(key)
            assert (restored.key, restored.info) == (key, {"user": "bob"})
            assert second.session == restored
            assert await second.request("whoami") == {"user": "bob"}
            assert app.sessions.count(key) == 1


async def test_the_client_reconnects_after_the_server_drops_it_and_restores_its_session() -> None:
    app = SessionApp()
    async with (
        running(app, **NO_TIMERS) as server,
        open_client(server.url, backoff_min=0.001, backoff_max=0.01) as client,
    ):
        key = await client.request("login", "carol")
        await client.wait_session()
        (conn,) = server.connections()
        conn.close(1012, "restarting")
        await until(lambda: client.connects == 2)
        # request() waits for the reconnect; the session is restored before it counts.
        assert await client.request("whoami") == {"user": "carol"}
        assert client.connects == 2
        assert client.session is not None and client.session.key == key
        assert client.restore_error is None
        (new_conn,) = server.connections()
        assert new_conn is not conn and new_conn.session is not None


async def test_a_reconnect_whose_session_is_gone_reports_session_not_found() -> None:
    app = SessionApp()
    async with (
        running(app, **NO_TIMERS) as server,
        open_client(server.url, backoff_min=0.001, backoff_max=0.01) as client,
    ):
        key = await client.request("login", "dan")
        await client.wait_session()
        (conn,) = server.connections()
        conn.close()
        await app.close_session(key)  # gone from the store while the client is away
        await client.wait_connected()
        await until(lambda: client.connects == 2)
        await client.wait_connected()
        assert client.session is None
        assert client.restore_error is not None
        assert client.restore_error.code == ErrorCode.SESSION_NOT_FOUND


async def test_restoring_an_unknown_key_is_refused_with_session_not_found() -> None:
    async with running(SessionApp(), **NO_TIMERS) as server, open_client(server.url) as client:
        with pytest.raises(SessionError) as info:
            await client.restore_session("x" * 64)
        assert info.value.code == ErrorCode.SESSION_NOT_FOUND


async def test_restoring_on_a_connection_that_has_a_session_is_refused() -> None:
    async with (
        running(SessionApp(), **NO_TIMERS) as server,
        open_client(server.url) as a,
        open_client(server.url) as b,
    ):
        key_a = await a.request("login", "a")
        await b.request("login", "b")
        with pytest.raises(SessionError) as info:
            await b.restore_session(key_a)
        assert info.value.code == ErrorCode.SESSION_EXISTS
        assert await b.request("whoami") == {"user": "b"}  # unchanged


async def test_a_session_takes_at_most_max_session_connections() -> None:
    async with (
        running(SessionApp(), max_session_connections=2, **NO_TIMERS) as server,
        open_client(server.url) as a,
        open_client(server.url) as b,
        open_client(server.url) as c,
    ):
        key = await a.request("login", "a")
        await b.restore_session(key)
        with pytest.raises(SessionError) as info:
            await c.restore_session(key)
        assert info.value.code == ErrorCode.MAX_SESSION_CONNECTIONS


async def test_sessions_turned_off_refuse_creation_and_restore_with_sessions_disabled() -> None:
    async with (
        running(SessionApp(), sessions=False, **NO_TIMERS) as server,
        open_client(server.url) as client,
    ):
        with pytest.raises(RequestError) as info:
            await client.request("login", "eve")
        assert info.value.code == ErrorCode.SESSIONS_DISABLED
        with pytest.raises(SessionError) as info2:
            await client.restore_session("k" * 64)
        assert info2.value.code == ErrorCode.SESSIONS_DISABLED
        with pytest.raises(RequestError) as info3:
            await client.close_session()
        assert info3.value.code == ErrorCode.SESSIONS_DISABLED


async def test_a_store_that_fails_is_an_internal_error_reply_to_a_restore() -> None:
    class App(SessionApp):
        session_store = FailingStore()

    async with running(App(), **NO_TIMERS) as server, open_client(server.url) as client:
        with pytest.raises(SessionError) as info:
            await client.restore_session("k" * 64)
        assert info.value.code == ErrorCode.INTERNAL


async def test_the_client_closes_its_session_and_the_store_forgets_it() -> None:
    app = SessionApp()
    async with (
        running(app, **NO_TIMERS) as server,
        open_client(server.url) as client,
        open_client(server.url) as other,
    ):
        key = await client.request("login", "fay")
        await client.close_session()
        assert client.session is None
        assert await client.request("whoami") is None
        assert app.sessions.count(key) == 0
        with pytest.raises(SessionError) as info:
            await other.restore_session(key)
        assert info.value.code == ErrorCode.SESSION_NOT_FOUND
        await client.close_session()  # none: an empty reply anyway


async def test_the_server_closes_a_session_and_every_client_holding_it_is_told() -> None:
    app = SessionApp()
    async with (
        running(app, **NO_TIMERS) as server,
        open_client(server.url) as a,
        open_client(server.url) as b,
    ):
        key = await a.request("login", "gus")
        await b.restore_session(key)
        assert await app.close_session(key) == 2
        await until(lambda: a.session is None and b.session is None)
        assert await a.request("whoami") is None
        key2 = await a.request("login", "gus")
        assert await a.request("logout") is True  # conn.close_session()
        await until(lambda: a.session is None)
        with pytest.raises(SessionError):
            await b.restore_session(key2)


async def test_a_session_nobody_restores_within_session_expiry_is_forgotten() -> None:
    now = [1_000_000.0]
    store = MemoryStore(clock=lambda: now[0])

    class App(SessionApp):
        session_store = store

    async with running(App(), session_expiry=60, **NO_TIMERS) as server:
        async with open_client(server.url) as a, open_client(server.url) as b:
            key = await a.request("login", "hal")
            key_old = await b.request("login", "ida")
        await until(lambda: store.connections(key) + store.connections(key_old) == 0)
        now[0] += 59  # restoring within the expiry refreshes it
        async with open_client(server.url) as c:
            assert (await c.restore_session(key)).key == key
            assert store.connections(key) == 1
            now[0] += 1000  # a session held by a connection does not expire
        await until(lambda: store.connections(key) == 0)  # idle from now on
        now[0] += 59
        async with open_client(server.url) as d:
            with pytest.raises(SessionError) as info:
                await d.restore_session(key_old)  # idle for 1118 s
            assert info.value.code == ErrorCode.SESSION_NOT_FOUND
            assert (await d.restore_session(key)).key == key  # idle for 59 s
    assert len(store) == 1


async def test_the_session_envelopes_in_json() -> None:
    async with running(SessionApp(), **NO_TIMERS) as server, raw_json(server) as ws:
        await send_json(ws, {"$": "req", "id": 1, "name": "login", "data": "jo"})
        created = await recv_json(ws)
        assert created["$"] == "session" and created["info"] == {"user": "jo"}
        assert set(created) == {"$", "key", "created", "last_lookup", "info"}
        assert await recv_json(ws) == {"$": "rep", "id": 1, "data": created["key"]}
        await send_json(ws, {"$": "close_session", "id": 2})
        assert await recv_json(ws) == {"$": "rep", "id": 2, "data": None}
        await send_json(ws, {"$": "restore", "id": 3, "key": created["key"]})
        reply = await recv_json(ws)
        assert reply["$"] == "err" and reply["id"] == 3 and reply["code"] == "session_not_found"
