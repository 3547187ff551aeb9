"""Origin rules for browser clients: which ``Origin`` may open a WebSocket.

A browser sends ``Origin: scheme://host[:port]`` with every WebSocket upgrade; a page from
another site can open a WebSocket to this server with the user's cookies (cross-site
WebSocket hijacking), so a server that trusts cookies lists the origins of its own pages.
The rules (``Config.allowed_origins``):

- an exact origin ``https://app.example.com`` matches itself only (scheme, host and port;
  ``https://app.example.com:443`` is another origin string and does not match);
- a wildcard ``https://*.example.com`` matches every subdomain of ``example.com``, at any
  depth (``https://a.example.com``, ``https://a.b.example.com``), with the same scheme and
  port; never ``https://example.com`` itself, ``https://evilexample.com`` or
  ``https://example.com.evil.com``;
- ``Origin`` is compared lowercased, and must be one well-formed origin: ``null``, a path,
  credentials or two ``Origin`` headers are a mismatch;
- a request without ``Origin`` is not from a browser: admitted when
  ``allow_missing_origin`` is set, else refused.

Refusals are 403, decided before ``authenticate`` runs, and counted by reason
(``origin_mismatch``, ``origin_missing``).
"""

from __future__ import annotations

import re

__all__ = ["OriginRules"]

# One origin as a browser serialises it: scheme, host (name, IPv4, or [IPv6]), port.
_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
_LABELS = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


class OriginRules:
    """The allowed origins of ``Config.allowed_origins``, and what to do without one."""

    __slots__ = ("_exact", "_wildcards", "allow_missing")

    def __init__(self, origins: tuple[str, ...], *, allow_missing: bool) -> None:
        """``origins`` as ``Config`` validated them (lowercased)."""
        self._exact = frozenset(o for o in origins if "://*." not in o)
        # (scheme, ".suffix", port) of each wildcard
        self._wildcards: list[tuple[str, str, str | None]] = []
        for pattern in origins:
            if "://*." in pattern:
                scheme, _, rest = pattern.partition("://*.")
                host, _, port = rest.partition(":")
                self._wildcards.append((scheme, "." + host, port or None))
        self.allow_missing = allow_missing

    def refusal(self, origins: list[str]) -> str | None:
        """Why the ``Origin`` headers ``origins`` are refused (``origin_missing``,
        ``origin_mismatch``), or None when they are allowed."""
        if not origins:
            return None if self.allow_missing else "origin_missing"
        if len(origins) != 1:
            return "origin_mismatch"
        return None if self.allows(origins[0]) else "origin_mismatch"

    def allows(self, origin: str) -> bool:
        """Whether one ``Origin`` value matches an exact origin or a wildcard."""
        origin = origin.strip(" \t").lower()
        if origin in self._exact:
            return True
        match = _ORIGIN.fullmatch(origin)
        if match is None:
            return False
        scheme, host, port = match.groups()
        for w_scheme, suffix, w_port in self._wildcards:
            if (
                scheme == w_scheme
                and port == w_port
                and host.endswith(suffix)
                and _LABELS.fullmatch(host[: -len(suffix)]) is not None
            ):
                return True
        return False
