"""Origin rules (allowed_origins, allow_missing_origin): exact origins, wildcard subdomains,
requests without Origin; a refusal is 403 before authenticate, counted in /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import websockets.sync.client

from riverside_trio import Server
from riverside_trio.auth import OriginRules

from ._helpers import NO_TIMERS, running, upgrade_request
from .test_http import EchoHandler, exchange
from .test_metrics import labelled, scrape


@asynccontextmanager
async def running_with(**settings: Any) -> AsyncIterator[tuple[Server, EchoHandler]]:
    handler = EchoHandler()
    async with running(handler, **NO_TIMERS, **settings) as server:
        with trio.fail_after(10):
            yield server, handler


ALLOWED = ("https://*.example.com", "https://app.example.org", "http://*.local.test:8080")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://a.example.com", True),
        ("https://a.b.example.com", True),  # any depth
        ("HTTPS://A.Example.COM", True),  # compared lowercased
        ("https://app.example.org", True),
        ("http://x.local.test:8080", True),
        ("https://example.com", False),  # the wildcard's own domain is not a subdomain
        ("https://example.com.evil.com", False),
        ("https://evilexample.com", False),
        ("https://a.evilexample.com", False),
        ("http://a.example.com", False),  # another scheme
        ("https://a.example.com:8443", False),  # another port
        ("http://x.local.test", False),  # the wildcard names port 8080
        ("http://x.local.test:80801", False),
        ("https://.example.com", False),  # an empty label
        ("https://a..example.com", False),
        ("https://a.example.com/", False),  # an origin has no path
        ("https://user@a.example.com", False),
        ("https://a.example.com@evil.com", False),
        ("https://evil.com#.example.com", False),
        ("https://evil.com?.example.com", False),
        ("https://evil.com/.example.com", False),
        ("null", False),
        ("", False),
        ("https://app.example.org.evil.com", False),
        ("https://sub.app.example.org", False),  # an exact origin has no subdomains
    ],
)
def test_origin_rules_match_exact_origins_and_wildcard_subdomains_only(
    origin: str, allowed: bool
) -> None:
    rules = OriginRules(ALLOWED, allow_missing=False)
    assert rules.allows(origin) is allowed
    assert rules.refusal([origin]) == (None if allowed else "origin_mismatch")


def test_origin_rules_refuse_two_origin_headers_and_decide_a_missing_one_by_setting() -> None:
    strict = OriginRules(ALLOWED, allow_missing=False)
    lenient = OriginRules(ALLOWED, allow_missing=True)
    assert strict.refusal([]) == "origin_missing"
    assert lenient.refusal([]) is None
    both = ["https://a.example.com", "https://app.example.org"]
    assert strict.refusal(both) == lenient.refusal(both) == "origin_mismatch"


async def test_a_wildcard_origin_opens_a_websocket_from_the_websockets_client() -> None:
    async with running_with(allowed_origins=list(ALLOWED)) as (server, handler):
        url = server.url

        def talk() -> str:
            with websockets.sync.client.connect(
                url, origin="https://chat.example.com", proxy=None, open_timeout=5
            ) as ws:
                ws.send('"hi"')
                return str(ws.recv(timeout=5))

        assert await trio.to_thread.run_sync(talk) == '"hi"'
        assert handler.auth_calls == 1


async def test_a_mismatched_origin_gets_403_before_authenticate_and_is_counted() -> None:
    async with running_with(allowed_origins=list(ALLOWED)) as (server, handler):
        for origin in ("https://example.com.evil.com", "https://evilexample.com", "null"):
            status, _, body = await exchange(server, upgrade_request(headers={"Origin": origin}))
            assert (status, body) == (403, b"origin not allowed\n")
        status, _, body = await exchange(server, upgrade_request())
        assert (status, body) == (403, b"an Origin header is required\n")
        # the server keeps serving the allowed
        ok = upgrade_request(headers={"Origin": "https://a.example.com"})
        assert (await exchange(server, ok))[0] == 101
        samples = await scrape(server)
    assert handler.auth_calls == 1
    refused = labelled(samples, "riverside_auth_refused_total", "reason")
    assert refused == {"origin_mismatch": 3, "origin_missing": 1}
    assert labelled(samples, "riverside_rejected_connections_total", "status") == {"403": 4}


async def test_allow_missing_origin_admits_clients_that_send_no_origin() -> None:
    settings = {"allowed_origins": list(ALLOWED), "allow_missing_origin": True}
    async with running_with(**settings) as (server, handler):
        assert (await exchange(server, upgrade_request()))[0] == 101
        evil = upgrade_request(headers={"Origin": "https://evil.test"})
        assert (await exchange(server, evil))[0] == 403
    assert handler.auth_calls == 1
