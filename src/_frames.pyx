# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True, embedsignature=True
"""Compiled hot path of riverside-trio, built as ``riverside_trio._frames_c``.

Same names, same results, same exception types as ``riverside_trio/_frames_py.py``; the selector
``riverside_trio.frames`` picks one of the two. Any change here must be made there too, and
``tests/test_frames.py`` compares them on random inputs.

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
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

import _socket

cdef extern from *:
    """
    #include <errno.h>
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
    """
    const int RT_SEND_FLAGS
    const int EWOULDBLOCK
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int rt_socket_fd(object sock)


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


# Frame encoding ---------------------------------------------------------------------------

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


def encode_frame(opcode, payload, fin=True):
    """Encode one server-to-client frame (unmasked, RSV bits clear).

    Args:
        opcode: One of the ``OP_*`` constants.
        payload: The payload, any C-contiguous buffer; it is copied.
        fin: Whether this is the final fragment of its message.

    Returns:
        The header followed by the payload.

    Raises:
        TypeError: ``opcode`` is not an integer, or ``payload`` is not a buffer (``str``).
        BufferError: ``payload`` is not C-contiguous.
        ValueError: Unknown opcode, or a control frame (close, ping, pong) with a payload
            over 125 bytes or ``fin=False``.
    """
    cdef int op = _check_opcode(opcode)
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
        final_bit = 0x80 if fin else 0
        if op >= 0x8 and (n > _MAX_CONTROL_PAYLOAD or not final_bit):
            raise ValueError(
                "control frames must be final and carry at most 125 bytes "
                f"(opcode {op:#x}, {n} bytes, fin={bool(fin)})"
            )
        return _build_frame(<unsigned char>(final_bit | op), src, n)
    finally:
        if release:
            PyBuffer_Release(&view)


def encode_close(code=None, reason=""):
    """Encode a whole close frame.

    Args:
        code: A close code a server may send (1000-1003, 1007-1014, 3000-4999), or ``None``
            for a close frame without a payload.
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
    if not (1000 <= value <= 1003 or 1007 <= value <= 1014 or 3000 <= value <= 4999):
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


# Outboxes ---------------------------------------------------------------------------------

cdef inline str _wrong_frame(object frame):
    return f"Argument 'frame' has incorrect type (expected bytes, got {type(frame).__name__})"


@cython.final
@cython.auto_pickle(False)
cdef class Outbox:
    """A bounded queue of encoded frames for one connection, with a direct write path.

    While nothing is queued and no writer task owns the socket, ``push`` writes straight to
    the socket without blocking; what the kernel does not take is queued, and ``wake`` is
    called so the writer task comes to send it. Frame order is always preserved.

    Args:
        sock: The connection's socket, non-blocking (``gettimeout() == 0.0``). The outbox
            only sends on it; closing it stays the owner's job.
        max_frames: The most frames queued at once (a partly sent frame is always queued).
        max_bytes: The most bytes queued at once (same exception).
        wake: Called with no arguments when the writer task has work to do.

    Raises:
        TypeError: ``wake`` is not callable.
        ValueError: A negative limit, or a blocking socket.
    """

    cdef object _sock
    cdef bint _head_fd  # read the descriptor from the socket object itself
    cdef Py_ssize_t _max_frames
    cdef Py_ssize_t _max_bytes
    cdef object _wake
    cdef list _frames
    cdef public bint writing
    cdef readonly bint closed
    cdef readonly int error
    cdef readonly Py_ssize_t queued_bytes

    def __cinit__(self):
        self._frames = []

    def __init__(self, sock, max_frames, max_bytes, wake):
        cdef Py_ssize_t frames_limit = max_frames
        cdef Py_ssize_t bytes_limit = max_bytes
        if frames_limit < 0 or bytes_limit < 0:
            raise ValueError("max_frames and max_bytes must not be negative")
        if not callable(wake):
            raise TypeError("wake must be callable")
        if sock.gettimeout() != 0.0:
            raise ValueError("the socket must be non-blocking")
        self._head_fd = isinstance(sock, _socket.socket) and rt_socket_fd(sock) == sock.fileno()
        self._sock = sock
        self._max_frames = frames_limit
        self._max_bytes = bytes_limit
        self._wake = wake

    @property
    def queued_frames(self):
        """Frames waiting for the writer task."""
        return len(self._frames)

    @cython.always_allow_keywords(False)  # METH_O: ``frame`` is positional-only, as in the twin
    def push(self, frame):
        """Send or queue one encoded frame; never blocks.

        Returns:
            ``PUSH_SENT`` (all written now), ``PUSH_QUEUED`` (the writer task will send it),
            ``PUSH_FULL`` (over a limit; nothing changed) or ``PUSH_CLOSED`` (closed, or the
            direct send failed: see ``error``).

        Raises:
            TypeError: ``frame`` is not ``bytes``.
        """
        if type(frame) is not bytes:
            raise TypeError(_wrong_frame(frame))
        return self._push(<bytes>frame)

    cdef int _push(self, bytes frame) except -1:
        cdef Py_ssize_t n, sent
        cdef int fd, err
        cdef list frames = self._frames
        cdef Py_ssize_t count = len(frames)
        if self.closed:
            return _CLOSED
        if count == 0 and not self.writing:
            fd = rt_socket_fd(self._sock) if self._head_fd else self._sock.fileno()
            n = PyBytes_GET_SIZE(frame)
            while True:
                sent = send(fd, PyBytes_AS_STRING(frame), <size_t>n, RT_SEND_FLAGS)
                if sent >= 0:
                    break
                err = errno
                if err == EINTR:
                    PyErr_CheckSignals()  # like socket.send: a raising handler propagates
                    continue
                if err == EAGAIN or err == EWOULDBLOCK:
                    sent = 0
                    break
                self.error = err
                self.closed = True
                self._frames = []
                self.queued_bytes = 0
                self._wake()
                return _CLOSED
            if sent >= n:
                return _SENT
            rest = frame[sent:] if sent else frame
            frames.append(rest)
            self.queued_bytes = n - sent
            self._wake()
            return _QUEUED
        n = PyBytes_GET_SIZE(frame)
        if count >= self._max_frames or self.queued_bytes + n > self._max_bytes:
            return _FULL
        frames.append(frame)
        self.queued_bytes += n
        if count == 0 and not self.writing:
            self._wake()
        return _QUEUED

    def take(self):
        """Remove every queued frame and return them joined (``b""`` when none)."""
        cdef list frames = self._frames
        cdef Py_ssize_t count = len(frames)
        if count == 0:
            return b""
        data = frames[0] if count == 1 else b"".join(frames)
        self._frames = []
        self.queued_bytes = 0
        return data

    def close(self):
        """Mark the outbox closed and drop the queue; later pushes return ``PUSH_CLOSED``."""
        self.closed = True
        self._frames = []
        self.queued_bytes = 0


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
