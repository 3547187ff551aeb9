"""Admission: which sockets may wait for their WebSocket handshake, and for how long.

The rules, all of them here:

- A socket holds one *pending slot* from the moment it is accepted until it becomes a
  WebSocket connection (our ``101`` was sent) or is closed: while its request head, a TLS
  handshake, ``authenticate`` or a plain HTTP answer are under way.
- At most ``max_pending_handshakes`` slots exist, and one client address holds at most
  ``max_pending_per_address`` of them. IPv6 addresses count by their /64 (one host usually
  owns a whole /64); an IPv4-mapped IPv6 address counts as its IPv4 address.
- A socket beyond either cap is closed at once, with nothing written, and counted by
  reason: ``pending_global`` or ``pending_per_address``.
- A socket from a trusted proxy (``trusted_proxies``) meets only the global cap when it is
  accepted: every client behind the proxy shares its address. Once its request head names
  the client (``X-Forwarded-For``), the slot is charged to that client's address, under the
  same per-address cap (over it: ``503``).
- Each slot carries its deadline: the request head (and a TLS handshake, where there is
  one) must arrive within ``handshake_timeout`` of the accept.
- A socket kept alive after a plain HTTP answer (``_keepalive.py``) keeps its slot while
  it waits, at most ``http_keepalive_timeout``, for its next request; a trusted proxy's
  is charged anew to the client each request names.
- Nothing here grows with what clients send: the per-address table holds only addresses
  with a slot now, at most ``max_pending_handshakes`` of them.

``X-Forwarded-For`` is read only when the socket's peer is a trusted proxy; the client is
the right-most address that is not itself a trusted proxy (proxies append the address they
saw, so everything left of the first untrusted hop may be forged by the client).
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import Iterable, Sequence

import trio

from ..config import Config

__all__ = ["Admission", "Slot", "TrustedProxies", "address_key"]

_OWS = " \t"  # HTTP's optional whitespace: SP and HTAB, nothing else (not str.strip())
_MAPPED = bytes(10) + b"\xff\xff"  # the first 12 bytes of an IPv4-mapped IPv6 address


def _packed(text: str) -> bytes | None:
    """The 4 or 16 bytes of an IP address (an IPv4-mapped IPv6 address as its IPv4
    address, an IPv6 zone dropped); None if ``text`` is not one. About a microsecond."""
    try:
        if ":" not in text:
            return socket.inet_pton(socket.AF_INET, text)
        packed = socket.inet_pton(socket.AF_INET6, text.partition("%")[0])
    except (OSError, ValueError):  # not an address; NUL or non-ASCII characters
        return None
    return packed[12:] if packed[:12] == _MAPPED else packed


def _text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def address_key(host: str) -> str:
    """The per-address cap's key of a peer: IPv4 as it is, IPv6 as its /64 network.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is its IPv4 address; a host that
    is not an IP address (a stream's peer) is its own key.
    """
    if ":" not in host:
        return host  # IPv4 (the fast path: no parsing), or not an address at all
    packed = _packed(host)
    if packed is None:
        return host
    if len(packed) == 4:
        return _text(packed)
    return _text(packed[:8] + bytes(8)) + "/64"


def _hop_address(hop: str) -> bytes | None:
    """The address of one ``X-Forwarded-For`` entry: ``192.0.2.1``, ``192.0.2.1:443``,
    ``2001:db8::1``, ``[2001:db8::1]`` or ``[2001:db8::1]:443``; None if it is none."""
    if hop.startswith("["):
        end = hop.find("]")
        if end == -1 or (hop[end + 1 :] and not hop[end + 1 :].startswith(":")):
            return None
        return _packed(hop[1:end])
    if hop.count(":") == 1:  # IPv4 with a port
        hop, _, port = hop.partition(":")
        if not port.isdigit():
            return None
    return _packed(hop)


class TrustedProxies:
    """The ``trusted_proxies`` networks, and how ``X-Forwarded-For`` is read behind them."""

    __slots__ = ("_networks",)

    def __init__(self, entries: Iterable[str]) -> None:
        networks = [ipaddress.ip_network(entry) for entry in entries]
        # (address length in bytes, network, mask) as integers: a match is one AND.
        self._networks: tuple[tuple[int, int, int], ...] = tuple(
            (net.max_prefixlen // 8, int(net.network_address), int(net.netmask)) for net in networks
        )

    def __bool__(self) -> bool:
        return bool(self._networks)

    def _trusts(self, packed: bytes) -> bool:
        size, n = len(packed), int.from_bytes(packed, "big")
        return any(size == s and n & mask == net for s, net, mask in self._networks)

    def trusts(self, host: str) -> bool:
        """Whether the socket peer ``host`` is a trusted proxy."""
        if not self._networks:
            return False
        packed = _packed(host)
        return packed is not None and self._trusts(packed)

    def client_address(self, values: Sequence[str]) -> str | None:
        """The client's address from every ``X-Forwarded-For`` value, in the order received.

        Walking from the right, trusted proxies are skipped; the first other entry is the
        client. When every entry is a trusted proxy, the left-most one is (the client is
        inside a trusted network). None when there is no entry, or when the entry that
        would be the client is not an IP address (nothing to trust).
        """
        hops = [h.strip(_OWS) for value in values for h in value.split(",")]
        packed: bytes | None = None
        for hop in reversed(hops):
            if not hop:
                continue
            packed = _hop_address(hop)
            if packed is None:
                return None
            if not self._trusts(packed):
                return _text(packed)
        return None if packed is None else _text(packed)


class Slot:
    """One socket's pending slot: released when it becomes a WebSocket or is closed."""

    __slots__ = ("_admission", "deadline", "key", "trusted")

    def __init__(self, admission: Admission, key: str | None, trusted: bool, deadline: float):
        self._admission: Admission | None = admission
        self.key = key
        """The address the slot is charged to (None: a trusted proxy's, before its head)."""
        self.trusted = trusted
        """The socket's peer is a trusted proxy."""
        self.deadline = deadline
        """When the request head (and TLS handshake) must have arrived, in Trio time."""

    def charge(self, client: str) -> bool:
        """Charge a trusted proxy's slot to the ``client`` its request head names.

        Returns False (and counts a ``pending_per_address`` refusal) when that address
        already holds ``max_pending_per_address`` slots.
        """
        admission = self._admission
        if admission is None or self.key is not None:
            return True
        key = address_key(client)
        if not admission._take(key):
            return False
        self.key = key
        return True

    def recharge(self) -> None:
        """A trusted proxy's socket starts its next request (HTTP keep-alive): the slot is
        no longer charged to the client the last one named, until :meth:`charge`."""
        admission = self._admission
        if admission is not None and self.trusted and self.key is not None:
            admission._drop(self.key)
            self.key = None

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._give_back(self.key)


class Admission:
    """The pending slots of one server (see the module's rules)."""

    __slots__ = (
        "_by_address",
        "_per_address",
        "_timeout",
        "max_pending",
        "pending",
        "proxies",
        "refused",
    )

    def __init__(self, config: Config, refused: Counter[str]) -> None:
        """``refused``: the metrics' counter of refused sockets, by reason."""
        self.max_pending = config.max_pending_handshakes
        self._per_address = config.max_pending_per_address
        self._timeout = config.handshake_timeout
        self.proxies = TrustedProxies(config.trusted_proxies)
        self.refused = refused
        self.pending = 0
        """Sockets holding a slot now."""
        self._by_address: dict[str, int] = {}

    def admit(self, host: str) -> Slot | None:
        """A slot for a socket just accepted from ``host``; None (counted) when over a cap."""
        if self.pending >= self.max_pending:
            self.refused["pending_global"] += 1
            return None
        trusted = self.proxies.trusts(host) if self.proxies else False
        key = None if trusted else address_key(host)
        if key is not None and not self._take(key):
            return None
        self.pending += 1
        return Slot(self, key, trusted, trio.current_time() + self._timeout)

    def _take(self, key: str) -> bool:
        n = self._by_address.get(key, 0)
        if n >= self._per_address:
            self.refused["pending_per_address"] += 1
            return False
        self._by_address[key] = n + 1
        return True

    def _give_back(self, key: str | None) -> None:
        self.pending -= 1
        if key is not None:
            self._drop(key)

    def _drop(self, key: str) -> None:
        n = self._by_address[key] - 1
        if n:
            self._by_address[key] = n
        else:
            del self._by_address[key]

    @property
    def addresses(self) -> int:
        """How many addresses hold a slot now (the per-address table's size)."""
        return len(self._by_address)
