"""Fuzz targets: every piece of riverside-trio that parses bytes a client controls.

Each target takes the fuzzer's bytes and returns normally, raises :class:`Mismatch` (the
compiled parser and its pure-Python twin disagree) or raises anything else (a crash: an
exception that should not escape, or a broken invariant, as ``AssertionError``). The bytes
are read from the front: option bytes first (parser settings, server settings), then the
split points (``Input.chunks``), then the data, so the fuzzer chooses all of them and an
input replays the same way with or without atheris (``fuzz/run.py --replay``).

- ``parser``: ``FrameParser`` of ``_frames_c`` against the twin in ``wire/_parser_py.py``,
  same bytes in the same chunks, with a chosen ``max_message_size`` and ``deflate``: the
  same events, the same ``buffered`` count and the same error (code and reason) after
  every chunk, and the same behaviour once finished or failed. (The parser reads client
  frames only, so there is no role to choose.)
- ``head``: the front door's request head reader (``server/_frontdoor.handle_request``)
  over an in-memory stream: no exception escapes it, every answer is one well-formed
  HTTP/1.1 response with a real status (``101`` only for a valid upgrade, with the right
  ``Sec-WebSocket-Accept``), incomplete heads time out (``MockClock``: no real waiting).
- ``server``: end to end, a running server fed over ``Server.serve_stream``: the same
  checks on the response, then well-formed server frames, a valid close code, nothing
  logged at error level, ``terminate`` once per upgraded connection, nothing left
  registered, and the server still answers ``/health`` afterwards.
- ``inflate``: ``wire/deflate.Inflater`` on raw bytes and on real compressed messages
  (the server's own compressor, a client's ``compressobj`` with or without context
  takeover, whole deflate streams): never more than its cap, only ``ProtocolError`` 1007 or
  1009, and the same bytes as an uncapped ``zlib`` wherever that fits the cap.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import sys
import zlib
from collections.abc import Callable, MutableMapping
from http import HTTPStatus
from typing import Any

import h11
import structlog
import trio
import trio.testing

import riverside_trio
from riverside_trio import Accept, AuthError, AuthRequest, Config, Handler, HTTPResponse
from riverside_trio.errors import ProtocolError
from riverside_trio.server._frontdoor import handle_request
from riverside_trio.server._transport import StreamTransport
from riverside_trio.wire import _frames_py
from riverside_trio.wire.deflate import Compressor, Inflater

__all__ = ["SEEDS", "TARGETS", "Input", "Mismatch", "encode"]


class Mismatch(AssertionError):
    """The compiled parser and its pure-Python twin disagree on an input."""


# The fuzzer's bytes --------------------------------------------------------------------------


class Input:
    """The fuzzer's bytes, read from the front; reads past the end give zeros."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        """The next byte (0 past the end)."""
        pos = self._pos
        self._pos += 1
        return self._data[pos] if pos < len(self._data) else 0

    def chunks(self) -> list[bytes]:
        """The rest, split where the fuzzer says: a count (0-15), that many chunk lengths
        (0-255 each; 0 is an empty read), then the data; the last chunk takes what is left."""
        lengths = [self.byte() for _ in range(self.byte() & 15)]
        data = self._data[self._pos :]
        out = []
        pos = 0
        for n in lengths:
            out.append(data[pos : pos + n])
            pos += n
        out.append(data[pos:])
        return out


def encode(options: bytes, chunks: list[bytes]) -> bytes:
    """The input that :class:`Input` reads back as ``options`` then ``chunks`` (a seed)."""
    assert len(chunks) <= 16 and all(len(c) < 256 for c in chunks[:-1])
    return options + bytes([len(chunks) - 1, *map(len, chunks[:-1])]) + b"".join(chunks)


# parser: compiled against the twin ---------------------------------------------------------

PARSER_SIZES = (0, 1, 2, 125, 126, 65535, 65536, sys.maxsize)

Trace = list[tuple[Any, ...]]


def _compiled() -> Any:
    try:
        from riverside_trio import _frames_c
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise RuntimeError(
            "the parser target compares the compiled parser with its twin: build it with "
            "RIVERSIDE_BUILD_EXTENSIONS=1 python setup.py build_ext --inplace"
        ) from exc
    return _frames_c


def trace_parser(
    parser_type: Any, size: int, deflate: bool, chunks: list[bytes], kind: int
) -> Trace:
    """What one parser does with ``chunks``: events, ``buffered`` and errors, step by step."""
    parser = parser_type(size, deflate=deflate)
    trace: Trace = []
    for chunk in [*chunks, b""]:
        data: bytes | bytearray | memoryview = (
            chunk if kind == 0 else bytearray(chunk) if kind == 1 else memoryview(chunk)
        )
        parser.feed(data)
        try:
            while (event := parser.next_event()) is not None:
                trace.append(("event", event))
        except ProtocolError as exc:
            trace.append(("error", exc.code, exc.reason))
            try:
                parser.next_event()
            except ProtocolError as again:  # every later call raises it again
                trace.append(("again", again.code, again.reason))
            else:
                trace.append(("again", None))
        trace.append(("buffered", parser.buffered))
    return trace


def parser(data: bytes, compiled: Any = None, twin: Any = None) -> None:
    """The compiled ``FrameParser`` and the twin, on the same chunks, do the same."""
    inp = Input(data)
    flags = inp.byte()
    deflate = bool(flags & 1)
    size = PARSER_SIZES[flags >> 1 & 7]
    if flags & 0x10:  # a size of the fuzzer's own
        size = inp.byte() << 8 | inp.byte()
    kind = (flags >> 5) % 3  # feed bytes, bytearray or memoryview
    chunks = inp.chunks()
    a = trace_parser(compiled or _compiled().FrameParser, size, deflate, chunks, kind)
    b = trace_parser(twin or _frames_py.FrameParser, size, deflate, chunks, kind)
    if a != b:
        at = (
            next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
            if len(a) == len(b)
            else min(len(a), len(b))
        )
        raise Mismatch(
            f"max_message_size={size} deflate={deflate} chunks={[len(c) for c in chunks]}: "
            f"at step {at} compiled {a[at : at + 2]} vs twin {b[at : at + 2]}"
        )


# head and server: the HTTP front door ------------------------------------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEADER_SIZES = (1024, 1100, 2048, 16384)
ACCEPTED_CLOSE = frozenset([*range(1000, 1004), *range(1007, 1014), *range(3000, 5000)])
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([ -~]*)")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class FuzzHandler(Handler):
    """Echoes messages; refuses ``?token=deny`` (401), picks the first subprotocol offered
    with ``?sub``, answers ``/echo`` plain requests with their body."""

    def __init__(self) -> None:
        self.terminated = 0

    async def authenticate(self, req: AuthRequest) -> Accept:
        if req.query.get("token") == "deny":
            raise AuthError.bearer("fuzz")
        sub = req.subprotocols[0] if "sub" in req.query and req.subprotocols else None
        return Accept(user_id="fuzz", subprotocol=sub)

    async def handle_message(self, msg: Any, conn: Any) -> None:
        conn.send(msg)

    async def terminate(self, reason: Any, conn: Any) -> None:
        self.terminated += 1

    async def handle_http(self, req: Any) -> HTTPResponse | None:
        if req.path != "/echo":
            return None
        return HTTPResponse(200, req.body, content_type="application/octet-stream")


class PlainHandler(Handler):
    """The default ``authenticate`` (the path that watches for no hang-up)."""


def _config(flags: int, **extra: Any) -> Config:
    return Config(
        host="127.0.0.1",
        port=0,
        permessage_deflate=bool(flags & 2),
        allowed_origins=("https://ok.example",) if flags & 4 else None,
        path="/*" if flags & 8 else "/ws",
        metrics_path=None if flags & 16 else "/metrics",
        max_header_size=HEADER_SIZES[flags >> 5 & 3],
        **extra,
    )


def _requests(raw: bytes) -> list[h11.Request]:
    """The requests in ``raw`` one after another, as h11 reads them (each one's body read
    to its end before the next, as the server does on a kept-alive connection)."""
    out: list[h11.Request] = []
    while True:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        conn.receive_data(raw)
        try:
            event = conn.next_event()
            if not isinstance(event, h11.Request):
                return out
            out.append(event)
            while (event := conn.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.EndOfMessage):
                    break
            else:
                return out
        except h11.RemoteProtocolError:
            return out
        raw = conn.trailing_data[0]


def check_response(raw: bytes, sent: bytes, config: Config) -> tuple[int | None, bytes]:
    """Check that ``raw`` is empty or whole HTTP/1.1 responses, all but the last kept alive
    (``Connection: keep-alive``), one per request sent; return the last one's status and
    what follows a ``101`` (the server's frames)."""
    requests = _requests(sent)
    status: int | None = None
    for index in range(len(requests) + 1):
        if not raw:
            return status, b""
        request = requests[index] if index < len(requests) else None
        status, raw, kept = _check_one(raw, request, config)
        if not kept:
            return status, raw
    raise AssertionError(f"more responses than requests: {raw[:200]!r}")


def _check_one(raw: bytes, request: h11.Request | None, config: Config) -> tuple[int, bytes, bool]:
    """One response at the start of ``raw``: its status, what follows it, and whether it
    kept the connection alive."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"response head not terminated: {raw[:200]!r}"
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    assert match, f"bad status line {status_line!r}"
    status = int(match[1])
    assert HTTPStatus(status).phrase.encode() == match[2], f"bad reason phrase: {status_line!r}"
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, colon, value = line.partition(b": ")
        assert colon and _TOKEN.fullmatch(name), f"bad header line {line!r}"
        assert b"\r" not in value and b"\n" not in value
        headers.setdefault(name.lower(), []).append(value)
    if status == 101:
        assert request is not None, f"101 for what h11 does not read as a request: {raw!r}"
        keys = [v for k, v in request.headers if k == b"sec-websocket-key"]
        assert request.method == b"GET" and request.http_version == b"1.1", request
        assert len(keys) == 1, f"101 with Sec-WebSocket-Key {keys!r}"
        want = base64.b64encode(hashlib.sha1(keys[0].strip() + GUID).digest())
        assert headers.get(b"sec-websocket-accept") == [want], headers
        assert headers.get(b"upgrade") == [b"websocket"], headers
        assert [v for k, v in request.headers if k == b"sec-websocket-version"] == [b"13"]
        assert len(request.headers) <= config.max_headers, "101 over max_headers"
        body = [v for k, v in request.headers if k in (b"content-length", b"transfer-encoding")]
        assert all(v.isdigit() and int(v) == 0 for v in body), f"101 to a body: {body!r}"
        return status, rest, False
    assert status >= 200, f"informational status {status} is not an answer"
    lengths = headers.get(b"content-length", [])
    assert len(lengths) == 1 and lengths[0].isdigit(), headers
    if headers.get(b"connection") == [b"keep-alive"]:
        assert request is not None and request.http_version == b"1.1", "kept alive: no 1.1"
        length = 0 if request.method == b"HEAD" else int(lengths[0])
        assert len(rest) >= length, f"Content-Length {lengths[0]!r}, body {len(rest)}"
        return status, rest[length:], True
    assert headers.get(b"connection") == [b"close"], headers
    if request is not None and request.method == b"HEAD":
        # (a head that is too big or too slow may be refused before its method is known)
        assert rest == b"" or (status in (408, 431) and int(lengths[0]) == len(rest)), (
            f"a body after the head of a HEAD response: {rest[:100]!r}"
        )
    else:
        assert int(lengths[0]) == len(rest), f"Content-Length {lengths[0]!r}, body {len(rest)}"
    return status, b"", False


async def _talk(
    stream: trio.abc.HalfCloseableStream,
    chunks: list[bytes],
    eof: bool,
    out: bytearray,
    done: trio.Event,
) -> None:
    """The client: send the chunks (then EOF, if ``eof``), read everything until the end,
    including when the server stopped reading before all was sent."""
    try:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for chunk in chunks:
                await stream.send_all(chunk)
                await trio.lowlevel.checkpoint()  # let the server read each chunk on its own
            if eof:
                await stream.send_eof()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some():
                out += data
    finally:
        done.set()


def _schedule(seed: int) -> None:
    """Make Trio's scheduling order a function of ``seed`` (it reverses each batch of ready
    tasks at random), so an input replays the same way; the fuzzer chooses the seed."""
    rng = getattr(getattr(trio._core, "_run", None), "_r", None)  # private; absent: random
    if rng is not None:
        rng.seed(seed)


def head(data: bytes) -> None:
    """The request head reader answers every input with one valid response, or nothing."""
    inp = Input(data)
    flags = inp.byte()
    chunks = inp.chunks()
    config = _config(flags)
    handler: Handler = PlainHandler() if flags & 128 else FuzzHandler()
    out = bytearray()
    _schedule(flags)

    async def main() -> None:
        server = riverside_trio.Server(handler, config)
        client, server_end = trio.testing.memory_stream_pair()
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_talk, client, chunks, bool(flags & 1), out, done)
            slot = server._core.admission.admit("fuzz")
            assert slot is not None
            transport = StreamTransport(server_end)
            conn = await handle_request(server._core, transport, ("fuzz", 1), slot)
            slot.release()
            await server_end.aclose()
            await done.wait()
        assert server._core.handshakes == 0, "a handshake slot was not given back"
        assert (conn is not None) == out.startswith(b"HTTP/1.1 101 "), "101 without a connection"

    with structlog.testing.capture_logs() as logs:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    _no_errors(logs)
    check_response(bytes(out), b"".join(chunks), config)


def _no_errors(logs: list[MutableMapping[str, Any]]) -> None:
    errors = [e for e in logs if e.get("log_level") in ("error", "critical", "exception")]
    assert not errors, f"logged: {errors}"


def check_frames(data: bytes) -> None:
    """``data`` is whole server frames (unmasked, valid opcodes); a close frame, if any,
    comes last and carries a code a server may send."""
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 2, f"truncated frame header at {pos}"
        first, second = data[pos], data[pos + 1]
        opcode, length = first & 15, second & 127
        assert opcode in (0, 1, 2, 8, 9, 10) and not second & 128 and not first & 0x30, data
        pos += 2
        if length >= 126:
            width = 2 if length == 126 else 8
            length = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        payload = data[pos : pos + length]
        assert len(payload) == length, "truncated frame payload"
        pos += length
        if opcode == 8:
            assert pos == len(data), "bytes after the close frame"
            if payload:
                code = int.from_bytes(payload[:2], "big")
                assert len(payload) >= 2 and code in ACCEPTED_CLOSE, f"close code {code}"
                payload[2:].decode("utf-8")


_UPGRADE = (
    b"GET /ws?sub HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
)
MESSAGE_SIZES = (1, 125, 1024, 65536)


def server(data: bytes) -> None:
    """End to end: a running server, a client over ``serve_stream``, then a health check."""
    inp = Input(data)
    flags = inp.byte()
    more = inp.byte()
    chunks = inp.chunks()
    if more & 1:  # a valid upgrade first: the rest is WebSocket frames
        chunks.insert(0, _UPGRADE)
    config = _config(
        flags,
        max_message_size=MESSAGE_SIZES[more >> 1 & 3],
        # short timers: a client that stops sending meets pings, then the idle timeout
        idle_timeout=3.0,
        ping_interval=1.0,
        ping_timeout=1.0,
        close_timeout=1.0,
    )
    handler = FuzzHandler()
    out = bytearray()
    health = bytearray()
    _schedule(more)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            srv: riverside_trio.Server = await nursery.start(riverside_trio.serve, handler, config)
            client, server_end = trio.testing.memory_stream_pair()
            done = trio.Event()
            nursery.start_soon(_talk, client, chunks, bool(flags & 1), out, done)
            await srv.serve_stream(server_end, ("fuzz", 1))
            await done.wait()
            assert srv.connection_count == 0 and srv._core.handshakes == 0, "a slot leaked"
            client, server_end = trio.testing.memory_stream_pair()
            done = trio.Event()
            check = [b"GET /health HTTP/1.1\r\nHost: fuzz\r\n\r\n"]
            nursery.start_soon(_talk, client, check, True, health, done)
            await srv.serve_stream(server_end, ("fuzz", 2))
            await done.wait()
            srv.shutdown()

    with structlog.testing.capture_logs() as logs:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    _no_errors(logs)
    status, frames = check_response(bytes(out), b"".join(chunks), config)
    assert handler.terminated == (status == 101), f"terminate ran {handler.terminated} times"
    check_frames(frames)
    assert health.startswith(b"HTTP/1.1 200 "), f"no health afterwards: {bytes(health)[:100]!r}"


# inflate: the capped inflater ----------------------------------------------------------------

INFLATE_SIZES = (1, 2, 100, 1024, 4096, 65536, 1 << 20, 1 << 22)
_TAIL = b"\x00\x00\xff\xff"


def _compressed(messages: list[bytes], mode: int, flags: int, reset: bool) -> list[bytes]:
    """``messages`` compressed the way a client (or our own compressor) would."""
    if mode == 1:
        ours = Compressor(flags >> 6)
        return [ours.compress(m) for m in messages]
    if mode == 2:  # a client with a 9-15 bit window, keeping its context unless reset
        wbits, level = 9 + (flags >> 6) * 2, flags >> 3 & 7
        c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
        out = []
        for m in messages:
            if reset:
                c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
            data = c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH)
            out.append(data[:-4] if data.endswith(_TAIL) else data)
        return out
    return [zlib.compress(m, wbits=-15) for m in messages]  # whole deflate streams


def inflate(data: bytes) -> None:
    """The inflater never returns more than its cap and raises only 1007 and 1009."""
    inp = Input(data)
    flags = inp.byte()
    reset = bool(flags & 1)
    mode = flags >> 1 & 3  # 0 raw bytes; 1, 2, 3 compressed (see _compressed)
    cap = INFLATE_SIZES[inp.byte() & 7]
    messages = inp.chunks()
    payloads = messages if mode == 0 else _compressed(messages, mode, flags, reset)
    inflater = Inflater(cap, reset)
    ref: Any = None  # an uncapped inflater, kept as the client keeps its context
    for i, payload in enumerate(payloads):
        ref = zlib.decompressobj(-15) if ref is None else ref
        try:
            want: bytes | None = ref.decompress(payload + _TAIL)
        except zlib.error:
            want = None
        try:
            got = inflater.inflate(payload)
        except ProtocolError as exc:
            assert exc.code in (1007, 1009), f"close code {exc.code}"
            if want is not None:
                assert exc.code == 1009 and len(want) > cap, f"{exc} on {len(want)} bytes"
            return  # the connection is closed: no next message
        assert len(got) <= cap, f"{len(got)} bytes past the cap of {cap}"
        assert want is not None and got == want, f"message {i}: {len(got)} bytes, zlib {want!r}"
        if mode:
            assert got == messages[i], f"message {i} did not round-trip"
        if reset or ref.eof:
            ref = None


TARGETS: dict[str, Callable[[bytes], None]] = {
    "parser": parser,
    "head": head,
    "server": server,
    "inflate": inflate,
}

# Seeds ---------------------------------------------------------------------------------------


def _frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    key = b"\x37\xfa\x21\x3d"
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big")
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes([first]) + length + key + masked


_FRAMES = [
    _frame(1, b'{"hello": "world"}'),
    _frame(2, b"\x00\xff" * 70),
    _frame(1, b"frag", fin=False) + _frame(9, b"ping") + _frame(0, b"mented"),
    _frame(1, "h\xe9llo \U0001f600".encode()) + _frame(10, b""),
    _frame(1, zlib.compress(b'{"a": 1}', wbits=-15)[:-4] or b"\x00", rsv1=True),
    _frame(8, b"\x03\xe8bye"),
    _frame(8, b""),
]
_HEADS = [
    _UPGRADE,
    _UPGRADE.replace(b"/ws?sub", b"/ws?token=deny"),
    b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    _UPGRADE.replace(b"Version: 13", b"Version: 8").replace(b"Host: fuzz", b"Origin: x"),
]

SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "parser": lambda: (
        [encode(bytes([flags]), [f]) for flags in (0, 1, 6) for f in _FRAMES]
        + [encode(b"\x01", [f[:3], f[3:9], f[9:]]) for f in _FRAMES]
    ),
    "head": lambda: (
        [encode(bytes([flags]), [h]) for flags in (1, 0x83) for h in _HEADS]
        + [encode(b"\x01", [h[:7], h[7:40], h[40:]]) for h in _HEADS[:2]]
    ),
    "server": lambda: (
        [encode(bytes([flags, 7]), [f]) for flags in (1, 3) for f in _FRAMES]
        + [encode(b"\x01\x06", [h]) for h in _HEADS]
        + [encode(b"\x03\x07", [b"".join(_FRAMES[:4]), b"".join(_FRAMES[4:])])]
    ),
    "inflate": lambda: (
        [
            encode(bytes([mode << 1 | reset, size]), [b"hello hello hello", b"", b"\x00" * 300])
            for mode in range(4)
            for reset in (0, 1)
            for size in (2, 4)
        ]
        + [encode(b"\x00\x03", [zlib.compress(b"x" * 5000, wbits=-15)])]
    ),
}
