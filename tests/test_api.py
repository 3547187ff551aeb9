"""The HTTP control API on one node: real HTTP requests (tests/_http.py) and real WebSocket
clients (trio-websocket) against a real server; claims in memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio.testing import MockClock
from trio_websocket import ConnectionClosed

from riverside_trio import Accept, AuthRequest, Config, ConfigError, Connection, Handler
from riverside_trio._demo import DemoHandler
from riverside_trio.api import COMMON_ERRORS, ERRORS, ROUTES

from ._helpers import (
    NO_TIMERS,
    advance,
    fail_after_real,
    running,
    settle,
    wait_until,
    ws_open,
)
from ._http import KEY, OTHER_KEY, api, http, refused_upgrade
from ._jwt import SECRET, mint

SETTINGS: dict[str, Any] = {**NO_TIMERS, "api_key": (KEY, OTHER_KEY)}


class EchoHandler(Handler):
    """No authenticate of its own: claims decide who connects. Echoes messages."""

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


async def claim(port: int, **params: Any) -> str:
    reply = await api(port, "POST", "/claim", params)
    assert reply.status == 200, reply.body
    claim_id: str = reply.json["claim"]["id"]
    return claim_id


def _error(reply: Any, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    body = reply.json
    assert body["success"] is False
    assert body["errorCode"] == code
    assert body["requestId"] == reply.headers["x-request-id"]
    assert body["error"]


# ------------------------------------------------------------------ settings


def test_api_settings_are_validated_and_the_key_is_never_shown() -> None:
    config = Config(api_key="a-long-key-1")
    assert config.api_key == ("a-long-key-1",)
    assert "a-long-key-1" not in repr(config)
    with pytest.raises(ConfigError) as exc:
        Config(api_key=("a-long-key-1", "tiny7"))
    assert exc.value.setting == "api_key"
    assert "tiny7" not in str(exc.value)
    with pytest.raises(ConfigError, match="api_prefix"):
        Config(api_key=KEY, api_prefix="/")
    with pytest.raises(ConfigError, match="api_prefix"):
        Config(api_key=KEY, api_prefix="/health")


# ------------------------------------------------------------------ auth, routing, limits


async def test_every_way_of_giving_a_key_is_accepted_and_every_key_works() -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        p = server.port
        for reply in [
            await api(p, "GET", "/ping"),
            await api(p, "GET", "/ping", key=OTHER_KEY),
            await api(p, "GET", "/ping", key=None, headers=[("X-API-Key", KEY)]),
            await api(p, "GET", "/ping", {"token": OTHER_KEY}, key=None),
        ]:
            assert reply.status == 200
            assert reply.body == b"pong"
            assert reply.headers["x-request-id"]


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({}, []),
        ({}, [("Authorization", "Bearer wrong-key-123")]),
        ({}, [("Authorization", f"Basic {KEY}")]),
        ({}, [("Authorization", f"Bearer {KEY}x")]),
        ({}, [("X-API-Key", KEY[:-1])]),
        ({"token": ""}, []),
        ({"token": KEY.upper()}, []),
    ],
)
async def test_a_missing_or_wrong_key_is_401(
    params: dict[str, str], headers: list[tuple[str, str]]
) -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        for route, method in [("/ping", "GET"), ("/send", "POST"), ("/nowhere", "GET")]:
            reply = await api(server.port, method, route, params, key=None, headers=headers)
            _error(reply, 401, "INVALID_AUTHORIZATION")
        assert server.metrics.api_requests[("unknown", 401)] == 3


async def test_the_clients_request_id_is_kept() -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        ok = await api(server.port, "GET", "/ping", headers=[("X-Request-ID", "req-42")])
        assert ok.headers["x-request-id"] == "req-42"
        bad = await api(server.port, "POST", "/send", headers=[("X-Request-ID", "req-43")])
        assert bad.json["requestId"] == "req-43" == bad.headers["x-request-id"]


async def test_unknown_routes_wrong_methods_and_big_bodies() -> None:
    async with running(EchoHandler, **SETTINGS, api_max_body=100) as server:
        p = server.port
        _error(await api(p, "GET", "/nowhere"), 404, "NOT_FOUND")
        _error(await api(p, "GET", ""), 404, "NOT_FOUND")
        _error(await api(p, "POST", "/channel/subscribe/"), 404, "NOT_FOUND")
        reply = await api(p, "POST", "/info", {"user": "u"})
        _error(reply, 405, "METHOD_NOT_ALLOWED")
        assert reply.headers["allow"] == "GET"
        reply = await api(p, "GET", "/send")
        assert reply.headers["allow"] == "POST"
        _error(await api(p, "DELETE", "/claim"), 405, "METHOD_NOT_ALLOWED")
        reply = await api(p, "POST", "/send", {"user": "u", "type": "text"}, body=b"x" * 101)
        _error(reply, 413, "BODY_TOO_LARGE")
        reply = await api(p, "POST", "/send", {"user": "u", "type": "text"}, body=b"x" * 100)
        assert reply.status == 200
        # outside the prefix, the handler's own routes (none here)
        assert (await http(p, "GET", "/apix")).status == 404
        assert server.metrics.api_requests[("send", 413)] == 1
        metrics = (await http(p, "GET", "/metrics")).body.decode()
        assert 'riverside_api_requests_total{route="send",status="413"} 1.0' in metrics
        assert 'riverside_api_requests_total{route="unknown",status="404"} 3.0' in metrics


async def test_without_a_key_there_is_no_api() -> None:
    async with running(EchoHandler, **NO_TIMERS) as server:
        assert (await api(server.port, "GET", "/ping")).status == 404
        async with ws_open(server.url) as ws:  # anyone may connect, as before
            await ws.send_message('"hi"')
            assert await ws.get_message() == '"hi"'


async def test_the_prefix_is_a_setting() -> None:
    async with running(EchoHandler, **SETTINGS, api_prefix="/control/v1") as server:
        assert (await api(server.port, "GET", "/ping", prefix="/control/v1")).body == b"pong"
        assert (await api(server.port, "GET", "/ping")).status == 404


# ------------------------------------------------------------------ claims


async def test_a_claim_connects_once_with_its_user_session_and_channels() -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        p = server.port
        reply = await api(
            p,
            "POST",
            "/claim",
            {"user": "alice", "session": "s1", "channels": "a, b,,a", "id": "my-claim"},
        )
        assert reply.status == 200
        made = reply.json["claim"]
        assert made["id"] == "my-claim"
        assert made["user"] == "alice" and made["session"] == "s1"
        assert made["channels"] == ["a", "b"]
        info = (await api(p, "GET", "/info", {"user": "alice"})).json
        assert [c["id"] for c in info["claims"]] == ["my-claim"]
        async with ws_open(server.url + "?claim=my-claim") as ws:
            (conn,) = server.connections()
            assert (conn.user_id, conn.session_id) == ("alice", "s1")
            assert conn.channels == {"a", "b"}
            info = (await api(p, "GET", "/info", {"user": "alice"})).json
            assert info["claims"] == []
            (listed,) = info["connections"]
            assert listed["id"] == conn.id and listed["worker"] == server.node_id
            assert listed["channels"] == ["a", "b"] and listed["session"] == "s1"
            # used: refused, and the first client is unharmed
            refused = await refused_upgrade(p, "/ws?claim=my-claim")
            assert refused.status == 401
            assert refused.json["errorCode"] == "MISSING_CLAIM"
            await ws.send_message('"still here"')
            assert await ws.get_message() == '"still here"'


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "MISSING_AUTHENTICATION"),
        ("?claim=", "MISSING_AUTHENTICATION"),
        ("?claim=x", "MISSING_CLAIM"),
    ],
)
async def test_no_claim_or_an_unknown_one_is_refused(query: str, code: str) -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        refused = await refused_upgrade(server.port, "/ws" + query)
        assert refused.status == 401
        assert refused.json["errorCode"] == code and refused.json["success"] is False
        if code == "MISSING_CLAIM":  # (the claim authenticator's own refusal)
            assert refused.headers["x-request-id"] == refused.json["requestId"]
        assert server.metrics.auth_refused[code.lower()] == 1
        assert server.metrics.rejected[401] == 1


async def test_an_expired_claim_is_refused(mock_clock: MockClock) -> None:
    async with running(EchoHandler, **SETTINGS, api_claim_duration=30) as server:
        late = await claim(server.port, user="u")
        custom = await claim(server.port, user="u", duration=100)
        await advance(mock_clock, 31)
        info = (await api(server.port, "GET", "/info", {"user": "u"})).json
        assert [c["id"] for c in info["claims"]] == [custom]
        refused = await refused_upgrade(server.port, "/ws?claim=" + late)
        assert (refused.status, refused.json["errorCode"]) == (401, "EXPIRED_CLAIM")
        async with ws_open(server.url + "?claim=" + custom):
            assert server.connection_count == 1


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "USER_ID_REQUIRED"),
        ({"user": ""}, "USER_ID_REQUIRED"),
        ({"user": "u", "expiration": "soon"}, "INVALID_EXPIRATION"),
        ({"user": "u", "expiration": 1}, "INVALID_EXPIRATION"),
        ({"user": "u", "expiration": 10**12}, "INVALID_EXPIRATION"),
        ({"user": "u", "expiration": -1}, "NEGATIVE_EXPIRATION"),
        ({"user": "u", "expiration": 0}, "NEGATIVE_EXPIRATION"),
        ({"user": "u", "duration": "1.5"}, "INVALID_DURATION"),
        ({"user": "u", "duration": -1}, "NEGATIVE_DURATION"),
        ({"user": "u", "duration": 0}, "NEGATIVE_DURATION"),
        ({"user": "u" * 1025}, "ERROR_BINDING_QUERY_PARAMS"),
    ],
)
async def test_claim_parameters_are_validated(params: dict[str, Any], code: str) -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        _error(await api(server.port, "POST", "/claim", params), 400, code)


async def test_claim_ids_are_unique_and_bodies_are_json_or_forms() -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        p = server.port
        reply = await api(
            p, "POST", "/claim", json_body={"user": "u", "id": "c1", "channels": ["x", "y"]}
        )
        assert reply.json["claim"]["channels"] == ["x", "y"]
        _error(
            await api(p, "POST", "/claim", form={"user": "v", "id": "c1"}),
            400,
            "CLAIM_ID_ALREADY_USED",
        )
        reply = await api(
            p, "POST", "/claim", {"user": "q"}, form={"user": "v", "expiration": 2147485545}
        )
        assert reply.json["claim"]["user"] == "v"  # the body wins over the query
        assert reply.json["claim"]["expiration"] == 2147485545
        assert len(reply.json["claim"]["id"]) == 32
        for body, ctype in [
            (b"{not json", "application/json"),
            (b"[1, 2]", "application/json"),
            (b'{"user": 5}', "application/json"),
            (b'{"user": "u", "channels": [1]}', "application/json"),
            (b"user=u", "text/plain"),
            (b"user=%ff", "application/x-www-form-urlencoded"),
        ]:
            reply = await api(p, "POST", "/claim", body=body, headers=[("Content-Type", ctype)])
            _error(reply, 400, "ERROR_BINDING_QUERY_PARAMS")
        reply = await http(p, "POST", "/api/claim?user=%ff", headers=[("X-API-Key", KEY)])
        _error(reply, 400, "ERROR_BINDING_QUERY_PARAMS")


# ------------------------------------------------------------------ send, disconnect, channels


async def test_send_reaches_its_target_raw_and_counts_it() -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        p = server.port
        c1 = await claim(p, user="alice", session="s1", channels="room")
        c2 = await claim(p, user="alice", session="s2")
        c3 = await claim(p, user="bob", channels="room")
        async with (
            ws_open(server.url + "?claim=" + c1) as a1,
            ws_open(server.url + "?claim=" + c2) as a2,
            ws_open(server.url + "?claim=" + c3) as b,
        ):
            ids = {c.session_id: c.id for c in server.connections() if c.user_id == "alice"}

            async def send(params: dict[str, Any], body: bytes) -> Any:
                reply = await api(p, "POST", "/send", params, body=body)
                assert reply.status == 200, reply.body
                assert reply.json["success"] is True and reply.json["nodes"] == 0
                return reply.json["connections"]

            # not JSON: the raw body goes out as it is, bypassing the JSON codec
            assert await send({"user": "alice", "type": "text"}, b"to alice") == 2
            assert await a1.get_message() == await a2.get_message() == "to alice"
            assert await send({"user": "alice", "session": "s2", "type": "1"}, b"s2") == 1
            assert await a2.get_message() == "s2"
            assert await send({"channel": "room", "type": "binary"}, b"\x01\x02\x03\x04") == 2
            assert await a1.get_message() == await b.get_message() == b"\x01\x02\x03\x04"
            # id > channel > user
            params = {"id": ids["s1"], "channel": "room", "user": "bob", "type": "2"}
            assert await send(params, b"\x00") == 1
            assert await a1.get_message() == b"\x00"
            assert await send({"user": "nobody", "type": "text"}, b"x") == 0
            assert await send({"id": "0123456789abcdef-1", "type": "text"}, b"x") == 0
            await b.send_message('"echo"')  # nothing else arrived meanwhile
            assert await b.get_message() == '"echo"'


@pytest.mark.parametrize(
    ("params", "body", "code"),
    [
        ({"type": "text"}, b"x", "MISSING_TARGET"),
        ({}, b"x", "MISSING_TARGET"),
        ({"user": "", "type": "text"}, b"x", "MISSING_TARGET"),
        ({"user": "u"}, b"x", "INVALID_MESSAGE_TYPE"),
        ({"user": "u", "type": "3"}, b"x", "INVALID_MESSAGE_TYPE"),
        ({"user": "u", "type": "json"}, b"x", "INVALID_MESSAGE_TYPE"),
        ({"user": "u", "type": "text"}, b"\xff\xfe", "INVALID_MESSAGE"),
    ],
)
async def test_send_refuses_bad_input(params: dict[str, Any], body: bytes, code: str) -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        _error(await api(server.port, "POST", "/send", params, body=body), 400, code)


async def test_disconnect_closes_with_the_code_and_drops_claims_unless_kept() -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        p = server.port
        c1 = await claim(p, user="u", session="s1")
        async with ws_open(server.url + "?claim=" + c1) as ws:
            await claim(p, user="u", id="pending-1")
            reply = await api(p, "POST", "/disconnect", {"user": "u", "session": "other"})
            assert reply.json["connections"] == 0  # another session: nothing closed or deleted
            assert len((await api(p, "GET", "/info", {"user": "u"})).json["claims"]) == 1
            await api(p, "POST", "/disconnect", {"user": "u", "session": "s1", "id": "x-1"})
            assert len((await api(p, "GET", "/info", {"user": "u"})).json["claims"]) == 1
            await claim(p, user="u", session="other", id="pending-2")
            await claim(p, user="u", session="s1", id="pending-3")
            reply = await api(
                p,
                "POST",
                "/disconnect",
                {"user": "u", "session": "s1", "keepClaims": "true", "code": 4001, "reason": "bye"},
            )
            assert reply.json == {"success": True, "connections": 1, "nodes": 0}
            with pytest.raises(ConnectionClosed) as exc:
                await ws.get_message()
            assert (exc.value.reason.code, exc.value.reason.reason) == (4001, "bye")
        claims = (await api(p, "GET", "/info", {"user": "u"})).json["claims"]
        assert sorted(c["id"] for c in claims) == ["pending-1", "pending-2", "pending-3"]
        await api(p, "POST", "/disconnect", {"user": "u"})
        assert (await api(p, "GET", "/info", {"user": "u"})).json["claims"] == []


async def test_disconnect_default_is_1000() -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        claim_id = await claim(server.port, user="u")
        async with ws_open(server.url + "?claim=" + claim_id) as ws:
            (conn,) = server.connections()
            reply = await api(server.port, "POST", "/disconnect", form={"id": conn.id})
            assert reply.json["connections"] == 1
            with pytest.raises(ConnectionClosed) as exc:
                await ws.get_message()
            assert exc.value.reason.code == 1000


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "MISSING_TARGET"),
        ({"user": "u", "code": 1005}, "INVALID_CLOSE_CODE"),
        ({"user": "u", "code": 999}, "INVALID_CLOSE_CODE"),
        ({"user": "u", "code": "abc"}, "INVALID_CLOSE_CODE"),
        ({"user": "u", "code": 5000}, "INVALID_CLOSE_CODE"),
        ({"user": "u", "reason": "é" * 62}, "INVALID_CLOSE_REASON"),
        ({"user": "u", "keepClaims": "maybe"}, "ERROR_BINDING_QUERY_PARAMS"),
    ],
)
async def test_disconnect_refuses_bad_input(params: dict[str, Any], code: str) -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        _error(await api(server.port, "POST", "/disconnect", params), 400, code)


async def test_subscribe_and_unsubscribe_edit_connections_and_claims() -> None:
    async with running(EchoHandler, **SETTINGS) as server:
        p = server.port
        async with ws_open(server.url + "?claim=" + await claim(p, user="u", channels="g")):
            (conn,) = server.connections()
            await claim(p, user="u", id="later", channels="g")
            await claim(p, user="v", id="other")
            reply = await api(p, "POST", "/channel/subscribe/news", {"user": "u"})
            assert reply.json == {"success": True, "connections": 1, "nodes": 0}
            assert conn.channels == {"g", "news"}
            info = (await api(p, "GET", "/info", {"channel": "news"})).json
            assert [c["id"] for c in info["connections"]] == [conn.id]
            assert [c["channels"] for c in info["claims"]] == [["g", "news"]]
            # by channel: every member of g leaves g, the claims keep it (ignoreClaims)
            reply = await api(
                p,
                "POST",
                "/channel/unsubscribe/g",
                json_body={"channel": "g", "ignoreClaims": True},
            )
            assert reply.json["connections"] == 1
            assert conn.channels == {"news"}
            info = (await api(p, "GET", "/info", {"user": "u"})).json
            assert info["claims"][0]["channels"] == ["g", "news"]
            await api(p, "POST", "/channel/unsubscribe/news", {"id": conn.id})
            assert conn.channels == frozenset()
            info = (await api(p, "GET", "/info", {"user": "v"})).json
            assert info["claims"][0]["channels"] == []
        _error(await api(p, "POST", "/channel/subscribe/x"), 400, "MISSING_TARGET")
        _error(await api(p, "GET", "/info"), 400, "MISSING_TARGET")


# ------------------------------------------------------------------ handlers and claims


class ClaimOrGuest(Handler):
    """Uses the ready-made claim authenticator, falling back to a guest."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        if "claim" in req.query:
            accept = await req.accept_claim()
            return Accept(
                accept.user_id, accept.session_id, {"via": "claim"}, None, accept.channels
            )
        return Accept(user_id="guest")


async def test_a_handler_can_use_claims_from_its_own_authenticate() -> None:
    async with running(ClaimOrGuest, **SETTINGS) as server:
        async with ws_open(server.url):
            (guest,) = server.connections()
            assert guest.user_id == "guest"
        await wait_until(lambda: server.connection_count == 0)
        c = await claim(server.port, user="member", channels="vip")
        async with ws_open(server.url + "?claim=" + c):
            (member,) = server.connections()
            assert member.state == {"via": "claim"} and member.channels == {"vip"}
        assert (await refused_upgrade(server.port, "/ws?claim=" + c)).status == 401


async def test_accept_claim_without_the_api_is_a_500_and_logged() -> None:
    async with running(ClaimOrGuest, **NO_TIMERS) as server:
        assert (await refused_upgrade(server.port, "/ws?claim=abc")).status == 500


async def test_bad_requests_leave_everyone_else_served() -> None:
    async with running(EchoHandler, **SETTINGS, api_max_body=64) as server:
        p = server.port
        async with ws_open(server.url + "?claim=" + await claim(p, user="u")) as ws:
            for method, target, body in [
                ("POST", "/api/send?type=text&user=u", b"\xff" * 10),
                ("POST", "/api/send?type=text&user=u", b"x" * 1000),
                ("POST", "/api/claim", b"{" * 60),
                ("GET", "/api/info?user=%ff&session=%", b""),
                ("PUT", "/api/ping", b""),
                ("GET", "/api/" + "a/" * 200, b""),
            ]:
                reply = await http(p, method, target, headers=[("X-API-Key", KEY)], body=body)
                assert 400 <= reply.status < 500
            # a request that is not even HTTP
            stream = await trio.open_tcp_stream("127.0.0.1", p)
            await stream.send_all(b"\x16\x03\x01garbage\r\n\r\n")
            await stream.aclose()
            await ws.send_message('"alive"')
            assert await ws.get_message() == '"alive"'
            reply = await api(p, "POST", "/send", {"user": "u", "type": "text"}, body=b"ok")
            assert reply.json["connections"] == 1
            assert await ws.get_message() == "ok"


def test_the_route_table_names_only_known_error_codes() -> None:
    names = set()
    for route in ROUTES:
        assert route.name not in names
        names.add(route.name)
        for code in route.errors:
            assert code in ERRORS
        for param in route.params:
            assert param.error in ERRORS
    assert set(COMMON_ERRORS) <= set(ERRORS)


async def test_a_body_that_does_not_arrive_is_408(mock_clock: MockClock) -> None:
    async with running(EchoHandler, **SETTINGS, handshake_timeout=5) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                b"POST /api/send?user=u&type=text HTTP/1.1\r\nHost: x\r\n"
                + f"X-API-Key: {KEY}\r\nContent-Length: 10\r\n\r\nabc".encode()
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
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body)["errorCode"] == "REQUEST_TIMEOUT"
        assert server.metrics.api_requests[("send", 408)] == 1


async def test_with_a_jwt_key_too_a_claim_is_tried_first_then_the_token() -> None:
    async with running(EchoHandler, **SETTINGS, jwt_secret=SECRET) as server:
        p = server.port
        c = await claim(p, user="by-claim", channels="c")
        async with ws_open(server.url + "?claim=" + c):
            (conn,) = server.connections()
            assert (conn.user_id, conn.channels) == ("by-claim", {"c"})
        await wait_until(lambda: server.connection_count == 0)
        async with ws_open(server.url + "?jwt=" + mint(sub="by-token")):
            (conn,) = server.connections()
            assert conn.user_id == "by-token"
        # a used claim is refused even with a valid token beside it: a wrong credential
        # is a refusal, not a reason to try the next one
        refused = await refused_upgrade(p, f"/ws?claim={c}&jwt={mint(sub='x')}")
        assert (refused.status, refused.json["errorCode"]) == (401, "MISSING_CLAIM")
        refused = await refused_upgrade(p, "/ws")
        assert (refused.status, refused.json["errorCode"]) == (401, "MISSING_AUTHENTICATION")


async def test_the_built_in_demo_accepts_a_claim_and_refuses_anyone_else() -> None:
    async with running(DemoHandler, **SETTINGS) as server:
        c = await claim(server.port, user="demo-user", channels="lobby")
        async with ws_open(server.url + "?claim=" + c) as ws:
            await ws.send_message(json.dumps({"type": "say", "channel": "lobby", "text": "hi"}))
            said = json.loads(await ws.get_message())
            for _ in range(10):  # the demo may greet first (a welcome, presence)
                if said.get("type") == "said":
                    break
                said = json.loads(await ws.get_message())
            assert said["from"] == "demo-user"
            assert (said["channel"], said["text"]) == ("lobby", "hi")
        refused = await refused_upgrade(server.port, "/ws")
        assert (refused.status, refused.json["errorCode"]) == (401, "MISSING_AUTHENTICATION")


async def test_the_api_comes_before_a_websocket_path_that_covers_it() -> None:
    async with running(EchoHandler, **SETTINGS, path="/*") as server:
        assert (await api(server.port, "GET", "/ping")).body == b"pong"
        c = await claim(server.port, user="u")
        async with ws_open(f"ws://127.0.0.1:{server.port}/any/where?claim={c}"):
            assert server.connection_count == 1
