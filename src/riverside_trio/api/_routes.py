"""The control API's routes, parameters and error codes, as data.

Everything the API accepts and answers is declared here, once: :data:`ROUTES` (method, path
under ``api_prefix``, parameters with their types, the error codes each route may answer)
and :data:`ERRORS` (every error code with its HTTP status). The request parser validates
against this table, and an OpenAPI document can be generated from it or checked against it.

Parameters come from the query string, a form body (``application/x-www-form-urlencoded``)
or a JSON object body (``application/json``), as dSock's do; a body value wins over the
query's. ``POST /send`` is the exception: its body is the message, so its parameters come
from the query string only. Path parameters (``{channel}``) come from the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "COMMON_ERRORS",
    "ERRORS",
    "MAX_CLOSE_REASON",
    "MAX_VALUE_LENGTH",
    "ROUTES",
    "ApiError",
    "Param",
    "Route",
    "route_for",
]

MAX_VALUE_LENGTH = 1024  # characters of an id, user, session or channel
MAX_CLOSE_REASON = 123  # bytes of a close reason (RFC 6455: 125 - the 2-byte code)

ParamType = Literal["string", "integer", "boolean", "string_list"]


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a route.

    Attributes:
        name: its name, as dSock spells it (``keepClaims``).
        type: ``string``, ``integer``, ``boolean`` (``true``/``false``, ``1``/``0``) or
            ``string_list`` (comma-separated, or a JSON array of strings).
        description: what it means.
        required: whether the route refuses a request without it (the error code says).
        location: ``query`` (query string or body) or ``path``.
        enum: the values a string parameter may take, if it is an enumeration.
        error: the error code of a value that is not of its type (or out of range).
    """

    name: str
    type: ParamType
    description: str
    required: bool = False
    location: Literal["query", "path"] = "query"
    enum: tuple[str, ...] = ()
    error: str = "ERROR_BINDING_QUERY_PARAMS"


@dataclass(frozen=True, slots=True)
class Route:
    """One route of the API.

    Attributes:
        method: the HTTP method (``GET`` or ``POST``).
        path: the path under ``api_prefix``; ``{name}`` marks a path parameter.
        name: a stable name (the ``route`` label of the metrics, the OpenAPI operationId).
        summary: one line saying what it does.
        params: its parameters.
        errors: the error codes it may answer, beyond :data:`COMMON_ERRORS`.
        returns: the fields of a successful JSON answer besides ``success``, name -> type
            (``integer``, ``claim``, ``connections``, ``claims``);
            empty for ``/ping``, which answers ``pong`` as text.
        body: ``params`` (parameters may come in the body) or ``message`` (the raw body is
            the message sent).
    """

    method: Literal["GET", "POST"]
    path: str
    name: str
    summary: str
    params: tuple[Param, ...] = ()
    errors: tuple[str, ...] = ()
    returns: tuple[tuple[str, str], ...] = ()
    body: Literal["params", "message", "none"] = "params"


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error code: its HTTP status and the message sent when none more precise is."""

    status: int
    message: str


ERRORS: dict[str, ApiError] = {
    # every route
    "INVALID_AUTHORIZATION": ApiError(401, "a valid API key is required"),
    "NOT_FOUND": ApiError(404, "no such route"),
    "METHOD_NOT_ALLOWED": ApiError(405, "method not allowed on this route"),
    "BODY_TOO_LARGE": ApiError(413, "request body too large (api_max_body)"),
    "REQUEST_TIMEOUT": ApiError(408, "the request body took too long"),
    "ERROR_BINDING_QUERY_PARAMS": ApiError(400, "malformed parameters"),
    "INTERNAL_ERROR": ApiError(500, "internal error"),
    # targets and messages
    "MISSING_TARGET": ApiError(400, "a target is required: id, channel or user"),
    "INVALID_MESSAGE_TYPE": ApiError(400, "type must be text, binary, 1 or 2"),
    "INVALID_MESSAGE": ApiError(400, "a text message must be valid UTF-8"),
    "INVALID_CLOSE_CODE": ApiError(400, "code must be 1000 or 3000-4999"),
    "INVALID_CLOSE_REASON": ApiError(400, "reason must be at most 123 bytes of UTF-8"),
    "ERROR_DELIVERING_MESSAGING": ApiError(503, "the broker (Redis) cannot be reached"),
    "ERROR_GETTING_CONNECTION": ApiError(503, "the broker (Redis) cannot be reached"),
    # claims
    "USER_ID_REQUIRED": ApiError(400, "user is required"),
    "INVALID_EXPIRATION": ApiError(400, "expiration must be a future Unix time in seconds"),
    "NEGATIVE_EXPIRATION": ApiError(400, "expiration must be positive"),
    "INVALID_DURATION": ApiError(400, "duration must be an integer number of seconds"),
    "NEGATIVE_DURATION": ApiError(400, "duration must be positive"),
    "CLAIM_ID_ALREADY_USED": ApiError(400, "a claim with this id exists"),
    "ERROR_CHECKING_CLAIM": ApiError(503, "the claim store (Redis) cannot be reached"),
    "ERROR_GETTING_CLAIM": ApiError(503, "the claim store (Redis) cannot be reached"),
    # the WebSocket handshake (?claim=)
    "MISSING_CLAIM": ApiError(401, "no such claim (unknown, used or expired)"),
    "EXPIRED_CLAIM": ApiError(401, "the claim has expired"),
    "MISSING_AUTHENTICATION": ApiError(401, "connect with ?claim=<id>"),
}
"""Every error code: HTTP status and default message."""

COMMON_ERRORS = (
    "INVALID_AUTHORIZATION",
    "BODY_TOO_LARGE",
    "REQUEST_TIMEOUT",
    "ERROR_BINDING_QUERY_PARAMS",
    "INTERNAL_ERROR",
)
"""Error codes every route may answer (and NOT_FOUND, METHOD_NOT_ALLOWED for the prefix)."""

_TARGET = (
    Param("id", "string", "a connection id (conn.id): this connection, wherever it is"),
    Param("channel", "string", "every member of this channel (when no id is given)"),
    Param("user", "string", "every connection of this user (when no id or channel)"),
    Param("session", "string", "with user: only the connections of this session"),
)
_REACHED = (("connections", "integer"), ("nodes", "integer"))
_CLAIM_ERRORS = ("ERROR_GETTING_CLAIM",)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/ping", "ping", "Answers pong (checks the API key).", body="none"),
    Route(
        "GET",
        "/openapi.json",
        "openapi",
        "This API's OpenAPI 3.1 document (generated from this table).",
        returns=(("openapi", "version"), ("paths", "object")),
        body="none",
    ),
    Route(
        "POST",
        "/claim",
        "claim",
        "Create a one-time claim a client connects with (?claim=<id>).",
        (
            Param("user", "string", "the user the connection will have", required=True),
            Param("session", "string", "the session the connection will have"),
            Param("channels", "string_list", "channels joined on connect"),
            Param(
                "expiration",
                "integer",
                "when it expires, Unix time in seconds (wins over duration)",
                error="INVALID_EXPIRATION",
            ),
            Param(
                "duration",
                "integer",
                "seconds it lives (default: api_claim_duration)",
                error="INVALID_DURATION",
            ),
            Param("id", "string", "its id (default: 32 random letters and digits)"),
        ),
        (
            "USER_ID_REQUIRED",
            "INVALID_EXPIRATION",
            "NEGATIVE_EXPIRATION",
            "INVALID_DURATION",
            "NEGATIVE_DURATION",
            "CLAIM_ID_ALREADY_USED",
            "ERROR_CHECKING_CLAIM",
        ),
        (("claim", "claim"),),
    ),
    Route(
        "POST",
        "/send",
        "send",
        "Send the request body, as it is, to the target's connections.",
        (
            *_TARGET,
            Param(
                "type",
                "string",
                "the frame type",
                required=True,
                enum=("text", "binary", "1", "2"),
                error="INVALID_MESSAGE_TYPE",
            ),
        ),
        (
            "MISSING_TARGET",
            "INVALID_MESSAGE_TYPE",
            "INVALID_MESSAGE",
            "ERROR_DELIVERING_MESSAGING",
        ),
        _REACHED,
        body="message",
    ),
    Route(
        "POST",
        "/disconnect",
        "disconnect",
        "Close the target's connections and (unless keepClaims) delete its claims.",
        (
            *_TARGET,
            Param("keepClaims", "boolean", "keep the target's pending claims"),
            Param("code", "integer", "the close code (default 1000)", error="INVALID_CLOSE_CODE"),
            Param(
                "reason", "string", "the close reason (default empty)", error="INVALID_CLOSE_REASON"
            ),
        ),
        (
            "MISSING_TARGET",
            "INVALID_CLOSE_CODE",
            "INVALID_CLOSE_REASON",
            "ERROR_DELIVERING_MESSAGING",
            *_CLAIM_ERRORS,
        ),
        _REACHED,
    ),
    Route(
        "GET",
        "/info",
        "info",
        "The target's connections (in the whole cluster) and pending claims.",
        _TARGET,
        ("MISSING_TARGET", "ERROR_GETTING_CONNECTION", *_CLAIM_ERRORS),
        (("connections", "connections"), ("claims", "claims")),
        body="none",
    ),
    Route(
        "POST",
        "/channel/subscribe/{channel}",
        "subscribe",
        "Make the target's connections (and, unless ignoreClaims, claims) join a channel.",
        (
            Param("channel", "string", "the channel to join", required=True, location="path"),
            *_TARGET,
            Param("ignoreClaims", "boolean", "leave the target's pending claims alone"),
        ),
        ("MISSING_TARGET", "ERROR_DELIVERING_MESSAGING", *_CLAIM_ERRORS),
        _REACHED,
    ),
    Route(
        "POST",
        "/channel/unsubscribe/{channel}",
        "unsubscribe",
        "Make the target's connections (and, unless ignoreClaims, claims) leave a channel.",
        (
            Param("channel", "string", "the channel to leave", required=True, location="path"),
            *_TARGET,
            Param("ignoreClaims", "boolean", "leave the target's pending claims alone"),
        ),
        ("MISSING_TARGET", "ERROR_DELIVERING_MESSAGING", *_CLAIM_ERRORS),
        _REACHED,
    ),
)
"""Every route of the API, in the order the README lists them."""


def route_for(path: str) -> tuple[list[Route], dict[str, str]]:
    """The routes whose path matches ``path`` (under the prefix), and its path parameters.

    A path parameter matches one non-empty segment.
    """
    parts = path.split("/")
    found: list[Route] = []
    values: dict[str, str] = {}
    for route in ROUTES:
        pattern = route.path.split("/")
        if len(pattern) != len(parts):
            continue
        bound: dict[str, str] = {}
        for want, got in zip(pattern, parts, strict=True):
            if want.startswith("{") and want.endswith("}"):
                if not got:
                    break
                bound[want[1:-1]] = got
            elif want != got:
                break
        else:
            found.append(route)
            values = bound
    return found, values
