"""HTTP/1.1 keep-alive for the health check, the metrics and the control API.

A back end that drives the API keeps a pool of connections (httpx, requests.Session, Go's
http.Client); a connection per request costs the server about a whole TCP connection
(accept, shutdown, epoll, h11 set-up). The rules, all of them here:

- After answering ``health_path``, ``metrics_path`` or a request under ``api_prefix``, the
  socket waits for the next request, at most ``http_keepalive_timeout`` seconds (idle);
  0 turns keep-alive off. Requests that arrived already (pipelined) are answered in order.
- The response says ``Connection: close`` (and the socket closes after it) when: the client
  asked for it, or spoke HTTP/1.0 (h11 keeps no HTTP/1.0 connection alive); the request
  body was not read to its end (a 413, a route that reads none: what is left would be
  taken for the next request); the connection served ``http_keepalive_requests``
  requests; the server is shutting down. Every other answer closes as before (the
  WebSocket path's 426, handle_http, the status page), and so does any refusal before a
  route (400, 408, 431).
- Admission (``_admission.py``): the socket keeps its pending slot while it waits, so
  kept-alive sockets count under ``max_pending_handshakes`` and ``max_pending_per_address``
  exactly as before (a pool larger than ``max_pending_per_address`` from one address gets
  its extra sockets closed at the accept). The idle wait is bounded by
  ``http_keepalive_timeout`` (default 5 s, under ``handshake_timeout``'s 10 s): an idle
  kept-alive socket holds its slot no longer than one that connected and sent nothing.
  Once the next request's first bytes arrive, its head must be whole within
  ``handshake_timeout`` (else 408). A trusted proxy's socket is charged anew to the
  client each request's ``X-Forwarded-For`` names (a proxy reuses its upstream
  connections for many clients); while it waits it is charged to no client, as at the
  accept.
- A graceful shutdown closes idle kept-alive sockets at once, and answers a request in
  progress with ``Connection: close``.
- An upgrade request on a kept-alive connection is served as on a new one: the slot is
  given back when it becomes a WebSocket.

h11 frames each request; our responses are written as bytes (``wire.handshake.response``),
not through h11, so its own side never reaches DONE and ``start_next_cycle`` does not
apply: the next request is read by a new ``h11.Connection`` given what the last one had
read past its request (``trailing_data``), which is the same thing.
"""

from __future__ import annotations

import h11
import trio

from ..wire.handshake import keep_alive
from ._admission import Slot
from ._core import Core
from ._transport import Transport

__all__ = ["next_request", "reusable", "send_kept_alive"]


def reusable(core: Core, conn: h11.Connection, served: int) -> bool:
    """Whether the connection may stay open after answering its ``served + 1``-th request.

    Reads what is left of the request's body from what is buffered (never waiting): a body
    not read to its end closes the connection.
    """
    cfg = core.config
    if not cfg.http_keepalive_timeout or core.shutting_down:
        return False
    if served + 1 >= cfg.http_keepalive_requests:
        return False
    try:
        while conn.their_state is h11.SEND_BODY:
            if conn.next_event() is h11.NEED_DATA:
                return False  # the rest of the body is still on its way: close
    except h11.RemoteProtocolError:
        return False
    # MUST_CLOSE: "Connection: close" or HTTP/1.0 (h11's reading of the request head).
    return conn.their_state is h11.DONE


async def send_kept_alive(core: Core, transport: Transport, data: bytes) -> bool:
    """Send a whole response with ``Connection: keep-alive``; False if the client is gone or
    did not read it within ``handshake_timeout``."""
    sent = False
    with trio.move_on_after(core.config.handshake_timeout):
        sent = await transport.send_all(keep_alive(data))
    return sent


async def next_request(
    core: Core, transport: Transport, slot: Slot, last: h11.Connection
) -> h11.Connection | None:
    """The h11 connection for the next request, once its first bytes are here; None when
    the client closed, stayed idle for ``http_keepalive_timeout``, or the server shuts down.
    """
    cfg = core.config
    slot.recharge()  # a proxy's connection: the next request may come from another client
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=cfg.max_header_size)
    leftover, closed = last.trailing_data
    if not leftover:
        if closed:
            return None
        data = await _idle_receive(core, transport)
        if not data:
            return None
        leftover = data
    conn.receive_data(leftover)
    if closed:
        conn.receive_data(b"")
    slot.deadline = trio.current_time() + cfg.handshake_timeout
    return conn


async def _idle_receive(core: Core, transport: Transport) -> bytes | None:
    """The next bytes, waiting at most ``http_keepalive_timeout``; None on a timeout or a
    shutdown (``Core.idle_http`` holds the wait's scope, which the shutdown cancels)."""
    if core.shutting_down:
        return None
    with trio.move_on_after(core.config.http_keepalive_timeout) as scope:
        core.idle_http.add(scope)
        try:
            return await transport.receive()
        finally:
            core.idle_http.discard(scope)
    return None
