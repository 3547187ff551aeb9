"""What every connection of one server shares: settings, handler, codec, registry, metrics,
and the delivery path (encode once, frame once, fan out without awaiting)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from ._deflate import MIN_COMPRESS, Compressor
from .codecs import check_codec
from .config import Config
from .errors import CodecError
from .frames import OP_BINARY, OP_TEXT, Cork, encode_close, encode_frame, fan_out
from .handler import Channel, Destination, Group, Handler, Name, Session, User
from .metrics import Metrics
from .registry import Registry

if TYPE_CHECKING:
    from ._connection import Connection
    from .server import Server

__all__ = ["Core"]

log = structlog.get_logger("riverside_trio.delivery")

LOG_INTERVAL = 1.0  # seconds: overflow warnings are logged at most this often, with a count


class Core:
    """The state of one server that its connections reach through ``conn._core``."""

    def __init__(self, handler: Handler, config: Config) -> None:
        self.handler = handler
        self.config = config
        self.codec = check_codec(getattr(handler, "codec", None))
        self.accepts_text = "text" in self.codec.accepts
        self.accepts_binary = "binary" in self.codec.accepts
        self.registry = Registry()
        registry = self.registry
        self.metrics = Metrics(
            registry.__len__,
            (lambda: sum(c._outbox.dropped_frames for c in registry.connections))
            if config.outbox_policy == "drop_oldest"
            else None,
        )
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
        self.compressor = Compressor() if config.permessage_deflate else None
        self.deflate_connections = 0  # open connections that negotiated permessage-deflate
        self._log_at: dict[str, float] = {}
        self._log_suppressed: dict[str, int] = {}

    def payload(self, obj: Any) -> tuple[bytes, bool]:
        """Encode ``obj`` with the codec: the payload bytes and whether it is text.

        A ``str`` from the codec goes out as a text frame, ``bytes`` as a binary frame.

        Raises:
            CodecError: the codec refused the object, or returned neither str nor bytes.
        """
        payload = self.codec.encode(obj)
        if isinstance(payload, str):
            try:
                return payload.encode("utf-8"), True
            except UnicodeEncodeError as exc:  # lone surrogates are not UTF-8
                raise CodecError(f"text is not valid UTF-8: {exc}") from None
        if isinstance(payload, bytes | bytearray | memoryview):
            return bytes(payload), False
        raise CodecError(
            f"codec {type(self.codec).__name__} returned {type(payload).__name__}, "
            "expected str or bytes"
        )

    def encode(self, obj: Any) -> tuple[bytes, bool]:
        """Encode and frame ``obj`` once, for any number of recipients: (frame, is text)."""
        data, text = self.payload(obj)
        return encode_frame(OP_TEXT if text else OP_BINARY, data), text

    def compressed_frame(self, data: bytes, text: bool) -> bytes:
        """The frame for permessage-deflate clients: compressed (RSV1) unless tiny."""
        opcode = OP_TEXT if text else OP_BINARY
        if len(data) < MIN_COMPRESS or self.compressor is None:
            return encode_frame(opcode, data)
        return encode_frame(opcode, self.compressor.compress(data), True, True)

    def deliver(self, group: dict[Any, Connection], obj: Any) -> int:
        """Deliver ``obj`` to every connection of ``group``; return how many it reached.

        The object is encoded before anything is sent, so an encoding error reaches the
        caller with nothing delivered. Never awaits: connections whose outbox is full are
        handled by ``outbox_policy`` after the loop.
        """
        if self.deflate_connections:
            return self._deliver_mixed(group, obj)
        frame, text = self.encode(obj)
        if not group:
            return 0
        full: list[Any] = []
        n = fan_out(group, frame, full)
        self._count(n, text, full, group)
        return n

    def _deliver_mixed(self, group: dict[Any, Connection], obj: Any) -> int:
        """Some clients use permessage-deflate: one plain and one compressed frame, each made
        once, each fanned out to its own recipients."""
        data, text = self.payload(obj)
        if not group:
            return 0
        plain: list[Any] = []
        deflate: list[Any] = []
        for outbox, conn in group.items():
            (deflate if conn._deflate is not None else plain).append(outbox)
        full: list[Any] = []
        n = 0
        if plain:
            n += fan_out(plain, encode_frame(OP_TEXT if text else OP_BINARY, data), full)
        if deflate:
            n += fan_out(deflate, self.compressed_frame(data, text), full)
        self._count(n, text, full, group)
        return n

    def _count(self, n: int, text: bool, full: list[Any], group: dict[Any, Connection]) -> None:
        if text:
            self.metrics.outgoing_text += n
        else:
            self.metrics.outgoing_binary += n
        for outbox in full:
            conn = group.get(outbox)
            if conn is not None:
                conn._overflow()

    def send_info(self, destination: Destination, info: Any) -> int:
        """Post ``info`` to ``handle_info`` of every connection at ``destination``."""
        n = 0
        for conn in self._resolve(destination):
            n += conn._post_info(info)
        return n

    def disconnect(
        self, user_id: str, session_id: str | None = None, code: int = 1000, reason: str = ""
    ) -> int:
        """Close every connection of a user (or of one session); returns how many."""
        encode_close(code, reason)  # ValueError before anything is closed
        group = (
            self.registry.user(user_id)
            if session_id is None
            else self.registry.session(user_id, session_id)
        )
        conns = list(group.values())
        for conn in conns:
            conn._initiate_close(code, reason, "closed")
        return len(conns)

    def _resolve(self, destination: Destination) -> Iterable[Connection]:
        registry = self.registry
        if isinstance(destination, str):
            destination = Name(destination)
        if isinstance(destination, Name):
            holder = registry.names.get(destination.name)
            return () if holder is None else (holder,)
        if isinstance(destination, User):
            return list(registry.user(destination.user_id).values())
        if isinstance(destination, Session):
            return list(registry.session(destination.user_id, destination.session_id).values())
        if isinstance(destination, Channel):
            return list(registry.channel(destination.name).values())
        if isinstance(destination, Group):
            return list(registry.groups.get(destination.name, ()))
        raise TypeError(
            "destination must be a Name, User, Session, Channel, Group or a name (str), "
            f"got {type(destination).__name__}"
        )

    def warn(self, event: str, **fields: Any) -> None:
        """Log a warning at most once per LOG_INTERVAL per event, with how many were held."""
        now = trio.current_time()
        if now - self._log_at.get(event, -LOG_INTERVAL) < LOG_INTERVAL:
            self._log_suppressed[event] = self._log_suppressed.get(event, 0) + 1
            return
        self._log_at[event] = now
        suppressed = self._log_suppressed.pop(event, 0)
        log.warning(event, suppressed_since_last=suppressed, **fields)
