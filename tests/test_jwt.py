"""JWT authentication over real WebSocket connections: a handler without authenticate
accepts a valid token (query, Bearer header or subprotocol) and refuses every bad one with
its documented status and reason, while the server keeps serving everyone else."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionRejected, WebSocketConnection, wrap_client_stream

from riverside_trio import (
    Accept,
    AuthError,
    AuthRequest,
    Config,
    ConfigError,
    Connection,
    Handler,
    JWTAuthenticator,
    Server,
)
from riverside_trio.cli import main

from ._helpers import NO_TIMERS, running
from ._jwt import SECRET, forge_hs256, mint, private_key, public_pem, unsigned, write_public_pem
from .test_metrics import labelled, scrape


class Who(Handler):
    """No authenticate of its own: the configured authenticators decide. init tells the
    client who it is; every message is echoed."""

    async def init(self, conn: Connection) -> None:
        conn.send(
            {
                "user": conn.user_id,
                "session": conn.session_id,
                "channels": sorted(conn.channels),
                "protocol": conn.subprotocol,
                "jwt": conn.state.get("jwt"),
            }
        )

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send(msg)


async def open_ws(
    nursery: trio.Nursery,
    server: Server,
    resource: str = "/ws",
    *,
    subprotocols: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> WebSocketConnection:
    """A trio-websocket client connection; raises ConnectionRejected on a refusal."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    try:
        return await wrap_client_stream(
            nursery, stream, "127.0.0.1", resource, subprotocols=subprotocols, extra_headers=extra
        )
    except BaseException:
        await stream.aclose()  # trio-websocket 0.12 leaves it open on a rejection
        raise


async def who(server: Server, resource: str = "/ws", **kwargs: Any) -> dict[str, Any]:
    """Connect, read the server's first message, close."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ws = await open_ws(nursery, server, resource, **kwargs)
            try:
                first: dict[str, Any] = json.loads(await ws.get_message())
                first["offered_back"] = ws.subprotocol
                return first
            finally:
                await ws.aclose()


async def refusal(server: Server, resource: str = "/ws", **kwargs: Any) -> ConnectionRejected:
    found: list[ConnectionRejected] = []
    with trio.fail_after(10):
        try:
            async with trio.open_nursery() as nursery:
                ws = await open_ws(nursery, server, resource, **kwargs)
                await ws.aclose()
        except* ConnectionRejected as group:
            found.extend(_leaves(group))
    assert found, "the upgrade was accepted"
    return found[0]


def _leaves(exc: BaseException) -> Iterator[ConnectionRejected]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    elif isinstance(exc, ConnectionRejected):
        yield exc


def body_of(rejection: ConnectionRejected) -> dict[str, Any]:
    assert rejection.body is not None
    result: dict[str, Any] = json.loads(rejection.body)
    return result


def header(rejection: ConnectionRejected, name: str) -> str:
    values = [v.decode() for k, v in rejection.headers or [] if k.decode().lower() == name]
    assert len(values) == 1, values
    return values[0]


# ---------------------------------------------------------------- accepted tokens


@pytest.mark.parametrize("where", ["query", "bearer", "subprotocol"])
async def test_a_handler_without_authenticate_accepts_a_valid_token_from_each_place(
    where: str,
) -> None:
    token = mint(sid="phone", channels=["room-1", "room-2"])
    kwargs: dict[str, Any] = {}
    resource = "/ws"
    if where == "query":
        resource = f"/ws?jwt={token}"
    elif where == "bearer":
        kwargs["headers"] = {"Authorization": f"Bearer {token}"}
    else:
        kwargs["subprotocols"] = ["riverside.jwt", token]
    async with running(Who, jwt_secret=SECRET, default_channels=["global"], **NO_TIMERS) as server:
        got = await who(server, resource, **kwargs)
    assert got["user"] == "alice"
    assert got["session"] == "phone"
    assert got["channels"] == ["global", "room-1", "room-2"]
    assert got["jwt"]["channels"] == ["room-1", "room-2"]
    # the token is never selected as the subprotocol; its marker is, when it was offered
    expected = "riverside.jwt" if where == "subprotocol" else None
    assert got["protocol"] == got["offered_back"] == expected


async def test_the_subprotocol_form_keeps_the_clients_own_protocols_and_hides_the_token() -> None:
    seen: list[AuthRequest] = []

    class Picky(Who):
        async def authenticate(self, req: AuthRequest) -> Accept:
            seen.append(req)
            accept = await super().authenticate(req)
            return Accept(user_id=accept.user_id, subprotocol="chat.v2")

    token = mint()
    async with running(Picky, jwt_secret=SECRET, **NO_TIMERS) as server:
        got = await who(server, subprotocols=["chat.v2", "riverside.jwt", token])
    assert got["user"] == "alice"
    assert got["protocol"] == got["offered_back"] == "chat.v2"
    assert seen[0].subprotocols == ("chat.v2", "riverside.jwt")


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
async def test_hmac_algorithms_pinned_in_the_settings_are_accepted(alg: str) -> None:
    secret = "k" * 64
    token = pyjwt.encode({"sub": "bob", "exp": 2**40}, secret, algorithm=alg)
    other = pyjwt.encode({"sub": "bob", "exp": 2**40}, secret, algorithm="HS256")
    settings = {"jwt_secret": secret, "jwt_algorithms": ["HS384", "HS512"], **NO_TIMERS}
    async with running(Who, **settings) as server:
        assert (await who(server, f"/ws?jwt={token}"))["user"] == "bob"
        rejected = await refusal(server, f"/ws?jwt={other}")  # HS256 is not pinned
    assert body_of(rejected)["reason"] == "jwt_algorithm_not_allowed"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_public_key_file_checks_its_own_algorithm(tmp_path: Path, alg: str) -> None:
    path = write_public_pem(tmp_path, alg)
    async with running(Who, jwt_public_key_file=path, **NO_TIMERS) as server:
        assert (await who(server, f"/ws?jwt={mint(alg)}"))["user"] == "alice"
        forged = await refusal(server, f"/ws?jwt={mint(alg, name='other key')}")
    assert body_of(forged)["reason"] == "jwt_bad_signature"


# ---------------------------------------------------------------- bad input

AUDIENCE = "riverside-test"
ISSUER = "https://issuer.test"


def bad_tokens() -> dict[str, tuple[str, str]]:
    """Each bad token and the reason it is refused with (RS256, aud and iss configured)."""
    ok = {"aud": AUDIENCE, "iss": ISSUER}
    good = mint("RS256", **ok)
    now = int(time.time())
    return {
        "alg none": (unsigned(**ok), "jwt_algorithm_not_allowed"),
        "HS256 signed with the RSA public key": (
            forge_hs256(public_pem("RS256"), **ok),
            "jwt_algorithm_not_allowed",
        ),
        "expired": (mint("RS256", exp=now - 60, **ok), "jwt_expired"),
        "not yet valid": (mint("RS256", nbf=now + 600, **ok), "jwt_not_yet_valid"),
        "wrong audience": (mint("RS256", aud="someone-else", iss=ISSUER), "jwt_bad_audience"),
        "wrong issuer": (mint("RS256", aud=AUDIENCE, iss="https://evil.test"), "jwt_bad_issuer"),
        "no exp": (mint("RS256", exp=None, **ok), "jwt_missing_claim"),
        "no sub": (mint("RS256", sub=None, **ok), "jwt_missing_claim"),
        # 342 - 14 base64url characters still decode: a signature 10 bytes short
        "truncated signature": (good[:-14], "jwt_bad_signature"),
        "truncated to its header": (good.split(".")[0], "jwt_malformed"),
        "garbage": ("not-a-token", "jwt_malformed"),
        "garbage in three parts": ("abc.def.ghi", "jwt_malformed"),
        "signed by another key": (mint("RS256", name="other", **ok), "jwt_bad_signature"),
        "channels not a list": (mint("RS256", channels="room", **ok), "jwt_bad_claims"),
        "over the size limit": (mint("RS256", pad="x" * 2048, **ok), "jwt_too_large"),
    }


async def test_every_bad_token_is_refused_with_its_reason_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    settings = {
        "jwt_public_key_file": write_public_pem(tmp_path, "RS256"),
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        "jwt_max_length": 2048,
        **NO_TIMERS,
    }
    good = mint("RS256", aud=AUDIENCE, iss=ISSUER)
    cases = bad_tokens()
    async with running(Who, **settings) as server, trio.open_nursery() as nursery:
        with trio.fail_after(30):
            # a client that stays connected through it all
            alice = await open_ws(nursery, server, f"/ws?jwt={good}")
            assert json.loads(await alice.get_message())["user"] == "alice"
            for name, (token, reason) in cases.items():
                rejected = await refusal(server, f"/ws?jwt={token}")
                assert rejected.status_code == 401, name
                assert body_of(rejected) == {
                    "success": False,
                    "errorCode": "INVALID_JWT",
                    "error": body_of(rejected)["error"],
                    "reason": reason,
                }, name
                challenge = header(rejected, "www-authenticate")
                assert challenge.startswith('Bearer realm="riverside", error="invalid_token"')
            missing = await refusal(server)
            assert missing.status_code == 401
            assert body_of(missing)["errorCode"] == "MISSING_AUTHENTICATION"
            assert header(missing, "www-authenticate") == 'Bearer realm="riverside"'
            # the first client is still served, and a new one gets in
            await alice.send_message('"still here"')
            assert await alice.get_message() == '"still here"'
            assert (await who(server, f"/ws?jwt={good}"))["user"] == "alice"
            samples = await scrape(server)
            await alice.aclose()
    refused = labelled(samples, "riverside_auth_refused_total", "reason")
    expected: dict[str, float] = {"missing_authentication": 1}
    for _, reason in cases.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert refused == expected


async def test_exp_is_optional_when_jwt_require_exp_is_off_and_leeway_forgives_skew() -> None:
    settings = {"jwt_secret": SECRET, "jwt_require_exp": False, "jwt_leeway": 120, **NO_TIMERS}
    async with running(Who, **settings) as server:
        assert (await who(server, f"/ws?jwt={mint(exp=None)}"))["user"] == "alice"
        late = mint(exp=int(time.time()) - 30)  # expired 30 s ago, within the leeway
        assert (await who(server, f"/ws?jwt={late}"))["user"] == "alice"
        rejected = await refusal(server, f"/ws?jwt={mint(exp=int(time.time()) - 600)}")
    assert body_of(rejected)["reason"] == "jwt_expired"


# ---------------------------------------------------------------- the API for handlers


async def test_a_handler_can_use_the_configured_authenticators_and_decide_more() -> None:
    class NoBanned(Who):
        async def authenticate(self, req: AuthRequest) -> Accept:
            accept = await super().authenticate(req)
            if accept.user_id == "mallory":
                raise AuthError(403, body="banned", reason="banned")
            return accept

    async with running(NoBanned, jwt_secret=SECRET, **NO_TIMERS) as server:
        assert (await who(server, f"/ws?jwt={mint()}"))["user"] == "alice"
        banned = await refusal(server, f"/ws?jwt={mint(sub='mallory')}")
        expired = await refusal(server, f"/ws?jwt={mint(exp=1)}")
        samples = await scrape(server)
    assert (banned.status_code, banned.body) == (403, b"banned")
    assert body_of(expired)["reason"] == "jwt_expired"
    refused = labelled(samples, "riverside_auth_refused_total", "reason")
    assert refused == {"banned": 1, "jwt_expired": 1}


async def test_a_handler_can_call_a_jwt_authenticator_of_its_own() -> None:
    config = Config(jwt_secret=SECRET)

    class Own(Who):
        jwt = JWTAuthenticator(config)

        async def authenticate(self, req: AuthRequest) -> Accept:
            accept = await self.jwt(req)
            if accept is None:
                return Accept(user_id="guest")
            return Accept(user_id=accept.state["jwt"]["sub"].upper(), channels=["vip"])

    async with running(Own, **NO_TIMERS) as server:  # no JWT key in the server's settings
        got = await who(server, f"/ws?jwt={mint()}")
        assert (got["user"], got["channels"]) == ("ALICE", ["vip"])
        assert (await who(server))["user"] == "guest"
    claims = await Own.jwt.verify(mint(sub="carol"))
    assert claims["sub"] == "carol"
    with pytest.raises(AuthError) as info:
        await Own.jwt.verify(unsigned())
    assert (info.value.status, info.value.reason) == (401, "jwt_algorithm_not_allowed")


# ---------------------------------------------------------------- keys at start-up


def test_key_problems_are_config_errors_naming_the_setting(tmp_path: Path) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(
        private_key("RS256").private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    rsa = write_public_pem(tmp_path, "RS256")
    cases = [
        ({"jwt_public_key_file": str(tmp_path / "missing.pem")}, "jwt_public_key_file"),
        ({"jwt_public_key_file": str(private)}, "jwt_public_key_file"),
        ({"jwt_public_key_file": str(junk)}, "jwt_public_key_file"),
        ({"jwt_public_key_file": rsa, "jwt_algorithms": ["ES256"]}, "jwt_algorithms"),
        ({"jwt_jwks": str(tmp_path / "missing.json"), "jwt_algorithms": ["RS256"]}, "jwt_jwks"),
        ({"jwt_jwks": str(junk), "jwt_algorithms": ["RS256"]}, "jwt_jwks"),
    ]
    for case, name in cases:
        with pytest.raises(ConfigError) as info:
            Server(Who, Config(**case))
        assert info.value.setting == name, case


def test_the_cli_refuses_a_bad_key_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.pem")
    assert main(["serve", "--jwt-public-key-file", missing]) == 2
    assert "jwt_public_key_file" in capsys.readouterr().err
    assert main(["serve", "--jwt-secret", "short"]) == 2
    assert "jwt_secret (from --jwt-secret): is 5 bytes; HS256 needs" in capsys.readouterr().err


async def test_the_built_in_demo_requires_a_token_once_a_jwt_key_is_configured() -> None:
    from riverside_trio._demo import DemoHandler

    async with running(DemoHandler, jwt_secret=SECRET, **NO_TIMERS) as server:
        missing = await refusal(server)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                ws = await open_ws(nursery, server, f"/ws?jwt={mint(channels=['lobby'])}&user=eve")
                welcome = json.loads(await ws.get_message())  # the demo greets first
                await ws.send_message(json.dumps({"type": "say", "channel": "lobby", "text": "hi"}))
                said = json.loads(await ws.get_message())
                await ws.aclose()
    assert missing.status_code == 401
    assert welcome["type"] == "welcome" and welcome["user"] == "alice"  # the token's, not ?user=
    assert said == {"type": "said", "channel": "lobby", "from": "alice", "text": "hi"}


# ---------------------------------------------------------------- any mangled token


@pytest.fixture(scope="module")
def authenticators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, JWTAuthenticator]:
    tmp = tmp_path_factory.mktemp("keys")
    made = {"HS256": JWTAuthenticator(Config(jwt_secret=SECRET))}
    for alg in ("RS256", "ES256", "EdDSA"):
        made[alg] = JWTAuthenticator(Config(jwt_public_key_file=write_public_pem(tmp, alg)))
    return made


@given(
    alg=st.sampled_from(["HS256", "RS256", "ES256", "EdDSA"]),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.sampled_from("AaZz09-_.=+/ \x00é")),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(min_value=0, max_value=40),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_mangled_token_is_refused_with_401_and_never_crashes_the_check(
    authenticators: dict[str, JWTAuthenticator],
    alg: str,
    edits: list[tuple[int, str]],
    cut: int,
) -> None:
    original = mint(alg)
    token = list(original)
    for at, char in edits:
        token[at % len(token)] = char
    mangled = "".join(token)[: len(token) - cut]
    if mangled == original:  # the edits put back what was there
        return
    try:
        claims = trio.run(authenticators[alg].verify, mangled)
    except AuthError as exc:
        assert exc.status == 401
        assert exc.reason.startswith("jwt_")
    else:
        # base64 leaves a last character's spare bits unread: the same bytes, still valid
        assert claims == pyjwt.decode(original, options={"verify_signature": False})


@pytest.mark.parametrize(
    ("offered", "rest", "token"),
    [
        ((), (), None),
        (("chat",), ("chat",), None),
        (("riverside.jwt", "t.o.k"), ("riverside.jwt",), "t.o.k"),
        (("a", "riverside.jwt", "t.o.k", "b"), ("a", "riverside.jwt", "b"), "t.o.k"),
        (("riverside.jwt",), ("riverside.jwt",), None),  # the marker without a token
    ],
)
def test_the_token_is_the_entry_after_the_marker_and_is_no_subprotocol(
    offered: tuple[str, ...], rest: tuple[str, ...], token: str | None
) -> None:
    from riverside_trio.auth import split_jwt_subprotocol

    assert split_jwt_subprotocol(offered) == (rest, token)
