"""What every connection of one server shares: settings, handler, codec, registry, metrics,
and the delivery path (encode once, frame once, fan out without awaiting)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .codecs import check_codec
from .config import Config
from .errors import CodecError
from .frames import OP_BINARY, OP_TEXT, encode_frame, fan_out
from .handler import Handler
from .metrics import Metrics
from .registry import Registry

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Core"]


class Core:
    """The state of one server that its connections reach through ``conn._core``."""

    def __init__(self, handler: Handler, config: Config) -> None:
        self.handler = handler
        self.config = config
        self.codec = check_codec(getattr(handler, "codec", None))
        self.accepts_text = "text" in self.codec.accepts
        self.accepts_binary = "binary" in self.codec.accepts
        self.registry = Registry()
        self.metrics = Metrics(self.registry.__len__)
        self.shutting_down = False
        self.handshakes = 0  # upgrades between 'accepted' and 'registered'

    def encode(self, obj: Any) -> tuple[bytes, bool]:
        """Encode ``obj`` with the codec and frame it, once, for any number of recipients.

        Returns the frame and whether it is a text frame: a ``str`` from the codec goes
        out as a text frame, ``bytes`` as a binary frame.

        Raises:
            CodecError: the codec refused the object, or returned neither str nor bytes.
        """
        payload = self.codec.encode(obj)
        if isinstance(payload, str):
            try:
                data = payload.encode("utf-8")
            except UnicodeEncodeError as exc:  # lone surrogates are not UTF-8
                raise CodecError(f"text is not valid UTF-8: {exc}") from None
            return encode_frame(OP_TEXT, data), True
        if isinstance(payload, bytes | bytearray | memoryview):
            return encode_frame(OP_BINARY, payload), False
        raise CodecError(
            f"codec {type(self.codec).__name__} returned {type(payload).__name__}, "
            "expected str or bytes"
        )

    def deliver(self, group: dict[Any, Connection], obj: Any) -> int:
        """Deliver ``obj`` to every connection of ``group``; return how many it reached.

        The object is encoded before anything is sent, so an encoding error reaches the
        caller with nothing delivered. Never awaits: connections whose outbox is full are
        shed (closed 1008 ``slow_consumer``) after the loop.
        """
        frame, text = self.encode(obj)
        if not group:
            return 0
        full: list[Any] = []
        n = fan_out(group, frame, full)
        if text:
            self.metrics.outgoing_text += n
        else:
            self.metrics.outgoing_binary += n
        for outbox in full:
            conn = group.get(outbox)
            if conn is not None:
                conn._shed()
        return n
