"""permessage-deflate (RFC 7692): negotiation, the shared compressor, per-connection inflate.

Decisions:

- Off unless ``Config.permessage_deflate``; then the first offer we can honour is accepted.
- The server never takes over its compression context (``server_no_context_takeover`` in
  every answer): one compressor serves the whole server, each message is compressed once
  and ends with a full flush, so a delivery to N clients compresses and frames once.
- Offers that limit ``server_max_window_bits`` below 15, or carry parameters we do not
  know, are declined (the next offer is tried; none left: no extension).
- ``client_no_context_takeover`` is echoed when offered; the connection then inflates each
  message with a fresh inflater and keeps none between messages.
- Inflating is capped by ``max_message_size`` (``max_length``): a deflate bomb gets 1009
  after at most that many bytes, never more memory. Corrupt data gets 1007.
- Messages under ``MIN_COMPRESS`` bytes are sent uncompressed (RSV1 clear), as RFC 7692
  allows: compressing them costs more than it saves.
"""

from __future__ import annotations

import zlib

from ..errors import ProtocolError

__all__ = ["MIN_COMPRESS", "Compressor", "Inflater", "negotiate"]

MIN_COMPRESS = 128
_TAIL = b"\x00\x00\xff\xff"
_KNOWN = frozenset(
    {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
)


def negotiate(header_values: list[str]) -> tuple[str, bool] | None:
    """Pick an offer from the ``Sec-WebSocket-Extensions`` values.

    Returns the response header value and whether the client resets its context per
    message (``client_no_context_takeover``), or None when no offer can be accepted.
    """
    for value in header_values:
        for offer in value.split(","):
            name, *raw_params = (p.strip(" \t") for p in offer.split(";"))
            if name.lower() != "permessage-deflate":
                continue
            params: dict[str, str | None] = {}
            ok = True
            for raw in raw_params:
                if not raw:
                    continue
                key, sep, val = raw.partition("=")
                key = key.strip(" \t").lower()
                if key not in _KNOWN or key in params:
                    ok = False
                    break
                params[key] = val.strip(" \t").strip('"') if sep else None
            if not ok:
                continue
            server_bits = params.get("server_max_window_bits", "15")
            if server_bits != "15" and "server_max_window_bits" in params:
                continue  # we compress with a 15-bit window for every client
            client_bits = params.get("client_max_window_bits")
            if client_bits is not None and not (
                client_bits.isdigit() and 8 <= int(client_bits) <= 15
            ):
                continue
            for flag in ("server_no_context_takeover", "client_no_context_takeover"):
                if flag in params and params[flag] is not None:
                    ok = False
            if not ok:
                continue
            answer = "permessage-deflate; server_no_context_takeover"
            reset = "client_no_context_takeover" in params
            if reset:
                answer += "; client_no_context_takeover"
            return answer, reset
    return None


class Compressor:
    """The server's one compressor: each message compressed on its own (full flush)."""

    def __init__(self, level: int = 6) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, -15)

    def compress(self, payload: bytes) -> bytes:
        """The message's compressed payload, without the final ``00 00 ff ff``."""
        data = self._c.compress(payload) + self._c.flush(zlib.Z_FULL_FLUSH)
        return data[:-4] if data.endswith(_TAIL) else data


class Inflater:
    """Inflates one connection's compressed messages, capped at ``max_size`` bytes."""

    __slots__ = ("_d", "_max", "_reset")

    def __init__(self, max_size: int, reset: bool) -> None:
        self._max = max_size
        self._reset = reset
        self._d: zlib._Decompress | None = None

    def inflate(self, payload: bytes) -> bytes:
        """Decompress one message.

        Raises:
            ProtocolError: 1009 past ``max_size`` bytes; 1007 for data that is not deflate.
        """
        d = self._d
        if d is None:
            d = zlib.decompressobj(-15)
            if not self._reset:
                self._d = d  # the client keeps its context: so must we
        try:
            data = d.decompress(payload + _TAIL, self._max + 1)
        except zlib.error as exc:
            self._d = None
            raise ProtocolError(1007, "invalid compressed data") from exc
        if len(data) > self._max or d.unconsumed_tail:
            self._d = None
            raise ProtocolError(1009, "message too big")
        if d.eof:  # the client ended its deflate stream (a final block): start afresh
            self._d = None
        return data
