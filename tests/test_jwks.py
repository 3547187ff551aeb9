"""JWT keys from a JWKS document: a file, or a URL served by a real HTTP server on the
loopback, fetched in a worker thread, cached, refreshed, and re-fetched (rate-limited)
for an unknown ``kid``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ._helpers import NO_TIMERS, fail_after_real, running, settle
from ._jwt import jwk, mint
from .test_http import exchange, plain
from .test_jwt import Who, body_of, header, refusal, who


class Issuer:
    """A JWKS URL on 127.0.0.1: serves ``keys``; counts requests; can fail or hold them."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.status = 200
        self.gate: threading.Event | None = None  # when set: requests wait for it
        self.waiting = threading.Event()  # a request is waiting at the gate

    @contextmanager
    def serving(self) -> Iterator[str]:
        issuer = self

        class Answer(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.hits += 1
                if issuer.gate is not None:
                    issuer.waiting.set()
                    issuer.gate.wait(30)
                body = json.dumps({"keys": issuer.keys}).encode()
                self.send_response(issuer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/.well-known/jwks.json"
        finally:
            if self.gate is not None:
                self.gate.set()
            httpd.shutdown()
            httpd.server_close()
            thread.join(10)


def jwks_settings(source: str, **more: Any) -> dict[str, Any]:
    return {
        "jwt_jwks": source,
        "jwt_algorithms": ["RS256", "EdDSA"],
        "jwt_jwks_refresh": 300,
        "jwt_jwks_min_refresh": 10,
        **NO_TIMERS,
        **more,
    }


async def reason_of(server: Any, token: str) -> str:
    rejected = await refusal(server, f"/ws?jwt={token}")
    assert rejected.status_code == 401
    reason: str = body_of(rejected)["reason"]
    return reason


async def test_a_jwks_url_is_cached_refreshed_and_fetched_again_for_a_new_kid(
    mock_clock: trio.testing.MockClock,
) -> None:
    issuer = Issuer()
    issuer.keys = [jwk("RS256", "k1")]
    k1 = mint("RS256", kid="k1")
    k2 = mint("EdDSA", kid="k2")
    with issuer.serving() as url, fail_after_real():
        async with running(Who, **jwks_settings(url)) as server:
            assert issuer.hits == 0  # fetched when a token first needs it
            assert (await who(server, f"/ws?jwt={k1}"))["user"] == "alice"
            assert issuer.hits == 1
            assert (await who(server, f"/ws?jwt={k1}"))["user"] == "alice"
            assert issuer.hits == 1  # cached
            # an unknown kid right after a fetch: refused without fetching again
            assert await reason_of(server, k2) == "jwt_unknown_kid"
            assert issuer.hits == 1
            # jwt_jwks_min_refresh later, an unknown kid makes one more fetch, then refused
            mock_clock.jump(10)
            assert await reason_of(server, k2) == "jwt_unknown_kid"
            assert issuer.hits == 2
            # made-up kids cannot make the server hammer the issuer
            assert await reason_of(server, mint("RS256", kid="made-up")) == "jwt_unknown_kid"
            issuer.keys.append(jwk("EdDSA", "k2"))  # rotated in at the issuer
            assert await reason_of(server, k2) == "jwt_unknown_kid"
            assert issuer.hits == 2
            mock_clock.jump(10)  # jwt_jwks_min_refresh later, the new key is fetched
            assert (await who(server, f"/ws?jwt={k2}"))["user"] == "alice"
            assert issuer.hits == 3
            # a kid of another algorithm's key
            assert await reason_of(server, mint("RS256", kid="k2")) == "jwt_wrong_key"
            mock_clock.jump(300)  # jwt_jwks_refresh later: fetched again
            assert (await who(server, f"/ws?jwt={k1}"))["user"] == "alice"
            assert issuer.hits == 4
            issuer.status = 500  # a failing issuer: the keys held stay in use
            mock_clock.jump(300)
            assert (await who(server, f"/ws?jwt={k1}"))["user"] == "alice"
            assert issuer.hits == 5


async def test_the_fetch_runs_off_the_event_loop_and_is_shared_by_waiting_clients(
    mock_clock: trio.testing.MockClock,
) -> None:
    issuer = Issuer()
    issuer.keys = [jwk("RS256", "k1")]
    issuer.gate = threading.Event()
    token = mint("RS256", kid="k1")
    results: list[str] = []

    async def connect() -> None:
        results.append((await who(server, f"/ws?jwt={token}"))["user"])

    with issuer.serving() as url, fail_after_real():
        async with running(Who, **jwks_settings(url)) as server, trio.open_nursery() as nursery:
            nursery.start_soon(connect)
            await trio.to_thread.run_sync(issuer.waiting.wait, 30)
            nursery.start_soon(connect)
            await settle()
            # the server answers while the fetch is held at the issuer
            status, _, body = await exchange(server, plain("GET", "/health"))
            assert (status, body) == (200, b"OK")
            assert results == []
            issuer.gate.set()
        assert results == ["alice", "alice"]
        assert issuer.hits == 1


async def test_an_unreachable_jwks_url_answers_503_and_the_server_carries_on() -> None:
    with trio.socket.socket() as sock:  # a port with nobody listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks.json"
    async with running(Who, **jwks_settings(url)) as server:
        rejected = await refusal(server, f"/ws?jwt={mint('RS256', kid='k1')}")
        health = await exchange(server, plain("GET", "/health"))
    assert rejected.status_code == 503
    assert body_of(rejected)["errorCode"] == "JWKS_UNAVAILABLE"
    assert header(rejected, "retry-after") == "5"
    assert health[0] == 200


async def test_a_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    keys = [jwk("RS256", "rsa-1"), jwk("EdDSA", "ed-1"), jwk("ES256", "ec-1")]
    path.write_text(json.dumps({"keys": keys}))
    async with running(Who, **jwks_settings(str(path))) as server:
        assert (await who(server, f"/ws?jwt={mint('RS256', kid='rsa-1')}"))["user"] == "alice"
        assert (await who(server, f"/ws?jwt={mint('EdDSA', kid='ed-1')}"))["user"] == "alice"
        # ES256 is not pinned: its key was left out, and its algorithm is refused first
        assert await reason_of(server, mint("ES256", kid="ec-1")) == "jwt_algorithm_not_allowed"
        assert await reason_of(server, mint("RS256", kid="nope")) == "jwt_unknown_kid"
        # without a kid, a JWKS of several keys cannot say which one
        assert await reason_of(server, mint("RS256")) == "jwt_unknown_kid"
        # a key of the right algorithm that did not sign it
        forged = mint("RS256", kid="rsa-1", name="attacker")
        assert await reason_of(server, forged) == "jwt_bad_signature"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("not json", "is not JSON"),
        ('{"keys": 1}', "is not a JWKS document"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}', "holds no key for RS256"),
    ],
)
def test_a_jwks_file_without_usable_keys_stops_start_up(
    tmp_path: Path, document: str, problem: str
) -> None:
    from riverside_trio import Config, ConfigError, Server

    path = tmp_path / "jwks.json"
    path.write_text(document)
    with pytest.raises(ConfigError, match=problem) as info:
        Server(Who, Config(jwt_jwks=str(path), jwt_algorithms=["RS256"]))
    assert info.value.setting == "jwt_jwks"
