"""Types of the compiled hot path ``riverside_trio._frames_c`` (``src/_frames.pyx``).

Mirrors ``riverside_trio.wire._frames_py``; see its docstrings.
"""

import socket
from collections.abc import Callable, Iterable
from typing import Any, Final, final

OP_CONTINUATION: Final[int]
OP_TEXT: Final[int]
OP_BINARY: Final[int]
OP_CLOSE: Final[int]
OP_PING: Final[int]
OP_PONG: Final[int]

PUSH_SENT: Final[int]
PUSH_QUEUED: Final[int]
PUSH_FULL: Final[int]
PUSH_CLOSED: Final[int]

EV_TEXT: Final[int]
EV_BINARY: Final[int]
EV_TEXT_DEFLATED: Final[int]
EV_BINARY_DEFLATED: Final[int]
EV_CLOSE: Final[int]
EV_PING: Final[int]
EV_PONG: Final[int]

def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    fin: bool = True,
    rsv1: bool = False,
) -> bytes: ...
def encode_close(code: int | None = None, reason: str = "") -> bytes: ...

@final
class TokenBucket:
    def __init__(self, capacity: int, period: float, now: float) -> None: ...
    @property
    def tokens(self) -> float: ...
    @property
    def capacity(self) -> int: ...
    @property
    def period(self) -> float: ...
    def take(self, now: float, /) -> bool: ...

@final
class Outbox:
    writing: bool
    def __init__(
        self,
        sock: socket.socket | None,
        max_frames: int,
        max_bytes: int,
        wake: Callable[[], None],
        *,
        drop_oldest: bool = False,
        cork: Cork | None = None,
    ) -> None: ...
    @property
    def drop_oldest(self) -> bool: ...
    @property
    def dropped_frames(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def error(self) -> int: ...
    @property
    def queued_frames(self) -> int: ...
    @property
    def queued_bytes(self) -> int: ...
    def push(self, frame: bytes, /) -> int: ...
    def take(self) -> bytes: ...
    def close(self) -> None: ...

@final
class Cork:
    active: bool
    def __init__(self) -> None: ...
    @property
    def pending(self) -> int: ...
    def flush(self) -> int: ...
    def after_task_step(self, task: object, /) -> None: ...

def fan_out(outboxes: Iterable[Outbox], frame: bytes, full: list[Outbox]) -> int: ...

@final
class FrameParser:
    def __init__(self, max_message_size: int, *, deflate: bool = False) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def next_event(self) -> tuple[Any, ...] | None: ...
