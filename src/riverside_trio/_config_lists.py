"""The settings that are lists, validated: ``allowed_origins``, ``trusted_proxies``,
``jwt_algorithms``, ``default_channels`` and ``api_key``.

Each check returns the normalised tuple or raises a :class:`~riverside_trio.errors.ConfigError`
naming the setting and the entry that is wrong.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "MIN_API_KEY_LENGTH",
    "check_algorithms",
    "check_channels",
    "check_keys",
    "check_networks",
    "check_origins",
]

MIN_API_KEY_LENGTH = 8


def check_origins(name: str, value: object) -> tuple[str, ...]:
    """A non-empty list of ``scheme://host[:port]`` origins, lower-cased.

    A host may start with ``*.`` (``https://*.example.com``): any subdomain of that host,
    at any depth, but not the host itself.
    """
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ConfigError(
            name, f"must be a list of origins like 'https://example.com', or None, got {value!r}"
        )
    if not value:
        raise ConfigError(name, "lists no origin; list at least one, or use None to allow any")
    origins = []
    for origin in value:
        if not isinstance(origin, str):
            raise ConfigError(name, f"origins must be strings, got {origin!r}")
        if origin.strip() == "*":
            raise ConfigError(name, "'*' is not an origin; use None ('off') to allow any")
        wildcard = "://*." in origin
        parts = urlsplit(origin.replace("://*.", "://", 1) if wildcard else origin)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or parts.password is not None
            or parts.path
            or parts.query
            or parts.fragment
            or origin.endswith(("?", "#"))
            or not port_ok
            or "*" in parts.netloc
            or (wildcard and "." not in parts.hostname)
        ):
            raise ConfigError(
                name,
                f"{origin!r} is not an origin: expected exactly 'scheme://host[:port]' "
                "with scheme http or https and no path, e.g. 'https://example.com:8443', "
                "or a wildcard subdomain of a domain, e.g. 'https://*.example.com'",
            )
        origins.append(origin.lower())
    return tuple(origins)


def check_networks(name: str, value: object) -> tuple[str, ...]:
    """A list of IP addresses or CIDR networks, normalised to network strings."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ConfigError(
            name, f"must be a list of addresses or networks like '10.0.0.0/8', got {value!r}"
        )
    networks = []
    for entry in value:
        if not isinstance(entry, str):
            raise ConfigError(name, f"entries must be strings, got {entry!r}")
        try:
            network = ipaddress.ip_network(entry.strip(" \t"))
        except ValueError:
            try:
                loose = ipaddress.ip_network(entry.strip(" \t"), strict=False)
            except ValueError:
                raise ConfigError(
                    name,
                    f"{entry!r} is not an IP address or CIDR network "
                    "(e.g. '10.0.0.1', '10.0.0.0/8', '2001:db8::/32')",
                ) from None
            raise ConfigError(
                name, f"{entry!r} has host bits set; did you mean {str(loose)!r}?"
            ) from None
        networks.append(str(network))
    return tuple(networks)


# The JWT algorithms riverside-trio accepts, by family: a list never mixes the families
# (an HMAC secret and a public key are different kinds of key: mixing them is what makes
# "algorithm confusion" possible).
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")


def check_algorithms(name: str, value: object) -> tuple[str, ...]:
    """A list of JWT algorithm names, all HMAC or all asymmetric (empty: the key's own)."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ConfigError(name, f"must be a list of algorithms like ['RS256'], got {value!r}")
    known = {a.lower(): a for a in (*HMAC_ALGORITHMS, *ASYMMETRIC_ALGORITHMS)}
    algorithms: list[str] = []
    for entry in value:
        if not isinstance(entry, str) or entry.strip().lower() not in known:
            raise ConfigError(
                name,
                f"{entry!r} is not an accepted algorithm; choose from "
                + ", ".join((*HMAC_ALGORITHMS, *ASYMMETRIC_ALGORITHMS))
                + " ('none' is never accepted)",
            )
        algorithm = known[entry.strip().lower()]
        if algorithm not in algorithms:
            algorithms.append(algorithm)
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    if hmac and len(hmac) != len(algorithms):
        raise ConfigError(
            name,
            f"mixes HMAC ({', '.join(hmac)}) and public-key algorithms "
            f"({', '.join(a for a in algorithms if a not in hmac)}); pin one family: a "
            "token could otherwise be signed with the public key as an HMAC secret",
        )
    return tuple(algorithms)


def check_channels(name: str, value: object) -> tuple[str, ...]:
    """A list of channel names: non-empty strings without surrounding spaces."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ConfigError(name, f"must be a list of channel names like ['news'], got {value!r}")
    channels: list[str] = []
    for entry in value:
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(name, f"channel names must be non-empty strings, got {entry!r}")
        if entry.strip() not in channels:
            channels.append(entry.strip())
    return tuple(channels)


def check_keys(name: str, value: object) -> tuple[str, ...]:
    """One key (a str) or a non-empty list of keys: each at least MIN_API_KEY_LENGTH
    visible ASCII characters without commas (they separate keys in a variable or flag).

    The error messages never show a key.
    """
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple):
        raise ConfigError(name, f"must be a key or a list of keys, got a {type(value).__name__}")
    if not value:
        raise ConfigError(name, "lists no key; give at least one, or None ('off') for no API")
    for i, key in enumerate(value, 1):
        if not isinstance(key, str):
            raise ConfigError(name, f"key {i} must be a string, got a {type(key).__name__}")
        if len(key) < MIN_API_KEY_LENGTH:
            raise ConfigError(
                name,
                f"key {i} is shorter than {MIN_API_KEY_LENGTH} characters; use a long random one",
            )
        if not all("!" <= c <= "~" and c != "," for c in key):
            raise ConfigError(
                name, f"key {i} must be visible ASCII characters without spaces or commas"
            )
    return tuple(value)
