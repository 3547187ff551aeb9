"""The pure-Python twin of the compiled outbox, cork and fan-out loop (``src/_frames.pyx``).

Imported through :mod:`riverside_trio._frames_py`, which re-exports it; it is a module of its
own only to keep each file to one job.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any, Final, final

from ._budget_py import Budget
from ._encode_py import (
    _SEND_FLAGS,
    OP_BINARY,
    OP_TEXT,
    PUSH_CLOSED,
    PUSH_FULL,
    PUSH_QUEUED,
    PUSH_SENT,
    _as_ssize,
    encode_frame,
)

__all__ = ["Cork", "Outbox", "fan_out"]

CORK_FRAMES: Final = 64  # a corked outbox sends early once it holds this many frames
CORK_BYTES: Final = 65536  # ... or would hold more than this many bytes


@final
class Outbox:
    """A bounded queue of encoded frames for one connection, with a direct write path.

    While nothing is queued and no writer task owns the socket, ``push`` writes straight to
    the socket without blocking; what the kernel does not take is queued, and ``wake`` is
    called so the writer task comes to send it. Frame order is always preserved.

    When a push finds the queue full, the outbox answers ``PUSH_FULL`` and changes nothing,
    unless ``drop_oldest`` is set: then it drops queued frames from the oldest end until the
    new frame fits (by count and by bytes), appends it and answers ``PUSH_QUEUED``. It never
    drops the remainder of a partly sent frame, the head of the queue after a direct send the
    kernel took only part of, as its peer would see a torn frame; frames behind it may go. If
    the new frame does not fit even once every droppable frame is gone, it answers
    ``PUSH_FULL`` and drops nothing. ``dropped_frames`` counts the frames dropped.

    Args:
        sock: The connection's socket, non-blocking (``gettimeout() == 0.0``). The outbox
            only sends on it; closing it stays the owner's job. None for a connection over
            a stream (TLS, memory streams): every frame is then queued for the writer task,
            as if the kernel had refused it.
        max_frames: The most frames queued at once (a partly sent frame is always queued).
        max_bytes: The most bytes queued at once (same exception).
        wake: Called with no arguments when the writer task has work to do.
        drop_oldest: Make room in a full queue by dropping its oldest frames, rather than
            refusing the new one.
        cork: A :class:`Cork`, usually one per server: while it is active, a frame pushed
            into an idle outbox waits for the cork's ``flush`` instead of being sent at once.
        budget: A :class:`Budget`, usually one per server: charged with every byte queued
            here, credited with every byte that leaves the queue (sent, dropped, taken by
            the writer, or let go by ``close``).

    Raises:
        TypeError: ``wake`` is not callable.
        ValueError: A negative limit, or a blocking socket.
    """

    __slots__ = (
        "_budget",
        "_closed",
        "_cork",
        "_corked",
        "_drop_oldest",
        "_dropped_frames",
        "_error",
        "_frames",
        "_head",
        "_max_bytes",
        "_max_frames",
        "_partial_head",
        "_queued_bytes",
        "_sender",
        "_sock",
        "_wake",
        "_writing",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 'Outbox' is not an acceptable base type")

    def __init__(
        self,
        sock: socket.socket | None,
        max_frames: int,
        max_bytes: int,
        wake: Callable[[], None],
        *,
        drop_oldest: bool = False,
        cork: Cork | None = None,
        budget: Budget | None = None,
        sender: Callable[[bytes], int] | None = None,
    ) -> None:
        if cork is not None and type(cork) is not Cork:
            raise TypeError(
                f"Argument 'cork' has incorrect type (expected "
                f"riverside_trio._frames_c.Cork, got {type(cork).__name__})"
            )
        if budget is not None and type(budget) is not Budget:
            raise TypeError(
                f"Argument 'budget' has incorrect type (expected "
                f"riverside_trio._frames_c.Budget, got {type(budget).__name__})"
            )
        frames_limit = _as_ssize(max_frames)
        bytes_limit = _as_ssize(max_bytes)
        if frames_limit < 0 or bytes_limit < 0:
            raise ValueError("max_frames and max_bytes must not be negative")
        if not callable(wake):
            raise TypeError("wake must be callable")
        if sender is not None and not callable(sender):
            raise TypeError("sender must be callable")
        if sender is not None and sock is not None:
            raise ValueError("give sock or sender, not both")
        if sock is not None and sock.gettimeout() != 0.0:
            raise ValueError("the socket must be non-blocking")
        self._sock = sock
        self._max_frames = frames_limit
        self._max_bytes = bytes_limit
        self._wake = wake
        self._drop_oldest = bool(drop_oldest)
        self._dropped_frames = 0
        # The queue is _frames[_head:]. Dropping frames blanks their slots (b"") and moves _head
        # on rather than shifting the list; the dead slots are cut off in bulk (amortized O(1)).
        # _head is 0 whenever the queue is empty, so an empty list still means empty.
        self._frames: list[bytes] = []
        self._head = 0
        self._partial_head = False  # _frames[_head] is the rest of a partly sent frame: keep it
        self._queued_bytes = 0
        self._writing = False
        self._closed = False
        self._error = 0
        self._cork = cork
        self._corked = False  # on the cork's list, with queued frames no writer was woken for
        self._budget = budget
        self._sender = sender

    @property
    def writing(self) -> bool:
        """True while the writer task owns the socket; ``push`` then only queues."""
        return self._writing

    @writing.setter
    def writing(self, value: bool) -> None:
        self._writing = bool(value)

    @property
    def closed(self) -> bool:
        """True after ``close()`` or a failed direct send."""
        return self._closed

    @property
    def error(self) -> int:
        """0, or the errno of the direct send that failed."""
        return self._error

    @property
    def drop_oldest(self) -> bool:
        """Whether a full queue drops its oldest frames to take a new one."""
        return self._drop_oldest

    @property
    def dropped_frames(self) -> int:
        """Frames dropped so far to make room (``drop_oldest``); ``close`` does not count."""
        return self._dropped_frames

    @property
    def queued_frames(self) -> int:
        """Frames waiting for the writer task."""
        return len(self._frames) - self._head

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for the writer task."""
        return self._queued_bytes

    @property
    def budget(self) -> Budget | None:
        """The :class:`Budget` this outbox charges, or None."""
        return self._budget

    def _set_queued(self, n: int) -> None:
        """Set ``queued_bytes``, charging or crediting the budget the difference (last, so
        that its ``on_over`` sees this outbox's new state)."""
        old = self._queued_bytes
        self._queued_bytes = n
        if self._budget is not None and n != old:
            self._budget._add(n - old)

    def push(self, frame: bytes, /) -> int:
        """Send or queue one encoded frame; never blocks.

        Returns:
            ``PUSH_SENT`` (all written now), ``PUSH_QUEUED`` (the writer task will send it,
            maybe after dropping older frames: see ``drop_oldest``), ``PUSH_FULL`` (over a
            limit; nothing changed) or ``PUSH_CLOSED`` (closed, or the direct send failed:
            see ``error``).

        Raises:
            TypeError: ``frame`` is not ``bytes``.
        """
        if type(frame) is not bytes:
            raise TypeError(
                f"Argument 'frame' has incorrect type (expected bytes, got {type(frame).__name__})"
            )
        return self._push(frame)

    def push_message(self, payload: str | bytes, /) -> int:
        """Frame ``payload`` as one whole message and push it: ``push(encode_frame(OP_TEXT,
        payload.encode("utf-8")))`` for a ``str``, ``push(encode_frame(OP_BINARY, payload))``
        for ``bytes``, in one call (the common case of ``Connection.send``).

        Returns:
            What ``push`` returns.

        Raises:
            TypeError: ``payload`` is neither ``str`` nor ``bytes`` (subclasses neither).
            UnicodeEncodeError: ``payload`` is not valid UTF-8 (a lone surrogate).
        """
        if type(payload) is str:
            frame = encode_frame(OP_TEXT, payload.encode("utf-8"))
        elif type(payload) is bytes:
            frame = encode_frame(OP_BINARY, payload)
        else:
            raise TypeError(f"payload must be str or bytes, not {type(payload).__name__}")
        return self._push(frame)

    def _push(self, frame: bytes) -> int:
        if self._closed:
            return PUSH_CLOSED
        frames = self._frames
        if not frames and not self._writing:
            if self._cork is not None and self._cork.active:
                return self._queue_corked(frame)
            sent = self._send_now(frame)
            if sent < 0:
                return PUSH_CLOSED
            if sent >= len(frame):
                return PUSH_SENT
            rest = frame[sent:] if sent else frame
            frames.append(rest)
            self._partial_head = sent != 0  # nothing sent: a whole frame, droppable
            self._set_queued(len(rest))
            self._wake()
            return PUSH_QUEUED
        size = len(frame)
        if (
            self._corked
            and not self._writing
            and (
                len(frames) >= CORK_FRAMES
                or self._queued_bytes + size > CORK_BYTES
                or len(frames) >= self._max_frames
                or self._queued_bytes + size > self._max_bytes
            )
        ):
            # Corked, and the batch is big enough (or at a limit): send it now; the limits
            # only count what the kernel does not take.
            if self._send_queued() == PUSH_CLOSED:
                return PUSH_CLOSED
            frames = self._frames
            if not frames:
                return self._queue_corked(frame)
        if len(frames) >= self._max_frames or self._queued_bytes + size > self._max_bytes:
            if not self._drop_oldest:  # then there are no dropped slots: full
                return PUSH_FULL
            # len(frames) counts dropped slots too: recount, off the common path.
            count = len(frames) - self._head
            if count >= self._max_frames or self._queued_bytes + size > self._max_bytes:
                return self._push_dropping(frame, count, size)
        was_empty = not frames
        frames.append(frame)
        self._set_queued(self._queued_bytes + size)
        if was_empty and not self._writing:
            self._wake()
        return PUSH_QUEUED

    def _push_dropping(self, frame: bytes, count: int, size: int) -> int:
        """The queue (``count`` frames) is full: drop its oldest frames to make room for
        ``frame`` (``size`` bytes), or answer ``PUSH_FULL`` and change nothing if that cannot do."""
        frames = self._frames
        head = self._head
        kept = 1 if self._partial_head else 0  # frames that must stay
        left = len(frames[head]) if kept else 0
        # Check first: the most room dropping can make.
        if kept >= self._max_frames or left + size > self._max_bytes:
            return PUSH_FULL
        left = self._queued_bytes
        i = head + kept  # the oldest droppable frame
        while count >= self._max_frames or left + size > self._max_bytes:
            left -= len(frames[i])
            count -= 1
            i += 1
        # Frames head + kept .. i - 1 go: at least one, as the queue was full.
        self._dropped_frames += i - head - kept
        new_head = i - kept
        if kept:
            frames[new_head] = frames[head]  # the partial head moves up, next to its successor
        frames[head:new_head] = [b""] * (new_head - head)
        if new_head * 2 >= len(frames):  # at least as many dead slots as live frames: cut them
            del frames[:new_head]
            new_head = 0
        self._head = new_head
        frames.append(frame)
        self._set_queued(left + size)
        return PUSH_QUEUED

    def _send_now(self, data: bytes) -> int:
        """One non-blocking send of ``data``: how many bytes the kernel took (0 for EAGAIN),
        or -1 when the socket failed; the outbox is then closed and ``wake`` was called."""
        if self._sock is None:
            if self._sender is None:
                return 0  # a stream: its writer task sends everything
            sent = _as_ssize(self._sender(data))
            if sent >= 0:
                return sent
            error = -sent
        else:
            try:
                # PEP 475: socket.send retries EINTR itself unless a signal handler raises.
                return self._sock.send(data, _SEND_FLAGS)
            except BlockingIOError:
                return 0
            except OSError as exc:
                error = exc.errno or 0
        self._error = error
        self._closed = True
        self._corked = False
        self._frames = []
        self._head = 0
        self._partial_head = False
        self._set_queued(0)
        self._wake()
        return -1

    def _queue_corked(self, frame: bytes) -> int:
        """Queue ``frame`` in the empty queue, for the cork's flush to send."""
        self._frames.append(frame)
        self._partial_head = False
        self._set_queued(len(frame))
        if not self._corked:
            self._corked = True
            cork = self._cork
            assert cork is not None
            cork._dirty.append(self)
            if len(cork._dirty) == 1 and cork.wake is not None:
                cork.wake()  # the first outbox noted since the last flush
        return PUSH_QUEUED

    def _send_queued(self) -> int:
        """Send the queue at once, in one ``send``; what the kernel does not take stays
        queued (a partly sent frame as the partial head) and wakes the writer.

        Returns ``PUSH_SENT`` (all gone), ``PUSH_QUEUED`` (the writer has the rest) or
        ``PUSH_CLOSED``.
        """
        frames = self._frames
        head = self._head
        data = frames[head] if len(frames) - head == 1 else b"".join(frames[head:])
        sent = self._send_now(data)
        if sent < 0:
            return PUSH_CLOSED
        if sent >= len(data):
            frames.clear()
            self._head = 0
            self._partial_head = False
            self._set_queued(0)
            return PUSH_SENT
        if sent:
            self._frames = [data[sent:]]
            self._head = 0
            self._partial_head = True
            self._set_queued(len(data) - sent)
        self._corked = False  # the writer task takes over
        self._wake()
        return PUSH_QUEUED

    def _uncork(self) -> int:
        if not self._corked:
            return 0
        self._corked = False
        if self._closed or self._writing or len(self._frames) == self._head:
            return 0
        return self._send_queued()

    def take(self, max_bytes: int = -1, /) -> bytes:
        """Remove queued frames from the head and return them joined (``b""`` when none).

        Args:
            max_bytes: Take whole frames while they fit in this many bytes, but at least
                one (a batch for the writer, the rest staying queued and droppable); every
                frame when negative (the default).
        """
        limit = _as_ssize(max_bytes)
        frames = self._frames
        if not frames:
            return b""
        head = self._head
        count = len(frames)
        if 0 <= limit < self._queued_bytes and count - head > 1:
            end = head + 1
            total = len(frames[head])
            while end < count:
                n = len(frames[end])
                if total + n > limit:
                    break
                total += n
                end += 1
            data = frames[head] if end - head == 1 else b"".join(frames[head:end])
            del frames[:end]
            self._head = 0
            self._partial_head = False
            self._set_queued(self._queued_bytes - total)
            return data
        if len(frames) - head == 1:
            data = frames[head]
        else:
            if head:
                del frames[:head]
            data = b"".join(frames)
        self._frames = []
        self._head = 0
        self._partial_head = False
        self._set_queued(0)
        return data

    def drop_queued(self) -> int:
        """Drop every queued frame that may go, to free memory at once (a connection being
        shed): all but the rest of a partly sent frame, which the peer must get whole so
        that a close frame queued next still parses. The outbox stays open; the drops are
        not counted in ``dropped_frames``.

        Returns:
            How many frames were dropped.
        """
        frames = self._frames
        live = len(frames) - self._head
        if live == 0:
            return 0
        if self._partial_head:
            rest = frames[self._head]
            self._frames = [rest]
            self._head = 0
            self._set_queued(len(rest))
            return live - 1
        self._frames = []
        self._head = 0
        self._set_queued(0)
        return live

    def close(self) -> None:
        """Mark the outbox closed and drop the queue; later pushes return ``PUSH_CLOSED``."""
        self._closed = True
        self._frames = []
        self._head = 0
        self._partial_head = False
        self._set_queued(0)


@final
class Cork:
    """Holds back the direct writes of the outboxes made with it, so that the frames one
    task step pushes into an idle outbox leave in one ``send`` at the end of the step, not
    in one ``send`` each.

    While ``active`` is true, an outbox with nothing queued and no writer queues a pushed
    frame instead of sending it, and notes itself here; ``flush`` then sends each noted
    queue in one ``send`` (what the kernel does not take stays queued and wakes the writer,
    as a direct send would). A corked outbox sends early when it holds 64 frames or would
    hold over 64 KiB, or reaches its own limits. Frame order never changes.

    Something must call ``flush``: ``wake`` (a callable, or None) is called with no
    arguments when the first outbox is noted since the last flush (a server wakes its
    flusher task with it, and each reader flushes before it parks). ``after_task_step``
    also makes a Cork a Trio instrument that flushes at the end of every task step.

    Args:
        wake: Called when the first outbox is noted since the last flush; what it raises
            reaches the ``push`` that noted it (the frame stays queued).
    """

    __slots__ = ("_active", "_dirty", "wake")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 'Cork' is not an acceptable base type")

    def __init__(self, *, wake: Callable[[], object] | None = None) -> None:
        if wake is not None and not callable(wake):
            raise TypeError("wake must be callable or None")
        self._dirty: list[Outbox] = []
        self._active = False
        self.wake: Callable[[], object] | None = wake

    @property
    def active(self) -> bool:
        """Whether outboxes made with this cork hold back their direct writes."""
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = bool(value)

    @property
    def pending(self) -> int:
        """Outboxes noted since the last flush."""
        return len(self._dirty)

    def flush(self) -> int:
        """Send what the noted outboxes queued while corked; returns how many were noted.

        Raises:
            Exception: the first exception a ``wake`` callback raised (every outbox is
                flushed first).
        """
        dirty = self._dirty
        if not dirty:
            return 0
        self._dirty = []
        error: BaseException | None = None
        for outbox in dirty:
            try:
                outbox._uncork()
            except BaseException as exc:
                if error is None:
                    error = exc
        if error is not None:
            raise error
        return len(dirty)

    def after_task_step(self, task: object, /) -> None:
        """Trio instrument hook: flush at the end of every task step."""
        if self._dirty:
            self.flush()


def fan_out(outboxes: Iterable[Outbox], frame: bytes, full: list[Outbox]) -> int:
    """Push one frame into many outboxes; never blocks.

    Args:
        outboxes: The recipients.
        frame: The encoded frame, shared by all of them.
        full: Every outbox that answered ``PUSH_FULL`` is appended here, for the caller to
            shed; closed ones are skipped.

    Returns:
        How many outboxes accepted the frame (sent or queued).

    Raises:
        TypeError: ``frame`` is not ``bytes``, ``full`` is not a list, or an item is not an
            ``Outbox``.
    """
    if type(frame) is not bytes:
        raise TypeError(
            f"Argument 'frame' has incorrect type (expected bytes, got {type(frame).__name__})"
        )
    if not isinstance(full, list):
        raise TypeError(f"full must be a list, not {type(full).__name__}")
    accepted = 0
    for outbox in outboxes:
        if type(outbox) is not Outbox:
            raise TypeError(f"expected Outbox, got {type(outbox).__name__}")
        result = outbox._push(frame)
        if result <= PUSH_QUEUED:
            accepted += 1
        elif result == PUSH_FULL:
            full.append(outbox)
    return accepted
