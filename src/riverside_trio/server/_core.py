"""What every connection of one server shares: settings, handler, codec, registry, hub,
metrics, the cork, the memory budget and the server's nursery."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
import trio
from trio.lowlevel import ParkingLot

from .._values import Accept, AuthRequest, ControlFrame, HTTPRequest, HTTPResponse, TerminateReason
from ..auth import OriginRules, configured_authenticators, may_wait
from ..codecs import RawBinaryCodec, RawCodec, RawTextCodec, check_codec
from ..config import Config
from ..delivery.hub import Hub
from ..delivery.registry import Registry
from ..metrics import Metrics
from ..wire.frames import Cork
from ._admission import Admission
from ._budget import MemoryBudget, Sheddable
from ._poller import Poller

if TYPE_CHECKING:
    from ..api._app import ControlAPI
    from ..delivery.broker.redis import RedisBroker

__all__ = ["Callbacks", "Core"]


class Callbacks(Protocol):
    """What the server calls on a :class:`~riverside_trio.Handler` (``conn`` is a
    Connection; a small protocol, so that the server's core does not import the handler)."""

    async def authenticate(self, req: AuthRequest) -> Accept: ...
    async def init(self, conn: Any) -> None: ...
    async def handle_message(self, msg: Any, conn: Any) -> None: ...
    async def handle_info(self, info: Any, conn: Any) -> None: ...
    async def handle_control(self, frame: ControlFrame, conn: Any) -> None: ...
    async def terminate(self, reason: TerminateReason, conn: Any) -> None: ...
    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None: ...


log = structlog.get_logger("riverside_trio.delivery")

_PASSTHROUGH: dict[type, frozenset[type]] = {
    RawCodec: frozenset({str, bytes}),
    RawTextCodec: frozenset({str}),
    RawBinaryCodec: frozenset({bytes}),
}

LOG_INTERVAL = 1.0  # seconds: repeated warnings are logged at most this often, with a count


class Core:
    """The state of one server that its connections reach through ``conn._core``."""

    def __init__(self, handler: Callbacks, config: Config, *, overridden: frozenset[str]) -> None:
        """``overridden``: the callbacks the handler's class defines itself (some cost
        nothing when left alone: ``authenticate``, ``handle_control``, ``terminate``)."""
        self.handler = handler
        self.config = config
        self.codec = check_codec(getattr(handler, "codec", None))
        self.accepts_text = "text" in self.codec.accepts
        self.accepts_binary = "binary" in self.codec.accepts
        # Objects the codec passes through unchanged: conn.send frames them without a call.
        self.passthrough: frozenset[type] = _PASSTHROUGH.get(type(self.codec), frozenset())
        self.registry = registry = Registry()
        self.metrics = Metrics(
            registry.__len__,
            (lambda: sum(c._outbox.dropped_frames for c in registry.connections))
            if config.outbox_policy == "drop_oldest"
            else None,
            pending=lambda: self.admission.pending,
            queued=lambda: self.budget.used,
        )
        # Sockets before their handshake: the caps, the deadlines, the trusted proxies.
        self.admission = Admission(config, self.metrics.refused_sockets)
        # The node's memory budget for queued outgoing bytes (max_queued_bytes): outboxes,
        # writers and mailboxes charge it; its task sheds the connections holding most.
        # (The registry knows its members by a small protocol; they are Connections.)
        members = cast("Callable[[], Iterable[Sheddable]]", lambda: registry.connections)
        self.memory = MemoryBudget(config.max_queued_bytes, members, self.metrics, self.warn)
        self.budget = self.memory.budget
        self.hub = Hub(registry, self.codec, self.metrics, compress=config.permessage_deflate)
        self.shutting_down = False
        self.handshakes = 0  # upgrades between 'accepted' and 'registered'
        # The idle waits of kept-alive HTTP connections (_keepalive.py): a shutdown ends them.
        self.idle_http: set[trio.CancelScope] = set()
        self.server: object = None  # the Server (Connection.server), once it runs
        # The server's nursery: connections start their side tasks (writer, handle_info,
        # child tasks) in it, each under a cancel scope of the connection's own.
        self.nursery: trio.Nursery | None = None
        # Direct writes wait until the reader parks or the flusher runs (_flusher.py), so
        # a burst of deliveries leaves in one send per client.
        self.cork = Cork()
        # The edge-triggered readiness of the fast path (Server.serve makes it on Linux
        # unless poller = "trio"; None: readers use Trio's wait_readable).
        self.poller: Poller | None = None
        self.close_on_overflow = config.outbox_policy == "close"
        self.custom_authenticate = "authenticate" in overridden
        # Client authentication: the ready-made authenticators the settings ask for (a
        # Handler without authenticate tries them), and the Origin rules (None: any).
        self.authenticators = tuple(configured_authenticators(config))
        # authenticate needs watching (a hang-up, authenticate_timeout) only when it can wait
        self.watch_authenticate = self.custom_authenticate or may_wait(self.authenticators)
        self.origins = (
            None
            if config.allowed_origins is None
            else OriginRules(config.allowed_origins, allow_missing=config.allow_missing_origin)
        )
        self.wants_control = "handle_control" in overridden
        self.has_terminate = "terminate" in overridden
        # Request/reply (RPCHandler): takes envelopes off the read path; requests queued
        # or running, which a graceful shutdown lets finish within drain_timeout.
        self.intercept: Any = getattr(handler, "_rpc_intercept", None)
        self.rpc_running = 0
        self.rpc_idle = ParkingLot()
        self._log_at: dict[str, float] = {}
        self._log_suppressed: dict[str, int] = {}
        self.node_id = secrets.token_hex(8)  # 16 hex digits, unique in the cluster
        self.started_at = time.time()
        self._connection_ids = itertools.count(1)
        # Several nodes (broker_url): the Redis broker, plugged into the registry and hub.
        self.broker: RedisBroker | None = None
        # The server's session store for RPCHandlers without one of their own (None: each
        # makes a MemoryStore); with broker_url, the Redis store (see session_store).
        self.session_store: Any = None
        # The HTTP control API and its claims (api_key set; made by the Server).
        self.api: ControlAPI | None = None

    def connection_id(self) -> str:
        """A new connection id, unique in the cluster: ``<node id>-<hex counter>``."""
        return f"{self.node_id}-{next(self._connection_ids):x}"

    def warn(self, event: str, **fields: Any) -> None:
        """Log a warning at most once per LOG_INTERVAL per event, with how many were held."""
        now = trio.current_time()
        if now - self._log_at.get(event, -LOG_INTERVAL) < LOG_INTERVAL:
            self._log_suppressed[event] = self._log_suppressed.get(event, 0) + 1
            return
        self._log_at[event] = now
        suppressed = self._log_suppressed.pop(event, 0)
        log.warning(event, suppressed_since_last=suppressed, **fields)
