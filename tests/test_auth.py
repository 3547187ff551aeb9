"""Handler.authenticate: what AuthRequest carries, what Accept and AuthError do on the wire."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import structlog
import trio
from trio_websocket import open_websocket_url

from riverside_trio import (
    Accept,
    AuthError,
    AuthRequest,
    Connection,
    Handler,
    Headers,
    RiversideError,
)

from ._helpers import RawClient, running, upgrade_request
from .test_http import (
    exchange,
    exchange_raw,
    header_lines,
    plain,
    trio_websocket_rejection,
)


def basic(user_pass: bytes) -> str:
    return "Basic " + base64.b64encode(user_pass).decode()


def auth_request(*headers: tuple[str, str]) -> AuthRequest:
    return AuthRequest(
        path="/ws", query={}, query_list=(), headers=Headers(headers), peer=("127.0.0.1", 1)
    )


# ---------------------------------------------------------------- Headers


def test_headers_are_case_insensitive() -> None:
    h = Headers([("Content-Type", "text/plain"), ("X-Token", "abc")])
    assert h["content-type"] == "text/plain"
    assert h["CONTENT-TYPE"] == "text/plain"
    assert h.get("x-TOKEN") == "abc"
    assert "X-TOKEN" in h
    assert "x-missing" not in h
    assert h.get("x-missing") is None
    assert 42 not in h
    with pytest.raises(KeyError):
        h["x-missing"]


def test_headers_repeated_name_gives_last_value_and_get_all_gives_every_value_in_order() -> None:
    h = Headers([("X-A", "1"), ("Host", "h"), ("x-a", "2"), ("X-a", "3")])
    assert h["x-a"] == "3"
    assert h.get_all("X-A") == ["1", "2", "3"]
    assert h.get_all("x-none") == []
    assert len(h) == 2
    assert list(h) == ["x-a", "host"]
    assert h.raw == (("x-a", "1"), ("host", "h"), ("x-a", "2"), ("x-a", "3"))


# ---------------------------------------------------------------- AuthRequest, unit


def test_basic_splits_on_the_first_colon_so_passwords_may_contain_colons() -> None:
    assert auth_request(("Authorization", basic(b"alice:s3:cr:et"))).basic == (
        "alice",
        "s3:cr:et",
    )
    assert auth_request(("Authorization", basic(b"bob:"))).basic == ("bob", "")
    assert auth_request(("Authorization", basic(b":pw"))).basic == ("", "pw")
    assert auth_request(("authorization", "BASIC " + basic(b"u:p")[6:])).basic == ("u", "p")
    assert auth_request(("Authorization", basic("zoë:pässword".encode()))).basic == (
        "zoë",
        "pässword",
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic dXNlcg",  # bad padding
        basic(b"no-colon-here"),
        basic(b"\xff\xfe:not utf-8"),
        "Basic \xe9\xe9\xe9\xe9",  # latin-1 bytes as the server decodes them: not base64
        "Bearer abc",
        "Digest username=x",
    ],
)
def test_basic_is_none_without_valid_basic_credentials(value: str | None) -> None:
    headers = [] if value is None else [("Authorization", value)]
    assert auth_request(*headers).basic is None


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer   tok  ", "tok"),
        ("BEARER x", "x"),
        ("Bearer", None),
        ("Bearer   ", None),
        (basic(b"u:p"), None),
        (None, None),
    ],
)
def test_bearer_token_is_the_token_of_a_bearer_authorization(
    value: str | None, token: str | None
) -> None:
    headers = [] if value is None else [("Authorization", value)]
    assert auth_request(*headers).bearer_token == token


def test_origin_is_the_origin_header_or_none() -> None:
    assert auth_request(("Origin", "https://a.example")).origin == "https://a.example"
    assert auth_request().origin is None


# ---------------------------------------------------------------- AuthError and Accept, unit


@pytest.mark.parametrize("status", [200, 302, 399, 600, 101, "401", 401.0, None])
def test_auth_error_refuses_a_status_that_is_not_an_http_error(status: Any) -> None:
    with pytest.raises(ValueError, match="400-599"):
        AuthError(status)


def test_auth_error_keeps_status_headers_and_body_as_bytes() -> None:
    exc = AuthError(403, [("X-Reason", "banned")], "nö")
    assert isinstance(exc, RiversideError)
    assert exc.status == 403
    assert exc.headers == [("X-Reason", "banned")]
    assert exc.body == "nö".encode()
    default = AuthError()
    assert (default.status, default.headers, default.body) == (401, [], b"")
    assert AuthError(400).status == 400
    assert AuthError(599).status == 599


def test_auth_error_basic_is_a_401_basic_challenge() -> None:
    exc = AuthError.basic("my realm", body="log in")
    assert exc.status == 401
    assert exc.headers == [("WWW-Authenticate", 'Basic realm="my realm"')]
    assert exc.body == b"log in"


def test_auth_error_bearer_is_an_rfc_6750_challenge() -> None:
    exc = AuthError.bearer("api")
    assert exc.status == 401
    assert exc.headers == [("WWW-Authenticate", 'Bearer realm="api", error="invalid_token"')]
    assert AuthError.bearer("api", error=None).headers == [
        ("WWW-Authenticate", 'Bearer realm="api"')
    ]
    scoped = AuthError.bearer("api", "insufficient_scope", "needs admin", status=403)
    assert scoped.status == 403
    assert scoped.headers == [
        (
            "WWW-Authenticate",
            'Bearer realm="api", error="insufficient_scope", error_description="needs admin"',
        )
    ]


def test_auth_error_challenges_escape_quotes_and_refuse_line_breaks() -> None:
    assert AuthError.basic('say "hi" \\o/').headers == [
        ("WWW-Authenticate", 'Basic realm="say \\"hi\\" \\\\o/"')
    ]
    with pytest.raises(ValueError, match="line breaks"):
        AuthError.basic("evil\r\nSet-Cookie: x=1")
    with pytest.raises(ValueError, match="line breaks"):
        AuthError.bearer("api", description="a\nb")


@pytest.mark.parametrize(
    "kwargs", [{"user_id": ""}, {"user_id": 7}, {"user_id": "u", "session_id": ""}]
)
def test_accept_refuses_empty_or_non_string_ids(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        Accept(**kwargs)


# ---------------------------------------------------------------- AuthRequest over the wire


class RecordingHandler(Handler):
    """Records every AuthRequest; sends user_id, session_id and state back in init."""

    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []

    async def authenticate(self, req: AuthRequest) -> Accept:
        self.requests.append(req)
        return Accept(user_id="u")

    async def init(self, conn: Connection) -> None:
        conn.send({"user_id": conn.user_id, "session_id": conn.session_id})


async def test_auth_request_carries_path_query_headers_peer_and_credentials() -> None:
    handler = RecordingHandler()
    async with running(handler, trusted_proxies=["127.0.0.1", "10.0.0.0/8"]) as server:
        client = await RawClient.connect(server)
        try:
            local_port = client.stream.socket.getsockname()[1]
            with trio.fail_after(5):
                status, _, _ = await client.upgrade(
                    "/ws?room=a&token=x%20y&room=b&empty=",
                    headers={
                        "X-Custom": "one",
                        "Authorization": basic(b"alice:pa:ss"),
                        "X-Forwarded-For": "203.0.113.7, 10.0.0.1",
                        "Sec-WebSocket-Protocol": "chat.v2, chat.v1",
                        "Origin": "https://app.example.com",
                    },
                )
        finally:
            await client.aclose()
    assert status == 101
    [req] = handler.requests
    assert req.path == "/ws"
    assert req.query == {"room": "b", "token": "x y", "empty": ""}
    assert req.query_list == (("room", "a"), ("token", "x y"), ("room", "b"), ("empty", ""))
    assert req.headers["x-custom"] == "one"
    assert req.headers["X-CUSTOM"] == "one"
    assert req.headers["host"] == "127.0.0.1"
    assert req.peer == ("127.0.0.1", local_port)
    assert req.forwarded_for == "203.0.113.7"  # 10.0.0.1 is a trusted proxy: skipped
    assert req.basic == ("alice", "pa:ss")
    assert req.bearer_token is None
    assert req.subprotocols == ("chat.v2", "chat.v1")
    assert req.origin == "https://app.example.com"


async def test_auth_request_lists_repeated_headers_and_subprotocols_across_lines() -> None:
    handler = RecordingHandler()
    head = upgrade_request().replace(
        b"\r\n\r\n",
        b"\r\nX-Tag: a\r\nSec-WebSocket-Protocol: p1, p2\r\nx-tag: b\r\n"
        b"Sec-WebSocket-Protocol: p3\r\nAuthorization: Bearer tok.en\r\n\r\n",
    )
    async with running(handler) as server:
        status, _, _ = await exchange(server, head)
    assert status == 101
    [req] = handler.requests
    assert req.headers.get_all("X-TAG") == ["a", "b"]
    assert req.headers["x-tag"] == "b"
    assert req.subprotocols == ("p1", "p2", "p3")
    assert req.bearer_token == "tok.en"
    assert req.basic is None
    assert req.forwarded_for is None
    assert req.origin is None
    assert req.query == {}
    assert req.query_list == ()


async def test_non_ascii_basic_credentials_read_as_none_so_the_handler_can_refuse_them() -> None:
    class BasicOnly(Handler):
        async def authenticate(self, req: AuthRequest) -> Accept:
            if req.basic is None:
                raise AuthError.basic("realm")
            return Accept(user_id=req.basic[0])

    head = upgrade_request().replace(
        b"\r\n\r\n", b"\r\nAuthorization: Basic \xe9\xe9\xe9\xe9\r\n\r\n"
    )
    async with running(BasicOnly) as server:
        status, headers, _ = await exchange(server, head)
    assert status == 401
    assert headers["www-authenticate"] == 'Basic realm="realm"'


async def test_connection_request_is_the_auth_request() -> None:
    seen: list[tuple[AuthRequest, AuthRequest]] = []

    class Check(RecordingHandler):
        async def init(self, conn: Connection) -> None:
            seen.append((self.requests[0], conn.handshake))
            conn.send(conn.path)

    async with running(Check()) as server, open_websocket_url(server.url + "?q=1") as ws:
        with trio.fail_after(5):
            assert json.loads(await ws.get_message()) == "/ws"
    [(authenticated, connected)] = seen
    assert connected is authenticated


# ---------------------------------------------------------------- AuthError on the wire


class RefusingHandler(Handler):
    """Refuses according to ?how=..."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        how = req.query.get("how")
        if how == "forbidden":
            raise AuthError(403, [("X-Reason", "banned"), ("Retry-After", "60")], "go away\n")
        if how == "basic":
            raise AuthError.basic("realm")
        if how == "bearer":
            raise AuthError.bearer("api")
        if how == "teapot":
            raise AuthError(418, body=b"\x00\x01binary")
        if how == "json":
            raise AuthError(403, [("Content-Type", "application/json")], '{"error": "forbidden"}')
        if how == "injection":
            raise AuthError(403, [("X-Evil", "a\r\nInjected: 1")])
        if how == "crash":
            raise RuntimeError("bug in authenticate")
        if how == "none":
            return None  # type: ignore[return-value]
        if how == "str":
            return "alice"  # type: ignore[return-value]
        if how == "bad-accept":
            return Accept(user_id="")
        return Accept(user_id="ok")

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


async def test_auth_error_sends_its_status_headers_and_body() -> None:
    async with running(RefusingHandler) as server:
        status, headers, body = await exchange(server, upgrade_request("/ws?how=forbidden"))
        assert status == 403
        assert headers["x-reason"] == "banned"
        assert headers["retry-after"] == "60"
        assert body == b"go away\n"
        assert "sec-websocket-accept" not in headers
        status, _, body = await exchange(server, upgrade_request("/ws?how=teapot"))
        assert (status, body) == (418, b"\x00\x01binary")
        assert server.connection_count == 0


async def test_auth_error_content_type_header_is_the_only_content_type_sent() -> None:
    async with running(RefusingHandler) as server:
        lines, body = await exchange_raw(server, upgrade_request("/ws?how=json"))
    assert lines[0].startswith("HTTP/1.1 403")
    assert json.loads(body) == {"error": "forbidden"}
    # "headers: extra response headers": a JSON refusal must not also claim text/plain
    assert header_lines(lines, "Content-Type") == ["application/json"]


async def test_auth_error_basic_answers_401_with_a_basic_challenge() -> None:
    async with running(RefusingHandler) as server:
        status, headers, _ = await exchange(server, upgrade_request("/ws?how=basic"))
        assert status == 401
        assert headers["www-authenticate"] == 'Basic realm="realm"'
        rejection = await trio_websocket_rejection(server, "/ws?how=basic")
        assert rejection.status_code == 401
        assert (b"www-authenticate", b'Basic realm="realm"') in rejection.headers


async def test_auth_error_bearer_answers_401_with_an_rfc_6750_challenge() -> None:
    async with running(RefusingHandler) as server:
        status, headers, _ = await exchange(server, upgrade_request("/ws?how=bearer"))
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="api", error="invalid_token"'


async def test_auth_error_header_with_a_line_break_answers_500_without_injecting() -> None:
    async with running(RefusingHandler) as server:
        status, headers, _ = await exchange(server, upgrade_request("/ws?how=injection"))
    assert status == 500
    assert "injected" not in headers
    assert "x-evil" not in headers


async def test_authenticate_raising_answers_500_is_logged_and_the_next_client_is_served() -> None:
    async with running(RefusingHandler) as server:
        with structlog.testing.capture_logs() as logs:
            status, _, body = await exchange(server, upgrade_request("/ws?how=crash"))
        assert status == 500
        assert b"bug in authenticate" not in body  # no internals leak to the client
        failures = [e for e in logs if e["event"] == "authenticate_failed"]
        assert len(failures) == 1
        assert failures[0]["log_level"] in ("error", "exception")
        async with open_websocket_url(server.url) as ws:
            await ws.send_message('"still here"')
            with trio.fail_after(5):
                assert await ws.get_message() == '"still here"'


@pytest.mark.parametrize("how", ["none", "str", "bad-accept"])
async def test_authenticate_returning_anything_but_accept_answers_500(how: str) -> None:
    async with running(RefusingHandler) as server:
        status, headers, _ = await exchange(server, upgrade_request(f"/ws?how={how}"))
        assert status == 500
        assert "sec-websocket-accept" not in headers
        assert server.connection_count == 0
        assert (await exchange(server, upgrade_request()))[0] == 101


async def test_rejections_are_counted_by_status_in_metrics() -> None:
    async with running(RefusingHandler) as server:
        for how in ("forbidden", "forbidden", "basic", "crash", "none"):
            await exchange(server, upgrade_request(f"/ws?how={how}"))
        assert (await exchange(server, upgrade_request()))[0] == 101
        assert dict(server.metrics.rejected) == {403: 2, 401: 1, 500: 2}
        _, _, body = await exchange(server, plain("GET", "/metrics"))
    lines = body.decode().splitlines()
    assert 'riverside_rejected_connections_total{status="403"} 2.0' in lines
    assert 'riverside_rejected_connections_total{status="401"} 1.0' in lines
    assert 'riverside_rejected_connections_total{status="500"} 2.0' in lines


# ---------------------------------------------------------------- Accept


async def test_default_authenticate_gives_random_user_and_40_hex_session_ids() -> None:
    seen: list[dict[str, str]] = []

    class Echo(Handler):  # default authenticate
        async def init(self, conn: Connection) -> None:
            conn.send({"user_id": conn.user_id, "session_id": conn.session_id})

    async with running(Echo) as server:
        for _ in range(2):
            async with open_websocket_url(server.url) as ws:
                with trio.fail_after(5):
                    seen.append(json.loads(await ws.get_message()))
    for ids in seen:
        assert re.fullmatch(r"[0-9a-f]{40}", ids["session_id"])
        assert isinstance(ids["user_id"], str)
        assert ids["user_id"]
    assert seen[0]["session_id"] != seen[1]["session_id"]
    assert seen[0]["user_id"] != seen[1]["user_id"]


async def test_accept_ids_become_the_connection_ids_and_missing_session_id_is_random() -> None:
    class Named(Handler):
        async def authenticate(self, req: AuthRequest) -> Accept:
            return Accept(user_id="alice", session_id=req.query.get("s"))

        async def init(self, conn: Connection) -> None:
            conn.send({"user_id": conn.user_id, "session_id": conn.session_id})

    async with running(Named) as server:
        async with open_websocket_url(server.url + "?s=phone") as ws:
            with trio.fail_after(5):
                assert json.loads(await ws.get_message()) == {
                    "user_id": "alice",
                    "session_id": "phone",
                }
        async with open_websocket_url(server.url) as ws:
            with trio.fail_after(5):
                ids = json.loads(await ws.get_message())
    assert ids["user_id"] == "alice"
    assert re.fullmatch(r"[0-9a-f]{40}", ids["session_id"])


async def test_accept_state_becomes_conn_state_and_defaults_to_a_new_dict() -> None:
    given = {"role": "admin"}
    states: list[Any] = []

    class Stateful(Handler):
        async def authenticate(self, req: AuthRequest) -> Accept:
            return Accept(user_id="u", state=given if "given" in req.query else None)

        async def init(self, conn: Connection) -> None:
            states.append(conn.state)
            conn.send("ready")

    async with running(Stateful) as server:
        for suffix in ("?given", "", ""):
            async with open_websocket_url(server.url + suffix) as ws:
                with trio.fail_after(5):
                    assert await ws.get_message() == '"ready"'
    assert states[0] is given
    assert states[1] == {}
    assert states[2] == {}
    assert states[1] is not states[2]


async def test_authenticate_is_cancelled_when_the_client_disconnects() -> None:
    entered = trio.Event()
    cancelled = trio.Event()

    class Slow(Handler):
        async def authenticate(self, req: AuthRequest) -> Accept:
            entered.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()

    async with running(Slow) as server:
        client = await RawClient.connect(server)
        try:
            await client.send(upgrade_request())
            with trio.fail_after(5):
                await entered.wait()
        finally:
            await client.aclose()
        # Handler.authenticate documents that it is cancelled when the client goes away
        with trio.fail_after(5):
            await cancelled.wait()
