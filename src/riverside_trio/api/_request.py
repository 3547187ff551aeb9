"""Reading one API request: the API key, the request id, the parameters (checked against the
route table), and the JSON answers. No I/O.
"""

from __future__ import annotations

import hmac
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from .._values import Headers
from ._routes import ERRORS, MAX_CLOSE_REASON, MAX_VALUE_LENGTH, Param, Route

__all__ = [
    "ApiFailure",
    "authorized",
    "error_body",
    "json_body",
    "parse_params",
    "request_id",
]

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")  # visible ASCII, no spaces
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
JSON_TYPE = "application/json"


class ApiFailure(Exception):
    """An error answer: its code (a key of ERRORS), message and extra headers."""

    def __init__(
        self, code: str, message: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.code = code
        self.status = ERRORS[code].status
        self.message = message if message is not None else ERRORS[code].message
        self.headers = list(headers)
        super().__init__(code, self.message)


def request_id(headers: Headers) -> str:
    """The client's ``X-Request-ID`` if it is sane (visible ASCII, at most 200), else new."""
    given = headers.get("x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return str(uuid.uuid4())


def authorized(keys: tuple[bytes, ...], headers: Headers, query: list[tuple[str, str]]) -> bool:
    """Whether a key given as ``Authorization: Bearer``, ``X-API-Key`` or ``?token=`` is one
    of ``keys``; every candidate is compared with every key in constant time."""
    candidates: list[str] = []
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        candidates.append(value.strip(" \t"))
    candidates.extend(headers.get_all("x-api-key"))
    candidates.extend(v for k, v in query if k == "token")
    ok = False
    for candidate in candidates:
        given = candidate.encode("utf-8", "surrogateescape")
        for key in keys:
            # no early exit: the time taken does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
    return ok


def error_body(code: str, message: str, rid: str) -> bytes:
    """The JSON of an error answer, as dSock shapes it."""
    return json_body({"success": False, "errorCode": code, "error": message, "requestId": rid})


def json_body(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def parse_query(query_string: str) -> list[tuple[str, str]]:
    """The query's pairs.

    Raises:
        ApiFailure: not valid UTF-8 once percent-decoded.
    """
    try:
        return parse_qsl(query_string, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ApiFailure(
            "ERROR_BINDING_QUERY_PARAMS", "the query string is not valid UTF-8"
        ) from None


def _body_pairs(headers: Headers, body: bytes) -> list[tuple[str, object]]:
    """The parameters of a form or JSON body.

    Raises:
        ApiFailure: a body that is neither a form nor a JSON object.
    """
    if not body.strip():
        return []
    ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise ApiFailure(
                "ERROR_BINDING_QUERY_PARAMS", "a form body must be percent-encoded ASCII"
            ) from None
        return list(parse_query(text))
    if ctype == JSON_TYPE or ctype.endswith("+json"):
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise ApiFailure("ERROR_BINDING_QUERY_PARAMS", "the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise ApiFailure("ERROR_BINDING_QUERY_PARAMS", "a JSON body must be an object")
        return list(value.items())
    raise ApiFailure(
        "ERROR_BINDING_QUERY_PARAMS",
        "send parameters as a query string, a form (application/x-www-form-urlencoded) "
        "or a JSON object (application/json)",
    )


def parse_params(
    route: Route,
    query: list[tuple[str, str]],
    path_params: Mapping[str, str],
    headers: Headers,
    body: bytes,
) -> dict[str, Any]:
    """The route's parameters, converted to their types; absent ones (or empty) are left out.

    A path parameter is keyed ``path:<name>`` (``/channel/subscribe/{channel}`` also takes a
    ``channel`` target). Unknown parameters are ignored, as dSock ignores them.

    Raises:
        ApiFailure: a malformed body or a value not of its parameter's type, with the
            parameter's error code and a message naming it.
    """
    given: dict[str, list[object]] = {}
    for name, text in query:
        given.setdefault(name, []).append(text)
    if route.body == "params":
        for name, item in _body_pairs(headers, body):
            given[name] = [item]  # a body value wins over the query's
    out: dict[str, Any] = {}
    for param in route.params:
        if param.location == "path":
            out["path:" + param.name] = _check_string(param, path_params[param.name])
            continue
        values = given.get(param.name)
        if not values:
            continue
        converted = _convert(param, values)
        if converted is not None:
            out[param.name] = converted
    return out


def _convert(param: Param, values: list[object]) -> object:
    """One parameter's value from what was given (None: empty, so absent)."""
    if param.type == "string_list":
        items: list[str] = []
        for value in values:
            if isinstance(value, list):
                for item in value:
                    if not isinstance(item, str):
                        raise _bad(param, "a list of strings")
                    items.append(item)
            elif isinstance(value, str):
                items.extend(value.split(","))
            else:
                raise _bad(param, "a comma-separated string or a list of strings")
        cleaned = [_check_string(param, i.strip()) for i in items if i.strip()]
        return tuple(dict.fromkeys(cleaned))
    value = values[-1]
    if param.type == "string":
        if not isinstance(value, str):
            raise _bad(param, "a string")
        if value == "":
            return None
        if param.enum and value.lower() not in param.enum:
            raise _bad(param, "one of " + ", ".join(param.enum))
        return _check_string(param, value.lower() if param.enum else value)
    if param.type == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            if value == "":
                return None
            if _INTEGER.fullmatch(value.strip()):
                return int(value)
        raise _bad(param, "an integer")
    # boolean
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "":
            return None
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _bad(param, "true or false")


def _check_string(param: Param, value: str) -> str:
    if param.name == "reason":
        if len(value.encode("utf-8", "surrogatepass")) > MAX_CLOSE_REASON:
            raise _bad(param, f"at most {MAX_CLOSE_REASON} bytes of UTF-8")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(param, "valid UTF-8") from None
        return value
    if len(value) > MAX_VALUE_LENGTH:
        raise _bad(param, f"at most {MAX_VALUE_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(param, "valid UTF-8 text") from None
    return value


def _bad(param: Param, expected: str) -> ApiFailure:
    return ApiFailure(param.error, f"{param.name} must be {expected}")
