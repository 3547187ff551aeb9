"""Several riverside-trio nodes in one Trio run, joined by a real Redis, and a handler
that lets a test drive every delivery across them from a WebSocket client."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

import riverside_trio
from riverside_trio import (
    Accept,
    AuthRequest,
    Channel,
    Config,
    Connection,
    Group,
    Handler,
    NameInUseError,
    Server,
    Session,
    User,
)

from .._helpers import NO_TIMERS, wait_until

GUARD = 30.0  # seconds: a real-time guard on waits for Redis (never a synchronisation)


async def wait_for(predicate: Callable[[], bool], what: str, guard: float = GUARD) -> None:
    """Wait until ``predicate`` holds (checked after every step of another task, such as
    the broker's reading a reply from Redis); fail after ``guard`` seconds of real time."""
    try:
        await wait_until(predicate, seconds=guard)
    except trio.TooSlowError:
        raise AssertionError(f"not within {guard} s: {what}") from None


def settled(server: Server) -> bool:
    """The node's broker is connected and subscribed to exactly what it wants."""
    broker = server._core.broker
    assert broker is not None
    return broker.connected and not broker._dirty and set(broker.wanted) == broker.subscribed


async def all_settled(*servers: Server) -> None:
    await wait_for(lambda: all(settled(s) for s in servers), "brokers settled")


class ClusterHandler(Handler):
    """``?user=U&session=S`` names the client; JSON commands drive deliveries."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query.get("user", "anon"), session_id=req.query.get("session"))

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        server = conn.server
        match msg:
            case {"join": str(channel)}:
                conn.join_channel(channel)
                conn.send({"joined": channel})
            case {"leave": str(channel)}:
                conn.leave_channel(channel)
                conn.send({"left": channel})
            case {"group": str(group)}:
                conn.join_group(group)
                conn.send({"grouped": group})
            case {"register": str(name)}:
                try:
                    await conn.register_name(name)
                except NameInUseError:
                    conn.send({"register": name, "ok": False})
                else:
                    conn.send({"register": name, "ok": True})
            case {"unregister": str(name)}:
                conn.send({"unregistered": conn.unregister_name(name)})
            case {"channel": str(channel), "body": body}:
                conn.send({"reached": server.deliver_channel(channel, body)})
            case {"user": str(user), "session": str(session), "body": body}:
                conn.send({"reached": server.deliver_session(user, session, body)})
            case {"user": str(user), "body": body}:
                conn.send({"reached": server.deliver_user(user, body)})
            case {"info": info, "to": dest}:
                conn.send({"reached": server.send_info(_destination(dest), info)})
            case {"disconnect": str(user), "code": int(code)}:
                conn.send({"reached": server.disconnect(user, None, code, "bye")})
            case _:
                conn.send({"unknown": msg})

    async def handle_info(self, info: Any, conn: Connection) -> None:
        conn.send({"got_info": info if not hasattr(info, "name") else {"lost": info.name}})


def _destination(dest: Any) -> Any:
    kind, value = dest
    return {
        "name": lambda: value,
        "user": lambda: User(value),
        "session": lambda: Session(*value),
        "channel": lambda: Channel(value),
        "group": lambda: Group(value),
    }[kind]()


@asynccontextmanager
async def nodes(
    url: str, n: int = 2, handler: Handler | type[Handler] = ClusterHandler, **settings: Any
) -> AsyncIterator[list[Server]]:
    """``n`` servers on 127.0.0.1:0 sharing ``url`` under a prefix of this test's own."""
    settings = {**NO_TIMERS, "broker_prefix": "t" + secrets.token_hex(4), **settings}
    async with trio.open_nursery() as nursery:
        servers: list[Server] = []
        for _ in range(n):
            config = Config(host="127.0.0.1", port=0, broker_url=url, **settings)
            servers.append(await nursery.start(riverside_trio.serve, handler, config))
        await all_settled(*servers)
        try:
            yield servers
        finally:
            nursery.cancel_scope.cancel()


def broker(server: Server) -> Any:
    """The server's Redis broker."""
    assert server._core.broker is not None
    return server._core.broker
