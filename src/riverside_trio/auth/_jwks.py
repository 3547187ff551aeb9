"""The public keys of a JWKS document (RFC 7517), by ``kid``: from a file, or from a URL
fetched in a worker thread (never on the event loop), cached and refreshed.

The cache of a URL:

- it is fetched when a token first needs it, and again once it is older than
  ``jwt_jwks_refresh`` seconds (a token then waits for the fetch; a failed fetch keeps
  the keys it had);
- a token whose ``kid`` is not in it makes one fetch (a key rotated in at the issuer),
  unless the last fetch began less than ``jwt_jwks_min_refresh`` seconds ago: tokens with
  made-up kids cannot make the server hammer the issuer;
- concurrent tokens share one fetch; a fetch reads at most 1 MiB and gives up after
  ``FETCH_TIMEOUT`` seconds (the waiting request is bounded by ``authenticate_timeout``).

Keys whose ``use`` is not ``sig``, whose algorithm (``alg``, or the one their type implies)
is not pinned in ``jwt_algorithms``, or that do not parse, are left out.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import structlog
import trio

from ..errors import ConfigError

__all__ = ["FETCH_TIMEOUT", "KeySet", "KeysUnavailable", "parse_jwks"]

log = structlog.get_logger("riverside_trio.auth")

FETCH_TIMEOUT = 10.0  # seconds for one fetch of a JWKS URL
MAX_JWKS_BYTES = 1 << 20
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

# (algorithm, key) by kid; the key is what jwt.decode takes.
Keys = dict[str | None, tuple[str, Any]]


class KeysUnavailable(Exception):
    """The JWKS URL has never been fetched successfully: no key to check a token with."""


def parse_jwks(data: bytes, algorithms: tuple[str, ...], where: str) -> Keys:
    """The usable keys of a JWKS document.

    Raises:
        ValueError: not a JWKS document, or no key in it is usable (the message says why).
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'{where} is not a JWKS document: expected {{"keys": [...]}}')
    from jwt import PyJWK  # imported when a JWKS is configured (see _jwt._pyjwt)
    from jwt.exceptions import PyJWKError

    keys: Keys = {}
    skipped: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        try:
            jwk = PyJWK(entry)
        except (PyJWKError, ValueError, TypeError, KeyError) as exc:
            skipped.append(f"{kid!r}: {exc}")
            continue
        if jwk.algorithm_name not in algorithms:
            skipped.append(f"{kid!r}: {jwk.algorithm_name} is not in jwt_algorithms")
            continue
        keys[kid if isinstance(kid, str) else None] = (jwk.algorithm_name, jwk.key)
    if not keys:
        why = "; ".join(skipped) if skipped else "it lists no signing key"
        raise ValueError(f"{where} holds no key for {', '.join(algorithms)}: {why}")
    if skipped:
        log.warning("jwks_keys_skipped", source=where, skipped=skipped)
    return keys


def _fetch(url: str) -> bytes:
    """GET ``url`` (in a worker thread): its body, at most MAX_JWKS_BYTES.

    Raises:
        OSError: the fetch failed, or the body is too large.
    """
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        response = urllib.request.urlopen(request, timeout=FETCH_TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        raise OSError(f"HTTP {exc.code} from the JWKS URL") from None
    with response:
        data: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(data) > MAX_JWKS_BYTES:
        raise OSError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    return data


class KeySet:
    """The keys of ``jwt_jwks``: a file read once, or a URL's cache."""

    def __init__(
        self,
        source: str,
        algorithms: tuple[str, ...],
        *,
        refresh: float,
        min_refresh: float,
    ) -> None:
        """Read a file source now.

        Raises:
            ConfigError: the file cannot be read or holds no usable key (``jwt_jwks``).
        """
        self.source = source
        self.algorithms = algorithms
        self.refresh = refresh
        self.min_refresh = min_refresh
        self.is_url = source.lower().startswith(("http://", "https://"))
        host = urllib.parse.urlsplit(source).hostname or ""
        if source.lower().startswith("http://") and host not in _LOOPBACK:
            log.warning(
                "jwks_over_plain_http",
                url=source,
                hint="anyone on the path can swap the keys: use https://",
            )
        self.fetches = 0  # fetches begun (a URL), for tests and logs
        self._keys: Keys | None = None
        self._fetched_at = -float("inf")  # when the keys held were fetched
        self._tried_at = -float("inf")  # when the last fetch began
        self._fetching: trio.Event | None = None
        if not self.is_url:
            try:
                with open(source, "rb") as file:
                    data = file.read(MAX_JWKS_BYTES + 1)
            except OSError as exc:
                raise ConfigError(
                    "jwt_jwks", f"cannot read {source}: {exc.strerror or exc}"
                ) from None
            try:
                self._keys = parse_jwks(data, algorithms, source)
            except ValueError as exc:
                raise ConfigError("jwt_jwks", str(exc)) from None

    async def lookup(self, kid: str | None) -> tuple[str, Any] | None:
        """The ``(algorithm, key)`` of ``kid`` (None: the only key), fetching the URL when
        the cache is stale or lacks ``kid`` (see the module's rules). A checkpoint when
        it fetches; cancelling it abandons the fetch's thread, which ends by itself.

        Raises:
            KeysUnavailable: a URL that has never been fetched successfully.
        """
        if self.is_url and trio.current_time() - self._fetched_at >= self.refresh:
            await self._refresh()
        found = self._find(kid)
        if found is None and self.is_url and self._keys is not None:
            await self._refresh()  # a key rotated in? (rate-limited)
            found = self._find(kid)
        if found is None and self._keys is None:
            raise KeysUnavailable(self.source)
        return found

    def _find(self, kid: str | None) -> tuple[str, Any] | None:
        keys = self._keys or {}
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        return keys.get(kid)

    async def _refresh(self) -> None:
        """Fetch the URL unless a fetch began less than ``min_refresh`` seconds ago; join
        the fetch under way if there is one."""
        if self._fetching is not None:
            await self._fetching.wait()
            return
        now = trio.current_time()
        if now - self._tried_at < self.min_refresh:
            return
        self._tried_at = now
        self.fetches += 1
        done = self._fetching = trio.Event()
        try:
            data = await trio.to_thread.run_sync(_fetch, self.source, abandon_on_cancel=True)
            self._keys = parse_jwks(data, self.algorithms, self.source)
            self._fetched_at = trio.current_time()
            log.debug("jwks_fetched", url=self.source, keys=len(self._keys))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log.warning("jwks_fetch_failed", url=self.source, error=str(exc))
        finally:
            self._fetching = None
            done.set()
