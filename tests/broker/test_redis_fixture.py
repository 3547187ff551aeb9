"""The test Redis is ours: a port another redis-server answers on is never shared."""

from __future__ import annotations

import pytest

from tests._redis import PortTaken, RedisServer


def test_a_port_served_by_someone_elses_redis_is_refused_or_replaced() -> None:
    with RedisServer() as theirs:
        with pytest.raises(PortTaken):
            RedisServer(port=theirs.port).start()  # a fixed port: refused, loudly
        ours = RedisServer()
        ours.port = theirs.port  # as if free_port() had raced with the other suite
        with ours:
            assert ours.port != theirs.port
