"""The one delivery seam: a destination and an object in, frames or infos to its members out.

Every ``deliver_*``, ``send_info``, ``publish`` and ``disconnect`` of :class:`Connection` and
:class:`Server` is a thin wrapper over :class:`Hub`; nothing else turns destinations into
members. A delivery encodes the object once (the codec), frames it once (plus one
compressed frame when some members use permessage-deflate), and fans the frame out to the
local members' outboxes in the compiled loop, never awaiting: a full outbox is its
connection's problem (``outbox_policy``), handled after the loop.

With a broker (several nodes), the hub also hands the payload to it once, for the members
elsewhere; the registry's first/last-member events tell the broker what to subscribe to.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..cluster import NameClaim
from ..codecs import Codec
from ..destinations import Destination
from ..errors import CodecError
from ..metrics import Metrics
from ..wire.deflate import MIN_COMPRESS, Compressor
from ..wire.frames import OP_BINARY, OP_TEXT, encode_close, encode_frame, fan_out
from .registry import Member, Members, MembershipListener, Registry

__all__ = ["Broker", "Hub", "change_channel", "close_members"]


class Broker(MembershipListener, Protocol):
    """What the hub hands to other nodes (the local node alone needs none).

    Each method is synchronous and never waits for the network: a broker queues.
    """

    def publish(self, destination: Destination, payload: bytes, text: bool) -> None:
        """Deliver an encoded message to the members of ``destination`` on other nodes."""

    def publish_info(self, destination: Destination, info: Any) -> None:
        """Post ``info`` to the members of ``destination`` on other nodes."""

    def publish_disconnect(self, destination: Destination, code: int, reason: str) -> None:
        """Close the members of ``destination`` on other nodes."""

    def claim_name(self, member: Member, name: str) -> NameClaim:
        """Claim ``name``, registered on this node, in the whole cluster."""


class Hub:
    """Destinations to local members (and, with a broker, to other nodes)."""

    __slots__ = ("broker", "codec", "compressor", "deflate_connections", "metrics", "registry")

    def __init__(
        self,
        registry: Registry,
        codec: Codec,
        metrics: Metrics,
        *,
        compress: bool = False,
        broker: Broker | None = None,
    ) -> None:
        self.registry = registry
        self.codec = codec
        self.metrics = metrics
        self.compressor = Compressor() if compress else None
        self.deflate_connections = 0  # open connections that negotiated permessage-deflate
        self.broker = broker
        if broker is not None:
            registry.listener = broker

    # ------------------------------------------------------------------ encoding

    def payload(self, obj: Any) -> tuple[bytes, bool]:
        """Encode ``obj`` with the codec: the payload bytes and whether it is text.

        A ``str`` from the codec goes out as a text frame, ``bytes`` as a binary frame.

        Raises:
            CodecError: the codec refused the object, or returned neither str nor bytes.
        """
        return self.as_payload(self.codec.encode(obj))

    def as_payload(self, payload: object) -> tuple[bytes, bool]:
        """What the codec returned as (payload bytes, is text), as :meth:`payload` does.

        Raises:
            CodecError: neither str (valid UTF-8) nor bytes-like.
        """
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
        return self.framed(self.codec.encode(obj))

    def framed(self, payload: object) -> tuple[bytes, bool]:
        """Frame what the codec returned: (frame, is text).

        Raises:
            CodecError: neither str (valid UTF-8) nor bytes-like.
        """
        data, text = self.as_payload(payload)
        return encode_frame(OP_TEXT if text else OP_BINARY, data), text

    def compressed_frame(self, data: bytes, text: bool) -> bytes:
        """The frame for permessage-deflate clients: compressed (RSV1) unless tiny."""
        opcode = OP_TEXT if text else OP_BINARY
        if len(data) < MIN_COMPRESS or self.compressor is None:
            return encode_frame(opcode, data)
        return encode_frame(opcode, self.compressor.compress(data), True, True)

    # ------------------------------------------------------------------ delivery

    def deliver(self, destination: Destination, obj: Any) -> int:
        """Send ``obj`` to every member of ``destination``; how many local ones it reached.

        The object is encoded before anything is sent, so an encoding error reaches the
        caller with nothing delivered. Never awaits.

        Raises:
            CodecError: ``obj`` cannot be encoded.
            TypeError: ``destination`` is not a destination.
        """
        members = self.registry.members(destination)
        if self.broker is not None:
            data, text = self.payload(obj)
            self.broker.publish(destination, data, text)
            return self.deliver_payload(members, data, text)
        if self.deflate_connections:
            data, text = self.payload(obj)
            return self.deliver_payload(members, data, text)
        frame, text = self.encode(obj)
        if not members:
            return 0
        full: list[Any] = []
        n = fan_out(members, frame, full)
        self._count(n, text, full, members)
        return n

    def deliver_payload(self, members: Members, data: bytes, text: bool) -> int:
        """Frame an encoded payload once (twice with deflate clients) and fan it out."""
        if not members:
            return 0
        full: list[Any] = []
        opcode = OP_TEXT if text else OP_BINARY
        if not self.deflate_connections:
            n = fan_out(members, encode_frame(opcode, data), full)
        else:
            plain: list[Any] = []
            deflate: list[Any] = []
            for outbox, conn in members.items():
                (deflate if conn._inflater is not None else plain).append(outbox)
            n = 0
            if plain:
                n += fan_out(plain, encode_frame(opcode, data), full)
            if deflate:
                n += fan_out(deflate, self.compressed_frame(data, text), full)
        self._count(n, text, full, members)
        return n

    def _count(self, n: int, text: bool, full: list[Any], members: Members) -> None:
        if text:
            self.metrics.outgoing_text += n
        else:
            self.metrics.outgoing_binary += n
        for outbox in full:
            conn = members.get(outbox)
            if conn is not None:
                conn._overflow()

    def send_info(self, destination: Destination, info: Any) -> int:
        """Post ``info`` to ``handle_info`` of every member; how many local ones it reached.

        Raises:
            TypeError: ``destination`` is not a destination.
        """
        members = self.registry.members(destination)
        if self.broker is not None:
            self.broker.publish_info(destination, info)
        return self.post_info(members, info)

    def post_info(self, members: Members, info: Any) -> int:
        """Post ``info`` to the mailbox of each of ``members``."""
        n = 0
        for conn in list(members.values()):
            n += conn._post_info(info)
        return n

    def register_name(self, member: Member, name: str) -> NameClaim:
        """Register the unique ``name`` for ``member`` here, and claim it in the cluster.

        Raises:
            NameInUseError: another connection of this node holds it.
        """
        self.registry.register_name(member, name)
        if self.broker is None:
            return NameClaim(name, done=True)
        return self.broker.claim_name(member, name)

    def disconnect(self, destination: Destination, code: int = 1000, reason: str = "") -> int:
        """Close every member of ``destination`` with ``code``; how many local ones.

        Raises:
            ValueError: ``code`` is not a close code a server may send, or ``reason`` is
                too long; nothing was closed.
            TypeError: ``destination`` is not a destination.
        """
        encode_close(code, reason)  # ValueError before anything is closed
        members = self.registry.members(destination)
        if self.broker is not None:
            self.broker.publish_disconnect(destination, code, reason)
        return close_members(members, code, reason)


def close_members(members: Members, code: int, reason: str) -> int:
    """Start closing each of ``members`` (kind ``closed``); how many."""
    conns = list(members.values())
    for conn in conns:
        conn._initiate_close(code, reason, "closed")
    return len(conns)


def change_channel(registry: Registry, members: Members, channel: str, join: bool) -> int:
    """Make each of ``members`` join (or leave) ``channel``; how many members there were
    (joining twice, or leaving a channel one is not in, is harmless)."""
    conns = list(members.values())
    for conn in conns:
        if join:
            registry.join(conn, channel)
        else:
            registry.leave(conn, channel)
    return len(conns)
