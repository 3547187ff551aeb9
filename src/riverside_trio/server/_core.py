"""What every connection of one server shares: settings, handler, codec, registry, hub,
metrics, the cork and the server's nursery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio

from ..codecs import check_codec
from ..config import Config
from ..delivery.hub import Hub
from ..delivery.registry import Registry
from ..handler import Handler
from ..metrics import Metrics
from ..wire.frames import Cork

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Core"]

log = structlog.get_logger("riverside_trio.server")

LOG_INTERVAL = 1.0  # seconds: repeated warnings are logged at most this often, with a count


class Core:
    """The state of one server that its connections reach through ``conn._core``."""

    def __init__(self, handler: Handler, config: Config) -> None:
        self.handler = handler
        self.config = config
        self.codec = check_codec(getattr(handler, "codec", None))
        self.accepts_text = "text" in self.codec.accepts
        self.accepts_binary = "binary" in self.codec.accepts
        self.registry = registry = Registry()
        self.metrics = Metrics(
            registry.__len__,
            (lambda: sum(c._outbox.dropped_frames for c in registry.connections))
            if config.outbox_policy == "drop_oldest"
            else None,
        )
        self.hub = Hub(registry, self.codec, self.metrics, compress=config.permessage_deflate)
        self.shutting_down = False
        self.handshakes = 0  # upgrades between 'accepted' and 'registered'
        self.server: Server | None = None
        # The server's nursery: connections start their side tasks (writer, handle_info,
        # child tasks) in it, each under a cancel scope of the connection's own.
        self.nursery: trio.Nursery | None = None
        # Direct writes wait for the end of the task step that made them, so a burst of
        # deliveries leaves in one send per client (Server.serve installs it in Trio).
        self.cork = Cork()
        self.close_on_overflow = config.outbox_policy == "close"
        self.wants_control = type(handler).handle_control is not Handler.handle_control
        self.has_terminate = type(handler).terminate is not Handler.terminate
        self._log_at: dict[str, float] = {}
        self._log_suppressed: dict[str, int] = {}

    def warn(self, event: str, **fields: Any) -> None:
        """Log a warning at most once per LOG_INTERVAL per event, with how many were held."""
        now = trio.current_time()
        if now - self._log_at.get(event, -LOG_INTERVAL) < LOG_INTERVAL:
            self._log_suppressed[event] = self._log_suppressed.get(event, 0) + 1
            return
        self._log_at[event] = now
        suppressed = self._log_suppressed.pop(event, 0)
        log.warning(event, suppressed_since_last=suppressed, **fields)
