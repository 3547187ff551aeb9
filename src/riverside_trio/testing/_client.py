"""A test's client: the Trio client with timeouts on every wait and assertions that read
well in a test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ..client import Client
from ..errors import ConnectionClosed, RiversideError
from ..handler import Headers
from ._time import settle

__all__ = ["Rejected", "TestClient"]

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


class Rejected(RiversideError):
    """The server refused the WebSocket upgrade (``authenticate`` raised ``AuthError``, a
    limit, a wrong path or origin).

    Attributes:
        status: the HTTP status of the answer (401, 403, 404, 503, ...).
        headers: its headers.
        body: its body.
    """

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        super().__init__(f"the server refused the upgrade with status {status}")
        self.status = status
        self.headers = headers
        self.body = body


class TestClient:
    """A client connected to a :class:`TestServer`; made by ``server.connect()``.

    Every wait is bounded by ``timeout`` seconds of the run's clock (the server's
    ``timeout`` unless ``connect`` was given one) and raises :class:`trio.TooSlowError`
    past it. Anything else is on :attr:`client`, the :class:`~riverside_trio.Client` it wraps.

    Attributes:
        client: the Trio client (``on_request``, ``on_signal``, ``session``, ...).
        timeout: the bound on each wait, in seconds.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, client: Client, *, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    async def send(self, obj: Any) -> None:
        """Send a plain message. A checkpoint.

        Raises:
            ConnectionClosed: the connection is over.
        """
        await self.client.send(obj)

    async def receive(self, *, timeout: float | None = None) -> Any:
        """The next plain message from the server. A checkpoint.

        Raises:
            trio.TooSlowError: nothing arrived within ``timeout`` (this client's when None).
            ConnectionClosed: the server closed the connection and nothing is left; its
                ``code`` and ``reason`` say how.
        """
        timeout = self.timeout if timeout is None else timeout
        with trio.move_on_after(timeout):
            return await self.client.receive()
        raise trio.TooSlowError(f"no message from the server within {timeout} s")

    async def receive_all(self) -> list[Any]:
        """Every plain message that has arrived once all tasks have run (see
        :meth:`expect_nothing`); an empty list when none did. A checkpoint."""
        await settle()
        received = []
        while True:
            try:
                received.append(self.client.receive_nowait())
            except trio.WouldBlock:
                return received

    async def expect_nothing(self) -> None:
        """Let every task run until all wait, then check that no plain message arrived.
        A checkpoint.

        Reliable over in-memory streams, where the server's side is a task of this run;
        over TCP a message still in the kernel may be missed.

        Raises:
            AssertionError: a message arrived (it is in the message).
        """
        await settle()
        try:
            msg = self.client.receive_nowait()
        except trio.WouldBlock:
            return
        raise AssertionError(f"expected no message from the server, got {msg!r}")

    async def request(self, name: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Make the request ``name`` and return the reply's payload. A checkpoint.

        Raises:
            RequestError: the server answered with an error reply (``code``, ``message``).
            RequestTimeout: no reply within ``timeout`` (this client's when None).
            ConnectionClosed: the connection ended before the reply.
        """
        return await self.client.request(
            name, payload, timeout=self.timeout if timeout is None else timeout
        )

    async def signal(self, name: str, payload: Any = None) -> None:
        """Send the signal ``name`` (one way). A checkpoint.

        Raises:
            ConnectionClosed: the connection is over.
        """
        await self.client.signal(name, payload)

    def on_request(self, name: str) -> Callable[[H], H]:
        """Decorate ``async def fn(payload) -> reply`` to answer the server's requests
        named ``name`` (see :meth:`Client.on_request <riverside_trio.Client.on_request>`)."""
        return self.client.on_request(name)

    def on_signal(self, name: str) -> Callable[[H], H]:
        """Decorate ``async def fn(payload)`` to receive the server's signals named ``name``."""
        return self.client.on_signal(name)

    async def wait_closed(self, *, timeout: float | None = None) -> ConnectionClosed:
        """Wait until the server closes the connection; return its ``code`` and ``reason``
        (as a :class:`~riverside_trio.ConnectionClosed`). A checkpoint.

        Raises:
            trio.TooSlowError: still open after ``timeout`` (this client's when None).
        """
        timeout = self.timeout if timeout is None else timeout
        with trio.move_on_after(timeout):
            return await self.client.wait_closed()
        raise trio.TooSlowError(f"the connection was still open after {timeout} s")

    async def aclose(self) -> None:
        """Close the connection (1000). A checkpoint; leaving ``connect``'s block does it."""
        await self.client.aclose()
