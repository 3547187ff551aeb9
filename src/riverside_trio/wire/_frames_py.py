"""Pure-Python twin of the compiled hot path ``riverside_trio._frames_c``.

Same names, same results, same exception types as ``src/_frames.pyx``; the selector
``riverside_trio.wire.frames`` picks one of the two. Any change there must be made here too,
and ``tests/test_frames.py`` and ``tests/test_parser.py`` compare them on random inputs.

The twin lives in four modules, re-exported here as one: ``_encode_py`` (constants, frame
encoding, the token bucket), ``_budget_py`` (the memory budget the outboxes charge),
``_outbox_py`` (the outbox, its cork and the fan-out loop) and ``_parser_py`` (the incoming
frame parser).

Conversions follow the compiled module: integer arguments go through ``__index__`` and must fit
a ``Py_ssize_t`` (``OverflowError`` otherwise), float arguments accept what a C ``double``
argument accepts (``float``, ``int``, objects with ``__float__`` or ``__index__``; not ``str``).
"""

from __future__ import annotations

from ._budget_py import Budget
from ._encode_py import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PUSH_CLOSED,
    PUSH_FULL,
    PUSH_QUEUED,
    PUSH_SENT,
    TokenBucket,
    encode_close,
    encode_frame,
)
from ._outbox_py import Cork, Outbox, fan_out
from ._parser_py import (
    EV_BINARY,
    EV_BINARY_DEFLATED,
    EV_CLOSE,
    EV_PING,
    EV_PONG,
    EV_TEXT,
    EV_TEXT_DEFLATED,
    FrameParser,
)

__all__ = [
    "EV_BINARY",
    "EV_BINARY_DEFLATED",
    "EV_CLOSE",
    "EV_PING",
    "EV_PONG",
    "EV_TEXT",
    "EV_TEXT_DEFLATED",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "PUSH_CLOSED",
    "PUSH_FULL",
    "PUSH_QUEUED",
    "PUSH_SENT",
    "Budget",
    "Cork",
    "FrameParser",
    "Outbox",
    "TokenBucket",
    "encode_close",
    "encode_frame",
    "fan_out",
]
