"""Testing a handler: serve it in a test, connect clients, read what arrives with timeouts,
look inside the server.

With pytest the ``riverside`` fixture (a :class:`Riverside`) is all a test needs; the
plugin that provides it is registered through the ``pytest11`` entry point and stays inert
until a test asks for the fixture::

    async def test_echo(riverside):
        async with riverside.serve(EchoHandler) as server, server.connect() as client:
            await client.send({"hi": 1})
            assert await client.receive() == {"hi": 1}

Without pytest, :func:`open_test_server` is the same thing. Clients reach the server over
in-memory streams by default (works under ``trio.testing.MockClock``, autojumping or not)
or over TCP (``transport="tcp"``: a real socket, a real clock).
"""

from __future__ import annotations

from ._client import Rejected as Rejected
from ._client import TestClient as TestClient
from ._fixture import Riverside as Riverside
from ._server import TestServer as TestServer
from ._server import Transport as Transport
from ._server import open_test_server as open_test_server
from ._time import advance as advance
from ._time import settle as settle
from ._time import wait_until as wait_until

__all__ = [
    "Rejected",
    "Riverside",
    "TestClient",
    "TestServer",
    "Transport",
    "advance",
    "open_test_server",
    "settle",
    "wait_until",
]
