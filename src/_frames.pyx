# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True, embedsignature=True
"""Compiled hot path of riverside-trio, built as ``riverside_trio._frames_c``.

Same names, same results, same exception types as ``riverside_trio/wire/_frames_py.py``; the selector
``riverside_trio.wire.frames`` picks one of the two. Any change here must be made there too, and
``tests/test_frames.py`` and ``tests/test_parser.py`` compare them on random inputs.

Conversions are the ones of C arguments: integers through ``__index__`` into a ``Py_ssize_t``
(``OverflowError`` when out of range), floats through ``PyFloat_AsDouble``. POSIX only: on a
platform without ``MSG_DONTWAIT`` the build fails and the package runs on the twin.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_Append
from cpython.unicode cimport (
    PyUnicode_AsUTF8AndSize,
    PyUnicode_DecodeUTF8,
    PyUnicode_DecodeUTF8Stateful,
)
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove

import _socket

from riverside_trio.errors import ProtocolError as _ProtocolError

cdef extern from *:
    """
    #include <errno.h>
    #include <stdint.h>
    #include <string.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0  /* CPython ignores SIGPIPE anyway */
    #endif
    #define RT_SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)

    /* The head of CPython's PySocketSockObject (Modules/socketmodule.h): the descriptor
       follows PyObject_HEAD, and close() sets it to -1. Reading it at each send means a
       closed socket gives EBADF, as in the Python twin, instead of writing to whatever
       connection reuses the descriptor. Outbox checks it against fileno() first. */
    typedef struct {
        PyObject_HEAD
        int sock_fd;
    } rt_socket_head;

    static inline int rt_socket_fd(PyObject *sock) {
        return ((rt_socket_head *)sock)->sock_fd;
    }

    /* dst[i] = src[i] ^ key[(phase + i) % 4], eight bytes at a time; dst may be src. */
    static inline void rt_unmask(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
                                 const unsigned char *key, unsigned int phase) {
        unsigned char k[8];
        uint64_t mask, word;
        Py_ssize_t i = 0;
        for (int j = 0; j < 8; j++) k[j] = key[(phase + j) & 3];
        memcpy(&mask, k, 8);
        for (; i + 8 <= n; i += 8) {
            memcpy(&word, src + i, 8);
            word ^= mask;
            memcpy(dst + i, &word, 8);
        }
        for (; i < n; i++) dst[i] = src[i] ^ k[i & 7];
    }

    static inline uint64_t rt_load_be64(const unsigned char *p) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++) v = (v << 8) | p[j];
        return v;
    }
    """
    const int RT_SEND_FLAGS
    const int EWOULDBLOCK
    const Py_ssize_t PY_SSIZE_T_MAX
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int rt_socket_fd(object sock)
    void rt_unmask(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
                   const unsigned char *key, unsigned int phase) noexcept nogil
    uint64_t rt_load_be64(const unsigned char *p) noexcept nogil


OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

PUSH_SENT = 0
PUSH_QUEUED = 1
PUSH_FULL = 2
PUSH_CLOSED = 3

cdef enum:
    _SENT = 0
    _QUEUED = 1
    _FULL = 2
    _CLOSED = 3
    _MAX_CONTROL_PAYLOAD = 125
    _MAX_CLOSE_REASON = 123  # 125 minus the 2-byte code
    CORK_FRAMES = 64  # a corked outbox sends early once it holds this many frames
    CORK_BYTES = 65536  # ... or would hold more than this many bytes


# Frame encoding ---------------------------------------------------------------------------

cdef inline bint _sendable_close_code(Py_ssize_t code) noexcept:
    """Close codes a server may send: 1000-1003, 1007-1009, 1011-1013, 3000-4999."""
    return (
        1000 <= code <= 1003
        or 1007 <= code <= 1009
        or 1011 <= code <= 1013
        or 3000 <= code <= 4999
    )


cdef inline int _check_opcode(object opcode) except -1:
    cdef Py_ssize_t op
    try:
        op = opcode  # TypeError when not an integer
    except OverflowError:
        op = -1
    if op == 0x0 or op == 0x1 or op == 0x2 or op == 0x8 or op == 0x9 or op == 0xA:
        return <int>op
    raise ValueError(f"invalid opcode: {opcode!r}")


cdef bytes _build_frame(unsigned char first, const char *src, Py_ssize_t n):
    cdef Py_ssize_t head
    cdef uint64_t length = <uint64_t>n
    cdef int i
    if n < 126:
        head = 2
    elif n < 0x10000:
        head = 4
    else:
        head = 10
    cdef bytes out = PyBytes_FromStringAndSize(NULL, head + n)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    p[0] = first
    if head == 2:
        p[1] = <unsigned char>n
    elif head == 4:
        p[1] = 126
        p[2] = <unsigned char>(length >> 8)
        p[3] = <unsigned char>length
    else:
        p[1] = 127
        for i in range(8):
            p[2 + i] = <unsigned char>(length >> (56 - 8 * i))
    if n:
        memcpy(p + head, src, <size_t>n)
    return out


def encode_frame(opcode, payload, fin=True, rsv1=False):
    """Encode one server-to-client frame (unmasked, RSV2 and RSV3 clear).

    Args:
        opcode: One of the ``OP_*`` constants.
        payload: The payload, any C-contiguous buffer; it is copied.
        fin: Whether this is the final fragment of its message.
        rsv1: Set RSV1, which marks a compressed message under permessage-deflate
            (RFC 7692); only on the first frame of a text or binary message.

    Returns:
        The header followed by the payload.

    Raises:
        TypeError: ``opcode`` is not an integer, or ``payload`` is not a buffer (``str``).
        BufferError: ``payload`` is not C-contiguous.
        ValueError: Unknown opcode, a control frame (close, ping, pong) with a payload
            over 125 bytes or ``fin=False``, or ``rsv1`` on a control or continuation frame.
    """
    cdef int op = _check_opcode(opcode)
    cdef int first
    cdef Py_buffer view
    cdef bint release = False
    cdef const char *src
    cdef Py_ssize_t n
    if type(payload) is bytes:
        src = PyBytes_AS_STRING(payload)
        n = PyBytes_GET_SIZE(payload)
    elif type(payload) is bytearray:
        src = PyByteArray_AS_STRING(payload)
        n = PyByteArray_GET_SIZE(payload)
    else:
        if type(payload) is not memoryview:
            payload = memoryview(payload)  # TypeError for str and other non-buffers
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)  # BufferError: not C-contiguous
        release = True
        src = <const char *>view.buf
        n = view.len
    try:
        first = (0x80 if fin else 0) | op
        if op >= 0x8 and (n > _MAX_CONTROL_PAYLOAD or not first & 0x80):
            raise ValueError(
                "control frames must be final and carry at most 125 bytes "
                f"(opcode {op:#x}, {n} bytes, fin={bool(fin)})"
            )
        if rsv1:
            if op == 0x0 or op >= 0x8:
                raise ValueError(
                    "RSV1 is for the first frame of a text or binary message only "
                    f"(opcode {op:#x})"
                )
            first |= 0x40
        return _build_frame(<unsigned char>first, src, n)
    finally:
        if release:
            PyBuffer_Release(&view)


def encode_close(code=None, reason=""):
    """Encode a whole close frame.

    Args:
        code: A close code a server may send (1000-1003, 1007-1009, 1011-1013, 3000-4999),
            or ``None`` for a close frame without a payload. 1010 is for clients only (RFC 6455
            7.4.1); 1014 makes wsproto-based clients fail the connection.
        reason: Text sent after the code, UTF-8 encoded; cut to 123 bytes at a character
            boundary.

    Returns:
        The close frame.

    Raises:
        TypeError: ``reason`` is not a ``str``, or ``code`` is not an integer.
        ValueError: ``code`` is not one a server may send, or ``reason`` is given without a
            code (``UnicodeEncodeError``, a ``ValueError``, for lone surrogates).
    """
    cdef Py_ssize_t value, n, cut
    cdef const unsigned char *data
    cdef bytes encoded
    cdef bytes out
    cdef unsigned char *p
    if not isinstance(reason, str):
        raise TypeError(f"reason must be str, not {type(reason).__name__}")
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b"\x88\x00"
    try:
        value = code  # TypeError when not an integer
    except OverflowError:
        value = -1
    if not _sendable_close_code(value):
        raise ValueError(f"a server may not send close code {code!r}")
    encoded = (<str>reason).encode("utf-8")
    data = <const unsigned char *>PyBytes_AS_STRING(encoded)
    n = PyBytes_GET_SIZE(encoded)
    if n > _MAX_CLOSE_REASON:
        cut = _MAX_CLOSE_REASON
        while data[cut] & 0xC0 == 0x80:  # never split a character
            cut -= 1
        n = cut
    out = PyBytes_FromStringAndSize(NULL, 4 + n)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    p[0] = 0x88
    p[1] = <unsigned char>(2 + n)
    p[2] = <unsigned char>(value >> 8)
    p[3] = <unsigned char>value
    if n:
        memcpy(p + 4, data, <size_t>n)
    return out


# Rate limiting ----------------------------------------------------------------------------

@cython.final
cdef class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled continuously over ``period`` seconds.

    It starts full. ``take(now)`` first refills ``(now - last) * capacity / period`` tokens
    (capped at ``capacity``; a clock going backwards refills nothing and leaves ``last``
    alone), then takes one token if at least one is there.

    Args:
        capacity: The most tokens the bucket holds, at least 1.
        period: Seconds to refill from empty to full, above 0.
        now: The current time, in seconds on any monotonic clock.

    Raises:
        ValueError: ``capacity < 1`` or ``period <= 0``.
    """

    cdef readonly Py_ssize_t capacity
    cdef readonly double period
    cdef readonly double tokens
    cdef double _cap
    cdef double _rate
    cdef double _last

    def __init__(self, Py_ssize_t capacity, double period, double now):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if not period > 0.0:
            raise ValueError(f"period must be above 0, not {period!r}")
        self.capacity = capacity
        self.period = period
        self._cap = <double>capacity
        self._rate = self._cap / period
        self.tokens = self._cap
        self._last = now

    @cython.always_allow_keywords(False)  # METH_O: ``now`` is positional-only, as in the twin
    def take(self, double now):
        """Refill up to ``now``, then take one token.

        Returns:
            Whether a token was taken.
        """
        # The same double operations in the same order as the twin (the build turns off
        # floating-point contraction, so no fused multiply-add): bit-identical tokens.
        cdef double elapsed = now - self._last
        cdef double tokens = self.tokens
        if elapsed > 0.0:
            tokens = tokens + elapsed * self._rate
            if tokens > self._cap:
                tokens = self._cap
            self._last = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


# Memory budget ----------------------------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class Budget:
    """Bytes held for sending across many outboxes (and whatever else charges it), against
    one limit: the node's memory budget for queued outgoing bytes.

    Every outbox made with ``budget=`` charges the bytes it queues and credits those it
    sends, drops or gives to its writer (``take``); the writer charges what it took until
    it is written. ``used`` is the sum. Every charge of one byte or more that leaves ``used``
    over ``limit`` calls ``on_over`` (with no arguments, after the charging outbox has
    updated its state): it must only note that work is due (shedding, which touches outboxes, must
    happen later, not inside the call). Nothing is refused: the budget counts, its owner
    decides.

    Args:
        limit: The most bytes ``used`` may reach without ``on_over`` being called, >= 0.
        on_over: Called with no arguments by each charge (of one byte or more) that leaves
            ``used > limit``.

    Raises:
        TypeError: ``on_over`` is not callable.
        ValueError: ``limit`` is negative.
    """

    cdef readonly Py_ssize_t limit
    cdef readonly Py_ssize_t used
    cdef object _on_over

    def __init__(self, limit, on_over):
        cdef Py_ssize_t value = limit  # TypeError, OverflowError
        if value < 0:
            raise ValueError(f"limit must not be negative, not {value}")
        if not callable(on_over):
            raise TypeError("on_over must be callable")
        self.limit = value
        self.used = 0
        self._on_over = on_over

    @property
    def over(self):
        """Whether ``used`` is over ``limit`` now."""
        return self.used > self.limit

    @cython.always_allow_keywords(False)
    def charge(self, n):
        """Add ``n`` bytes to ``used``; calls ``on_over`` if ``n > 0`` leaves it over the limit.

        Raises:
            ValueError: ``n`` is negative.
        """
        cdef Py_ssize_t size = n
        if size < 0:
            raise ValueError(f"cannot charge a negative number of bytes ({size})")
        self._add(size)

    @cython.always_allow_keywords(False)
    def credit(self, n):
        """Take ``n`` bytes off ``used``.

        Raises:
            ValueError: ``n`` is negative or more than ``used``.
        """
        cdef Py_ssize_t size = n
        if size < 0 or size > self.used:
            raise ValueError(f"cannot credit {size} bytes: {self.used} are charged")
        self.used -= size

    cdef int _add(self, Py_ssize_t delta) except -1:
        """Charge (delta > 0) or credit (delta < 0) what an outbox queued or let go."""
        self.used += delta
        if delta > 0 and self.used > self.limit:
            self._on_over()
        return 0


# Outboxes ---------------------------------------------------------------------------------

cdef class Cork

cdef inline str _wrong_frame(object frame):
    return f"Argument 'frame' has incorrect type (expected bytes, got {type(frame).__name__})"


@cython.final
@cython.auto_pickle(False)
cdef class Outbox:
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
        sender: Instead of ``sock``, a callable that takes bytes and returns how many of
            them it took without blocking (0: none, queue them), or a negative errno when
            the connection failed (the outbox then closes as on a failed send). A TLS
            transport encrypts what it takes.

    Raises:
        TypeError: ``wake`` (or ``sender``) is not callable.
        ValueError: A negative limit, or a blocking socket.
    """

    cdef object _sock
    cdef bint _head_fd  # read the descriptor from the socket object itself
    cdef Py_ssize_t _max_frames
    cdef Py_ssize_t _max_bytes
    cdef object _wake
    # The queue is _frames[_head:]. Dropping frames blanks their slots (b"") and moves _head
    # on rather than shifting the list; the dead slots are cut off in bulk (amortized O(1)).
    # _head is 0 whenever the queue is empty, so len(_frames) == 0 still means empty.
    cdef list _frames
    cdef Py_ssize_t _head
    cdef bint _partial_head  # _frames[_head] is the rest of a partly sent frame: keep it
    cdef public bint writing
    cdef readonly bint closed
    cdef readonly int error
    cdef readonly Py_ssize_t queued_bytes
    cdef readonly bint drop_oldest
    cdef readonly Py_ssize_t dropped_frames
    cdef Cork _cork
    cdef bint _corked  # on the cork's list, with queued frames no writer was woken for
    cdef Budget _budget
    cdef object _sender

    def __cinit__(self):
        self._frames = []

    def __init__(
        self,
        sock,
        max_frames,
        max_bytes,
        wake,
        *,
        bint drop_oldest=False,
        Cork cork=None,
        Budget budget=None,
        sender=None,
    ):
        cdef Py_ssize_t frames_limit = max_frames
        cdef Py_ssize_t bytes_limit = max_bytes
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
        self._head_fd = isinstance(sock, _socket.socket) and rt_socket_fd(sock) == sock.fileno()
        self._sock = sock
        self._max_frames = frames_limit
        self._max_bytes = bytes_limit
        self._wake = wake
        self.drop_oldest = drop_oldest
        self._cork = cork
        self._budget = budget
        self._sender = sender

    @property
    def queued_frames(self):
        """Frames waiting for the writer task."""
        return len(self._frames) - self._head

    @property
    def budget(self):
        """The :class:`Budget` this outbox charges, or None."""
        return self._budget

    cdef inline int _set_queued(self, Py_ssize_t n) except -1:
        """Set ``queued_bytes``, charging or crediting the budget the difference (last, so
        that its ``on_over`` sees this outbox's new state)."""
        cdef Py_ssize_t old = self.queued_bytes
        self.queued_bytes = n
        if self._budget is not None and n != old:
            self._budget._add(n - old)
        return 0

    @cython.always_allow_keywords(False)  # METH_O: ``frame`` is positional-only, as in the twin
    def push(self, frame):
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
            raise TypeError(_wrong_frame(frame))
        return self._push(<bytes>frame)

    @cython.always_allow_keywords(False)  # METH_O, as in the twin
    def push_message(self, payload):
        """Frame ``payload`` as one whole message and push it: ``push(encode_frame(OP_TEXT,
        payload.encode("utf-8")))`` for a ``str``, ``push(encode_frame(OP_BINARY, payload))``
        for ``bytes``, in one call (the common case of ``Connection.send``).

        Returns:
            What ``push`` returns.

        Raises:
            TypeError: ``payload`` is neither ``str`` nor ``bytes`` (subclasses neither).
            UnicodeEncodeError: ``payload`` is not valid UTF-8 (a lone surrogate).
        """
        cdef const char *src
        cdef Py_ssize_t n
        cdef bytes frame
        if type(payload) is str:
            src = PyUnicode_AsUTF8AndSize(payload, &n)  # UnicodeEncodeError: surrogates
            frame = _build_frame(0x81, src, n)
        elif type(payload) is bytes:
            frame = _build_frame(0x82, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
        else:
            raise TypeError(f"payload must be str or bytes, not {type(payload).__name__}")
        return self._push(frame)

    cdef int _push(self, bytes frame) except -1:
        cdef Py_ssize_t n, sent, live
        cdef list frames = self._frames
        cdef Py_ssize_t count = len(frames)
        if self.closed:
            return _CLOSED
        if count == 0 and not self.writing:
            if self._cork is not None and self._cork.active:
                return self._queue_corked(frame)
            n = PyBytes_GET_SIZE(frame)
            sent = self._send_now(frame)
            if sent < 0:
                return _CLOSED
            if sent >= n:
                return _SENT
            rest = frame[sent:] if sent else frame
            frames.append(rest)
            self._partial_head = sent != 0  # nothing sent: a whole frame, droppable
            self._set_queued(n - sent)
            self._wake()
            return _QUEUED
        n = PyBytes_GET_SIZE(frame)
        if self._corked and not self.writing and (
            count >= CORK_FRAMES or self.queued_bytes + n > CORK_BYTES
            or count >= self._max_frames or self.queued_bytes + n > self._max_bytes
        ):
            # Corked, and the batch is big enough (or at a limit): send it now; the limits
            # only count what the kernel does not take.
            if self._send_queued() == _CLOSED:
                return _CLOSED
            frames = self._frames
            count = len(frames)
            if count == 0:
                return self._queue_corked(frame)
        if count >= self._max_frames or self.queued_bytes + n > self._max_bytes:
            if not self.drop_oldest:  # then there are no dropped slots: full
                return _FULL
            # count includes dropped slots: recount, off the common path.
            live = count - self._head
            if live >= self._max_frames or self.queued_bytes + n > self._max_bytes:
                return self._push_dropping(frame, live, n)
        frames.append(frame)
        self._set_queued(self.queued_bytes + n)
        if count == 0 and not self.writing:
            self._wake()
        return _QUEUED

    cdef int _push_dropping(self, bytes frame, Py_ssize_t count, Py_ssize_t n) except -1:
        """The queue (``count`` frames) is full: drop its oldest frames to make room for
        ``frame`` (``n`` bytes), or answer ``_FULL`` and change nothing if that cannot do."""
        cdef list frames = self._frames
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t kept = 1 if self._partial_head else 0  # frames that must stay
        cdef Py_ssize_t left = PyBytes_GET_SIZE(frames[head]) if kept else 0
        cdef Py_ssize_t i, new_head
        # Check first: the most room dropping can make.
        if kept >= self._max_frames or left + n > self._max_bytes:
            return _FULL
        left = self.queued_bytes
        i = head + kept  # the oldest droppable frame
        while count >= self._max_frames or left + n > self._max_bytes:
            left -= PyBytes_GET_SIZE(frames[i])
            count -= 1
            i += 1
        # Frames head + kept .. i - 1 go: at least one, as the queue was full.
        self.dropped_frames += i - head - kept
        new_head = i - kept
        if kept:
            frames[new_head] = frames[head]  # the partial head moves up, next to its successor
        for i in range(head, new_head):
            frames[i] = b""
        if new_head * 2 >= len(frames):  # at least as many dead slots as live frames: cut them
            del frames[:new_head]
            new_head = 0
        self._head = new_head
        frames.append(frame)
        self._set_queued(left + n)
        return _QUEUED

    cdef Py_ssize_t _send_now(self, bytes data) except -2:
        """One non-blocking send of ``data``: how many bytes the kernel took (0 for EAGAIN),
        or -1 when the socket failed; the outbox is then closed and ``wake`` was called."""
        cdef int fd
        cdef Py_ssize_t sent
        cdef int err
        if self._sock is None:
            if self._sender is None:
                return 0  # a stream: its writer task sends everything
            sent = self._sender(data)
            if sent >= 0:
                return sent
            err = <int>-sent
        else:
            fd = rt_socket_fd(self._sock) if self._head_fd else self._sock.fileno()
            while True:
                sent = send(
                    fd, PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data), RT_SEND_FLAGS
                )
                if sent >= 0:
                    return sent
                err = errno
                if err == EINTR:
                    PyErr_CheckSignals()  # like socket.send: a raising handler propagates
                    continue
                if err == EAGAIN or err == EWOULDBLOCK:
                    return 0
                break
        self.error = err
        self.closed = True
        self._corked = False
        self._frames = []
        self._head = 0
        self._partial_head = False
        self._set_queued(0)
        self._wake()
        return -1

    cdef int _queue_corked(self, bytes frame) except -1:
        """Queue ``frame`` in the empty queue, for the cork's flush to send."""
        cdef Cork cork
        self._frames.append(frame)
        self._partial_head = False
        self._set_queued(PyBytes_GET_SIZE(frame))
        if not self._corked:
            self._corked = True
            cork = self._cork
            cork._dirty.append(self)
            if len(cork._dirty) == 1 and cork.wake is not None:
                cork.wake()  # the first outbox noted since the last flush
        return _QUEUED

    cdef int _send_queued(self) except -1:
        """Send the queue at once, in one ``send``; what the kernel does not take stays
        queued (a partly sent frame as the partial head) and wakes the writer.

        Returns ``_SENT`` (all gone), ``_QUEUED`` (the writer has the rest) or ``_CLOSED``.
        """
        cdef list frames = self._frames
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t count = len(frames)
        cdef Py_ssize_t n, sent
        cdef bytes data
        if count - head == 1:
            data = frames[head]
        else:
            data = b"".join(frames[head:] if head else frames)
        n = PyBytes_GET_SIZE(data)
        sent = self._send_now(data)
        if sent < 0:
            return _CLOSED
        if sent >= n:
            frames.clear()
            self._head = 0
            self._partial_head = False
            self._set_queued(0)
            return _SENT
        if sent:
            self._frames = [data[sent:]]
            self._head = 0
            self._partial_head = True
            self._set_queued(n - sent)
        self._corked = False  # the writer task takes over
        self._wake()
        return _QUEUED

    cdef int _uncork(self) except -1:
        if not self._corked:
            return 0
        self._corked = False
        if self.closed or self.writing or len(self._frames) == self._head:
            return 0
        return self._send_queued()

    def take(self, max_bytes=-1, /):
        """Remove queued frames from the head and return them joined (``b""`` when none).

        Args:
            max_bytes: Take whole frames while they fit in this many bytes, but at least
                one (a batch for the writer, the rest staying queued and droppable); every
                frame when negative (the default).
        """
        cdef Py_ssize_t limit = max_bytes  # TypeError, OverflowError
        cdef list frames = self._frames
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t count = len(frames)
        cdef Py_ssize_t end, total, n
        if count == 0:
            return b""
        if 0 <= limit < self.queued_bytes and count - head > 1:
            end = head + 1
            total = PyBytes_GET_SIZE(frames[head])
            while end < count:
                n = PyBytes_GET_SIZE(frames[end])
                if total + n > limit:
                    break
                total += n
                end += 1
            data = frames[head] if end - head == 1 else b"".join(frames[head:end])
            del frames[:end]
            self._head = 0
            self._partial_head = False
            self._set_queued(self.queued_bytes - total)
            return data
        if count - head == 1:
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

    def drop_queued(self):
        """Drop every queued frame that may go, to free memory at once (a connection being
        shed): all but the rest of a partly sent frame, which the peer must get whole so
        that a close frame queued next still parses. The outbox stays open; the drops are
        not counted in ``dropped_frames``.

        Returns:
            How many frames were dropped.
        """
        cdef list frames = self._frames
        cdef Py_ssize_t live = len(frames) - self._head
        if live == 0:
            return 0
        if self._partial_head:
            rest = frames[self._head]
            self._frames = [rest]
            self._head = 0
            self._set_queued(PyBytes_GET_SIZE(rest))
            return live - 1
        self._frames = []
        self._head = 0
        self._set_queued(0)
        return live

    def close(self):
        """Mark the outbox closed and drop the queue; later pushes return ``PUSH_CLOSED``."""
        self.closed = True
        self._frames = []
        self._head = 0
        self._partial_head = False
        self._set_queued(0)


@cython.final
@cython.auto_pickle(False)
cdef class Cork:
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

    cdef list _dirty
    cdef public bint active
    cdef public object wake

    def __cinit__(self):
        self._dirty = []

    def __init__(self, *, wake=None):
        if wake is not None and not callable(wake):
            raise TypeError("wake must be callable or None")
        self.wake = wake

    @property
    def pending(self):
        """Outboxes noted since the last flush."""
        return len(self._dirty)

    def flush(self):
        """Send what the noted outboxes queued while corked; returns how many were noted.

        Raises:
            Exception: the first exception a ``wake`` callback raised (every outbox is
                flushed first).
        """
        cdef list dirty = self._dirty
        cdef Py_ssize_t n = len(dirty)
        if n == 0:
            return 0
        self._dirty = []
        error = None
        for ob in dirty:
            try:
                (<Outbox>ob)._uncork()
            except BaseException as exc:
                if error is None:
                    error = exc
        if error is not None:
            raise error
        return n

    @cython.always_allow_keywords(False)
    def after_task_step(self, task):
        """Trio instrument hook: flush at the end of every task step."""
        if self._dirty:
            self.flush()


cdef inline int _fan_one(object item, bytes frame, list full) except -1:
    cdef int result
    if type(item) is not Outbox:
        raise TypeError(f"expected Outbox, got {type(item).__name__}")
    result = (<Outbox>item)._push(frame)
    if result <= _QUEUED:
        return 1
    if result == _FULL:
        PyList_Append(full, item)
    return 0


def fan_out(outboxes, frame, full):
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
    cdef Py_ssize_t accepted = 0
    if type(frame) is not bytes:
        raise TypeError(_wrong_frame(frame))
    if not isinstance(full, list):
        raise TypeError(f"full must be a list, not {type(full).__name__}")
    if type(outboxes) is list:
        for item in <list>outboxes:  # re-reads the length: safe if wake() mutates the list
            accepted += _fan_one(item, <bytes>frame, <list>full)
    elif type(outboxes) is tuple:
        for item in <tuple>outboxes:
            accepted += _fan_one(item, <bytes>frame, <list>full)
    else:
        for item in outboxes:
            accepted += _fan_one(item, <bytes>frame, <list>full)
    return accepted


# Frame parsing ----------------------------------------------------------------------------
#
# FrameParser reads client-to-server frames (RFC 6455 section 5, server side, with or without
# permessage-deflate, RFC 7692) and keeps, byte for byte, the decisions of wsproto's
# FrameProtocol(client=False), which the tests use as the oracle (with its PerMessageDeflate
# extension when deflate=True, on streams without a control frame between the fragments of a
# compressed message: wsproto 1.3 forgets that the message is compressed there, and fails
# it with 1007). The rules, in the order they are checked:
#
# Header, checked as its bytes arrive (2 bytes, then the extended length, then the key):
#   1. opcode not in {0, 1, 2, 8, 9, 10}                                   -> 1002
#   2. control frame (8, 9, 10) without FIN                                -> 1002
#   3. control frame with a 7-bit length over 125                          -> 1002
#   4. 16-bit length under 126, 64-bit length under 65536 (not minimal)    -> 1002
#   5. 64-bit length with the most significant bit set                     -> 1002
#   6. RSV2 or RSV3 set, or RSV1 set without deflate                       -> 1002
#      with deflate: RSV1 set on a control frame or a continuation frame   -> 1002
#   7. MASK bit clear                                                      -> 1002
# Control frames wait for their whole payload, even between the fragments of a message:
#   8. ping, pong: an event with the payload; close: an empty payload gives 1005 and "",
#      a 1-byte payload -> 1002, a code outside 1000-1003, 1007-1013, 3000-4999 -> 1002
#      (wsproto 1.3 refuses 1014 too), a reason that is not UTF-8 -> 1007. After a close
#      event the parser is finished: it drops what it holds and ignores later data.
# Data frames, once the header is complete:
#   9. a continuation without a message in progress, or a text or binary frame inside one
#      -> 1002, when its first payload byte arrives (as wsproto), or at once when empty or
#      over the size limit;
#  10. message bytes so far + declared length > max_message_size -> 1009 at once, before
#      any payload (wsproto has no limit);
#  11. text is strict UTF-8 -> 1007, checked as payload arrives: whatever has come in is
#      decoded incrementally, so a bad byte fails on arrival, and a message ending inside a
#      character fails at its end.
# Compressed messages (deflate, RSV1 on the first frame): the event is EV_TEXT_DEFLATED or
# EV_BINARY_DEFLATED with the compressed payload of all fragments joined, unmasked; rules 9
# and 10 apply (the limit counts compressed bytes), rule 11 does not: the caller inflates the
# payload (appending 00 00 ff ff), caps its size and checks the text.
# Payload bytes are unmasked with the frame's key from the frame's first payload byte on. A
# whole single-frame message already in the buffer is unmasked straight into its event (the
# fast path); otherwise payload is unmasked into the message assembly as it arrives, so the
# parser never holds more than max_message_size bytes of message plus one unfinished frame
# header or control frame. After an error every next_event() raises it again.

EV_TEXT = 1
EV_BINARY = 2
EV_TEXT_DEFLATED = 3  # EV_TEXT + 2: a compressed message, deflate=True only
EV_BINARY_DEFLATED = 4
EV_CLOSE = 8
EV_PING = 9
EV_PONG = 10

cdef enum:
    _EV_TEXT = 1
    _EV_BINARY = 2
    _DEFLATED = 2  # EV_TEXT + _DEFLATED == EV_TEXT_DEFLATED, same for binary
    _EV_CLOSE = 8
    _SHRINK = 1 << 16  # free an emptied buffer above this size
    _MIN_ALLOC = 4096

cdef object _NEXT = object()  # a frame header was consumed: parse on


cdef inline bint _close_code_accepted(unsigned int code) noexcept:
    """Close codes a client may send us, as wsproto 1.3 accepts them."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1013 or 3000 <= code <= 4999


cdef inline Py_ssize_t _grown(Py_ssize_t cap, Py_ssize_t need) noexcept:
    """A new capacity of at least ``need``: double, at least ``_MIN_ALLOC``."""
    if cap < _MIN_ALLOC:
        cap = _MIN_ALLOC
    while cap < need and cap <= (<Py_ssize_t>1 << 61):
        cap *= 2
    return cap if cap >= need else need


@cython.final
@cython.auto_pickle(False)
cdef class FrameParser:
    """An incremental parser of client-to-server frames: bytes in, whole messages out.

    The rules are listed above this class. Feed it bytes as they arrive, in any chunks, then
    call ``next_event`` until it returns ``None``.

    Args:
        max_message_size: The most payload bytes a text or binary message may have, over all
            its fragments; a frame that would exceed it fails with 1009 from its header on.
            For a compressed message, the compressed bytes.
        deflate: permessage-deflate was negotiated: RSV1 on the first frame of a message
            marks it compressed, and it comes out as ``EV_TEXT_DEFLATED`` or
            ``EV_BINARY_DEFLATED``, not inflated.

    Raises:
        TypeError: ``max_message_size`` is not an integer.
        ValueError: ``max_message_size`` is negative.
    """

    cdef unsigned char *_buf  # received bytes; [_start, _end) are not consumed yet
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef unsigned char *_msg  # unmasked payload of the message in progress
    cdef Py_ssize_t _msg_cap
    cdef Py_ssize_t _msg_len
    cdef Py_ssize_t _valid  # _msg[:_valid] is known to be whole UTF-8 characters
    cdef Py_ssize_t _max
    cdef int _msg_op  # the event kind of the message in progress (EV_TEXT ...), else 0
    cdef bint _deflate  # permessage-deflate: RSV1 allowed on the first frame of a message
    cdef bint _in_frame  # inside the payload of a data frame
    cdef bint _fin
    cdef uint64_t _remaining  # payload bytes of that frame still to come
    cdef unsigned char _key[4]
    cdef unsigned int _phase  # payload bytes of that frame so far, modulo 4
    cdef bint _closed
    cdef object _error  # None, or (code, reason)

    def __init__(self, max_message_size, *, bint deflate=False):
        cdef Py_ssize_t size = max_message_size  # TypeError, OverflowError
        if size < 0:
            raise ValueError(f"max_message_size must not be negative, not {size}")
        self._release()
        self._max = size
        self._deflate = deflate
        self._closed = False
        self._error = None

    def __dealloc__(self):
        free(self._buf)
        free(self._msg)

    @property
    def buffered(self):
        """Bytes held: received but not parsed yet, plus the message assembled so far."""
        return self._end - self._start + self._msg_len

    def feed(self, data):
        """Append received bytes; ignored once the parser is finished or failed.

        Raises:
            TypeError: ``data`` is not a buffer (``str``).
            BufferError: ``data`` is not C-contiguous.
        """
        cdef Py_buffer view
        if type(data) is bytes:
            if not self._closed and self._error is None:
                self._append(<const unsigned char *>PyBytes_AS_STRING(data),
                             PyBytes_GET_SIZE(data))
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)  # TypeError, BufferError
        try:
            if not self._closed and self._error is None:
                self._append(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef int _append(self, const unsigned char *src, Py_ssize_t n) except -1:
        cdef Py_ssize_t live = self._end - self._start
        cdef Py_ssize_t cap
        cdef unsigned char *grown
        if n == 0:
            return 0
        if self._end > self._cap - n:
            if self._start and self._start >= live:  # the copy costs no more than was parsed
                memmove(self._buf, self._buf + self._start, <size_t>live)
                self._start = 0
                self._end = live
            if self._end > self._cap - n:
                if n > PY_SSIZE_T_MAX - self._end:
                    raise MemoryError()
                cap = _grown(self._cap, self._end + n)
                grown = <unsigned char *>realloc(self._buf, <size_t>cap)
                if grown is NULL:
                    raise MemoryError()
                self._buf = grown
                self._cap = cap
        memcpy(self._buf + self._end, src, <size_t>n)
        self._end += n
        return 0

    def next_event(self):
        """Parse the next complete event.

        Returns:
            ``(EV_TEXT, str)``, ``(EV_BINARY, bytes)``, ``(EV_PING, bytes)``,
            ``(EV_PONG, bytes)``, ``(EV_CLOSE, code, reason)``, with ``deflate``
            ``(EV_TEXT_DEFLATED, bytes)`` or ``(EV_BINARY_DEFLATED, bytes)`` (the compressed
            payload, without the final ``00 00 ff ff``), or ``None`` when more bytes are
            needed or the parser is finished.

        Raises:
            ProtocolError: The client broke RFC 6455 (``code`` 1002 or 1007) or sent a message
                over ``max_message_size`` (1009); raised again by every later call.
        """
        if self._error is not None:
            raise _ProtocolError(*self._error)
        if self._closed:
            return None
        while True:
            if self._in_frame:
                if not self._read_payload():
                    self._pause()
                    return None
                if not self._fin:
                    if self._msg_op == _EV_TEXT:
                        self._validate()
                    continue
                return self._finish_message()
            event = self._read_frame()
            if event is None:
                self._pause()
                return None
            if event is not _NEXT:
                return event

    cdef object _read_frame(self):
        """Parse a frame header; return an event, ``_NEXT`` (in the payload now) or ``None``."""
        cdef Py_ssize_t avail = self._end - self._start
        cdef unsigned char *p = self._buf + self._start
        cdef unsigned char first, second
        cdef unsigned int opcode
        cdef bint control, too_big
        cdef uint64_t length
        cdef Py_ssize_t head, n
        cdef bytes data
        if avail < 2:
            return None
        first = p[0]
        second = p[1]
        opcode = first & 0x0F
        if not (opcode <= 0x2 or 0x8 <= opcode <= 0xA):
            raise self._fail(1002, "invalid opcode")
        control = opcode >= 0x8
        if control and not first & 0x80:
            raise self._fail(1002, "fragmented control frame")
        length = second & 0x7F
        if control and length > _MAX_CONTROL_PAYLOAD:
            raise self._fail(1002, "control frame too long")
        head = 2
        if length == 126:
            if avail < 4:
                return None
            length = (<uint64_t>p[2] << 8) | p[3]
            if length < 126:
                raise self._fail(1002, "payload length not minimally encoded")
            head = 4
        elif length == 127:
            if avail < 10:
                return None
            length = rt_load_be64(p + 2)
            if length < 0x10000:
                raise self._fail(1002, "payload length not minimally encoded")
            if length >> 63:
                raise self._fail(1002, "payload length over 2**63")
            head = 10
        if first & 0x70:
            if first & 0x30 or not self._deflate:
                raise self._fail(1002, "reserved bits set")
            if control:
                raise self._fail(1002, "RSV1 set on a control frame")
            if not opcode:
                raise self._fail(1002, "RSV1 set on a continuation frame")
        if not second & 0x80:
            raise self._fail(1002, "unmasked frame")
        head += 4
        if avail < head:
            return None
        avail -= head  # payload bytes here
        if control:
            if <uint64_t>avail < length:
                return None
            n = <Py_ssize_t>length
            data = PyBytes_FromStringAndSize(NULL, n)
            rt_unmask(<unsigned char *>PyBytes_AS_STRING(data), p + head, n, p + head - 4, 0)
            self._start += head + n
            if opcode == _EV_CLOSE:
                return self._close_event(data)
            return (<int>opcode, data)
        too_big = length > <uint64_t>(self._max - self._msg_len)
        if (opcode == 0) != (self._msg_op != 0):
            if length and not avail and not too_big:
                return None  # wsproto decides on the first payload byte
            if opcode:
                raise self._fail(1002, "expected a continuation frame")
            raise self._fail(1002, "continuation frame without a message")
        if too_big:
            raise self._fail(1009, "message too big")
        if length and not avail:
            return None
        if first & 0x80 and not self._msg_op and <uint64_t>avail >= length:
            # Fast path: a whole message, unmasked straight into its event.
            n = <Py_ssize_t>length
            self._start += head + n
            p += head
            if opcode == _EV_BINARY or first & 0x40:  # binary, or compressed (deflate)
                data = PyBytes_FromStringAndSize(NULL, n)
                rt_unmask(<unsigned char *>PyBytes_AS_STRING(data), p, n, p - 4, 0)
                if first & 0x40:
                    return (<int>opcode + _DEFLATED, data)
                return (_EV_BINARY, data)
            rt_unmask(p, p, n, p - 4, 0)  # in place: these bytes are consumed
            try:
                return (_EV_TEXT, PyUnicode_DecodeUTF8(<char *>p, n, NULL))
            except UnicodeDecodeError:
                raise self._fail(1007, "invalid UTF-8 in text message") from None
        self._start += head
        memcpy(self._key, p + head - 4, 4)
        self._in_frame = True
        self._fin = (first & 0x80) != 0
        self._remaining = length
        self._phase = 0
        if opcode:
            self._msg_op = <int>opcode + _DEFLATED if first & 0x40 else <int>opcode
        return _NEXT

    cdef int _read_payload(self) except -1:
        """Unmask what has arrived of the frame into the message; 1 once it is whole."""
        cdef Py_ssize_t n = self._end - self._start
        cdef Py_ssize_t cap
        cdef unsigned char *grown
        if self._remaining:
            if <uint64_t>n > self._remaining:
                n = <Py_ssize_t>self._remaining
            if n == 0:
                return 0
            if self._msg_len + n > self._msg_cap:  # never past _max: checked at the header
                cap = _grown(self._msg_cap, self._msg_len + n)
                if cap > self._max:
                    cap = self._max
                grown = <unsigned char *>realloc(self._msg, <size_t>cap)
                if grown is NULL:
                    raise MemoryError()
                self._msg = grown
                self._msg_cap = cap
            rt_unmask(self._msg + self._msg_len, self._buf + self._start, n, self._key,
                      self._phase)
            self._msg_len += n
            self._start += n
            self._phase = (self._phase + <unsigned int>n) & 3
            self._remaining -= <uint64_t>n
            if self._remaining:
                if self._msg_op == _EV_TEXT:
                    self._validate()
                return 0
        self._in_frame = False
        return 1

    cdef int _validate(self) except -1:
        """Decode the text received since the last check, keeping a split character for later."""
        cdef Py_ssize_t consumed = 0
        try:
            PyUnicode_DecodeUTF8Stateful(
                <char *>self._msg + self._valid, self._msg_len - self._valid, NULL, &consumed
            )
        except UnicodeDecodeError:
            raise self._fail(1007, "invalid UTF-8 in text message") from None
        self._valid += consumed
        return 0

    cdef object _finish_message(self):
        cdef int opcode = self._msg_op
        cdef Py_ssize_t n = self._msg_len
        self._msg_op = 0
        self._msg_len = 0
        self._valid = 0
        if opcode != _EV_TEXT:  # binary, or compressed (deflate)
            result = (opcode, PyBytes_FromStringAndSize(<char *>self._msg, n))
        else:
            try:
                result = (_EV_TEXT, PyUnicode_DecodeUTF8(<char *>self._msg, n, NULL))
            except UnicodeDecodeError:
                raise self._fail(1007, "invalid UTF-8 in text message") from None
        if self._msg_cap > _SHRINK:
            free(self._msg)
            self._msg = NULL
            self._msg_cap = 0
        return result

    cdef object _close_event(self, bytes payload):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(payload)
        cdef unsigned int code
        if n == 0:
            code = 1005
            reason = ""
        elif n == 1:
            raise self._fail(1002, "close frame with a 1-byte payload")
        else:
            code = (<unsigned int>p[0] << 8) | p[1]
            if not _close_code_accepted(code):
                raise self._fail(1002, "invalid close code")
            try:
                reason = PyUnicode_DecodeUTF8(<char *>p + 2, n - 2, NULL)
            except UnicodeDecodeError:
                raise self._fail(1007, "invalid UTF-8 in close reason") from None
        self._closed = True
        self._release()
        return (_EV_CLOSE, code, reason)

    cdef void _pause(self) noexcept:
        """Compact the buffer before waiting for more bytes; the copy is paid by parsed ones."""
        cdef Py_ssize_t live = self._end - self._start
        if live == 0:
            self._start = self._end = 0
            if self._cap > _SHRINK:
                free(self._buf)
                self._buf = NULL
                self._cap = 0
        elif self._start and self._start >= live:
            memmove(self._buf, self._buf + self._start, <size_t>live)
            self._start = 0
            self._end = live

    cdef void _release(self) noexcept:
        free(self._buf)
        free(self._msg)
        self._buf = self._msg = NULL
        self._cap = self._start = self._end = 0
        self._msg_cap = self._msg_len = self._valid = 0
        self._msg_op = 0
        self._in_frame = False

    cdef object _fail(self, int code, str reason):
        self._error = (code, reason)
        self._release()
        return _ProtocolError(code, reason)
