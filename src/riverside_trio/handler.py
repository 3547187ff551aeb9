"""The Handler base class and the values that pass through its callbacks.

A server runs one Handler instance. For every client it calls, in order and never two at
once for the same connection:

1. ``authenticate(req)`` before the 101 response: return :class:`Accept` or raise
   :class:`~riverside_trio.AuthError` to refuse with an HTTP status;
2. ``init(conn)`` once the connection is open;
3. ``handle_message(msg, conn)`` for every decoded message, and ``handle_info(info, conn)``
   for everything posted with :meth:`Connection.send_info`;
4. ``terminate(reason, conn)`` exactly once when the connection ends, shielded from
   cancellation and time-boxed by ``Config.terminate_timeout``.

Per-connection state lives in ``conn.state`` (``Accept.state``, a dict by default), so a
handler needs no locks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ._values import Accept as Accept
from ._values import AuthRequest as AuthRequest
from ._values import ControlFrame as ControlFrame
from ._values import Headers as Headers
from ._values import HTTPRequest as HTTPRequest
from ._values import HTTPResponse as HTTPResponse
from ._values import TaskFailed as TaskFailed
from ._values import TaskResult as TaskResult
from ._values import TerminateReason as TerminateReason
from .auth._base import authenticate_default
from .codecs import Codec, JSONCodec

if TYPE_CHECKING:
    from .server._connection import Connection

__all__ = [
    "Accept",
    "AuthRequest",
    "ControlFrame",
    "HTTPRequest",
    "HTTPResponse",
    "Handler",
    "Headers",
    "TaskFailed",
    "TaskResult",
    "TerminateReason",
]


class Handler:
    """Subclass and override the callbacks you need. Every callback is optional.

    Attributes:
        codec: how messages are decoded and encoded (JSON by default).
    """

    codec: ClassVar[Codec] = JSONCodec()

    async def authenticate(self, req: AuthRequest) -> Accept:
        """Decide who the client is before the upgrade completes.

        The default uses the authenticators the settings configure: with a JWT key (see
        the README's "JWT") a valid token is required, and gives the user (``sub``),
        session (``sid``) and channels; with none configured it accepts everyone with a
        random user id and session id. An override can call
        ``await super().authenticate(req)`` to use them and then decide more.

        Raise :class:`~riverside_trio.AuthError` to refuse with an HTTP status; any other
        exception, or a return value that is not :class:`Accept`, refuses with 500 and is
        logged. It runs within ``authenticate_timeout``; if the client disconnects or the
        server shuts down meanwhile, it is cancelled.
        """
        return await authenticate_default(req)

    async def init(self, conn: Connection) -> None:
        """The connection is open. An exception here closes it with 1011 ``init_failed``."""

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        """One decoded message from the client. An exception closes with 1011."""

    async def handle_info(self, info: Any, conn: Connection) -> None:
        """Something posted to this connection with :meth:`Connection.send_info`."""

    async def handle_control(self, frame: ControlFrame, conn: Connection) -> None:
        """A ping or pong from the client, after the automatic pong. Called only when
        overridden, so a handler that does not care pays nothing."""

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        """The connection ended; runs exactly once, shielded, within ``terminate_timeout``."""

    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        """Answer a plain HTTP request on a path of your own; None means 404."""
        return None
