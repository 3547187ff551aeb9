"""``broker_url``: parse and check it, with no I/O.

Three forms::

    redis://[user:password@]host[:port][/db]          one Redis (or Valkey)
    rediss://[user:password@]host[:port][/db]         the same over TLS
    redis+cluster://[user:password@]host:port[,host:port...]   a Redis Cluster (sharded pub/sub)

A ``rediss+cluster://`` form is a Cluster over TLS. A Cluster has no database number.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["BrokerURL", "parse_broker_url"]

_SCHEMES = {
    "redis": (False, False),
    "rediss": (True, False),
    "redis+cluster": (False, True),
    "rediss+cluster": (True, True),
}
DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """A checked ``broker_url``."""

    url: str
    tls: bool
    cluster: bool
    nodes: tuple[tuple[str, int], ...]  # one (host, port), or a Cluster's startup nodes
    db: int
    username: str | None
    password: str | None

    def __str__(self) -> str:
        """The URL without its password, for logs."""
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        user = f"{self.username or ''}:***@" if self.password else ""
        return f"{scheme}://{user}{hosts}" + ("" if self.cluster else f"/{self.db}")


def parse_broker_url(url: str) -> BrokerURL:
    """Check ``url`` and split it into its parts.

    Raises:
        ValueError: the URL is malformed; the message says what is wrong (without the
            password).
    """
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise ValueError(
            "expected redis://host[:port][/db], rediss://... (TLS) or "
            f"redis+cluster://host:port[,host:port...], got a URL with scheme {scheme!r}"
        )
    tls, cluster = _SCHEMES[scheme]
    rest, question, _ = rest.partition("?")
    if question:
        raise ValueError("takes no query string (?...)")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # redis://secret@host: the one-part form is a password, as redis-cli has it
            username, password = None, unquote(user)
    if not netloc:
        raise ValueError("names no host")
    nodes = tuple(_host_port(part) for part in netloc.split(","))
    if len(nodes) > 1 and not cluster:
        raise ValueError("lists several hosts: use redis+cluster:// for a Redis Cluster")
    db = 0
    if path:
        if cluster:
            raise ValueError("a Redis Cluster has no database number: drop the /db part")
        if not path.isdigit():
            raise ValueError(f"database must be a number, got {path!r}")
        db = int(path)
    return BrokerURL(url, tls, cluster, nodes, db, username, password)


def _host_port(part: str) -> tuple[str, int]:
    # urlsplit knows [IPv6]:port and rejects bad ports.
    try:
        split = urlsplit("//" + part)
        port = split.port
    except ValueError:
        raise ValueError(f"{part!r} is not host:port with a port from 1 to 65535") from None
    host = split.hostname
    if not host or split.username is not None:
        raise ValueError(f"{part!r} names no host")
    if port == 0:
        raise ValueError(f"{part!r} is not host:port with a port from 1 to 65535")
    return host, port if port is not None else DEFAULT_PORT
