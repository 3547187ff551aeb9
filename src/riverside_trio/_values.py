"""The values that pass through a Handler's callbacks: the upgrade request and its headers,
what ``authenticate`` returns, why a connection ended, control frames, task outcomes, and
plain HTTP requests and responses. Public through :mod:`riverside_trio`; kept apart from the
Handler class so the connection can use them without importing the handler."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Accept",
    "AuthRequest",
    "ControlFrame",
    "HTTPRequest",
    "HTTPResponse",
    "Headers",
    "TaskFailed",
    "TaskResult",
    "TerminateReason",
    "new_session_id",
]


class Headers(Mapping[str, str]):
    """Read-only, case-insensitive HTTP headers.

    ``headers["x-token"]`` gives the last value of a repeated header, every value is in
    :meth:`get_all`, and ``raw`` has every ``(name, value)`` pair in order with the names
    lower-cased. The pairs are kept as one flat tuple and lookups scan them (a request has
    few), so an idle connection holding its request stays small.
    """

    __slots__ = ("_flat",)

    def __init__(self, raw: Sequence[tuple[str, str]] = (), *, flat: Sequence[str] = ()) -> None:
        if raw:
            flat = [x for k, v in raw for x in (k.lower(), v)]
        self._flat: tuple[str, ...] = tuple(flat)

    @property
    def raw(self) -> tuple[tuple[str, str], ...]:
        """Every ``(name, value)`` pair, in the order received, names lower-cased."""
        f = self._flat
        return tuple(zip(f[::2], f[1::2], strict=True))

    def __getitem__(self, name: str) -> str:
        name = name.lower()
        f = self._flat
        for i in range(len(f) - 2, -1, -2):
            if f[i] == name:
                return f[i + 1]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._flat[::2]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(self._flat[::2]))

    def __len__(self) -> int:
        return len(set(self._flat[::2]))

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in the order received."""
        name = name.lower()
        f = self._flat
        return [f[i + 1] for i in range(0, len(f), 2) if f[i] == name]

    def __repr__(self) -> str:
        return f"Headers({list(self.raw)!r})"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The upgrade request as :meth:`Handler.authenticate` sees it.

    Attributes:
        path: the request path without the query string.
        query: query parameters; for a repeated name the last value wins.
        query_list: every ``(name, value)`` pair in order.
        headers: case-insensitive request headers.
        peer: the client's ``(host, port)`` as the socket sees it.
        forwarded_for: the client's address as your reverse proxy saw it: read from
            ``X-Forwarded-For`` only when ``peer`` is one of ``Config.trusted_proxies``
            (the right-most address there that is not a trusted proxy); None otherwise.
        subprotocols: the subprotocols the client offered, in its order of preference
            (without a token sent as ``riverside.jwt, <token>``: see the README's "JWT").
    """

    path: str
    query: Mapping[str, str]
    query_list: tuple[tuple[str, str], ...]
    headers: Headers
    peer: tuple[str, int]
    forwarded_for: str | None = None
    subprotocols: tuple[str, ...] = ()
    # The server's configured authenticators (JWT, claims), which the default
    # Handler.authenticate tries in order; set by the server.
    _authenticators: tuple[Callable[[AuthRequest], Awaitable[Accept | None]], ...] = field(
        default=(), repr=False, compare=False
    )
    # The node's control API (api_key set), for accept_claim; None without it.
    _api: Any = field(default=None, repr=False, compare=False)

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header (browsers send it), or None."""
        return self.headers.get("origin")

    @property
    def basic(self) -> tuple[str, str] | None:
        """``(user, password)`` from ``Authorization: Basic``, split on the first colon.

        None when the header is absent, not Basic, or not valid base64.
        """
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        value = value.strip(" \t")  # HTTP's whitespace only (str.strip() drops \x85 too)
        if scheme.lower() != "basic" or not value:
            return None
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None

    @property
    def bearer_token(self) -> str | None:
        """The token of ``Authorization: Bearer <token>``, or None."""
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        token = value.strip(" \t")
        return token if scheme.lower() == "bearer" and token else None

    async def accept_claim(self) -> Accept:
        """Accept the client by the claim it names (``?claim=<id>``, made with the control
        API's ``POST /claim``): its user, session and channels. The claim is used up.

        Call it from :meth:`Handler.authenticate`; a handler without its own authenticate
        does this by itself when the control API is on. A checkpoint (with Redis, it waits
        for Redis); cancelled, the claim may or may not have been used.

        Raises:
            AuthError: 401 with dSock's JSON error, code MISSING_AUTHENTICATION (no
                ``claim`` parameter), MISSING_CLAIM (unknown, already used) or
                EXPIRED_CLAIM; 503 ERROR_GETTING_CLAIM when Redis cannot be reached.
            RuntimeError: the control API is off (no ``api_key``): there are no claims.
        """
        if self._api is None:
            raise RuntimeError("claims need the control API: set the api_key setting")
        accept: Accept = await self._api.accept_claim(self)
        return accept


@dataclass(frozen=True, slots=True)
class Accept:
    """Who the client is, returned by :meth:`Handler.authenticate`.

    Attributes:
        user_id: the user; all their connections are reached by ``deliver_user``.
        session_id: this connection's session; random (40 lowercase hex digits) if None.
        state: the initial ``conn.state``; a new empty dict if None.
        subprotocol: the subprotocol to select; must be one the client offered.
        channels: channels the connection joins when it opens, before ``init`` (as a
            token's ``channels`` claim does); ``Config.default_channels`` are joined too.
    """

    user_id: str
    session_id: str | None = None
    state: Any = None
    subprotocol: str | None = None
    channels: Sequence[str] = ()

    def __post_init__(self) -> None:
        if isinstance(self.channels, str) or not all(
            isinstance(c, str) and c for c in self.channels
        ):
            raise TypeError(
                f"Accept.channels must be a list of non-empty str, got {self.channels!r}"
            )
        object.__setattr__(self, "channels", tuple(self.channels))
        if not isinstance(self.user_id, str) or not self.user_id:
            raise TypeError(f"Accept.user_id must be a non-empty str, got {self.user_id!r}")
        if self.session_id is not None and (
            not isinstance(self.session_id, str) or not self.session_id
        ):
            raise TypeError(f"Accept.session_id must be a non-empty str, got {self.session_id!r}")


def new_session_id() -> str:
    """A random session id: 40 lowercase hex digits."""
    return secrets.token_hex(20)


@dataclass(frozen=True, slots=True)
class TerminateReason:
    """Why a connection ended, as :meth:`Handler.terminate` receives it.

    Attributes:
        kind: one of ``stop`` (a handler raised CloseConnection), ``closed``
            (``conn.close()``), ``remote`` (the client closed, or TCP dropped: code 1006),
            ``idle_timeout``, ``over_age``, ``too_many_messages``, ``slow_consumer``,
            ``message_too_big``, ``protocol_error``, ``invalid_message``,
            ``internal_error``, ``init_failed``, ``keepalive_timeout``, ``shutdown``.
        code: the close code sent or received (1006: the TCP connection dropped without
            a close frame).
        reason: the close reason text.
    """

    kind: str
    code: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """A ping or pong from the client, as :meth:`Handler.handle_control` sees it.

    Attributes:
        kind: ``"ping"`` (already answered with a pong carrying the same payload) or
            ``"pong"``.
        payload: the frame's payload, at most 125 bytes.
    """

    kind: Literal["ping", "pong"]
    payload: bytes


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What a task started with :meth:`Connection.start_task` returned (to ``handle_info``)."""

    name: str
    value: Any


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The exception a task started with :meth:`Connection.start_task` raised."""

    name: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """A plain HTTP request to a path the server does not handle itself."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Headers
    peer: tuple[str, int]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """The answer of :meth:`Handler.handle_http`."""

    status: int = 200
    body: bytes | str = b""
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)
    content_type: str = "text/plain; charset=utf-8"
