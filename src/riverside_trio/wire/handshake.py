"""The rules of the opening handshake and of our HTTP responses, with no I/O.

RFC 6455 section 4.2: what makes an upgrade request valid, the ``Sec-WebSocket-Accept``
value, and the bytes of every response the front door sends (``101``, and the errors that
end a connection). The front door (``server/_frontdoor.py``) reads and writes; this module
only decides and formats, so it is tested (and fuzzed) without sockets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from http import HTTPStatus

from .._values import Headers

__all__ = [
    "accept_value",
    "build_headers",
    "has_body",
    "is_ws_path",
    "response",
    "subprotocols",
    "switching_protocols",
    "tokens",
    "trim",
    "valid_key",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Header names, and the values of headers that repeat from client to client, are shared
# between requests instead of held once per connection. The table is fixed at import: a
# client cannot add to it (no process-wide cache that a client can fill).
_KNOWN = [
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "origin",
    "user-agent",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "pragma",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-real-ip",
    "content-length",
    "transfer-encoding",
    "websocket",
    "Upgrade",
    "upgrade",
    "Upgrade, Keep-Alive",
    "keep-alive, Upgrade",
    "13",
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",
    "no-cache",
    "gzip, deflate",
    "gzip, deflate, br",
    "gzip, deflate, br, zstd",
]
_INTERNED: dict[bytes, str] = {s.encode("latin-1"): s for s in _KNOWN}


def _text(raw: bytes) -> str:
    text = _INTERNED.get(raw)
    return text if text is not None else raw.decode("latin-1")


def build_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """:class:`Headers` from h11's ``(name, value)`` pairs (names already lower-cased)."""
    return Headers(flat=[x for k, v in raw for x in (_text(k), _text(v))])


def is_ws_path(pattern: str, path: str) -> bool:
    """``Config.path`` is one path, or a prefix ending in ``*`` (``/*``: every path)."""
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


_OWS = " \t"


def trim(value: str) -> str:
    """``value`` without leading and trailing SP and HTAB, HTTP's optional whitespace.

    Not ``str.strip()``, which also drops characters such as ``\\x85`` and ``\\xa0`` that
    a header value may carry (decoded as latin-1) and that make a token another token.
    """
    return value.strip(_OWS)


def _items(values: list[str]) -> list[str]:
    """The non-empty, trimmed items of comma-separated header values."""
    return [item for v in values for raw in v.split(",") if (item := trim(raw))]


def tokens(headers: Headers, name: str) -> list[str]:
    """The comma-separated tokens of every ``name`` header, trimmed and lower-cased."""
    return [t.lower() for t in _items(headers.get_all(name))]


def subprotocols(headers: Headers) -> tuple[str, ...]:
    """The subprotocols offered in every ``Sec-WebSocket-Protocol`` header, in order."""
    return tuple(_items(headers.get_all("sec-websocket-protocol")))


def has_body(headers: Headers) -> bool:
    """Whether a request announces a body: any ``Transfer-Encoding``, or a
    ``Content-Length`` other than 0 (an upgrade request must not carry one)."""
    if headers.get_all("transfer-encoding"):
        return True
    return any(trim(v).lstrip("0") for v in headers.get_all("content-length"))


def valid_key(key: str) -> bool:
    """A ``Sec-WebSocket-Key`` must be 16 bytes in base64."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def accept_value(key: str) -> bytes:
    """The ``Sec-WebSocket-Accept`` answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest())


def switching_protocols(key: str, subprotocol: str | None, extensions: str | None) -> bytes:
    """The whole ``101 Switching Protocols`` response."""
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept_value(key),
    ]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1"))
    if extensions is not None:
        lines.append(b"Sec-WebSocket-Extensions: " + extensions.encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def response(
    status: int,
    body: bytes | str = b"",
    headers: Sequence[tuple[str, str]] = (),
    content_type: str = "text/plain; charset=utf-8",
    head: bool = False,
) -> bytes:
    """A whole HTTP/1.1 response that ends the connection.

    Raises:
        ValueError: a header name or value would break the response (CR, LF, ':' in a name).
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    extra = []
    for name, value in headers:
        if not name or any(c in name for c in "\r\n: ") or any(c in value for c in "\r\n"):
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        lower = name.lower()
        if lower == "content-type":
            content_type = value  # the caller's replaces the default
        elif lower not in ("content-length", "connection", "transfer-encoding"):
            extra.append(f"{name}: {value}")  # framing headers are ours alone
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Server: riverside-trio",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *extra,
    ]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head else out + body


_CLOSE = b"\r\nConnection: close\r\n"


def keep_alive(data: bytes) -> bytes:
    """A :func:`response` that keeps the connection open: ``Connection: keep-alive`` in
    place of ``Connection: close`` (its fifth line: nothing before it can hold the text)."""
    return data.replace(_CLOSE, b"\r\nConnection: keep-alive\r\n", 1)
