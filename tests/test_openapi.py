"""The control API's OpenAPI document: valid OpenAPI 3.1, served under the prefix behind the
key, generated from the route table, and true of the live server: every error code it lists
for an operation is answered by that operation to some request below, each answer matching
the document (status listed, body and headers as its schema says)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import schemathesis
import trio
from schemathesis import Response
from trio.testing import MockClock

from riverside_trio import Connection, Handler
from riverside_trio.api import ROUTES
from riverside_trio.api._openapi import openapi_document

from ._helpers import NO_TIMERS, advance, fail_after_real, running, settle, wait_until
from ._http import KEY, OTHER_KEY, Reply, api, http
from ._redis import free_port

SETTINGS: dict[str, Any] = {**NO_TIMERS, "api_key": (KEY, OTHER_KEY), "api_max_body": 256}
DOC = openapi_document("/api")
SCHEMA = schemathesis.openapi.from_dict(DOC)
PATHS = {route.name: route.path for route in ROUTES}
METHODS = {route.name: route.method for route in ROUTES}
TOO_BIG = b"x" * 300

# (operation, error code) -> (query string, body, headers, with a dead broker)
# A dead broker: broker_url names a port nobody listens on (Redis cannot be reached).
Request = tuple[str, bytes, list[tuple[str, str]], bool]
FORM = [("Content-Type", "application/x-www-form-urlencoded")]
JSON = [("Content-Type", "application/json")]
CASES: dict[tuple[str, str], Request] = {}
for _name in PATHS:
    CASES[(_name, "INVALID_AUTHORIZATION")] = ("token=wrong-key-1", b"", [], False)
    CASES[(_name, "BODY_TOO_LARGE")] = ("", TOO_BIG, [], False)
    CASES[(_name, "ERROR_BINDING_QUERY_PARAMS")] = ("user=%FF", b"", [], False)
CASES.update(
    {
        ("claim", "USER_ID_REQUIRED"): ("session=s", b"", [], False),
        ("claim", "INVALID_EXPIRATION"): ("user=u&expiration=soon", b"", [], False),
        ("claim", "NEGATIVE_EXPIRATION"): ("user=u&expiration=0", b"", [], False),
        ("claim", "INVALID_DURATION"): ("user=u&duration=1.5", b"", [], False),
        ("claim", "NEGATIVE_DURATION"): ("user=u&duration=-1", b"", [], False),
        ("claim", "CLAIM_ID_ALREADY_USED"): ("user=u&id=taken", b"", [], False),
        ("claim", "ERROR_CHECKING_CLAIM"): ("user=u", b"", [], True),
        ("send", "MISSING_TARGET"): ("type=text", b"hi", [], False),
        ("send", "INVALID_MESSAGE_TYPE"): ("user=u&type=3", b"hi", [], False),
        ("send", "INVALID_MESSAGE"): ("user=u&type=text", b"\xff", [], False),
        ("send", "ERROR_DELIVERING_MESSAGING"): ("user=u&type=1", b"hi", [], True),
        ("disconnect", "MISSING_TARGET"): ("", b"session=s", FORM, False),
        ("disconnect", "INVALID_CLOSE_CODE"): ("user=u&code=1005", b"", [], False),
        # 62 characters, 124 bytes
        ("disconnect", "INVALID_CLOSE_REASON"): ("user=u&reason=" + "%C3%A9" * 62, b"", [], False),
        ("disconnect", "ERROR_DELIVERING_MESSAGING"): ("user=u", b"", [], True),
        ("info", "MISSING_TARGET"): ("session=s", b"", [], False),
        ("info", "ERROR_GETTING_CONNECTION"): ("user=u", b"", [], True),
    }
)
for _name in ("subscribe", "unsubscribe"):
    CASES[(_name, "MISSING_TARGET")] = ("", b'{"session":"s"}', JSON, False)
    CASES[(_name, "ERROR_DELIVERING_MESSAGING")] = ("channel=c", b"", [], True)

# A body that does not arrive in time: test_a_body_that_does_not_arrive_is_408 (mock clock).
TIMEOUTS = {(name, "REQUEST_TIMEOUT") for name in PATHS}
# The claims fail while Redis answers the rest (tests/broker/test_openapi_claims.py: a
# claims index key of the wrong type; Redis down would fail the call before the claims).
CLAIMS_FAIL = {
    (n, "ERROR_GETTING_CLAIM") for n in ("disconnect", "info", "subscribe", "unsubscribe")
}
# Codes the document lists that no request can provoke on purpose.
UNPROVOKED = {(name, "INTERNAL_ERROR") for name in PATHS}  # a bug of ours


class Echo(Handler):
    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


def documented_codes() -> set[tuple[str, str]]:
    """Every (operationId, errorCode) the document lists."""
    out = set()
    for item in DOC["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status in ("200", "431"):
                    continue
                schema = response["content"]["application/json"]["schema"]
                for code in schema["allOf"][1]["properties"]["errorCode"]["enum"]:
                    out.add((operation["operationId"], code))
    return out


def conforms(name: str, reply: Reply) -> None:
    """The answer is one the document allows for this operation (status, headers, body)."""
    path, method = PATHS[name], METHODS[name]
    responses = DOC["paths"][path][method.lower()]["responses"]
    assert str(reply.status) in responses, (name, reply.status, reply.body)
    assert reply.headers["x-request-id"]
    request = requests.Request(method, "http://127.0.0.1/api" + path).prepare()
    response = Response(
        reply.status, {k: [v] for k, v in reply.headers.items()}, reply.body, request, 0.0, True
    )
    SCHEMA[path][method].validate_response(response)


async def call(port: int, name: str, request: Request) -> Reply:
    query, body, headers, _ = request
    path = "/api" + PATHS[name].replace("{channel}", "c")
    key = [] if "token=" in query else [("X-API-Key", KEY)]
    target = path + ("?" + query if query else "")
    return await http(port, METHODS[name], target, headers=[*key, *headers], body=body)


def test_the_document_is_valid_openapi_3_1_with_every_route() -> None:
    SCHEMA.validate()  # against OpenAPI 3.1's own schema
    assert DOC["openapi"] == "3.1.0"
    assert DOC["servers"] == [{"url": "/api"}]
    operations = {
        (op["operationId"], method.upper(), path)
        for path, item in DOC["paths"].items()
        for method, op in item.items()
    }
    assert operations == {(r.name, r.method, r.path) for r in ROUTES}
    for route in ROUTES:
        operation = DOC["paths"][route.path][route.method.lower()]
        params = {(p["name"], p["in"]) for p in operation["parameters"]}
        assert params == {(p.name, p.location) for p in route.params} | {("X-Request-ID", "header")}
    schemes = DOC["components"]["securitySchemes"]
    assert {(s["type"], s.get("in"), s.get("name"), s.get("scheme")) for s in schemes.values()} == {
        ("http", None, None, "bearer"),
        ("apiKey", "header", "X-API-Key", None),
        ("apiKey", "query", "token", None),
    }
    assert DOC["security"] == [{name: []} for name in schemes]


def test_every_documented_error_code_is_provoked_here() -> None:
    provoked = [set(CASES), TIMEOUTS, CLAIMS_FAIL, UNPROVOKED]
    assert set().union(*provoked) == documented_codes()
    assert sum(map(len, provoked)) == len(documented_codes())  # each in one place


async def test_the_document_is_served_under_the_prefix_behind_the_key() -> None:
    async with running(Echo, **SETTINGS, api_prefix="/control/v1") as server:
        reply = await api(server.port, "GET", "/openapi.json", prefix="/control/v1")
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        served = reply.json
        assert served["servers"] == [{"url": "/control/v1"}]
        assert served == json.loads(
            json.dumps(openapi_document("/control/v1", served["info"]["version"]))
        )
        refused = await api(server.port, "GET", "/openapi.json", key=None, prefix="/control/v1")
        assert (refused.status, refused.json["errorCode"]) == (401, "INVALID_AUTHORIZATION")
        conforms("openapi", reply)
        conforms("openapi", refused)


async def test_every_success_answer_matches_the_document() -> None:
    async with running(Echo, **SETTINGS) as server:
        p = server.port
        replies = {
            "ping": await api(p, "GET", "/ping"),
            "claim": await api(
                p, "POST", "/claim", {"user": "u", "channels": "a,b", "session": "s"}
            ),
            "send": await api(p, "POST", "/send", {"user": "u", "type": "text"}, body=b"hi"),
            "disconnect": await api(p, "POST", "/disconnect", {"user": "u", "keepClaims": "true"}),
            "subscribe": await api(p, "POST", "/channel/subscribe/x", {"user": "u"}),
            "unsubscribe": await api(p, "POST", "/channel/unsubscribe/x", {"user": "u"}),
            "info": await api(p, "GET", "/info", {"user": "u"}),
            "openapi": await api(p, "GET", "/openapi.json"),
        }
        assert set(replies) == set(PATHS)
        for name, reply in replies.items():
            assert reply.status == 200, (name, reply.body)
            conforms(name, reply)
        assert replies["info"].json["claims"][0]["channels"] == ["a", "b"]


@pytest.mark.parametrize(("name", "code"), sorted(CASES))
async def test_each_documented_error_code_is_answered(name: str, code: str) -> None:
    request = CASES[name, code]
    settings = dict(SETTINGS)
    if request[3]:
        settings["broker_url"] = f"redis://127.0.0.1:{free_port()}/0"
    async with running(Echo, **settings) as server:
        if code == "CLAIM_ID_ALREADY_USED":
            assert (
                await api(server.port, "POST", "/claim", {"user": "v", "id": "taken"})
            ).status == 200
        reply = await call(server.port, name, request)
        assert reply.json["errorCode"] == code, reply.body
        conforms(name, reply)


@pytest.mark.parametrize("name", sorted(PATHS))
async def test_a_body_that_does_not_arrive_is_408(name: str, mock_clock: MockClock) -> None:
    async with running(Echo, **SETTINGS, handshake_timeout=5) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            path = "/api" + PATHS[name].replace("{channel}", "c")
            await stream.send_all(
                f"{METHODS[name]} {path}?user=u&type=text HTTP/1.1\r\nHost: x\r\n"
                f"X-API-Key: {KEY}\r\nContent-Length: 10\r\n\r\nabc".encode()
            )
            # accepted, then (once every task is blocked) waiting for the rest of the body
            await wait_until(lambda: server.metrics.pending_handshakes == 1)
            await settle()
            await advance(mock_clock, 6)
            data = b""
            with fail_after_real(10):
                while b"}" not in data:  # the whole answer (the server waits for our close)
                    chunk = await stream.receive_some(65536)
                    assert chunk, data
                    data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.decode().partition(":") for line in head.split(b"\r\n")[1:])
        )
        reply = Reply(status, headers, body)
        assert reply.json["errorCode"] == "REQUEST_TIMEOUT"
        conforms(name, reply)
