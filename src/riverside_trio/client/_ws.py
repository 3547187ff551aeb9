"""The WebSocket under the clients: trio-websocket's connection, minus one race.

trio-websocket answers a ping that arrives after its own close frame went out; wsproto
refuses to send a pong then and the ``LocalProtocolError`` escapes from the reader task,
taking the client's nursery down (trio-websocket #184; the fix proposed there is #198). A
server's keepalive ping and a client's close cross often enough: under an autojumping
``MockClock`` a test that ends on a ping's tick hits it every time. No pong is owed once
our close frame is sent, so none is sent.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any, cast
from urllib.parse import urlsplit

import trio
import trio_websocket
import wsproto
import wsproto.events
from wsproto.connection import ConnectionState

__all__ = ["open_stream", "wrap_client_stream"]

_NO_PONG = (ConnectionState.LOCAL_CLOSING, ConnectionState.CLOSED)


class _WebSocket(trio_websocket.WebSocketConnection):
    async def _handle_ping_event(self, event: wsproto.events.Ping) -> None:
        if self._wsproto.state not in _NO_PONG:
            await super()._handle_ping_event(event)


async def open_stream(url: str, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    """A TCP connection to ``url``'s host and port (TLS for ``wss://``, with ``ssl_context``
    or the system's CAs). A checkpoint.

    Raises:
        OSError: the host cannot be reached or resolved.
    """
    parts = urlsplit(url)
    if parts.scheme == "wss":
        return await trio.open_ssl_over_tcp_stream(
            parts.hostname or "localhost",
            parts.port or 443,
            ssl_context=ssl_context or ssl.create_default_context(),
        )
    return await trio.open_tcp_stream(parts.hostname or "localhost", parts.port or 80)


async def wrap_client_stream(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    url: str,
    *,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    max_message_size: int = 1_048_576,
) -> trio_websocket.WebSocketConnection:
    """Open a WebSocket to ``url`` over ``stream`` (as ``trio_websocket.wrap_client_stream``
    does); its reader runs in ``nursery``. A checkpoint.

    Raises:
        trio_websocket.HandshakeError: the upgrade failed (``ConnectionRejected``: refused
            with an HTTP status; with a body it is raised in ``nursery``).
    """
    parts = urlsplit(url)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    ws = _WebSocket(
        cast(Any, stream),
        wsproto.WSConnection(wsproto.ConnectionType.CLIENT),
        host=parts.netloc,
        path=resource,
        client_subprotocols=subprotocols,
        client_extra_headers=extra_headers,
        max_message_size=max_message_size,
    )
    nursery.start_soon(ws._reader_task)
    await ws._open_handshake.wait()
    return ws
