"""The status page: off until ``status_token`` is set; then ``status_path`` serves a page
that polls ``status_path + ".json"`` and shows the node's counts, live.

Both answer only a visitor who gives the token, as ``?token=`` or ``Authorization: Bearer``
(compared in constant time); anyone else gets 401 with a ``WWW-Authenticate`` challenge and
a line naming the setting. Only ``GET`` and ``HEAD`` (else 405). Neither is cached, and the
page sends no ``Referer`` (its URL may hold the token).
"""

from __future__ import annotations

import functools
import hmac
import json
import time
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl

import trio

from .._values import Headers
from ..wire.handshake import response
from ._cluster import cluster_view
from ._core import Core

__all__ = ["is_status_path", "status_response"]

CLUSTER_TIMEOUT = 2.0  # seconds the JSON waits for Redis's view of the cluster

_NO_CACHE = (
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
)
_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="status"'), *_NO_CACHE)


@functools.cache
def status_page() -> bytes:
    """The page's HTML (package data, read once)."""
    return files("riverside_trio").joinpath("_static/status.html").read_bytes()


def is_status_path(core: Core, path: str) -> bool:
    """Whether ``path`` is the status page or its data (never, with the page off)."""
    cfg = core.config
    return cfg.status_token is not None and path in (cfg.status_path, cfg.status_path + ".json")


def _token(query_string: str, headers: Headers) -> str:
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if name == "token":
            return value
    return ""


async def status_response(
    core: Core, method: str, path: str, query_string: str, headers: Headers
) -> bytes:
    """The answer to a request for the status page or its data (see the module doc)."""
    cfg = core.config
    assert cfg.status_token is not None
    head = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return response(405, "method not allowed\n", [("Allow", "GET, HEAD")], head=head)
    given = _token(query_string, headers).encode("utf-8", "replace")
    if not hmac.compare_digest(given, cfg.status_token.encode("utf-8")):
        core.warn("status_refused", path=path, token_given=bool(given))  # at most 1/s
        body = (
            "the status page needs its token (the status_token setting): "
            "add ?token=... to the URL or send Authorization: Bearer ...\n"
        )
        return response(401, body, _CHALLENGE, head=head)
    if path == cfg.status_path:
        html = "text/html; charset=utf-8"
        return response(200, status_page(), _NO_CACHE, content_type=html, head=head)
    data = json.dumps(await status_data(core), separators=(",", ":"))
    return response(200, data, _NO_CACHE, content_type="application/json", head=head)


async def status_data(core: Core) -> dict[str, Any]:
    """This node's counts (cumulative counters: rates are their differences over ``time``)
    and, with a broker, the cluster's nodes. A checkpoint."""
    m = core.metrics
    registry = core.registry
    now = time.time()
    data: dict[str, Any] = {
        "node_id": core.node_id,
        "time": now,
        "uptime": now - core.started_at,
        "connections": len(registry),
        "users": len(registry.users),
        "channels": len(registry.channels),
        "pending_handshakes": m.pending_handshakes,
        "messages_in": m.incoming_text + m.incoming_binary,
        "messages_out": m.outgoing_text + m.outgoing_binary,
        "dropped_messages": m.dropped,
        "shed_connections": m.memory_shed_connections,
        "refused_sockets": sum(m.refused_sockets.values()),
        "rejected_upgrades": sum(m.rejected.values()),
        "queued_bytes": m.queued_bytes,
        "cluster": None,
    }
    if core.broker is None:
        await trio.lowlevel.checkpoint()
        return data
    cluster: dict[str, Any] = {"nodes": [], "connections": 0, "users": 0, "error": None}
    with trio.move_on_after(CLUSTER_TIMEOUT) as scope:
        try:
            view = await cluster_view(core)
        except Exception as exc:  # Redis down: the page says so, the node's counts still show
            cluster["error"] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            cluster["nodes"] = [
                {
                    "node_id": n.node_id,
                    "host": n.host,
                    "pid": n.pid,
                    "connections": n.connections,
                    "started_at": n.started_at,
                    "last_seen": n.last_seen,
                }
                for n in view.nodes
            ]
            cluster["connections"] = view.connection_count
            cluster["users"] = len({c.user_id for c in view.connections})
    if scope.cancelled_caught:
        cluster["error"] = f"Redis did not answer within {CLUSTER_TIMEOUT} s"
    data["cluster"] = cluster
    return data
