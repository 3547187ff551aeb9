"""Server settings: the :class:`Config` dataclass and :func:`load_config`.

Settings come from four layers, each overriding the one before::

    defaults  <  TOML file  <  RIVERSIDE_* environment variables  <  overrides (CLI flags)

Every value is validated when the ``Config`` is built, so a bad setting stops the server at
start-up with a :class:`~riverside_trio.errors.ConfigError` naming it, never later.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from ._config_auth import check_jwt_settings
from ._config_lists import (
    check_algorithms,
    check_channels,
    check_keys,
    check_networks,
    check_origins,
)
from ._config_rules import (
    OFF_WORDS,
    Rule,
    describe,
    field_docs,
    in_range,
    is_path,
    parse_text,
    sourced_error,
    split_optional,
    suggest,
)
from ._config_rules import setting as _setting
from .delivery.broker._url import parse_broker_url
from .errors import ConfigError

__all__ = ["ENV_PREFIX", "Config", "load_config"]

log = structlog.get_logger("riverside_trio.config")

ENV_PREFIX = "RIVERSIDE_"
"""Environment variables named ``RIVERSIDE_<FIELD_UPPER>`` set the field of that name."""

# RIVERSIDE_* variables that are not settings: read elsewhere, never reported as unknown.
_OTHER_ENV_VARS = frozenset(
    {
        "RIVERSIDE_CONFIG",  # path of the TOML file, when load_config gets no toml_path
        "RIVERSIDE_NO_EXTENSIONS",  # frames.py: use the pure-Python frame codec
        "RIVERSIDE_BUILD_EXTENSIONS",  # setup.py: require (1) or skip (0) the compiled module
        "RIVERSIDE_REQUIRE_EXTENSIONS",  # tests: fail unless the compiled module loaded
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """Settings of one server. Build it with keywords, or with :func:`load_config`.

    Values are validated on construction; a wrong one raises ``ConfigError`` naming the field.
    Whole numbers given for float fields are stored as ``float``, lists of origins as tuples.

    Attributes:
        host: Interface to listen on; "0.0.0.0" or "::" listens on all of them.
        port: TCP port, 0 to 65535; 0 picks any free port (the bound one is logged).
        path: URL path of the WebSocket endpoint; starts with "/". A trailing "*" makes it
            a prefix: "/rooms/*" upgrades every path under /rooms/, "/*" every path.
        reuse_port: Set SO_REUSEPORT so several processes can share the port.
        backlog: Length of the kernel's queue of not yet accepted connections, >= 1.
        trusted_proxies: Addresses or CIDR networks of your reverse proxies (e.g.
            "10.0.0.0/8"). Only a request from one of them has its X-Forwarded-For read: the
            client is its right-most address that is not a trusted proxy. Empty: never read.
        tls_certfile: PEM file of the server's certificate (and chain): serve wss:// with
            TLS; None ("off") serves plain ws://.
        tls_keyfile: PEM file of the certificate's private key; None ("off") when the key is
            in tls_certfile.
        tls_ca_file: PEM file of the CAs that sign client certificates: clients must then
            present one (mutual TLS); None ("off") asks for none.
        max_connections: Most open WebSocket connections, >= 1; beyond it new upgrades
            are answered with HTTP 503.
        max_message_size: Largest incoming message in bytes, >= 1; a bigger one closes the
            connection with 1009.
        transmission_limit: Messages a client may send per transmission_period; more close
            the connection with 1008. 0 turns the limit off.
        transmission_period: Length in seconds of the transmission_limit window, > 0.
        outbox_size: Frames queued for one client before outbox_policy applies, >= 1.
        outbox_bytes: Bytes queued for one client before outbox_policy applies, >= 1 (the
            writer's batch of at most 64 KiB comes on top).
        outbox_policy: What a full outbox or mailbox does: "close" the connection (1008
            slow_consumer), "drop_oldest" queued messages to make room for the new one, or
            "drop_newest" (the new message is not queued). Every drop is counted in the
            metrics.
        mailbox_size: Infos queued for one connection's handle_info before outbox_policy
            applies, >= 1.
        max_queued_bytes: Bytes queued for sending on the whole node (every outbox, the
            batches being written and the mailboxes, at 256 bytes an info), >= 1; past it
            the connections holding the most are closed first (1008 memory_budget). None
            ("off") turns the budget off.
        control_frame_limit: Pings and pongs a client may send per second (a token bucket
            of that many, refilled over a second); more close the connection with 1008
            too_many_control_frames. 0 turns the limit off.
        max_header_size: Largest HTTP request head in bytes, >= 1024; a bigger one gets 431.
        max_headers: Most header fields in an HTTP request head, >= 1; more get 431.
        max_pending_handshakes: Most sockets that are not (yet) WebSocket connections: still
            sending their request head, in authenticate, or being answered, >= 1. Beyond it
            a new socket is closed at once, with nothing written.
        max_pending_per_address: Most such sockets from one client address (IPv6: one /64),
            >= 1. Beyond it a new socket from that address is closed at once. A trusted
            proxy's sockets count against the client its X-Forwarded-For names, once read.
        handshake_timeout: Seconds a client has, from the moment its socket is accepted, to
            complete a TLS handshake (with TLS) and send its HTTP request head, > 0; then 408
            (or, before TLS is up, a close).
        http_keepalive_timeout: Seconds a connection that was answered by the health check,
            the metrics or the control API waits for its next request (HTTP/1.1
            keep-alive), >= 0; 0 turns keep-alive off (every answer closes its connection).
            It keeps its pending slot meanwhile (max_pending_handshakes, per address).
        http_keepalive_requests: Most requests one kept-alive HTTP connection serves, >= 1;
            the last answer says "Connection: close".
        authenticate_timeout: Seconds Handler.authenticate may take, > 0; then the client
            gets 504 and its slot is freed.
        idle_timeout: Seconds without a message from the client before it is closed
            (1000 idle_timeout), > 0; None ("off") turns it off.
        max_connection_age: Seconds after which a connection is closed (1000 over_age),
            > 0; None ("off") turns it off.
        ping_interval: Seconds between keepalive pings, > 0; None ("off") turns pings off.
        ping_timeout: Seconds to wait for the pong before closing with 1011, > 0.
        close_timeout: Seconds to wait for the client's close frame after ours, > 0.
        drain_timeout: On shutdown, seconds to wait for clients to close after the 1001
            close frame before cancelling their tasks, >= 0.
        terminate_timeout: Seconds Handler.terminate may run before it is cancelled, > 0.
        permessage_deflate: Negotiate permessage-deflate (RFC 7692) with clients that offer it.
            Messages are compressed once per delivery (the server keeps no compression
            context); a compressed message may not inflate past max_message_size (1009).
        invalid_message: What to do with a message the codec cannot decode: "ignore" it
            (counted in the metrics) or "close" the connection (1003 or 1007).
        poller: How plain-TCP connections wait for data: "auto" (on Linux an edge-triggered
            epoll of the server's own, each socket registered once; elsewhere Trio's
            wait_readable) or "trio" (always Trio's wait_readable).
        allowed_origins: Origins allowed to open a WebSocket (browsers send Origin), each
            "scheme://host[:port]" or a wildcard subdomain "https://*.example.com" (any
            subdomain, not example.com itself); compared lowercased. Any other Origin gets
            403 before authenticate runs. None ("off") allows any Origin.
        allow_missing_origin: With allowed_origins set, admit requests without an Origin
            header (not from a browser: servers, CLI tools); false refuses them with 403.
        jwt_secret: HMAC secret that signs the JSON Web Tokens clients connect with (see
            "JWT"), at least as many bytes as the hash (HS256: 32, HS384: 48, HS512: 64).
            Turns JWT authentication on; None ("off"): no secret. Never logged; set it in
            the environment or the TOML file rather than as a flag, which ps shows.
        jwt_public_key_file: PEM file of the public key (or certificate) that checks the
            tokens' RS256, ES256 or EdDSA signatures. Turns JWT authentication on.
        jwt_jwks: A JWKS document of public keys, chosen by each token's "kid": a file, or
            an http(s) URL fetched off the event loop, cached for jwt_jwks_refresh seconds
            and fetched again (at most every jwt_jwks_min_refresh seconds) when a token
            names a kid it does not hold. Turns JWT authentication on.
        jwt_algorithms: The signature algorithms accepted, pinned (never read from the
            token): HS256, HS384, HS512 with jwt_secret (default HS256); RS256, ES256, EdDSA
            with a public key (default: the key's own; required with jwt_jwks). A list
            never mixes HMAC and public-key algorithms.
        jwt_audience: The "aud" a token must carry (checked, and required, when set).
        jwt_issuer: The "iss" a token must carry (checked, and required, when set).
        jwt_require_exp: Refuse tokens without an "exp" (expiry) claim.
        jwt_leeway: Seconds of clock skew allowed when checking "exp", "nbf" and "iat", >= 0.
        jwt_max_length: Longest token accepted, in bytes, >= 64; a longer one is refused
            (401) before it is decoded.
        jwt_jwks_refresh: Seconds a JWKS fetched from a URL is used before it is fetched
            again, > 0.
        jwt_jwks_min_refresh: Fewest seconds between two fetches of the JWKS URL (an unknown
            kid, a failed fetch), > 0.
        default_channels: Channels every connection joins when it opens, before init
            (after the channels of its token or claim).
        health_path: URL path answering plain HTTP health checks; starts with "/".
        metrics_path: URL path of the Prometheus metrics; None ("off") turns the endpoint off.
        status_token: Turns on the status page (a live view of connections, users, channels,
            message rates, drops and the cluster's nodes) at status_path, for visitors who
            give this token as ?token= or "Authorization: Bearer"; others get 401. None
            ("off", the default): no status page.
        status_path: URL path of the status page; its data is at this path plus ".json".
        request_concurrency: Requests of one connection an RPCHandler runs at once, >= 1.
        request_timeout: Seconds a request may run, then it is answered "timeout", > 0.
        sessions: Allow restorable sessions; false refuses them with "sessions_disabled".
        max_session_connections: Most connections holding one session (in the whole cluster
            with the Redis store), >= 0 (0: no limit).
        session_expiry: Seconds the store keeps a session no connection holds, > 0.
        session_store: Where sessions live: "auto" (in Redis with broker_url, so they
            restore on any node; else in this process), "memory" (this process) or "redis"
            (needs broker_url). A handler's own session_store attribute wins.
        log_format: Log output of the CLI: "console" (for people) or "json" (one object a line).
        log_level: Lowest level logged by the CLI: "debug", "info", "warning" or "error".
        log_connections: Log every connection's open and close at info level (peer, user,
            session, path; close code, reason kind and duration).
        broker_url: Redis that joins this node to others (see "Running several nodes"):
            "redis://host:6379/0", "rediss://..." (TLS) or
            "redis+cluster://host:port,host:port" (a Redis Cluster); None ("off"): this
            process alone, no Redis.
        broker_prefix: Prefix of every Redis key and channel of the cluster; nodes with the
            same broker_url and prefix form one cluster.
        broker_ttl: Seconds after which a node that stopped refreshing its entries (killed)
            vanishes from the cluster view and its unique names are freed, >= 1; each node
            refreshes them every third of it.
        broker_queue_size: Messages queued between this node and Redis, each way, >= 1;
            more are dropped and counted (riverside_broker_dropped_total).
        api_key: Keys of the HTTP control API (see "HTTP control API"), comma-separated:
            several keys for rotation, any one is accepted. None ("off"): no API, and
            clients connect as the handler's authenticate decides.
        api_prefix: URL path under which the control API is served ("/api/send", ...).
        api_claim_duration: Seconds a claim lives when /claim gives no expiration or
            duration, > 0.
        api_max_body: Largest control API request body, bytes, >= 1 (more: 413).
    """

    # network
    host: str = "127.0.0.1"
    port: int = _setting(8000, min=0, max=65535, note="(0 picks a free port)")
    path: str = _setting("/ws", url_path=True)
    reuse_port: bool = False
    backlog: int = _setting(1024, min=1)
    trusted_proxies: tuple[str, ...] = ()

    # TLS (wss://)
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_ca_file: str | None = None

    # limits
    max_connections: int = _setting(10_000, min=1)
    max_message_size: int = _setting(1_048_576, min=1, unit="bytes")
    transmission_limit: int = _setting(50, min=0, note="(0 turns the limit off)")
    transmission_period: float = _setting(2.0, gt=0, unit="seconds")
    outbox_size: int = _setting(256, min=1)
    outbox_bytes: int = _setting(65_536, min=1, unit="bytes")
    outbox_policy: Literal["close", "drop_oldest", "drop_newest"] = "close"
    mailbox_size: int = _setting(100, min=1)
    max_queued_bytes: int | None = _setting(1_610_612_736, min=1, unit="bytes")
    control_frame_limit: int = _setting(10, min=0, note="(0 turns the limit off)")
    max_header_size: int = _setting(16_384, min=1024, unit="bytes")
    max_headers: int = _setting(100, min=1)
    max_pending_handshakes: int = _setting(1024, min=1)
    max_pending_per_address: int = _setting(64, min=1)

    # timeouts (seconds; None = off where allowed)
    handshake_timeout: float = _setting(10.0, gt=0, unit="seconds")
    http_keepalive_timeout: float = _setting(5.0, min=0, unit="seconds")
    http_keepalive_requests: int = _setting(1000, min=1)
    authenticate_timeout: float = _setting(5.0, gt=0, unit="seconds")
    idle_timeout: float | None = _setting(60.0, gt=0, unit="seconds")
    max_connection_age: float | None = _setting(None, gt=0, unit="seconds")
    ping_interval: float | None = _setting(30.0, gt=0, unit="seconds")
    ping_timeout: float = _setting(20.0, gt=0, unit="seconds")
    close_timeout: float = _setting(5.0, gt=0, unit="seconds")
    drain_timeout: float = _setting(10.0, min=0, unit="seconds")
    terminate_timeout: float = _setting(5.0, gt=0, unit="seconds")

    # behaviour
    permessage_deflate: bool = False
    invalid_message: Literal["ignore", "close"] = "ignore"
    poller: Literal["auto", "trio"] = "auto"
    health_path: str = _setting("/health", url_path=True)
    metrics_path: str | None = _setting("/metrics", url_path=True)

    # client authentication: Origin rules, JWT (see "JWT" and "Origin rules" in the README)
    allowed_origins: tuple[str, ...] | None = None
    allow_missing_origin: bool = False
    jwt_secret: str | None = dataclasses.field(default=None, repr=False)
    jwt_public_key_file: str | None = None
    jwt_jwks: str | None = None
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_require_exp: bool = True
    jwt_leeway: float = _setting(0.0, min=0, unit="seconds")
    jwt_max_length: int = _setting(8192, min=64, unit="bytes")
    jwt_jwks_refresh: float = _setting(300.0, gt=0, unit="seconds")
    jwt_jwks_min_refresh: float = _setting(10.0, gt=0, unit="seconds")
    default_channels: tuple[str, ...] = ()

    # the status page
    status_token: str | None = dataclasses.field(default=None, repr=False)
    status_path: str = _setting("/status", url_path=True)

    # request/reply and sessions (RPCHandler)
    request_concurrency: int = _setting(1, min=1)
    request_timeout: float | None = _setting(60.0, gt=0, unit="seconds")
    sessions: bool = True
    max_session_connections: int = _setting(0, min=0, note="(0: no limit)")
    session_expiry: float | None = _setting(86_400.0, gt=0, unit="seconds")
    session_store: Literal["auto", "memory", "redis"] = "auto"

    # logging (used by the CLI)
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_connections: bool = True

    # several nodes (a broker)
    broker_url: str | None = None
    broker_prefix: str = "riverside"
    broker_ttl: float = _setting(15.0, min=1, unit="seconds")
    broker_queue_size: int = _setting(10_000, min=1)

    # the HTTP control API
    api_key: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)
    api_prefix: str = _setting("/api", url_path=True)
    api_claim_duration: float = _setting(60.0, gt=0, unit="seconds")
    api_max_body: int = _setting(1_048_576, min=1, unit="bytes")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = _check(f.name, value)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        if self.tls_certfile is None:
            for name in ("tls_keyfile", "tls_ca_file"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, "needs tls_certfile: set the certificate too")
        check_jwt_settings(
            algorithms=self.jwt_algorithms,
            secret=self.jwt_secret,
            public_key_file=self.jwt_public_key_file,
            jwks=self.jwt_jwks,
            audience=self.jwt_audience,
            issuer=self.jwt_issuer,
        )
        if self.broker_url is not None:
            try:
                parse_broker_url(self.broker_url)
            except ValueError as exc:
                raise ConfigError("broker_url", str(exc)) from None
        if self.session_store == "redis" and self.broker_url is None:
            raise ConfigError("session_store", '"redis" needs broker_url (the Redis to use)')
        if any(c.isspace() or c in "{}" for c in self.broker_prefix):
            raise ConfigError("broker_prefix", "may not contain spaces or braces")
        paths = {"path": self.path, "health_path": self.health_path}
        if self.metrics_path is not None:
            paths["metrics_path"] = self.metrics_path
        if self.api_key is not None:
            paths["api_prefix"] = self.api_prefix.rstrip("/") or "/"
            if paths["api_prefix"] == "/":
                raise ConfigError("api_prefix", "must not be '/': the API needs a path of its own")
        if self.status_token is not None:
            if not self.status_token.strip():
                raise ConfigError("status_token", "is empty: give a secret, or off")
            paths["status_path"] = self.status_path
        seen: dict[str, str] = {}
        for name, value in paths.items():
            if value in seen:
                raise ConfigError(name, f"{value!r} is already the {seen[value]}; use another path")
            seen[value] = name

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied, validated like a new ``Config``.

        Raises:
            ConfigError: a changed value is invalid, or a name is not a setting.
        """
        for name in changes:
            if name not in _field_names():
                raise ConfigError(name, f"not a setting{_suggest(name, _field_names())}")
        return dataclasses.replace(self, **changes)


def load_config(
    *,
    toml_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build a :class:`Config` from defaults, a TOML file, the environment and overrides.

    Later sources win: defaults < TOML < environment < overrides.

    Args:
        toml_path: A TOML file whose top-level keys (or the keys of its ``[riverside]``
            table) are setting names. None reads the file named by ``RIVERSIDE_CONFIG``, if
            that is set, else no file. Optional settings accept the string ``"off"``.
        env: Environment variables, ``os.environ`` when None. ``RIVERSIDE_<NAME>`` sets the
            setting ``<name>``: ``off``/``none`` turns an optional setting off, booleans are
            ``1/0/true/false/yes/no/on/off``, lists (``allowed_origins``,
            ``trusted_proxies``, ``jwt_algorithms``, ``default_channels``) are
            comma-separated. A ``RIVERSIDE_*`` variable that names no setting is logged as
            a warning (with the closest setting's name) and ignored: an application may
            have its own.
        overrides: Setting values that win over everything, e.g. command-line flags.

    Raises:
        ConfigError: a file is missing or malformed, a file key or override names no
            setting (the closest setting is suggested), or a value is invalid; the
            message names the setting and where its value came from.
    """
    return _load(toml_path=toml_path, env=env, overrides=overrides)


# -- loading -------------------------------------------------------------------------------

# A layer maps setting names to (value, where it came from).
_Layer = dict[str, tuple[object, str]]


def _log_unknown_env(var: str, message: str) -> None:
    log.warning("unknown_environment_variable", variable=var, problem=message)


def _load(
    *,
    toml_path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    overrides: Mapping[str, object] | None,
    override_source: Callable[[str], str] = lambda name: "overrides",
    on_unknown_env: Callable[[str, str], None] = _log_unknown_env,
) -> Config:
    """:func:`load_config`, naming each override's source with ``override_source(name)``.

    ``on_unknown_env(variable, message)`` hears of each ``RIVERSIDE_*`` variable that names
    no setting (the default logs a warning).
    """
    env = os.environ if env is None else env
    if toml_path is None and env.get("RIVERSIDE_CONFIG"):
        toml_path = env["RIVERSIDE_CONFIG"]
    layers = [
        _toml_layer(toml_path) if toml_path is not None else {},
        _env_layer(env, on_unknown_env),
    ]
    overrides_layer: _Layer = {}
    for name, value in (overrides or {}).items():
        if name not in _field_names():
            raise ConfigError(name, f"not a setting{_suggest(name, _field_names())}")
        overrides_layer[name] = (value, override_source(name))
    layers.append(overrides_layer)
    return _assemble(layers)


def _assemble(layers: Iterable[_Layer]) -> Config:
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for name, (value, source) in layer.items():
            values[name] = value
            sources[name] = source
    try:
        return Config(**values)  # type: ignore[arg-type]
    except ConfigError as exc:
        if exc.setting not in sources:
            raise
        message = str(exc).removeprefix(f"{exc.setting}: ")
        raise _sourced_error(exc.setting, sources[exc.setting], message) from None


def _toml_layer(path: str | os.PathLike[str]) -> _Layer:
    shown = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {shown}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{shown} is not valid TOML: {exc}") from None
    table = data.pop("riverside", {})
    if not isinstance(table, dict):
        raise ConfigError("config", f"{shown}: 'riverside' must be a table of settings")
    both = sorted(table.keys() & data.keys())
    if both:
        raise ConfigError(both[0], f"set both at the top level and in [riverside] of {shown}")
    layer: _Layer = {}
    for name, value in {**data, **table}.items():
        if name not in _field_names():
            raise ConfigError(name, f"unknown setting in {shown}{_suggest(name, _field_names())}")
        if isinstance(value, str) and value.strip().lower() in _OFF_WORDS and _optional(name):
            value = None
        layer[name] = (value, shown)
    return layer


def _env_layer(env: Mapping[str, str], on_unknown: Callable[[str, str], None]) -> _Layer:
    layer: _Layer = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in _OTHER_ENV_VARS:
            continue
        name = var.removeprefix(ENV_PREFIX).lower()
        if name not in _field_names():
            # An application's own RIVERSIDE_* variable must not stop the server: warn, with
            # the setting it most likely meant (a typo in a real setting is still visible).
            # Compare without the shared prefix, which would make any two names look alike.
            close = difflib.get_close_matches(name, _field_names(), n=1, cutoff=0.75)
            hint = f"; did you mean {ENV_PREFIX + close[0].upper()!r}?" if close else ""
            on_unknown(var, f"not a setting, ignored{hint}")
            continue
        layer[name] = (_parse_text(name, env[var], var), var)
    return layer


# -- validation ----------------------------------------------------------------------------

# The settings that are lists, and the check of each.
_LIST_CHECKS: dict[str, Callable[[str, object], tuple[str, ...]]] = {
    "trusted_proxies": check_networks,
    "allowed_origins": check_origins,
    "jwt_algorithms": check_algorithms,
    "default_channels": check_channels,
    "api_key": check_keys,
}

_split_optional = split_optional
_suggest = suggest
_sourced_error = sourced_error
_OFF_WORDS = OFF_WORDS


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


@functools.cache
def _rules() -> dict[str, Rule]:
    return {f.name: f.metadata.get("rule", Rule()) for f in dataclasses.fields(Config)}


@functools.cache
def _field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Config))


def _optional(name: str) -> bool:
    return _split_optional(_hints()[name])[0]


def _check(name: str, value: object) -> object:
    """Return ``value`` (normalised) if it is valid for ``name``, else raise ConfigError."""
    optional, base = _split_optional(_hints()[name])
    rule = _rules()[name]
    if value is None and optional:
        return None
    if typing.get_origin(base) is tuple:
        return _LIST_CHECKS[name](name, value)
    result = value
    ok = False
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and in_range(value, rule)
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            result = float(value)
            ok = math.isfinite(result) and in_range(result, rule)
    elif typing.get_origin(base) is Literal:
        ok = isinstance(value, str) and value in typing.get_args(base)
    elif base is str:
        ok = isinstance(value, str) and bool(value) and (not rule.url_path or is_path(value))
    if not ok:
        raise ConfigError(name, f"must be {_describe(name)}, got {value!r}")
    return result


def _parse_text(name: str, text: str, source: str) -> object:
    """Parse ``text`` from ``source`` (a variable or a flag) for the setting ``name``."""
    return parse_text(name, text, source, _hints()[name], _rules()[name])


def _describe(name: str) -> str:
    return describe(name, _hints()[name], _rules()[name])


# -- documentation -------------------------------------------------------------------------


@functools.cache
def _field_docs() -> dict[str, str]:
    """The ``Attributes:`` entries of :class:`Config`'s docstring, by field name."""
    return field_docs(Config.__doc__ or "")
