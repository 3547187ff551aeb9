"""Run a Handler as a server: listeners, the front door, connections, timers, shutdown.

Embed it in any Trio program with ``nursery.start``::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(riverside_trio.serve, ChatHandler(), Config(port=0))
        print(server.port)        # the bound port
        ...
        server.shutdown()         # graceful: 1001 to every client, then return

or run it from a synchronous ``main`` with :func:`run`, which also turns SIGINT and
SIGTERM into a graceful shutdown (a second signal cancels at once).
"""

from __future__ import annotations

from ._connection import Connection as Connection
from ._server import Server as Server
from ._server import run as run
from ._server import serve as serve

__all__ = ["Connection", "Server", "run", "serve"]
