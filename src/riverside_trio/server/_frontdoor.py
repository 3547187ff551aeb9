"""The front door: read one HTTP request head with h11, then answer it or upgrade it.

Decisions, in order (RFC 6455 section 4.2.1 for the upgrade):

- The socket was admitted with a pending slot (``_admission.py``) whose deadline is
  ``handshake_timeout`` after the accept: the TLS handshake (if any) and the whole head
  must be done by then (else 408; a close when TLS is not up yet, as nothing can be said).
  The head must fit in ``max_header_size`` and ``max_headers`` fields (else 431); h11
  rejects malformed HTTP, and HTTP/1.1 without ``Host``, with 400.
- From a trusted proxy, ``X-Forwarded-For`` names the client (the right-most address that
  is not a trusted proxy), and the slot is charged to that address: over
  ``max_pending_per_address`` -> 503. From anyone else it is not read.
- A request with ``Upgrade: websocket``: to another path than ``Config.path`` -> 404; not
  ``GET``, not HTTP/1.1, a body (``Content-Length`` other than 0, or any
  ``Transfer-Encoding``), no ``Connection: upgrade``, or a ``Sec-WebSocket-Key`` that is not
  16 bytes of base64 -> 400; a ``Sec-WebSocket-Version`` other than 13 -> 400 with
  ``Sec-WebSocket-Version: 13``; an ``Origin`` outside ``allowed_origins``, or none when
  ``allow_missing_origin`` is off -> 403 (``auth/_origin.py``); the
  server shutting down or at ``max_connections`` -> 503 (before ``authenticate`` runs);
  then ``authenticate`` decides within ``authenticate_timeout`` (else 504): ``AuthError``
  -> its status, anything else but :class:`Accept` -> 500. A handler without
  ``authenticate`` uses the configured authenticators (``auth/``). The 101 selects
  ``Accept.subprotocol``, else ``riverside.jwt`` when offered (a token's marker).
- A plain request: ``health_path`` -> 200 ``OK``; ``metrics_path`` -> Prometheus text;
  under ``api_prefix`` with ``api_key`` set -> the control API (``api/``, its own body
  limit ``api_max_body``; before ``Config.path``, which may be a prefix covering it);
  ``Config.path`` -> 426 with ``Upgrade: websocket``; ``/riverside.js`` -> the browser
  client; with ``status_token`` set, ``status_path`` (and its ``.json``) -> the status page
  (``_status.py``); anything else -> ``handle_http``,
  404 when it returns None. After health, metrics or the API the connection is kept
  alive for the next request (``_keepalive.py``); every other answer closes it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote

import h11
import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from .._values import Accept, AuthRequest, Headers, HTTPRequest, HTTPResponse, new_session_id
from ..api._request import ApiFailure
from ..auth import JWT_SUBPROTOCOL, split_jwt_subprotocol
from ..client._js import CLIENT_JS_PATH, CLIENT_JS_TYPE, client_js
from ..errors import AuthError
from ..wire.deflate import Inflater, negotiate
from ..wire.handshake import (
    build_headers,
    has_body,
    is_ws_path,
    response,
    subprotocols,
    switching_protocols,
    tokens,
    trim,
    valid_key,
)
from ._admission import Slot
from ._connection import Connection
from ._core import Core
from ._keepalive import next_request, reusable, send_kept_alive
from ._status import is_status_path, status_response
from ._transport import Transport

__all__ = ["handle_request"]

log = structlog.get_logger("riverside_trio.http")


async def _next_event(conn: h11.Connection, transport: Transport) -> object:
    """h11's next event, reading from the transport as long as it needs data.

    Raises:
        h11.RemoteProtocolError: the client sent something that is not HTTP/1.1.
    """
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await transport.receive())
    return event


async def _close_after_response(core: Core, transport: Transport, data: bytes) -> None:
    """Send a whole response, then close without resetting what is still in flight.

    A client that does not read the response within ``handshake_timeout`` is cut off.
    """
    sent = False
    with trio.move_on_after(core.config.handshake_timeout):
        sent = await transport.send_all(data)
    if sent:
        transport.send_eof()
        # Read (and drop) what the client still sends, briefly, so close() sends FIN, not RST.
        with trio.move_on_after(1.0):
            drained = 0
            while drained < 65536:
                chunk = await transport.receive()
                if not chunk:
                    break
                drained += len(chunk)


async def handle_request(
    core: Core, transport: Transport, peer: tuple[str, int], slot: Slot
) -> Connection | None:
    """Serve the socket's requests; answer them, or complete an upgrade and return the
    new Connection.

    The caller owns ``transport`` and ``slot`` (the socket's pending slot, whose deadline
    bounds each request head): when this returns None the last response (if any) was sent
    and the transport can be closed. Between kept-alive requests (``_keepalive.py``) the
    socket keeps its slot.
    """
    cfg = core.config
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=cfg.max_header_size)
    served = 0
    while True:
        result = await _serve_one(core, transport, peer, slot, conn, served)
        if result is not _AGAIN:
            return result if isinstance(result, Connection) else None
        served += 1
        following = await next_request(core, transport, slot, conn)
        if following is None:
            return None
        conn = following


async def _serve_one(
    core: Core,
    transport: Transport,
    peer: tuple[str, int],
    slot: Slot,
    conn: h11.Connection,
    served: int,
) -> Connection | object | None:
    """One request on ``conn``: the Connection of an upgrade, None when the socket is to be
    closed, or ``_AGAIN`` when its response was sent and the next request may follow."""
    cfg = core.config
    try:
        # The whole head is usually there already: then no timeout scope is needed.
        event: object = conn.next_event()
        if event is h11.NEED_DATA and (first := transport.recv_now()) is not None:
            conn.receive_data(first)
            event = conn.next_event()
        if event is h11.NEED_DATA:
            # One deadline, counted from the accept, for the TLS handshake and the head.
            with trio.move_on_at(slot.deadline) as scope:
                if not await transport.handshake():
                    log.debug("tls_handshake_failed", peer=peer)
                    return None
                event = await _next_event(conn, transport)
            if scope.cancelled_caught:
                if not transport.secure_channel_up:
                    log.debug("tls_handshake_timeout", peer=peer)
                    return None  # nothing can be said before TLS is up: close
                await _close_after_response(
                    core, transport, response(408, "request head took too long\n")
                )
                return None
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
        log.debug("bad_request", peer=peer, status=status, error=str(exc))
        await _close_after_response(core, transport, response(status, f"{exc}\n"))
        return None
    request = event if isinstance(event, h11.Request) else None
    if request is None:
        return None  # the client went away before sending a request
    # h11 only limits a head that is still incomplete; a whole one can arrive in one read.
    head_size = len(request.method) + len(request.target) + 12
    head_size += sum(len(k) + len(v) + 4 for k, v in request.headers)
    if head_size > cfg.max_header_size:
        await _close_after_response(
            core, transport, response(431, "request header fields too large\n")
        )
        return None
    if len(request.headers) > cfg.max_headers:
        await _close_after_response(
            core, transport, response(431, f"more than {cfg.max_headers} header fields\n")
        )
        return None

    method = request.method.decode("ascii", "replace")
    target = request.target.decode("ascii", "replace")
    raw_path, _, query_string = target.partition("?")
    path = unquote(raw_path)
    headers = build_headers(request.headers)
    head = method == "HEAD"

    forwarded_for = None
    if slot.trusted:  # a trusted proxy: its X-Forwarded-For names the client
        forwarded_for = core.admission.proxies.client_address(headers.get_all("x-forwarded-for"))
        if forwarded_for is not None and not slot.charge(forwarded_for):
            if "websocket" in tokens(headers, "upgrade"):
                core.metrics.rejected[503] += 1
            await _close_after_response(
                core,
                transport,
                response(503, "too many pending requests from your address\n", _RETRY),
            )
            return None

    ws_path = is_ws_path(cfg.path, path)
    if "websocket" not in tokens(headers, "upgrade"):
        # The health check, the metrics and the API keep their connection alive.
        if path == cfg.health_path and method in ("GET", "HEAD"):
            data = response(200, "OK", head=head)
        elif (
            cfg.metrics_path is not None and path == cfg.metrics_path and method in ("GET", "HEAD")
        ):
            data = response(200, core.metrics.render(), content_type=CONTENT_TYPE_LATEST, head=head)
        elif core.api is not None and core.api.owns(path):

            async def read_body(limit: int) -> bytes:
                return await _read_api_body(core, conn, transport, headers, limit)

            data = await core.api.handle(method, path, query_string, headers, read_body, peer)
        else:
            await _close_after_response(
                core, transport, await _other(core, conn, transport, request, headers, peer)
            )
            return None
        if reusable(core, conn, served):
            return _AGAIN if await send_kept_alive(core, transport, data) else None
        await _close_after_response(core, transport, data)
        return None

    # ---- an upgrade request
    if not ws_path:
        return await _reject(core, transport, 404, "no WebSocket endpoint here\n", head=head)
    if method != "GET":
        return await _reject(core, transport, 400, "a WebSocket upgrade must be a GET\n", head=head)
    if request.http_version != b"1.1":
        return await _reject(core, transport, 400, "a WebSocket upgrade needs HTTP/1.1\n")
    if has_body(headers):
        return await _reject(
            core,
            transport,
            400,
            "a WebSocket upgrade carries no body: no Content-Length other than 0, "
            "no Transfer-Encoding\n",
        )
    if "upgrade" not in tokens(headers, "connection"):
        return await _reject(core, transport, 400, "Connection: Upgrade is missing\n")
    if headers.get_all("sec-websocket-version") != ["13"]:
        return await _reject(
            core,
            transport,
            400,
            "unsupported Sec-WebSocket-Version: this server speaks 13\n",
            [("Sec-WebSocket-Version", "13")],
        )
    keys = headers.get_all("sec-websocket-key")
    key = trim(keys[0]) if len(keys) == 1 else ""
    if not valid_key(key):
        return await _reject(core, transport, 400, "Sec-WebSocket-Key must be 16 bytes in base64\n")
    if core.origins is not None:
        refused = core.origins.refusal(headers.get_all("origin"))
        if refused is not None:
            core.metrics.auth_refused[refused] += 1
            return await _reject(
                core,
                transport,
                403,
                "origin not allowed\n"
                if refused == "origin_mismatch"
                else "an Origin header is required\n",
            )
    if core.shutting_down:
        return await _reject(core, transport, 503, "server shutting down\n", _RETRY)
    if len(core.registry) + core.handshakes >= cfg.max_connections:
        return await _reject(core, transport, 503, "too many connections\n", _RETRY)

    query_list = tuple(parse_qsl(query_string, keep_blank_values=True))
    auth_request = AuthRequest(
        path=path,
        query=dict(query_list),
        query_list=query_list,
        headers=headers,
        peer=peer,
        forwarded_for=forwarded_for,
        # a token sent as "riverside.jwt, <token>" is no subprotocol: it is never selected
        subprotocols=split_jwt_subprotocol(subprotocols(headers))[0],
        _authenticators=core.authenticators,
        _api=core.api,
    )
    core.handshakes += 1
    try:
        try:
            accept = await _authenticate(core, transport, auth_request)
        except _ClientGone:
            log.debug("client_gone_during_authenticate", peer=peer)
            return None
        except _TooSlow:
            core.warn("authenticate_timeout", peer=peer, timeout=cfg.authenticate_timeout)
            return await _reject(core, transport, 504, "authenticate took too long\n")
        except AuthError as exc:
            core.metrics.auth_refused[exc.reason or "handler"] += 1
            return await _reject(core, transport, exc.status, exc.body, exc.headers)
        except Exception:
            log.exception("authenticate_failed", peer=peer, path=path)
            return await _reject(core, transport, 500, "internal error\n")
        if not isinstance(accept, Accept):
            log.error("authenticate_bad_result", result=repr(accept)[:200], peer=peer)
            return await _reject(core, transport, 500, "internal error\n")
        subprotocol = accept.subprotocol
        if subprotocol is not None and subprotocol not in auth_request.subprotocols:
            log.error("subprotocol_not_offered", subprotocol=subprotocol, peer=peer)
            return await _reject(core, transport, 500, "internal error\n")
        if subprotocol is None and JWT_SUBPROTOCOL in auth_request.subprotocols:
            # A browser fails a connection that selects none of the protocols it offered.
            subprotocol = JWT_SUBPROTOCOL
        if core.shutting_down:
            return await _reject(core, transport, 503, "server shutting down\n", _RETRY)

        inflater = None
        extensions = None
        if cfg.permessage_deflate:
            agreed = negotiate(headers.get_all("sec-websocket-extensions"))
            if agreed is not None:
                extensions, client_resets = agreed
                inflater = Inflater(cfg.max_message_size, client_resets)
        if not await transport.send_all(switching_protocols(key, subprotocol, extensions)):
            return None
        leftover = conn.trailing_data[0]
        early = transport.recv_now() if transport.sock is None else None
        return Connection(
            core,
            transport,
            auth_request,
            user_id=accept.user_id,
            session_id=accept.session_id or new_session_id(),
            state={} if accept.state is None else accept.state,
            subprotocol=subprotocol,
            leftover=leftover + early if early else leftover,
            channels=(*cfg.default_channels, *accept.channels),
            inflater=inflater,
        )
    finally:
        core.handshakes -= 1


_RETRY = (("Retry-After", "5"),)
_AGAIN = object()  # _serve_one: answered, and the connection stays open for the next request


async def _other(
    core: Core,
    conn: h11.Connection,
    transport: Transport,
    request: h11.Request,
    headers: Headers,
    peer: tuple[str, int],
) -> bytes:
    """The answer to a plain request that is neither health, metrics nor the API (these
    connections close after it)."""
    cfg = core.config
    method = request.method.decode("ascii", "replace")
    raw_path, _, query_string = request.target.decode("ascii", "replace").partition("?")
    path = unquote(raw_path)
    head = method == "HEAD"
    ws_path = is_ws_path(cfg.path, path)
    if ws_path and method == "GET":
        return response(
            426,
            "this endpoint speaks WebSocket: send an upgrade request\n",
            [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
        )
    if ws_path:
        return response(405, "method not allowed\n", [("Allow", "GET")], head=head)
    if path == CLIENT_JS_PATH and method in ("GET", "HEAD"):
        return response(200, client_js(), content_type=CLIENT_JS_TYPE, head=head)
    if is_status_path(core, path):
        return await status_response(core, method, path, query_string, headers)
    return await _user_route(core, conn, transport, method, path, query_string, headers, peer)


class _ClientGone(Exception):
    pass


class _TooSlow(Exception):
    pass


async def _authenticate(core: Core, transport: Transport, req: AuthRequest) -> object:
    """Run ``Handler.authenticate`` for at most ``authenticate_timeout``, cancelling it if
    the client hangs up meanwhile.

    Raises:
        _ClientGone: the client closed its connection before authenticate returned.
        _TooSlow: authenticate did not return within ``authenticate_timeout``.
        Exception: whatever authenticate raised.
    """
    authenticate = core.handler.authenticate
    if not core.watch_authenticate:
        return await authenticate(req)  # the default never waits here: nothing to watch
    outcome: list[object] = []
    with trio.move_on_after(core.config.authenticate_timeout) as limit:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_hangup, transport, nursery.cancel_scope)
            try:
                outcome.append(await authenticate(req))
            except Exception as exc:
                outcome.append(exc)
            nursery.cancel_scope.cancel()
    if not outcome:
        raise _TooSlow if limit.cancelled_caught else _ClientGone
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


async def _cancel_on_hangup(transport: Transport, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client closes (EOF or reset)."""
    await transport.wait_hangup()
    scope.cancel()


async def _reject(
    core: Core,
    transport: Transport,
    status: int,
    body: bytes | str,
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
    *,
    head: bool = False,
) -> Connection | None:
    """Answer an upgrade with an HTTP error (its head only, for ``HEAD``); returns None (so
    callers can return it)."""
    try:
        data = response(status, body, headers, head=head)
    except (ValueError, UnicodeEncodeError) as exc:
        log.error("bad_rejection_headers", error=str(exc), status=status)
        status, data = 500, response(500, "internal error\n")
    core.metrics.rejected[status] += 1
    await _close_after_response(core, transport, data)
    return None


async def _read_api_body(
    core: Core, conn: h11.Connection, transport: Transport, headers: Headers, limit: int
) -> bytes:
    """The body of a control API request, at most ``limit`` bytes.

    Raises:
        ApiFailure: BODY_TOO_LARGE, REQUEST_TIMEOUT, or ERROR_BINDING_QUERY_PARAMS for a
            body that breaks HTTP.
    """
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiFailure("BODY_TOO_LARGE", f"the body is over api_max_body ({limit} bytes)")
    body = bytearray()
    with trio.move_on_after(core.config.handshake_timeout) as scope:
        try:
            while isinstance(event := await _next_event(conn, transport), h11.Data):
                body += event.data
                if len(body) > limit:
                    raise ApiFailure(
                        "BODY_TOO_LARGE", f"the body is over api_max_body ({limit} bytes)"
                    )
        except h11.RemoteProtocolError as exc:
            raise ApiFailure("ERROR_BINDING_QUERY_PARAMS", f"bad HTTP body: {exc}") from None
    if scope.cancelled_caught:
        raise ApiFailure("REQUEST_TIMEOUT")
    return bytes(body)


async def _user_route(
    core: Core,
    conn: h11.Connection,
    transport: Transport,
    method: str,
    path: str,
    query_string: str,
    headers: Headers,
    peer: tuple[str, int],
) -> bytes:
    """Read the body (up to max_message_size) and ask ``Handler.handle_http``; every answer
    to ``HEAD``, refusals included, is a head without its body."""
    head = method == "HEAD"
    body = bytearray()
    with trio.move_on_after(core.config.handshake_timeout) as scope:
        try:
            while isinstance(event := await _next_event(conn, transport), h11.Data):
                body += event.data
                if len(body) > core.config.max_message_size:
                    return response(413, "request body too large\n", head=head)
        except h11.RemoteProtocolError as exc:
            return response(400, f"{exc}\n", head=head)
    if scope.cancelled_caught:
        return response(408, "request took too long\n", head=head)
    req = HTTPRequest(
        method=method,
        path=path,
        query=dict(parse_qsl(query_string, keep_blank_values=True)),
        headers=headers,
        peer=peer,
        body=bytes(body),
    )
    try:
        resp = await core.handler.handle_http(req)
    except Exception:
        log.exception("handle_http_failed", path=path, method=method)
        return response(500, "internal error\n", head=head)
    if resp is None:
        return response(404, "not found\n", head=head)
    if not isinstance(resp, HTTPResponse):
        log.error("handle_http_bad_result", result=repr(resp)[:200], path=path)
        return response(500, "internal error\n", head=head)
    try:
        return response(resp.status, resp.body, list(resp.headers), resp.content_type, head=head)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        log.error("handle_http_bad_response", error=str(exc), path=path)
        return response(500, "internal error\n", head=head)
