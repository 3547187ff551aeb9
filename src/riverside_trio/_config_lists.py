"""The settings that are lists, validated: ``allowed_origins`` and ``trusted_proxies``.

Each check returns the normalised tuple or raises a :class:`~riverside_trio.errors.ConfigError`
naming the setting and the entry that is wrong.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["check_networks", "check_origins"]


def check_origins(name: str, value: object) -> tuple[str, ...]:
    """A non-empty list of exact ``scheme://host[:port]`` origins, lower-cased."""
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
        parts = urlsplit(origin)
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
        ):
            raise ConfigError(
                name,
                f"{origin!r} is not an origin: expected exactly 'scheme://host[:port]' "
                "with scheme http or https and no path, e.g. 'https://example.com:8443'",
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
