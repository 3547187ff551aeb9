"""A Redis for the whole session (each test uses a key prefix of its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .._redis import RedisServer


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server
