"""What the ``riverside`` pytest fixture hands a test (usable without pytest too)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from ..config import Config
from ..handler import Handler
from ._server import TestServer, Transport, open_test_server
from ._time import advance, settle, wait_until

__all__ = ["Riverside"]


class Riverside:
    """Serve handlers in a test: ``async with riverside.serve(Handler) as server``.

    The ``riverside`` fixture is ``Riverside()``. Override the fixture to change the
    defaults of every test in a directory::

        @pytest.fixture
        def riverside():
            return Riverside(transport="tcp", idle_timeout=None)

    Args:
        transport: the default transport of :meth:`serve` (``"memory"`` or ``"tcp"``).
        timeout: the default bound, in seconds, on every wait of the clients.
        settings: default settings of every server (each ``serve`` can override them).
    """

    def __init__(
        self, *, transport: Transport = "memory", timeout: float = 10.0, **settings: Any
    ) -> None:
        self.transport: Transport = transport
        self.timeout = timeout
        self.settings = settings

    def serve(
        self,
        handler: Handler | type[Handler],
        *,
        config: Config | None = None,
        transport: Transport | None = None,
        timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **settings: Any,
    ) -> AbstractAsyncContextManager[TestServer]:
        """Serve ``handler`` (a class or an instance) for the duration of the block.

        See :func:`open_test_server`: ``settings`` go on top of ``config`` and of this
        object's defaults.
        """
        return open_test_server(
            handler,
            config=config,
            transport=self.transport if transport is None else transport,
            timeout=self.timeout if timeout is None else timeout,
            ssl_context=ssl_context,
            **{**self.settings, **settings},
        )

    async def settle(self) -> None:
        """Let every task run until all wait (see :func:`settle`). A checkpoint."""
        await settle()

    async def advance(self, seconds: float, *, step: float | None = None) -> None:
        """Move the MockClock on and settle (see :func:`advance`). A checkpoint."""
        await advance(seconds, step=step)

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float | None = None
    ) -> None:
        """Wait until ``predicate()`` holds (see :func:`wait_until`). A checkpoint."""
        await wait_until(predicate, timeout=self.timeout if timeout is None else timeout)
