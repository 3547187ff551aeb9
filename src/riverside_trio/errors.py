"""Exceptions raised by riverside-trio.

The hierarchy::

    RiversideError
    ├── AuthError            raised by Handler.authenticate; status, headers, body
    ├── ProtocolError        the peer broke RFC 6455; carries a close code
    ├── ConnectionClosed     use of a connection after it closed; code, reason
    ├── CodecError           a codec could not encode or decode a message
    ├── DeliveryError        a delivery could not be made
    │   └── NameInUseError   a unique name is registered by another connection
    ├── BrokerError          the message broker failed
    ├── RequestError         a request failed: code, message (an error reply)
    │   ├── RequestTimeout   no reply within the timeout (code "timeout")
    │   └── SessionError     a session could not be created, restored or closed
    ├── ConfigError          a setting has a wrong value (names the setting)
    └── CloseConnection      raised by handlers to close their connection on purpose

API misuse raises ``TypeError``, ``ValueError`` or ``RuntimeError`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AuthError",
    "BrokerError",
    "CloseConnection",
    "CodecError",
    "ConfigError",
    "ConnectionClosed",
    "DeliveryError",
    "NameInUseError",
    "ProtocolError",
    "RequestError",
    "RequestTimeout",
    "RiversideError",
    "SessionError",
    "SessionStoreError",
]


class RiversideError(Exception):
    """Base class of every exception riverside-trio raises on purpose."""


class AuthError(RiversideError):
    """Refuse a WebSocket upgrade from :meth:`Handler.authenticate`.

    The client gets an HTTP response with ``status``, ``headers`` and ``body`` instead of
    ``101 Switching Protocols``; no connection is created.

    Args:
        status: HTTP status code, 400 to 599 (401 unauthenticated, 403 forbidden, ...).
        headers: Extra response headers as ``(name, value)`` pairs.
        body: Response body; a ``str`` is sent as UTF-8 text.
        reason: A short fixed word saying why (``jwt_expired``), counted in the metrics'
            ``riverside_auth_refused_total{reason}``; empty: counted as ``handler``.
    """

    def __init__(
        self,
        status: int = 401,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | str = b"",
        *,
        reason: str = "",
    ) -> None:
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(
                f"AuthError status must be an HTTP error status 400-599, got {status!r}"
            )
        self.status = status
        self.headers = [(str(k), str(v)) for k, v in headers]
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.reason = str(reason)
        super().__init__(status, self.body.decode("utf-8", "replace"))

    @classmethod
    def basic(cls, realm: str, body: bytes | str = b"") -> AuthError:
        """401 asking for HTTP Basic credentials (``WWW-Authenticate: Basic realm="..."``)."""
        return cls(401, [("WWW-Authenticate", f'Basic realm="{_quote(realm)}"')], body)

    @classmethod
    def bearer(
        cls,
        realm: str,
        error: str | None = "invalid_token",
        description: str | None = None,
        *,
        status: int = 401,
        body: bytes | str = b"",
        reason: str = "",
    ) -> AuthError:
        """A Bearer challenge as RFC 6750 section 3 writes it.

        ``WWW-Authenticate: Bearer realm="api", error="invalid_token"``; ``error=None`` gives
        the bare challenge for a request that carried no token.
        """
        parts = [f'realm="{_quote(realm)}"']
        if error is not None:
            parts.append(f'error="{_quote(error)}"')
        if description is not None:
            parts.append(f'error_description="{_quote(description)}"')
        return cls(
            status, [("WWW-Authenticate", "Bearer " + ", ".join(parts))], body, reason=reason
        )


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n"):
        raise ValueError("header values cannot contain line breaks")
    return value.replace("\\", "\\\\").replace('"', '\\"')


class ProtocolError(RiversideError):
    """The peer broke RFC 6455. ``code`` is the close code sent to it (1002, 1007, 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(code, reason)


class ConnectionClosed(RiversideError):
    """The connection is closed; ``code`` and ``reason`` say how (``code`` None: no close frame)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(code, reason)


class CodecError(RiversideError):
    """A codec could not encode an outgoing or decode an incoming message."""


class DeliveryError(RiversideError):
    """A delivery could not be made."""


class NameInUseError(DeliveryError):
    """``register_name`` found the name held by another connection. ``name`` is it."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"the name {name!r} is registered by another connection")


class BrokerError(RiversideError):
    """The message broker failed."""


class RequestError(RiversideError):
    """A request failed: the error reply's ``code`` and ``message``.

    Raise it from a request handler to answer with an error reply (the client's
    ``request()`` raises it with the same code and message); ``request()`` on a
    :class:`~riverside_trio.Connection` or a client raises it when the peer answered with an
    error reply.

    Args:
        code: 1 to 255 printable ASCII characters, e.g. ``"not_found"``. The codes the
            library itself sends are listed in :class:`~riverside_trio.ErrorCode`.
        message: free text for people (UTF-8).
    """

    def __init__(self, code: str, message: str = "") -> None:
        if (
            not isinstance(code, str)
            or not 1 <= len(code) <= 255
            or not all(32 <= ord(c) <= 126 for c in code)
        ):
            raise ValueError(f"an error code is 1-255 printable ASCII characters, got {code!r}")
        self.code = code
        self.message = str(message)
        super().__init__(code, self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


class RequestTimeout(RequestError):
    """No reply came within the request's timeout (code ``"timeout"``)."""

    def __init__(self, message: str = "no reply within the timeout") -> None:
        super().__init__("timeout", message)


class SessionError(RequestError):
    """A session could not be created, restored or closed; ``code`` says why
    (``sessions_disabled``, ``session_exists``, ``session_not_found``,
    ``max_session_connections``, ``session_store_unavailable``). Raised in a request
    handler, it becomes that error reply."""


class SessionStoreError(RiversideError):
    """A :class:`~riverside_trio.SessionStore` cannot reach where it keeps sessions (Redis
    is down, say). Stores raise it; the client gets the error reply
    ``session_store_unavailable`` (any other exception of a store is a bug of the store:
    logged, answered ``internal_error``)."""


class ConfigError(RiversideError, ValueError):
    """A setting has a wrong value. ``setting`` names it."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")


class CloseConnection(RiversideError):
    """Raise from a handler callback to close this connection with ``code`` and ``reason``.

    Args:
        code: A close code a server may send: 1000-1003, 1007-1009, 1011-1013 or
            3000-4999 (1010 is for clients only).
        reason: Up to 123 bytes of UTF-8 text.
    """

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(code, reason)
