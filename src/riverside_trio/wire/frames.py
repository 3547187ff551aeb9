"""Frame encoding and parsing, rate limiting, outboxes and their memory budget: the hot path,
compiled when it can be.

Imports the compiled ``_frames_c`` (built from ``src/_frames.pyx``) and falls back to the
pure-Python twin ``_frames_py`` when it is missing; both have the same names, results and
errors. Set ``RIVERSIDE_NO_EXTENSIONS=1`` to use the twin anyway. ``IMPLEMENTATION`` tells
which one was loaded: ``"c"`` or ``"python"``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

__all__ = [
    "EV_BINARY",
    "EV_BINARY_DEFLATED",
    "EV_CLOSE",
    "EV_PING",
    "EV_PONG",
    "EV_TEXT",
    "EV_TEXT_DEFLATED",
    "IMPLEMENTATION",
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

IMPLEMENTATION: Literal["c", "python"]

_NO_EXTENSIONS = os.environ.get("RIVERSIDE_NO_EXTENSIONS", "") not in ("", "0")

if TYPE_CHECKING:
    from ._frames_py import (
        EV_BINARY,
        EV_BINARY_DEFLATED,
        EV_CLOSE,
        EV_PING,
        EV_PONG,
        EV_TEXT,
        EV_TEXT_DEFLATED,
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
        Budget,
        Cork,
        FrameParser,
        Outbox,
        TokenBucket,
        encode_close,
        encode_frame,
        fan_out,
    )

    IMPLEMENTATION = "python"
else:
    from importlib import import_module

    def _load() -> tuple[object, str]:
        if not _NO_EXTENSIONS:
            try:
                return import_module("riverside_trio._frames_c"), "c"
            except ImportError:  # not built: no C compiler, RIVERSIDE_BUILD_EXTENSIONS=0, ...
                pass
        return import_module("._frames_py", __package__), "python"

    _impl, IMPLEMENTATION = _load()
    globals().update({name: getattr(_impl, name) for name in __all__ if name != "IMPLEMENTATION"})
