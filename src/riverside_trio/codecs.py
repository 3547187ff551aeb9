"""Codecs turn WebSocket messages into Python objects and back.

A codec says which frame type it sends (``"text"`` or ``"binary"``; strictly, a ``str``
from ``encode`` goes out as a text frame and ``bytes`` as a binary frame), which incoming frame
types it accepts, and how to ``decode`` an incoming payload and ``encode`` an outgoing
object. An outgoing object is encoded once per delivery, whatever the number of recipients.

Incoming frames of a type the codec does not accept, and payloads that fail to decode, are
ignored and counted by default; ``Config.invalid_message = "close"`` closes the connection
instead (1003 for a wrong frame type, 1007 for a payload that does not decode).
"""

from __future__ import annotations

import io
import json
from typing import Any, Literal, Protocol, runtime_checkable

import cbor2

from .errors import CodecError

__all__ = [
    "CBORCodec",
    "Codec",
    "FrameType",
    "JSONCodec",
    "RawBinaryCodec",
    "RawCodec",
    "RawTextCodec",
]

FrameType = Literal["text", "binary"]


@runtime_checkable
class Codec(Protocol):
    """What a codec provides. Subclassing is not needed: any object with these works.

    Attributes:
        frame_type: the type of the frames it sends, ``"text"`` or ``"binary"``.
        accepts: the incoming frame types it decodes.
    """

    frame_type: FrameType
    accepts: frozenset[FrameType]

    def decode(self, data: str | bytes) -> Any:
        """Decode one incoming message (``str`` for text frames, ``bytes`` for binary).

        Raises:
            CodecError: or ``ValueError``, when the payload is not valid for this codec.
        """
        ...

    def encode(self, obj: Any) -> str | bytes:
        """Encode one outgoing object: ``str`` for a text codec, ``bytes`` for binary.

        Raises:
            CodecError: when the object cannot be encoded.
        """
        ...


class JSONCodec:
    """JSON in text frames (the default). Binary frames are not accepted."""

    frame_type: FrameType = "text"
    accepts: frozenset[FrameType] = frozenset({"text"})

    def __init__(self) -> None:
        # Strict JSON (RFC 8259): NaN and Infinity are refused both ways.
        self._encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant)

    def decode(self, data: str | bytes) -> Any:
        if not isinstance(data, str):
            raise CodecError("JSON codec takes text frames")
        try:
            return self._decoder.decode(data)
        except ValueError as exc:
            raise CodecError(f"invalid JSON: {exc}") from None

    def encode(self, obj: Any) -> str:
        try:
            return self._encoder.encode(obj)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"cannot encode as JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class RawTextCodec:
    """Text frames passed through as ``str``."""

    frame_type: FrameType = "text"
    accepts: frozenset[FrameType] = frozenset({"text"})

    def decode(self, data: str | bytes) -> Any:
        if not isinstance(data, str):
            raise CodecError("raw text codec takes text frames")
        return data

    def encode(self, obj: Any) -> str:
        if not isinstance(obj, str):
            raise CodecError(f"raw text codec sends str, got {type(obj).__name__}")
        return obj


class RawBinaryCodec:
    """Binary frames passed through as ``bytes``."""

    frame_type: FrameType = "binary"
    accepts: frozenset[FrameType] = frozenset({"binary"})

    def decode(self, data: str | bytes) -> Any:
        if isinstance(data, str):
            raise CodecError("raw binary codec takes binary frames")
        return data

    def encode(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        raise CodecError(f"raw binary codec sends bytes, got {type(obj).__name__}")


class RawCodec:
    """Text and binary frames passed through: ``str`` in and out as text, ``bytes`` as binary.

    What is sent follows the type of the object: ``str`` goes out as a text frame,
    ``bytes`` as a binary frame.
    """

    frame_type: FrameType = "binary"
    accepts: frozenset[FrameType] = frozenset({"text", "binary"})

    def decode(self, data: str | bytes) -> Any:
        return data

    def encode(self, obj: Any) -> str | bytes:
        if isinstance(obj, str | bytes):
            return obj
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        raise CodecError(f"raw codec sends str or bytes, got {type(obj).__name__}")


class CBORCodec:
    """CBOR (RFC 8949, via cbor2) in binary frames."""

    frame_type: FrameType = "binary"
    accepts: frozenset[FrameType] = frozenset({"binary"})

    def decode(self, data: str | bytes) -> Any:
        if isinstance(data, str):
            raise CodecError("CBOR codec takes binary frames")
        fp = io.BytesIO(data)
        try:
            obj = cbor2.CBORDecoder(fp).decode()
        except Exception as exc:  # cbor2 raises several types for malformed input
            raise CodecError(f"invalid CBOR: {exc}") from None
        if fp.tell() != len(data):
            raise CodecError("invalid CBOR: bytes after the data item")
        return obj

    def encode(self, obj: Any) -> bytes:
        try:
            return cbor2.dumps(obj)
        except Exception as exc:
            raise CodecError(f"cannot encode as CBOR: {exc}") from exc


def check_codec(codec: object) -> Codec:
    """Validate a codec object at start-up; raise ``TypeError`` naming what is missing."""
    for attr in ("frame_type", "accepts", "decode", "encode"):
        if not hasattr(codec, attr):
            raise TypeError(f"codec {codec!r} has no {attr!r}")
    c: Any = codec
    frame_type = c.frame_type
    if frame_type not in ("text", "binary"):
        raise TypeError(f"codec.frame_type must be 'text' or 'binary', got {frame_type!r}")
    accepts = frozenset(c.accepts)
    if not accepts or not accepts <= {"text", "binary"}:
        raise TypeError(f"codec.accepts must name 'text' and/or 'binary', got {accepts!r}")
    return c  # type: ignore[no-any-return]
