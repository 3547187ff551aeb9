"""The control API of one node: answers the requests under ``api_prefix``, and the claims a
client connects with.

One request, in order: the request id (the client's ``X-Request-ID`` if sane, else a new
UUID), the query string (valid UTF-8, else 400), the API key (else 401), the route (else 404,
or 405 with ``Allow``), the body (over ``api_max_body`` -> 413), the parameters (each with
its error code), then the call. Every answer carries ``X-Request-ID``, is counted in
``riverside_api_requests_total{route,status}`` and logged with the request id.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from .._values import Accept, AuthRequest, Headers
from ..cluster import ClusterView
from ..errors import AuthError, BrokerError
from ..wire.frames import encode_close
from ..wire.handshake import response
from ._claims import Claim, ClaimStore, MemoryClaims, RedisClaims, Target, WallClock, new_claim_id
from ._openapi import openapi_document
from ._ops import Operations
from ._request import (
    JSON_TYPE,
    ApiFailure,
    authorized,
    error_body,
    json_body,
    parse_params,
    parse_query,
    request_id,
)
from ._routes import ERRORS, Route, route_for

if TYPE_CHECKING:
    from ..config import Config
    from ..delivery.broker.redis import RedisBroker
    from ..delivery.hub import Hub
    from ..delivery.registry import Registry
    from ..metrics import Metrics

__all__ = ["ControlAPI"]

log = structlog.get_logger("riverside_trio.api")

MAX_EXPIRATION = 10**11  # Unix seconds (year 5138): a bound that keeps Redis's ms in range
_RETRY = ("Retry-After", "5")


class _Node(Protocol):
    """What the API needs of a server's core (a small protocol: the API imports no server)."""

    config: Config
    registry: Registry
    hub: Hub
    broker: RedisBroker | None
    metrics: Metrics
    node_id: str


class ControlAPI:
    """The HTTP control API and the claims of one node (``api_key`` set)."""

    def __init__(self, node: _Node, view: Callable[[], Awaitable[ClusterView]]) -> None:
        config = node.config
        assert config.api_key is not None
        self.config = config
        self.prefix = config.api_prefix.rstrip("/")
        self._keys = tuple(k.encode() for k in config.api_key)
        self.metrics = node.metrics
        self.clock = WallClock()
        broker = node.broker
        self.claims: ClaimStore
        if broker is None:
            self.claims = MemoryClaims(self.clock)
        else:
            self.claims = RedisClaims(lambda: broker.client, config.broker_prefix, self.clock)
        self.ops = Operations(node.registry, node.hub, broker, node.node_id, view)
        self._openapi: bytes | None = None  # GET <prefix>/openapi.json, made on first use

    def owns(self, path: str) -> bool:
        """Whether ``path`` is under the API's prefix."""
        return path == self.prefix or path.startswith(self.prefix + "/")

    # ------------------------------------------------------------------ HTTP

    async def handle(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
        peer: tuple[str, int],
    ) -> bytes:
        """Answer one request under the prefix: the whole HTTP response.

        ``read_body(limit)`` reads the request body; it raises :class:`ApiFailure`
        (BODY_TOO_LARGE, REQUEST_TIMEOUT, ERROR_BINDING_QUERY_PARAMS) when it cannot.
        """
        rid = request_id(headers)
        name = "unknown"
        started = trio.current_time()
        try:
            query = parse_query(query_string)
            if not authorized(self._keys, headers, query):
                raise ApiFailure("INVALID_AUTHORIZATION")
            routes, path_params = route_for(path[len(self.prefix) :] or "/")
            if not routes:
                raise ApiFailure("NOT_FOUND", f"no route {path}")
            route = next((r for r in routes if r.method == method), None)
            if route is None:
                allow = ", ".join(sorted({r.method for r in routes}))
                raise ApiFailure("METHOD_NOT_ALLOWED", headers=[("Allow", allow)])
            name = route.name
            body = await read_body(self.config.api_max_body)
            params = parse_params(route, query, path_params, headers, body)
            status, ctype, payload = await self._call(route, params, body)
            extra: list[tuple[str, str]] = []
            code = ""
        except ApiFailure as failure:
            status, ctype, code = failure.status, JSON_TYPE, failure.code
            payload = error_body(failure.code, failure.message, rid)
            extra = failure.headers
        except Exception:
            log.exception("api_request_failed", request_id=rid, route=name, method=method)
            status, ctype, code = 500, JSON_TYPE, "INTERNAL_ERROR"
            payload = error_body(code, ERRORS[code].message, rid)
            extra = []
        self.metrics.api_requests[(name, status)] += 1
        log.info(
            "api_request",
            request_id=rid,
            method=method,
            path=path,
            route=name,
            status=status,
            error_code=code or None,
            peer=f"{peer[0]}:{peer[1]}",
            ms=round((trio.current_time() - started) * 1000, 2),
        )
        head = method == "HEAD"  # (405: HEAD is no route's method) a head without its body
        return response(status, payload, [("X-Request-ID", rid), *extra], ctype, head=head)

    async def _call(
        self, route: Route, params: dict[str, Any], body: bytes
    ) -> tuple[int, str, bytes]:
        if route.name == "ping":
            return 200, "text/plain; charset=utf-8", b"pong"
        if route.name == "openapi":
            if self._openapi is None:
                self._openapi = json_body(openapi_document(self.prefix, _version()))
            return 200, JSON_TYPE, self._openapi
        if route.name == "claim":
            claim = await self._create_claim(params)
            return 200, JSON_TYPE, json_body({"success": True, "claim": claim.as_json()})
        target = _target(params)
        if route.name == "info":
            return 200, JSON_TYPE, json_body(await self._info(target))
        if route.name == "send":
            kind = params.get("type")
            if kind is None:
                raise ApiFailure("INVALID_MESSAGE_TYPE", "type is required: text, binary, 1 or 2")
            text = kind in ("text", "1")
            if text:
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError:
                    raise ApiFailure("INVALID_MESSAGE") from None
            reached = await self._reach(self.ops.send(target, body, text))
        elif route.name == "disconnect":
            code = params.get("code", 1000)
            reason = params.get("reason", "")
            try:
                encode_close(code, reason)
            except (ValueError, OverflowError):
                raise ApiFailure(
                    "INVALID_CLOSE_CODE",
                    f"code {code} is not a close code a server may send "
                    "(1000-1003, 1007-1009, 1011-1013, 3000-4999)",
                ) from None
            reached = await self._reach(self.ops.disconnect(target, code, reason))
            if not params.get("keepClaims", False):
                await self._claims_call(self.claims.delete(target), "ERROR_GETTING_CLAIM")
        else:
            join = route.name == "subscribe"
            channel = params["path:channel"]
            reached = await self._reach(self.ops.change_channel(target, channel, join))
            if not params.get("ignoreClaims", False):
                await self._claims_call(
                    self.claims.edit_channels(target, channel, join), "ERROR_GETTING_CLAIM"
                )
        local, nodes = reached
        return 200, JSON_TYPE, json_body({"success": True, "connections": local, "nodes": nodes})

    async def _reach(self, call: Awaitable[tuple[int, int]]) -> tuple[int, int]:
        try:
            return await call
        except ConnectionError as exc:
            local = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            raise ApiFailure(
                "ERROR_DELIVERING_MESSAGING",
                f"reached {local} connection(s) on this node; the other nodes were not "
                "reached: the broker (Redis) cannot be reached",
                [_RETRY],
            ) from None

    async def _claims_call(self, call: Awaitable[Any], code: str) -> Any:
        try:
            return await call
        except Exception as exc:
            if isinstance(self.claims, MemoryClaims):
                raise
            log.warning("claim_store_failed", error=f"{type(exc).__name__}: {exc}")
            raise ApiFailure(code, headers=[_RETRY]) from None

    async def _info(self, target: Target) -> dict[str, Any]:
        try:
            connections = await self.ops.connections(target)
        except BrokerError:
            raise ApiFailure("ERROR_GETTING_CONNECTION", headers=[_RETRY]) from None
        claims = await self._claims_call(self.claims.find(target), "ERROR_GETTING_CLAIM")
        return {
            "success": True,
            "connections": connections,
            "claims": [c.as_json() for c in claims],
        }

    async def _create_claim(self, params: dict[str, Any]) -> Claim:
        user = params.get("user")
        if user is None:
            raise ApiFailure("USER_ID_REQUIRED")
        now = self.clock()
        if "expiration" in params:
            expiration = params["expiration"]
            if expiration < 1:
                raise ApiFailure("NEGATIVE_EXPIRATION")
            if expiration <= now or expiration > MAX_EXPIRATION:
                raise ApiFailure(
                    "INVALID_EXPIRATION",
                    f"expiration must be a Unix time in seconds after now ({int(now)}) "
                    f"and at most {MAX_EXPIRATION}",
                )
        elif "duration" in params:
            duration = params["duration"]
            if duration < 1:
                raise ApiFailure("NEGATIVE_DURATION")
            if duration > MAX_EXPIRATION:
                raise ApiFailure("INVALID_DURATION", f"duration must be at most {MAX_EXPIRATION}")
            expiration = math.ceil(now + duration)
        else:
            expiration = math.ceil(now + self.config.api_claim_duration)
        claim = Claim(
            id=params.get("id") or new_claim_id(),
            user=user,
            session=params.get("session"),
            channels=params.get("channels", ()),
            expiration=expiration,
        )
        if not await self._claims_call(self.claims.create(claim), "ERROR_CHECKING_CLAIM"):
            raise ApiFailure("CLAIM_ID_ALREADY_USED", f"a claim with id {claim.id!r} exists")
        return claim

    # ------------------------------------------------------------------ the handshake

    async def authenticate_claim(self, req: AuthRequest) -> Accept | None:
        """The claim authenticator (first in the server's chain): consume the claim named by
        ``?claim=`` and accept the client as its user, session and channels; None when the
        request names no claim (the next authenticator is tried).

        Raises:
            AuthError: 401 MISSING_CLAIM (unknown or used), EXPIRED_CLAIM; 503
                ERROR_GETTING_CLAIM (Redis unreachable). The body is dSock's JSON error.
        """
        claim_id = req.query.get("claim")
        if not claim_id:
            return None
        try:
            claim = await self.claims.consume(claim_id)
        except Exception as exc:
            if isinstance(self.claims, MemoryClaims):
                raise
            log.warning("claim_store_failed", error=f"{type(exc).__name__}: {exc}")
            raise _refusal(req, "ERROR_GETTING_CLAIM", [_RETRY]) from None
        if claim is None:
            raise _refusal(req, "MISSING_CLAIM")
        if claim.expiration <= self.clock():
            raise _refusal(req, "EXPIRED_CLAIM")
        return Accept(user_id=claim.user, session_id=claim.session, channels=claim.channels)

    async def accept_claim(self, req: AuthRequest) -> Accept:
        """:meth:`authenticate_claim`, refusing a request without a claim.

        Raises:
            AuthError: as authenticate_claim; 401 MISSING_AUTHENTICATION without ``claim``.
        """
        accept = await self.authenticate_claim(req)
        if accept is None:
            raise _refusal(req, "MISSING_AUTHENTICATION")
        return accept


def _refusal(
    req: AuthRequest, code: str, headers: list[tuple[str, str]] | None = None
) -> AuthError:
    rid = request_id(req.headers)
    body = error_body(code, ERRORS[code].message, rid)
    extra = [("Content-Type", JSON_TYPE), ("X-Request-ID", rid), *(headers or ())]
    return AuthError(ERRORS[code].status, extra, body, reason=code.lower())


def _version() -> str:
    try:
        return importlib.metadata.version("riverside-trio")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0"


def _target(params: dict[str, Any]) -> Target:
    """The call's target: id > channel > user (+ session).

    Raises:
        ApiFailure: MISSING_TARGET.
    """
    if "id" in params:
        return Target(id=params["id"])
    if "channel" in params:
        return Target(channel=params["channel"])
    if "user" in params:
        return Target(user=params["user"], session=params.get("session"))
    raise ApiFailure("MISSING_TARGET")
