"""Sessions in Redis (the Redis session store, chosen by ``broker_url``): created on one
node and restored on another by the Trio client reconnecting there, the TTLs Redis holds,
``max_session_connections`` across nodes (and the connections of a dead node no longer
counting), closing from either side for every node, each refusal with its own error reply,
and Redis unreachable (an error reply, logged once, counted)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
import trio

from riverside_trio import (
    Connection,
    ErrorCode,
    RedisSessionStore,
    RequestError,
    RPCHandler,
    Server,
    SessionError,
    open_client,
    request,
)

from .._redis import RedisServer, command, needs_redis
from ._nodes import broker, nodes, wait_for

pytestmark = [needs_redis, pytest.mark.redis]

EXPIRY = 3600  # seconds: session_expiry of these tests (TTLs are checked against it)


class SessionApp(RPCHandler):
    @request("login")
    async def login(self, payload: Any, conn: Connection) -> Any:
        session = await conn.create_session({"user": payload, "n": [1, 2.5, None]})
        return session.key

    @request("whoami")
    async def whoami(self, payload: Any, conn: Connection) -> Any:
        return conn.session.info["user"] if conn.session is not None else None

    @request("logout")
    async def logout(self, payload: Any, conn: Connection) -> Any:
        return await conn.close_session()

    @request("odd_info")
    async def odd_info(self, payload: Any, conn: Connection) -> Any:
        await conn.create_session(object())  # CBOR cannot carry it
        return None


def store(server: Server) -> RedisSessionStore:
    s = server._core.session_store
    assert isinstance(s, RedisSessionStore)
    return s


@asynccontextmanager
async def cluster(url: str, **settings: Any) -> AsyncIterator[list[Server]]:
    """Two nodes of SessionApp whose session stores are connected to Redis."""
    settings = {"broker_ttl": 1, "session_expiry": EXPIRY, **settings}
    async with nodes(url, handler=SessionApp, **settings) as servers:
        await wait_for(lambda: all(store(s)._client is not None for s in servers), "stores")
        yield servers


def via(
    *servers: Server, gate: trio.Event | None = None
) -> Callable[[], Awaitable[trio.abc.Stream]]:
    """A stream factory for open_client: each connection goes to the next of ``servers``
    (the last one repeated), as a load balancer would spread them; with ``gate``, every
    connection after the first waits for it."""
    ports = itertools.chain((s.port for s in servers), itertools.repeat(servers[-1].port))
    first = [True]

    async def factory() -> trio.abc.Stream:
        if gate is not None and not first[0]:
            await gate.wait()
        first[0] = False
        return await trio.open_tcp_stream("127.0.0.1", next(ports))

    return factory


def conns_of(redis: RedisServer, server: Server, key: str) -> dict[str, int]:
    """The per-node connection counts Redis has for session ``key``."""
    raw = command(redis.port, "HGETALL", store(server).keys(key)[1])
    fields = dict(zip(raw[::2], raw[1::2], strict=True))
    return {node.decode(): int(value.split()[0]) for node, value in fields.items()}


def pttl(redis: RedisServer, server: Server, key: str) -> list[int]:
    return [command(redis.port, "PTTL", k) for k in store(server).keys(key)]


def fresh_ttl(ttls: list[int]) -> bool:
    """Both TTLs were set to session_expiry a moment ago (60 s of slack for a loaded host);
    the counts' key is gone (-2) when no node holds the session."""
    data, conns = ttls
    return all((EXPIRY - 60) * 1000 < t <= EXPIRY * 1000 for t in (data, conns) if t != -2)


async def test_a_session_made_on_one_node_is_restored_on_another_after_a_reconnect(
    redis: RedisServer,
) -> None:
    async with (
        cluster(redis.url) as (a, b),
        open_client(a.url, stream_factory=via(a, b), backoff_min=0.001, backoff_max=0.01) as client,
    ):
        key = await client.request("login", "alice")
        session = await client.wait_session()
        assert session.info == {"user": "alice", "n": [1, 2.5, None]}
        assert conns_of(redis, a, key) == {a.node_id: 1}
        ttls = pttl(redis, a, key)
        assert -2 not in ttls and fresh_ttl(ttls)
        (conn,) = a.connections()
        conn.close(1012, "restarting")
        await wait_for(lambda: client.connects == 2 and client.connected, "reconnected to b")
        assert client.restore_error is None
        assert client.session is not None and client.session.key == key
        assert client.session.last_lookup >= session.last_lookup
        assert await client.request("whoami") == "alice"
        (b_conn,) = b.connections()
        assert b_conn.session is not None and b_conn.session.info == session.info
        assert b.handler.sessions.count(key) == 1 and a.handler.sessions.count(key) == 0
        await wait_for(lambda: conns_of(redis, a, key) == {b.node_id: 1}, "a's count written")


async def test_the_ttl_is_session_expiry_set_again_by_a_restore_a_refresh_and_a_release(
    redis: RedisServer,
) -> None:
    async with cluster(redis.url) as (a, b):
        async with open_client(a.url, reconnect=False) as first:
            key = await first.request("login", "bea")
            data_key = store(a).keys(key)[0]
            command(redis.port, "PEXPIRE", data_key, 50_000)
        # the last connection left: both keys live session_expiry from now
        await wait_for(lambda: fresh_ttl(pttl(redis, a, key)), "ttl set on release")
        for k in store(a).keys(key):
            command(redis.port, "PEXPIRE", k, 50_000)
        async with open_client(b.url, reconnect=False) as second:
            await second.restore_session(key)
            assert fresh_ttl(pttl(redis, b, key))  # a restore sets it again
            assert conns_of(redis, b, key) == {b.node_id: 1}
            for k in store(a).keys(key):
                command(redis.port, "PEXPIRE", k, 50_000)
            # held by a connection of b: b's refresh (every broker_ttl / 3) sets it again
            await wait_for(lambda: fresh_ttl(pttl(redis, b, key)), "ttl set by the refresh")
        await wait_for(lambda: conns_of(redis, b, key) == {}, "b's release written")
        # Redis expires it (a TTL run out, here made to): nobody can restore it any more
        for k in store(a).keys(key):
            command(redis.port, "PEXPIRE", k, 1)
        await wait_for(lambda: command(redis.port, "EXISTS", data_key) == 0, "expired")
        async with open_client(a.url, reconnect=False) as third:
            with pytest.raises(SessionError) as info:
                await third.restore_session(key)
            assert info.value.code == ErrorCode.SESSION_NOT_FOUND


async def test_max_session_connections_counts_every_node(redis: RedisServer) -> None:
    async with (
        cluster(redis.url, max_session_connections=2) as (a, b),
        open_client(a.url) as one,
        open_client(b.url) as two,
        open_client(b.url) as three,
    ):
        key = await one.request("login", "cid")
        await two.restore_session(key)
        with pytest.raises(SessionError) as info:
            await three.restore_session(key)  # one on a, one on b: full
        assert info.value.code == ErrorCode.MAX_SESSION_CONNECTIONS
        assert conns_of(redis, a, key) == {a.node_id: 1, b.node_id: 1}
        await one.aclose()  # a's connection ends: its count is written down
        await wait_for(lambda: conns_of(redis, a, key) == {b.node_id: 1}, "a's count gone")
        assert (await three.restore_session(key)).key == key
        assert b.handler.sessions.count(key) == 2


async def test_the_connections_of_a_dead_node_stop_counting(redis: RedisServer) -> None:
    async with (
        cluster(redis.url, max_session_connections=1) as (a, b),
        open_client(a.url, reconnect=False) as one,
    ):
        key = await one.request("login", "dee")
        await one.aclose()
        await wait_for(lambda: conns_of(redis, a, key) == {}, "released")
        conns_key = store(a).keys(key)[1]
        seconds, micros = command(redis.port, "TIME")
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        # a node that died holding it: its entry, never refreshed, expired a moment ago
        command(redis.port, "HSET", conns_key, "deadnode", f"1 {now_ms - 1}")
        async with open_client(b.url, reconnect=False) as two:
            assert (await two.restore_session(key)).key == key
            assert conns_of(redis, b, key) == {b.node_id: 1}  # the dead entry was pruned
        await wait_for(lambda: conns_of(redis, a, key) == {}, "released")
        # a live node's entry (refreshed within broker_ttl) counts
        command(redis.port, "HSET", conns_key, "othernode", f"1 {now_ms + 600_000}")
        async with open_client(b.url, reconnect=False) as three:
            with pytest.raises(SessionError) as info:
                await three.restore_session(key)
            assert info.value.code == ErrorCode.MAX_SESSION_CONNECTIONS


async def test_a_session_closed_by_the_server_is_closed_on_every_node(redis: RedisServer) -> None:
    async with (
        cluster(redis.url) as (a, b),
        open_client(a.url) as on_a,
        open_client(b.url) as on_b,
    ):
        key = await on_a.request("login", "eli")
        await on_b.restore_session(key)
        assert await a.handler.close_session(key) == 1  # one connection here
        assert command(redis.port, "EXISTS", store(a).keys(key)[0]) == 0
        # b learns it at its next refresh (every broker_ttl / 3) and tells its client
        await wait_for(lambda: on_a.session is None and on_b.session is None, "clients told")
        assert b.handler.sessions.count(key) == 0 and store(b).closed_here == 1
        assert await on_b.request("whoami") is None
        with pytest.raises(SessionError) as info:
            await on_b.restore_session(key)
        assert info.value.code == ErrorCode.SESSION_NOT_FOUND


async def test_a_client_close_deletes_the_session_once_no_node_holds_it(
    redis: RedisServer,
) -> None:
    async with (
        cluster(redis.url) as (a, b),
        open_client(a.url) as on_a,
        open_client(b.url) as on_b,
        open_client(b.url) as later,
    ):
        key = await on_a.request("login", "flo")
        await on_b.restore_session(key)
        await on_a.close_session()  # b still holds it: kept
        assert command(redis.port, "EXISTS", store(a).keys(key)[0]) == 1
        assert conns_of(redis, a, key) == {b.node_id: 1}
        assert await on_b.request("logout") is True  # the last one: deleted everywhere
        assert command(redis.port, "EXISTS", *store(a).keys(key)) == 0
        with pytest.raises(SessionError) as info:
            await later.restore_session(key)
        assert info.value.code == ErrorCode.SESSION_NOT_FOUND


async def test_each_refusal_keeps_its_own_error_reply(redis: RedisServer) -> None:
    async with (
        cluster(redis.url) as (a, b),
        open_client(a.url) as one,
        open_client(b.url) as two,
    ):
        key = await one.request("login", "gil")
        await two.request("login", "hoa")
        with pytest.raises(SessionError) as info:
            await two.restore_session(key)  # two has a session already: never overwritten
        assert info.value.code == ErrorCode.SESSION_EXISTS
        assert await two.request("whoami") == "hoa"
        assert conns_of(redis, a, key) == {a.node_id: 1}  # the refusal counted nothing
        with pytest.raises(RequestError) as info2:
            await one.request("login", "again")
        assert info2.value.code == ErrorCode.SESSION_EXISTS
        async with open_client(b.url) as three:
            for unknown in ("x" * 64, "{" + "y" * 63, "short"):
                with pytest.raises(SessionError) as info3:
                    await three.restore_session(unknown)
                assert info3.value.code == ErrorCode.SESSION_NOT_FOUND
            with pytest.raises(RequestError) as info4:
                await three.request("odd_info")  # an info CBOR cannot carry: a bug, logged
            assert info4.value.code == ErrorCode.INTERNAL
            assert three.session is None and b.handler.sessions.active_count == 1


async def test_redis_down_is_an_error_reply_logged_once_and_counted() -> None:
    with RedisServer() as redis:
        async with (
            cluster(redis.url) as (a, _b),
            open_client(a.url, reconnect=False) as client,
        ):
            key = await client.request("login", "ivy")
            await client.close_session()
            with structlog.testing.capture_logs() as logs:
                await trio.to_thread.run_sync(redis.kill)
                for _ in range(3):
                    with pytest.raises(RequestError) as info:
                        await client.request("login", "ivy")
                    assert info.value.code == ErrorCode.SESSION_STORE_UNAVAILABLE
                    with pytest.raises(SessionError) as info2:
                        await client.restore_session(key)
                    assert info2.value.code == ErrorCode.SESSION_STORE_UNAVAILABLE
            names = ("session_store_unreachable", "session_store_reachable")
            events = [e["event"] for e in logs if e["event"] in names]
            assert events == ["session_store_unreachable"]
            assert client.session is None and await client.request("whoami") is None
            errors = store(a).errors
            assert errors["create"] == 3 and errors["restore"] == 3
            text = a.metrics.render().decode()
            assert 'riverside_session_store_errors_total{op="create"} 3.0' in text
            assert "riverside_session_store_reachable 0.0" in text

            await wait_for(lambda: not broker(a).connected, "a's broker saw it")
            await trio.to_thread.run_sync(redis.start)  # back, empty
            await wait_for(lambda: store(a)._client is not None, "store connected again")
            new_key = await client.request("login", "ivy")
            assert new_key != key and store(a).reachable
            assert "riverside_session_store_reachable 1.0" in a.metrics.render().decode()


async def test_session_store_memory_keeps_sessions_on_their_node(redis: RedisServer) -> None:
    async with (
        nodes(redis.url, handler=SessionApp, session_store="memory") as (a, b),
        open_client(a.url) as on_a,
        open_client(b.url) as on_b,
    ):
        assert a._core.session_store is None
        key = await on_a.request("login", "jon")
        with pytest.raises(SessionError) as info:
            await on_b.restore_session(key)
        assert info.value.code == ErrorCode.SESSION_NOT_FOUND
