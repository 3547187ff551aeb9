"""The control API's OpenAPI 3.1 document, generated from the route table.

:func:`openapi_document` turns :data:`~._routes.ROUTES` and :data:`~._routes.ERRORS` into
the document served at ``GET <api_prefix>/openapi.json``: one operation per route, its
parameters with their types and bounds (in the query; for routes whose body carries
parameters, also as a form or JSON object body), its success body, and one response per
error status with exactly the error codes the route may answer at that status. Nothing is
written twice: a route, parameter or error code added to the table is in the document.

What a schema cannot say is said in the descriptions: a target is one of ``id``,
``channel`` or ``user`` (``MISSING_TARGET`` otherwise); ``reason`` is at most 123 *bytes*;
``expiration`` must be in the future.
"""

from __future__ import annotations

from typing import Any

from ._routes import (
    COMMON_ERRORS,
    ERRORS,
    MAX_CLOSE_REASON,
    MAX_VALUE_LENGTH,
    ROUTES,
    Param,
    Route,
)

__all__ = ["OPENAPI_VERSION", "openapi_document"]

OPENAPI_VERSION = "3.1.0"
MAX_SECONDS = 10**11  # the bound of expiration and duration (the API refuses more)
_CLOSE_CODES = ((1000, 1003), (1007, 1009), (1011, 1013), (3000, 4999))
_REF = "#/components/schemas/"
_SECURITY = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <api_key>`",
    },
    "apiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "`X-API-Key: <api_key>`",
    },
    "apiKeyQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "`?token=<api_key>` (dSock's way; it ends up in access logs)",
    },
}
_REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "the request's id, echoed in the answer's X-Request-ID and an error's "
    "requestId when it is visible ASCII of at most 200 characters (else a new UUID is used)",
    "schema": {"type": "string"},
}
_STRING = {"type": "string", "maxLength": MAX_VALUE_LENGTH}
_HEAD_TOO_LARGE = {
    "description": "the request head (the request line with its query string, and the "
    "headers) is over max_header_size bytes (16384 by default) or max_headers fields: "
    "answered before the API reads the request, as text without X-Request-ID; long "
    "parameters go in a form or JSON body (but /send's)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "An error answer, as dSock shapes it.",
        "required": ["success", "errorCode", "error", "requestId"],
        "properties": {
            "success": {"const": False},
            "errorCode": {"type": "string", "enum": sorted(ERRORS)},
            "error": {"type": "string", "description": "what went wrong, for a person"},
            "requestId": {
                "type": "string",
                "description": "the request's id (also its X-Request-ID header)",
            },
        },
    },
    "Claim": {
        "type": "object",
        "description": "A one-time ticket a client connects with (`?claim=<id>`).",
        "required": ["id", "expiration", "user", "channels"],
        "properties": {
            "id": {"type": "string"},
            "expiration": {"type": "integer", "description": "Unix time, seconds"},
            "user": {"type": "string"},
            "session": {"type": "string", "description": "absent: a random session"},
            "channels": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Connection": {
        "type": "object",
        "description": "A connection somewhere in the cluster.",
        "required": ["id", "worker", "lastPing", "user", "session", "channels"],
        "properties": {
            "id": {"type": "string", "description": "its cluster-unique id (a target)"},
            "worker": {"type": "string", "description": "the id of the node that holds it"},
            "lastPing": {
                "type": "integer",
                "description": "when its node last confirmed it, Unix time in seconds",
            },
            "user": {"type": "string"},
            "session": {"type": "string"},
            "channels": {"type": "array", "items": {"type": "string"}},
        },
    },
}
_RETURNS: dict[str, Any] = {
    "integer": {"type": "integer", "minimum": 0},
    "claim": {"$ref": _REF + "Claim"},
    "connections": {"type": "array", "items": {"$ref": _REF + "Connection"}},
    "claims": {"type": "array", "items": {"$ref": _REF + "Claim"}},
    "version": {"type": "string", "const": OPENAPI_VERSION},
    "object": {"type": "object"},
}
_RETURN_DESCRIPTIONS = {
    ("integer", "connections"): "connections of the node that answered that were reached",
    ("integer", "nodes"): "other nodes that received the call through the broker",
}


def openapi_document(prefix: str = "/api", version: str = "0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control API served under ``prefix``.

    Args:
        prefix: ``api_prefix`` (the document's server URL, relative to the host).
        version: the document's ``info.version`` (riverside-trio's version).
    """
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "riverside-trio control API",
            "version": version,
            "description": (
                "dSock's HTTP API (its routes, parameters and error codes) to drive "
                "riverside-trio's WebSocket connections from any back end. Every route, "
                "this document included, needs one of the API keys. Parameters come from "
                "the query string, a form or a JSON object body (a body value wins); "
                "`POST /send` takes them from the query only, its body being the message. "
                "An empty value counts as absent; unknown parameters are ignored. Every "
                "answer carries X-Request-ID."
            ),
        },
        "servers": [{"url": prefix.rstrip("/") or "/"}],
        "security": [{name: []} for name in _SECURITY],
        "paths": paths,
        "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY},
    }


def _operation(route: Route) -> dict[str, Any]:
    parameters = [_parameter(p) for p in route.params]
    parameters.append(_REQUEST_ID)
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "parameters": parameters,
    }
    if any(p.name in ("id", "channel", "user") and p.location == "query" for p in route.params):
        operation["description"] = (
            "The target is a connection `id`, else a `channel`, else a `user` (with "
            "`session`: only that session); without any of them: MISSING_TARGET."
        )
    body = _request_body(route)
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = _responses(route)
    return operation


def _value_schema(param: Param) -> dict[str, Any]:
    """The JSON schema of one parameter's value."""
    if param.type == "string_list":
        return {"type": "array", "items": dict(_STRING)}
    if param.type == "boolean":
        return {"type": "boolean"}
    if param.type == "integer":
        if param.name == "code":
            return {
                "type": "integer",
                "anyOf": [{"minimum": low, "maximum": high} for low, high in _CLOSE_CODES],
            }
        return {"type": "integer", "minimum": 1, "maximum": MAX_SECONDS}
    if param.enum:
        return {"type": "string", "enum": list(param.enum)}
    if param.name == "reason":
        return {"type": "string", "maxLength": MAX_CLOSE_REASON}
    if param.location == "path":
        # a path parameter is one segment: a "/" (even as %2F) would end it
        return {**_STRING, "minLength": 1, "pattern": "^[^/]+$"}
    if param.required:  # an empty value counts as absent
        return {**_STRING, "minLength": 1}
    return dict(_STRING)


def _parameter(param: Param) -> dict[str, Any]:
    description = param.description
    if param.name == "reason":
        description += f" (at most {MAX_CLOSE_REASON} bytes of UTF-8)"
    out: dict[str, Any] = {
        "name": param.name,
        "in": param.location,
        "required": param.required or param.location == "path",
        "description": f"{description}; a bad value: {param.error}",
        "schema": _value_schema(param),
    }
    if param.type == "string_list":
        out["style"] = "form"
        out["explode"] = False  # channels=a,b
    return out


def _request_body(route: Route) -> dict[str, Any] | None:
    if route.body == "message":
        return {
            "required": False,
            "description": "the message, sent as it is in one frame (its Content-Type is "
            "ignored; a text message must be valid UTF-8)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        }
    if route.body != "params":
        return None
    properties: dict[str, Any] = {}
    for param in route.params:
        if param.location != "query":
            continue
        schema = _value_schema(param)
        if param.type == "string_list":  # in a JSON body: an array, or a comma list
            schema = {"anyOf": [schema, dict(_STRING)]}
        properties[param.name] = {**schema, "description": param.description}
    if not properties:
        return None
    schema = {"type": "object", "properties": properties}
    return {
        "required": False,
        "description": "the parameters, as a form or a JSON object (they win over the query's)",
        "content": {
            "application/x-www-form-urlencoded": {"schema": schema},
            "application/json": {"schema": schema},
        },
    }


def _responses(route: Route) -> dict[str, Any]:
    headers = {"X-Request-ID": {"required": True, "schema": {"type": "string"}}}
    if route.returns:
        # every JSON answer says success, but this document (an OpenAPI document has no
        # other top-level fields than its own)
        success = route.name != "openapi"
        required = [*(["success"] if success else []), *(name for name, _ in route.returns)]
        properties: dict[str, Any] = {"success": {"const": True}} if success else {}
        for name, kind in route.returns:
            schema = dict(_RETURNS[kind])
            described = _RETURN_DESCRIPTIONS.get((kind, name))
            if described:
                schema["description"] = described
            properties[name] = schema
        body: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
        content = {"application/json": {"schema": body}}
    else:
        content = {"text/plain": {"schema": {"type": "string", "const": "pong"}}}
    out: dict[str, Any] = {"200": {"description": "done", "headers": headers, "content": content}}
    by_status: dict[int, list[str]] = {}
    for code in (*COMMON_ERRORS, *route.errors, *(p.error for p in route.params)):
        codes = by_status.setdefault(ERRORS[code].status, [])
        if code not in codes:
            codes.append(code)
    for status in sorted(by_status):
        codes = by_status[status]
        error_headers = dict(headers)
        if status == 503:
            error_headers["Retry-After"] = {"required": True, "schema": {"type": "string"}}
        out[str(status)] = {
            "description": ", ".join(f"{code} ({ERRORS[code].message})" for code in sorted(codes)),
            "headers": error_headers,
            "content": {
                "application/json": {
                    "schema": {
                        "allOf": [
                            {"$ref": _REF + "Error"},
                            {"properties": {"errorCode": {"enum": sorted(codes)}}},
                        ]
                    }
                }
            },
        }
    out["431"] = _HEAD_TOO_LARGE
    return dict(sorted(out.items()))
