"""The OpenAPI document's ERROR_GETTING_CLAIM (503) of the routes that edit or list claims:
answered when the claim store fails while Redis answers the rest (a real Redis whose claims
index key for the target has the wrong type), each answer matching the document."""

from __future__ import annotations

import secrets

import pytest

from .._helpers import running
from .._http import api
from .._redis import RedisServer, command, needs_redis
from ..test_openapi import CLAIMS_FAIL, PATHS, SETTINGS, Echo, conforms
from ._nodes import all_settled

pytestmark = [needs_redis, pytest.mark.redis]


@pytest.mark.parametrize("name", sorted(name for name, _ in CLAIMS_FAIL))
async def test_a_failing_claim_store_is_503_error_getting_claim(
    name: str, redis: RedisServer
) -> None:
    prefix = "t" + secrets.token_hex(4)
    command(redis.port, "SET", f"{prefix}:{{claims}}:u:u", "not a set")
    async with running(Echo, **SETTINGS, broker_url=redis.url, broker_prefix=prefix) as server:
        await all_settled(server)
        method = "GET" if name == "info" else "POST"
        reply = await api(server.port, method, PATHS[name].replace("{channel}", "c"), {"user": "u"})
        assert reply.status == 503, reply.body
        assert reply.json["errorCode"] == "ERROR_GETTING_CLAIM"
        assert reply.headers["retry-after"]
        conforms(name, reply)
