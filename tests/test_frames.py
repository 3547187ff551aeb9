"""Tests of the hot path: ``_frames_c`` (compiled) and ``_frames_py`` (twin), and the selector.

Behaviour tests take the ``frames_impl`` fixture and run once per implementation. Property
tests compare the two on random inputs; they need both, so they carry the ``c_extension``
marker.
"""

from __future__ import annotations

import ast
import errno
import importlib
import itertools
import os
import random
import socket
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

import riverside_trio
from riverside_trio.wire import _frames_py

PROPERTY = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
OPCODES = (0x0, 0x1, 0x2, 0x8, 0x9, 0xA)
CONTROL = (0x8, 0x9, 0xA)
SERVER_CLOSE_CODES = [
    *range(1000, 1004),
    *range(1007, 1010),
    *range(1011, 1014),
    *range(3000, 5000),
]
PUBLIC_NAMES = sorted(_frames_py.__all__)


# Helpers -----------------------------------------------------------------------------------


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """The result, or the exception type: what must agree between implementations."""
    try:
        return ("returned", fn(*args))
    except Exception as exc:
        return ("raised", type(exc))


def payload_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def parse_frames(data: bytes, *, deflate: bool = False) -> list[Frame]:
    """Decode server frames with wsproto's client-side parser, independent of our code;
    with ``deflate``, through its permessage-deflate extension (payloads come out inflated)."""
    extensions = []
    if deflate:
        extension = PerMessageDeflate()
        extension.finalize("permessage-deflate")  # negotiated, with the default parameters
        extensions.append(extension)
    protocol = FrameProtocol(client=True, extensions=extensions)
    protocol.receive_bytes(data)
    return list(protocol.received_frames())


class Wake:
    """A ``wake`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def drain(sock: socket.socket) -> bytes:
    """Read everything the non-blocking ``sock`` has now."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def write_out(outbox: Any, sender: socket.socket, receiver: socket.socket) -> bytes:
    """Play the writer task: send ``take()`` on ``sender``, reading ``receiver`` to make room.

    Returns everything ``receiver`` got.
    """
    received = [drain(receiver)]
    data = outbox.take()
    while data:
        try:
            sent = sender.send(data)
        except BlockingIOError:
            sent = 0
        data = data[sent:]
        received.append(drain(receiver))
    received.append(drain(receiver))
    return b"".join(received)


def fill_until_queued(frames: ModuleType, outbox: Any, size: int) -> list[bytes]:
    """Push distinct frames of ``size`` bytes until the kernel refuses one; return them all."""
    pushed = []
    for i in range(10_000):
        frame = payload_of(size, i)
        result = outbox.push(frame)
        pushed.append(frame)
        if result == frames.PUSH_QUEUED:
            return pushed
        assert result == frames.PUSH_SENT
    raise AssertionError("the socket buffer never filled")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected non-blocking socket pair (server side, client side)."""
    server, client = socket.socketpair()
    server.setblocking(False)
    client.setblocking(False)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


@pytest.fixture
def small_pair(
    pair: tuple[socket.socket, socket.socket],
) -> tuple[socket.socket, socket.socket]:
    """``pair`` with the smallest socket buffers, so backpressure comes quickly."""
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return server, client


# Selector and build ------------------------------------------------------------------------


def test_compiled_module_loaded_when_required() -> None:
    if os.environ.get("RIVERSIDE_REQUIRE_EXTENSIONS") != "1":
        pytest.skip("set RIVERSIDE_REQUIRE_EXTENSIONS=1 to require riverside_trio._frames_c")
    # Required: a missing or broken build fails here, it never skips.
    from riverside_trio import _frames_c

    assert _frames_c.__name__ == "riverside_trio._frames_c"
    assert Path(_frames_c.__file__ or "").suffix in (".so", ".pyd")
    if os.environ.get("RIVERSIDE_NO_EXTENSIONS", "") in ("", "0"):
        from riverside_trio.wire import frames

        assert frames.IMPLEMENTATION == "c"


def _implementation_in_subprocess(no_extensions: str | None) -> str:
    env = dict(os.environ)
    env.pop("RIVERSIDE_NO_EXTENSIONS", None)
    if no_extensions is not None:
        env["RIVERSIDE_NO_EXTENSIONS"] = no_extensions
    package_root = str(Path(next(iter(riverside_trio.__path__))).parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    code = "from riverside_trio.wire import frames; print(frames.IMPLEMENTATION)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_implementation_is_python_when_extensions_disabled() -> None:
    assert _implementation_in_subprocess("1") == "python"


def test_implementation_is_c_when_built_and_not_disabled() -> None:
    try:
        importlib.import_module("riverside_trio._frames_c")
        expected = "c"
    except ImportError:
        expected = "python"
    assert _implementation_in_subprocess(None) == expected
    assert _implementation_in_subprocess("0") == expected


def test_selector_reexports_every_name_of_the_selected_module() -> None:
    from riverside_trio.wire import frames

    if frames.IMPLEMENTATION == "c":
        selected = importlib.import_module("riverside_trio._frames_c")
    else:
        selected = _frames_py
    for name in PUBLIC_NAMES:
        assert getattr(frames, name) is getattr(selected, name), name
    assert set(frames.__all__) == {*PUBLIC_NAMES, "IMPLEMENTATION"}


def test_stub_declares_the_public_api() -> None:
    stub = Path(_frames_py.__file__).parent.with_name("_frames_c.pyi")
    names = set()
    for node in ast.parse(stub.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    assert names == set(PUBLIC_NAMES)


@pytest.mark.c_extension
def test_compiled_module_has_the_same_public_names(frames_c: ModuleType) -> None:
    public = {name for name in dir(frames_c) if not name.startswith("_")}
    assert public == set(PUBLIC_NAMES)
    for name in PUBLIC_NAMES:
        if name.isupper():
            assert getattr(frames_c, name) == getattr(_frames_py, name), name


# encode_frame ------------------------------------------------------------------------------


def test_encode_frame_header_lengths(frames_impl: ModuleType) -> None:
    encode = frames_impl.encode_frame
    assert encode(frames_impl.OP_TEXT, b"hi") == b"\x81\x02hi"
    assert encode(frames_impl.OP_BINARY, b"", fin=False) == b"\x02\x00"
    assert encode(frames_impl.OP_PING, b"x" * 125) == b"\x89\x7d" + b"x" * 125
    assert encode(2, b"x" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert encode(2, b"x" * 65535)[:4] == b"\x82\x7e\xff\xff"
    assert encode(2, b"x" * 65536)[:10] == b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"


@pytest.mark.parametrize(
    "payload",
    [b"abc", bytearray(b"abc"), memoryview(b"abc"), memoryview(b"xabcx")[1:4]],
    ids=["bytes", "bytearray", "memoryview", "memoryview-slice"],
)
def test_encode_frame_accepts_any_contiguous_buffer(frames_impl: ModuleType, payload: Any) -> None:
    assert frames_impl.encode_frame(frames_impl.OP_BINARY, payload) == b"\x82\x03abc"


def test_encode_frame_copies_a_multibyte_format_buffer_as_bytes(frames_impl: ModuleType) -> None:
    words = memoryview(bytes(range(8))).cast("I")
    assert frames_impl.encode_frame(2, words) == b"\x82\x08" + bytes(range(8))


@pytest.mark.parametrize("opcode", [-1, 3, 7, 0xB, 0xF, 16, 2**70, -(2**70)])
def test_encode_frame_rejects_unknown_opcodes(frames_impl: ModuleType, opcode: int) -> None:
    with pytest.raises(ValueError, match="opcode"):
        frames_impl.encode_frame(opcode, b"")


@pytest.mark.parametrize("opcode", CONTROL)
def test_encode_frame_rejects_long_or_fragmented_control_frames(
    frames_impl: ModuleType, opcode: int
) -> None:
    with pytest.raises(ValueError, match="control"):
        frames_impl.encode_frame(opcode, b"x" * 126)
    with pytest.raises(ValueError, match="control"):
        frames_impl.encode_frame(opcode, b"", fin=False)


@pytest.mark.parametrize("payload", ["text", 42, None], ids=["str", "int", "None"])
def test_encode_frame_rejects_non_buffers(frames_impl: ModuleType, payload: Any) -> None:
    with pytest.raises(TypeError):
        frames_impl.encode_frame(frames_impl.OP_TEXT, payload)


def test_encode_frame_rejects_non_integer_opcodes(frames_impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        frames_impl.encode_frame(1.0, b"")


def test_encode_frame_rejects_non_contiguous_buffers(frames_impl: ModuleType) -> None:
    with pytest.raises(BufferError):
        frames_impl.encode_frame(2, memoryview(b"abcdef")[::2])


def test_encode_frame_rsv1_sets_0x40_in_the_first_byte(frames_impl: ModuleType) -> None:
    encode = frames_impl.encode_frame
    assert encode(frames_impl.OP_TEXT, b"hi", True, True) == b"\xc1\x02hi"
    assert encode(frames_impl.OP_BINARY, b"hi", rsv1=True) == b"\xc2\x02hi"
    assert encode(frames_impl.OP_TEXT, b"", fin=False, rsv1=True) == b"\x41\x00"
    assert encode(2, b"x" * 126, True, True)[:4] == b"\xc2\x7e\x00\x7e"
    assert encode(2, bytearray(65536), rsv1=True)[:2] == b"\xc2\x7f"
    assert encode(2, memoryview(b"abc"), rsv1=True) == b"\xc2\x03abc"
    assert encode(2, b"hi", True, False) == encode(2, b"hi") == b"\x82\x02hi"


@pytest.mark.parametrize("opcode", (0x0, *CONTROL))
def test_encode_frame_rejects_rsv1_on_control_and_continuation_frames(
    frames_impl: ModuleType, opcode: int
) -> None:
    with pytest.raises(ValueError, match="RSV1"):
        frames_impl.encode_frame(opcode, b"", True, True)
    with pytest.raises(ValueError, match="RSV1"):
        frames_impl.encode_frame(opcode, b"x", fin=True, rsv1=True)
    assert frames_impl.encode_frame(opcode, b"", rsv1=False)[0] & 0x70 == 0


sizes = st.one_of(
    st.sampled_from([0, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537]),
    st.integers(0, 70_000),
)


@pytest.mark.c_extension
@PROPERTY
@given(
    opcode=st.one_of(st.sampled_from(OPCODES), st.integers(-3, 20)),
    size=sizes,
    seed=st.integers(0, 2**32),
    kind=st.sampled_from(["bytes", "bytearray", "memoryview"]),
    fin=st.booleans(),
    rsv1=st.sampled_from([None, False, True, True, 0, 1, b"", "yes"]),  # any truth value
)
def test_encode_frame_same_in_c_and_python(
    frames_c: ModuleType, opcode: int, size: int, seed: int, kind: str, fin: bool, rsv1: Any
) -> None:
    data = payload_of(size, seed)
    payload = {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data)}[kind]
    expected = outcome(_frames_py.encode_frame, opcode, payload, fin)
    assert outcome(frames_c.encode_frame, opcode, payload, fin) == expected
    expected = outcome(_frames_py.encode_frame, opcode, payload, fin, rsv1)
    assert outcome(frames_c.encode_frame, opcode, payload, fin, rsv1) == expected
    if rsv1 is not None:
        keywords = {"fin": fin, "rsv1": rsv1}
        expected = outcome(lambda: _frames_py.encode_frame(opcode, payload, **keywords))
        assert outcome(lambda: frames_c.encode_frame(opcode, payload, **keywords)) == expected


@PROPERTY
@given(
    opcode=st.sampled_from(OPCODES),
    size=sizes,
    seed=st.integers(0, 2**32),
    fin=st.booleans(),
    text=st.text(max_size=300),
)
def test_encode_frame_output_parses_as_rfc6455(
    frames_impl: ModuleType, opcode: int, size: int, seed: int, fin: bool, text: str
) -> None:
    encode = frames_impl.encode_frame
    if opcode in CONTROL:
        size, fin = min(size, 125), True
    payload = text.encode("utf-8") if opcode == frames_impl.OP_TEXT else payload_of(size, seed)
    if opcode == frames_impl.OP_CLOSE:
        payload = b""  # a close payload is a code; see test_encode_close_output_parses_as_rfc6455
    data = encode(opcode, payload, fin)
    if opcode == frames_impl.OP_CONTINUATION:  # needs a message to continue
        data = encode(frames_impl.OP_BINARY, b"start", False) + data
        payload = b"start" + payload
    if not fin:  # let the parser finish the message
        data += encode(frames_impl.OP_CONTINUATION, b"", True)

    parsed = parse_frames(data)

    expected_opcode = Opcode(opcode) if opcode else Opcode.BINARY
    assert parsed, "no frame parsed"
    assert parsed[0].opcode == expected_opcode
    assert parsed[-1].message_finished
    if opcode == frames_impl.OP_CLOSE:
        assert parsed == [Frame(Opcode.CLOSE, (1005, ""), True, True)]
    elif opcode == frames_impl.OP_TEXT:
        assert "".join(str(frame.payload) for frame in parsed) == text
    else:
        assert b"".join(bytes(frame.payload) for frame in parsed) == payload  # type: ignore[arg-type]


def _compressed(compressor: Any, payload: bytes) -> bytes:
    """``payload`` compressed as one permessage-deflate message, without ``00 00 ff ff``."""
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


@PROPERTY
@given(
    messages=st.lists(
        st.tuples(
            st.booleans(),  # text
            st.one_of(st.text(max_size=300), st.text(alphabet="ab", min_size=200, max_size=70_000)),
            st.lists(st.integers(0, 70_000), max_size=3),  # fragment cuts
            st.booleans(),  # compressed
        ),
        min_size=1,
        max_size=4,
    )
)
def test_encode_frame_rsv1_output_inflates_in_wsproto(
    frames_impl: ModuleType, messages: list[tuple[bool, str, list[int], bool]]
) -> None:
    """Compressed messages, fragmented or not, with RSV1 on the first frame only, mixed with
    uncompressed messages (RSV1 clear, as RFC 7692 allows) and pings: wsproto's client with
    permessage-deflate inflates them back."""
    encode = frames_impl.encode_frame
    compressor = zlib.compressobj(wbits=-15)  # the client keeps its context: so may we
    data = b""
    for text, content, cuts, compressed in messages:
        payload = content.encode("utf-8")
        body = _compressed(compressor, payload) if compressed else payload
        bounds = [0, *sorted(min(cut, len(body)) for cut in cuts), len(body)]
        pieces = [body[a:b] for a, b in itertools.pairwise(bounds)]
        for i, piece in enumerate(pieces):
            opcode = 0 if i else (frames_impl.OP_TEXT if text else frames_impl.OP_BINARY)
            data += encode(opcode, piece, i == len(pieces) - 1, compressed and i == 0)
        data += encode(frames_impl.OP_PING, b"between")

    received: list[tuple[Opcode, Any]] = []
    parts: list[Any] = []
    for frame in parse_frames(data, deflate=True):
        if frame.opcode is Opcode.PING:
            received.append((frame.opcode, frame.payload))
            continue
        parts.append(frame.payload)
        if frame.message_finished:
            joined = "".join(parts) if isinstance(parts[0], str) else b"".join(parts)
            received.append((frame.opcode, joined))
            parts = []
    expected: list[tuple[Opcode, Any]] = []
    for text, content, _, _ in messages:
        message = (Opcode.TEXT, content) if text else (Opcode.BINARY, content.encode("utf-8"))
        expected += [message, (Opcode.PING, b"between")]
    assert received == expected


# encode_close ------------------------------------------------------------------------------


def test_encode_close_without_code_is_empty(frames_impl: ModuleType) -> None:
    assert frames_impl.encode_close() == b"\x88\x00"
    assert frames_impl.encode_close(None, "") == b"\x88\x00"


def test_encode_close_with_code_and_reason(frames_impl: ModuleType) -> None:
    assert frames_impl.encode_close(1000) == b"\x88\x02\x03\xe8"
    assert frames_impl.encode_close(4999, "bye") == b"\x88\x05\x13\x87bye"


def test_encode_close_rejects_reason_without_code(frames_impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        frames_impl.encode_close(None, "why")


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1010, 1014, 1015, 1016, 2999, 5000, 65535, -1000, 2**70]
)
def test_encode_close_rejects_codes_a_server_may_not_send(
    frames_impl: ModuleType, code: int
) -> None:
    with pytest.raises(ValueError):
        frames_impl.encode_close(code)


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1009, 1011, 1013, 3000, 4999])
def test_encode_close_accepts_codes_a_server_may_send(frames_impl: ModuleType, code: int) -> None:
    assert frames_impl.encode_close(code)[2:4] == code.to_bytes(2, "big")


def test_encode_close_type_errors(frames_impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        frames_impl.encode_close(1000, b"bytes")
    with pytest.raises(TypeError):
        frames_impl.encode_close(1000.0)


def test_encode_close_rejects_lone_surrogates(frames_impl: ModuleType) -> None:
    with pytest.raises(UnicodeEncodeError):
        frames_impl.encode_close(1000, "\ud800")


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_encode_close_truncates_reason_at_a_character_boundary(
    frames_impl: ModuleType, char: str
) -> None:
    width = len(char.encode("utf-8"))
    for pad in range(118, 124):
        reason = "a" * pad + char * 3
        frame = frames_impl.encode_close(1000, reason)
        kept = frame[4:]
        full = reason.encode("utf-8")
        assert frame[1] == 2 + len(kept)
        assert len(kept) <= 123
        assert full.startswith(kept)
        kept.decode("utf-8")  # whole characters only
        assert len(kept) > 123 - width or len(full) <= 123


reasons = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda pad, tail: "a" * pad + tail,
        st.integers(100, 123),
        st.text(alphabet=st.sampled_from("é€😀a\u0800\U0010ffff"), max_size=8),
    ),
)
codes = st.one_of(
    st.none(),
    st.sampled_from(
        [999, 1000, 1003, 1004, 1006, 1007, 1009, 1010, 1011, 1013, 1014, 1015, 2999, 3000, 5000]
    ),
    st.integers(-10, 70_000),
)


@pytest.mark.c_extension
@PROPERTY
@given(code=codes, reason=reasons)
def test_encode_close_same_in_c_and_python(
    frames_c: ModuleType, code: int | None, reason: str
) -> None:
    expected = outcome(_frames_py.encode_close, code, reason)
    assert outcome(frames_c.encode_close, code, reason) == expected


@PROPERTY
@given(code=st.sampled_from(SERVER_CLOSE_CODES), reason=reasons)
def test_encode_close_output_parses_as_rfc6455(
    frames_impl: ModuleType, code: int, reason: str
) -> None:
    data = frames_impl.encode_close(code, reason)
    [frame] = parse_frames(data)
    assert frame.opcode == Opcode.CLOSE
    assert isinstance(frame.payload, tuple)
    parsed_code, parsed_reason = frame.payload
    assert parsed_code == code
    assert reason.startswith(parsed_reason)
    assert len(parsed_reason.encode("utf-8")) <= 123


# TokenBucket -------------------------------------------------------------------------------


def test_token_bucket_starts_full_and_empties(frames_impl: ModuleType) -> None:
    bucket = frames_impl.TokenBucket(3, 1.0, 100.0)
    assert (bucket.capacity, bucket.period, bucket.tokens) == (3, 1.0, 3.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens == 0.0


def test_token_bucket_refills_at_capacity_per_period_capped(frames_impl: ModuleType) -> None:
    bucket = frames_impl.TokenBucket(4, 2.0, 0.0)  # 2 tokens per second
    for _ in range(4):
        assert bucket.take(0.0)
    assert not bucket.take(0.25)  # 0.5 token
    assert bucket.take(0.5)  # 1.0 token
    assert bucket.tokens == 0.0
    assert bucket.take(1000.0)
    assert bucket.tokens == 3.0  # capped at capacity before taking


def test_token_bucket_ignores_a_clock_going_backwards(frames_impl: ModuleType) -> None:
    bucket = frames_impl.TokenBucket(1, 1.0, 10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)  # backwards: no refill, and last stays at 10
    assert not bucket.take(10.5)  # only 0.5 s since 10.0
    assert bucket.tokens == 0.5
    assert bucket.take(11.0)


@pytest.mark.parametrize(
    ("capacity", "period", "error"),
    [
        (0, 1.0, ValueError),
        (-5, 1.0, ValueError),
        (1, 0.0, ValueError),
        (1, -1.0, ValueError),
        (1, float("nan"), ValueError),
        (1.5, 1.0, TypeError),
        (1, "1", TypeError),
        (2**70, 1.0, OverflowError),
    ],
)
def test_token_bucket_rejects_bad_arguments(
    frames_impl: ModuleType, capacity: Any, period: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        frames_impl.TokenBucket(capacity, period, 0.0)


def test_token_bucket_attributes_are_read_only(frames_impl: ModuleType) -> None:
    bucket = frames_impl.TokenBucket(1, 1.0, 0.0)
    for name in ("tokens", "capacity", "period"):
        with pytest.raises(AttributeError):
            setattr(bucket, name, 2)


@pytest.mark.c_extension
@PROPERTY
@given(
    capacity=st.integers(1, 10**6),
    period=st.floats(1e-6, 1e6),
    start=st.floats(-1e9, 1e9),
    steps=st.lists(
        st.one_of(
            st.floats(-10.0, 10.0),
            st.sampled_from([0.0, -0.0, 1e-9, -1e-9]),
            st.integers(-5, 5),
        ),
        max_size=60,
    ),
)
def test_token_bucket_same_in_c_and_python(
    frames_c: ModuleType, capacity: int, period: float, start: float, steps: list[float]
) -> None:
    c_bucket = frames_c.TokenBucket(capacity, period, start)
    py_bucket = _frames_py.TokenBucket(capacity, period, start)
    now = start
    for step in steps:
        now += step
        assert c_bucket.take(now) == py_bucket.take(now)
        assert c_bucket.tokens.hex() == py_bucket.tokens.hex()  # bit for bit
        assert 0.0 <= py_bucket.tokens <= capacity


# Outbox ------------------------------------------------------------------------------------


def test_push_sends_directly_when_the_kernel_takes_it(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 8, 1 << 20, wake)
    frame = frames_impl.encode_frame(frames_impl.OP_TEXT, b"hello")
    assert outbox.push(frame) == frames_impl.PUSH_SENT
    assert drain(client) == frame
    assert (wake.calls, outbox.queued_frames, outbox.queued_bytes) == (0, 0, 0)
    assert outbox.take() == b""


def test_push_queues_under_backpressure_wakes_once_and_keeps_order(
    frames_impl: ModuleType, small_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = small_pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 100, 1 << 24, wake)
    pushed = fill_until_queued(frames_impl, outbox, 16384)
    assert wake.calls == 1
    assert outbox.queued_frames == 1
    assert 0 < outbox.queued_bytes <= 16384
    for i in range(5):
        frame = payload_of(1000, 10_000 + i)
        assert outbox.push(frame) == frames_impl.PUSH_QUEUED
        pushed.append(frame)
    assert wake.calls == 1  # only on the transition from empty
    assert outbox.queued_frames == 6
    assert write_out(outbox, server, client) == b"".join(pushed)
    assert (outbox.queued_frames, outbox.queued_bytes) == (0, 0)
    frame = b"after"
    assert outbox.push(frame) == frames_impl.PUSH_SENT  # direct path again
    assert drain(client) == frame


def test_partly_sent_frame_is_queued_whatever_the_limits(
    frames_impl: ModuleType, small_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = small_pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 0, 0, wake)
    frame = payload_of(1 << 20, 1)  # far more than the socket buffers hold
    assert outbox.push(frame) == frames_impl.PUSH_QUEUED
    assert wake.calls == 1
    assert outbox.queued_frames == 1
    assert 0 < outbox.queued_bytes < len(frame)
    assert outbox.push(b"x") == frames_impl.PUSH_FULL
    assert write_out(outbox, server, client) == frame


def test_push_is_full_at_max_frames(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 3, 1 << 20, wake)
    outbox.writing = True
    assert [outbox.push(b"%d" % i) for i in range(3)] == [frames_impl.PUSH_QUEUED] * 3
    assert outbox.push(b"3") == frames_impl.PUSH_FULL
    assert (outbox.queued_frames, outbox.queued_bytes) == (3, 3)
    assert wake.calls == 0  # the writer task owns the socket and re-checks itself
    assert drain(client) == b""  # nothing sent while writing
    assert outbox.take() == b"012"
    assert outbox.push(b"4") == frames_impl.PUSH_QUEUED


def test_push_is_full_at_max_bytes(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    outbox = frames_impl.Outbox(server, 100, 10, Wake())
    outbox.writing = True
    assert outbox.push(b"123456") == frames_impl.PUSH_QUEUED
    assert outbox.push(b"12345") == frames_impl.PUSH_FULL  # 11 > 10
    assert outbox.push(b"1234") == frames_impl.PUSH_QUEUED  # exactly 10
    assert outbox.push(b"") == frames_impl.PUSH_QUEUED  # 10 still fits
    assert outbox.push(b"1") == frames_impl.PUSH_FULL
    assert (outbox.queued_frames, outbox.queued_bytes) == (3, 10)
    assert outbox.take() == b"1234561234"


def test_push_is_full_when_backpressured_queue_reaches_max_frames(
    frames_impl: ModuleType, small_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = small_pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 3, 1 << 24, wake)
    pushed = fill_until_queued(frames_impl, outbox, 16384)
    assert outbox.push(b"a") == frames_impl.PUSH_QUEUED
    assert outbox.push(b"b") == frames_impl.PUSH_QUEUED
    assert outbox.push(b"c") == frames_impl.PUSH_FULL
    assert wake.calls == 1
    assert write_out(outbox, server, client) == b"".join(pushed) + b"ab"


def test_push_while_writing_queues_without_sending_or_waking(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 8, 1 << 20, wake)
    outbox.writing = True
    assert outbox.writing is True
    assert outbox.push(b"one") == frames_impl.PUSH_QUEUED
    assert wake.calls == 0
    assert drain(client) == b""
    outbox.writing = False
    assert outbox.push(b"two") == frames_impl.PUSH_QUEUED  # behind "one": order is kept
    assert wake.calls == 0  # not a transition from empty
    assert outbox.take() == b"onetwo"
    assert outbox.push(b"three") == frames_impl.PUSH_SENT
    assert drain(client) == b"three"


def test_push_after_peer_closed_returns_closed_and_records_errno(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 8, 1 << 20, wake)
    client.close()
    assert outbox.push(b"lost") == frames_impl.PUSH_CLOSED
    assert outbox.error in (errno.EPIPE, errno.ECONNRESET)
    assert outbox.closed
    assert wake.calls == 1
    assert outbox.push(b"again") == frames_impl.PUSH_CLOSED
    assert wake.calls == 1
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.take()) == (0, 0, b"")


def test_push_after_own_socket_closed_fails_with_ebadf_even_if_descriptor_reused(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    outbox = frames_impl.Outbox(server, 8, 1 << 20, Wake())
    old_fd = server.fileno()
    server.close()
    first, second = socket.socketpair()  # most likely takes the old descriptor
    try:
        first.setblocking(False)
        second.setblocking(False)
        assert outbox.push(b"secret") == frames_impl.PUSH_CLOSED
        assert outbox.error == errno.EBADF
        assert drain(first) == b""
        assert drain(second) == b""
        assert old_fd >= 0
    finally:
        first.close()
        second.close()


def test_close_drops_the_queue_and_refuses_pushes(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 8, 1 << 20, wake)
    outbox.writing = True
    outbox.push(b"a")
    outbox.push(b"b")
    outbox.close()
    assert outbox.closed
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.error) == (0, 0, 0)
    assert outbox.take() == b""
    outbox.writing = False
    assert outbox.push(b"c") == frames_impl.PUSH_CLOSED
    assert drain(client) == b""
    assert wake.calls == 0


def test_push_rejects_non_bytes(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    outbox = frames_impl.Outbox(pair[0], 8, 1 << 20, Wake())
    for frame in (bytearray(b"x"), memoryview(b"x"), "x", None):
        with pytest.raises(TypeError):
            outbox.push(frame)


def test_outbox_rejects_bad_arguments(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    with pytest.raises(ValueError):
        frames_impl.Outbox(server, -1, 10, Wake())
    with pytest.raises(ValueError):
        frames_impl.Outbox(server, 1, -1, Wake())
    with pytest.raises(TypeError):
        frames_impl.Outbox(server, 1, 10, None)
    with pytest.raises(TypeError):
        frames_impl.Outbox(server, 1.0, 10, Wake())
    server.setblocking(True)
    with pytest.raises(ValueError, match="non-blocking"):
        frames_impl.Outbox(server, 1, 10, Wake())


def test_outbox_state_attributes_are_read_only(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    outbox = frames_impl.Outbox(pair[0], 8, 1 << 20, Wake())
    for name in (
        "closed",
        "error",
        "queued_frames",
        "queued_bytes",
        "drop_oldest",
        "dropped_frames",
    ):
        with pytest.raises(AttributeError):
            setattr(outbox, name, 1)
    outbox.writing = 1
    assert outbox.writing is True
    outbox.writing = []
    assert outbox.writing is False


def test_hot_path_classes_cannot_be_subclassed(frames_impl: ModuleType) -> None:
    for cls in (
        frames_impl.FrameParser,
        frames_impl.Outbox,
        frames_impl.TokenBucket,
        frames_impl.Cork,
    ):
        with pytest.raises(TypeError):
            type("Sub", (cls,), {})


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 300)),
        st.tuples(st.just("take"), st.none()),
        st.tuples(st.just("writing"), st.booleans()),
        st.tuples(st.just("close"), st.none()),
    ),
    max_size=40,
)


@pytest.mark.c_extension
@PROPERTY
@given(
    max_frames=st.integers(0, 6),
    max_bytes=st.integers(0, 1200),
    drop_oldest=st.booleans(),
    steps=ops,
)
def test_outbox_same_in_c_and_python(
    frames_c: ModuleType,
    max_frames: int,
    max_bytes: int,
    drop_oldest: bool,
    steps: list[tuple[str, Any]],
) -> None:
    sockets = [socket.socketpair(), socket.socketpair()]
    try:
        boxes, wakes = [], []
        for module, (server, client) in zip((frames_c, _frames_py), sockets, strict=True):
            server.setblocking(False)
            client.setblocking(False)
            wakes.append(Wake())
            boxes.append(
                module.Outbox(server, max_frames, max_bytes, wakes[-1], drop_oldest=drop_oldest)
            )
        # At most 40 pushes of at most 300 bytes: far less than the socket buffers hold.
        for i, (op, arg) in enumerate(steps):
            if op == "push":
                frame = payload_of(arg, i)
                results = [box.push(frame) for box in boxes]
            elif op == "take":
                results = [box.take() for box in boxes]
            elif op == "writing":
                for box in boxes:
                    box.writing = arg
                results = []
            else:
                results = [box.close() for box in boxes]
            assert results[:1] == results[1:]
            states = [
                (b.closed, b.error, b.writing, b.queued_frames, b.queued_bytes, b.dropped_frames)
                for b in boxes
            ]
            assert states[0] == states[1]
            assert wakes[0].calls == wakes[1].calls
        assert drain(sockets[0][1]) == drain(sockets[1][1])
    finally:
        for server, client in sockets:
            server.close()
            client.close()


# Outbox: drop_oldest -----------------------------------------------------------------------


class ModelOutbox:
    """The queue part of an outbox, written plainly: the reference for ``drop_oldest``.

    ``queue`` holds ``[queued bytes, payload]`` pairs, oldest first; ``partial`` tells whether
    the head is the rest of a partly sent frame.
    """

    def __init__(self, max_frames: int, max_bytes: int, drop_oldest: bool) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.drop_oldest = drop_oldest
        self.queue: list[tuple[bytes, bytes]] = []
        self.partial = False
        self.dropped = 0

    @property
    def queued_bytes(self) -> int:
        return sum(len(data) for data, _ in self.queue)

    def full_for(self, size: int) -> bool:
        return len(self.queue) >= self.max_frames or self.queued_bytes + size > self.max_bytes

    def push(self, frames: ModuleType, frame: bytes, payload: bytes) -> int:
        """A push that does not go to the socket (queue not empty, or ``writing``)."""
        if self.full_for(len(frame)):
            if not self.drop_oldest:
                return int(frames.PUSH_FULL)
            kept = self.queue[:1] if self.partial else []
            room = ModelOutbox(self.max_frames, self.max_bytes, False)
            room.queue = kept
            if room.full_for(len(frame)):  # even with every droppable frame gone
                return int(frames.PUSH_FULL)
            while self.full_for(len(frame)):
                del self.queue[len(kept)]
                self.dropped += 1
        self.queue.append((frame, payload))
        return int(frames.PUSH_QUEUED)

    def take(self) -> tuple[bytes, list[bytes]]:
        """Empty the queue: its bytes, and the payloads of the frames it finishes."""
        data = b"".join(data for data, _ in self.queue)
        payloads = [payload for _, payload in self.queue]
        self.queue = []
        self.partial = False
        return data, payloads


def binary_frame(frames: ModuleType, size: int, seed: int) -> tuple[bytes, bytes]:
    payload = payload_of(size, seed)
    return frames.encode_frame(frames.OP_BINARY, payload), payload


def assert_whole_frames(data: bytes, payloads: list[bytes]) -> None:
    """``data`` parses (wsproto, client side) into exactly these whole binary frames."""
    parsed = parse_frames(data)
    assert [bytes(frame.payload) for frame in parsed] == payloads  # type: ignore[arg-type]
    assert all(frame.opcode == Opcode.BINARY for frame in parsed)
    assert all(frame.frame_finished and frame.message_finished for frame in parsed)


EMPTY_FRAME = b"\x82\x00"  # a binary frame without payload


def clog(server: socket.socket) -> int:
    """Fill ``server``'s send buffer with empty frames, whole ones; return how many."""
    count = 0
    while True:
        try:
            sent = server.send(EMPTY_FRAME)
        except BlockingIOError:
            return count
        assert sent == len(EMPTY_FRAME)
        count += 1


@contextmanager
def small_socketpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """``small_pair`` for Hypothesis tests, which cannot take function-scoped fixtures."""
    server, client = socket.socketpair()
    try:
        server.setblocking(False)
        client.setblocking(False)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        yield server, client
    finally:
        server.close()
        client.close()


def test_outbox_refuses_when_full_by_default(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    outbox = frames_impl.Outbox(pair[0], 2, 1 << 20, Wake())
    outbox.writing = True
    assert outbox.drop_oldest is False
    assert [outbox.push(b"%d" % i) for i in range(4)] == [
        frames_impl.PUSH_QUEUED,
        frames_impl.PUSH_QUEUED,
        frames_impl.PUSH_FULL,
        frames_impl.PUSH_FULL,
    ]
    assert (outbox.queued_frames, outbox.dropped_frames, outbox.take()) == (2, 0, b"01")


def test_drop_oldest_is_keyword_only(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    with pytest.raises(TypeError):
        frames_impl.Outbox(pair[0], 2, 10, Wake(), True)
    outbox = frames_impl.Outbox(pair[0], 2, 10, Wake(), drop_oldest=1)
    assert outbox.drop_oldest is True
    assert outbox.dropped_frames == 0


def test_drop_oldest_makes_room_at_max_frames(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 3, 1 << 20, wake, drop_oldest=True)
    outbox.writing = True
    assert [outbox.push(b"%d" % i) for i in range(8)] == [frames_impl.PUSH_QUEUED] * 8
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.dropped_frames) == (3, 3, 5)
    assert wake.calls == 0
    assert drain(client) == b""
    assert outbox.take() == b"567"
    assert outbox.dropped_frames == 5  # cumulative: take does not reset it
    assert outbox.push(b"8") == frames_impl.PUSH_QUEUED
    assert (outbox.queued_frames, outbox.dropped_frames, outbox.take()) == (1, 5, b"8")


def test_drop_oldest_makes_room_at_max_bytes(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    outbox = frames_impl.Outbox(server, 100, 10, Wake(), drop_oldest=True)
    outbox.writing = True
    assert outbox.push(b"123456") == frames_impl.PUSH_QUEUED
    assert outbox.push(b"1234") == frames_impl.PUSH_QUEUED  # exactly 10
    assert outbox.push(b"abc") == frames_impl.PUSH_QUEUED  # drops "123456" only
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.dropped_frames) == (2, 7, 1)
    assert outbox.push(b"ABCDEFGHIJ") == frames_impl.PUSH_QUEUED  # needs the whole queue
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.dropped_frames) == (1, 10, 3)
    assert outbox.push(b"") == frames_impl.PUSH_QUEUED  # 10 still fits: nothing dropped
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.dropped_frames) == (2, 10, 3)
    assert outbox.push(b"z") == frames_impl.PUSH_QUEUED  # drops "ABCDEFGHIJ", keeps b""
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.dropped_frames) == (2, 1, 4)
    assert outbox.take() == b"z"


def test_drop_oldest_refuses_a_frame_over_max_bytes_and_drops_nothing(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    outbox = frames_impl.Outbox(server, 3, 10, Wake(), drop_oldest=True)
    outbox.writing = True
    assert outbox.push(b"abc") == frames_impl.PUSH_QUEUED
    assert outbox.push(b"def") == frames_impl.PUSH_QUEUED
    assert outbox.push(b"x" * 11) == frames_impl.PUSH_FULL
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.dropped_frames) == (2, 6, 0)
    assert outbox.take() == b"abcdef"
    assert outbox.push(b"x" * 11) == frames_impl.PUSH_FULL  # empty queue, writer busy
    assert (outbox.queued_frames, outbox.dropped_frames) == (0, 0)
    never = frames_impl.Outbox(server, 0, 10, Wake(), drop_oldest=True)
    never.writing = True
    assert never.push(b"") == frames_impl.PUSH_FULL  # max_frames=0: nothing ever fits
    assert (never.queued_frames, never.dropped_frames) == (0, 0)


def test_drop_oldest_cuts_dropped_slots_and_keeps_order_over_many_pushes(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    outbox = frames_impl.Outbox(server, 5, 1 << 20, Wake(), drop_oldest=True)
    outbox.writing = True
    for i in range(1000):
        assert outbox.push(b"%d," % i) == frames_impl.PUSH_QUEUED
        assert outbox.queued_frames == min(i + 1, 5)
    assert outbox.dropped_frames == 995
    assert outbox.queued_bytes == len(b"995,996,997,998,999,")
    assert outbox.take() == b"995,996,997,998,999,"
    outbox.writing = False
    assert outbox.push(b"direct") == frames_impl.PUSH_SENT  # the direct path is back
    assert drain(client) == b"direct"
    single = frames_impl.Outbox(server, 1, 1 << 20, Wake(), drop_oldest=True)
    single.writing = True
    for frame in (b"a", b"b", b"c"):
        assert single.push(frame) == frames_impl.PUSH_QUEUED
    assert (single.queued_frames, single.dropped_frames, single.take()) == (1, 2, b"c")


def test_drop_oldest_keeps_the_partial_head_and_the_newest_frames(
    frames_impl: ModuleType, small_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = small_pair
    wake = Wake()
    outbox = frames_impl.Outbox(server, 4, 1 << 24, wake, drop_oldest=True)
    sent: list[tuple[bytes, bytes]] = []
    for i in range(10_000):  # until the kernel refuses part of a frame
        frame, payload = binary_frame(frames_impl, 16384, i)
        result = outbox.push(frame)
        sent.append((frame, payload))
        if result == frames_impl.PUSH_QUEUED:
            break
        assert result == frames_impl.PUSH_SENT
    partial = outbox.queued_bytes < len(sent[-1][0])  # else the kernel took none of it
    newest = [binary_frame(frames_impl, 1000, 20_000 + i) for i in range(10)]
    for frame, _ in newest:
        assert outbox.push(frame) == frames_impl.PUSH_QUEUED
    # Four places: the partial head and the 3 newest, or the 4 newest.
    assert outbox.queued_frames == 4
    assert outbox.dropped_frames == 7  # 10 - 3, or the whole unsent frame and 10 - 4
    assert wake.calls == 1
    kept = newest[-3:] if partial else newest[-4:]
    delivered = sent if partial else sent[:-1]
    received = write_out(outbox, server, client)
    assert received == b"".join(frame for frame, _ in delivered + kept)
    assert_whole_frames(received, [payload for _, payload in delivered + kept])


@pytest.mark.parametrize(
    ("max_frames", "max_bytes"), [(1, 1 << 22), (100, 0)], ids=["frames", "bytes"]
)
def test_drop_oldest_refuses_when_the_partial_head_alone_is_over_a_limit(
    frames_impl: ModuleType,
    small_pair: tuple[socket.socket, socket.socket],
    max_frames: int,
    max_bytes: int,
) -> None:
    server, client = small_pair
    outbox = frames_impl.Outbox(server, max_frames, max_bytes, Wake(), drop_oldest=True)
    frame, payload = binary_frame(frames_impl, 1 << 20, 1)  # far more than the buffers hold
    assert outbox.push(frame) == frames_impl.PUSH_QUEUED
    queued = outbox.queued_bytes
    assert 0 < queued < len(frame)
    assert outbox.push(b"") == frames_impl.PUSH_FULL
    assert outbox.push(b"x") == frames_impl.PUSH_FULL
    assert (outbox.queued_frames, outbox.queued_bytes, outbox.dropped_frames) == (1, queued, 0)
    received = write_out(outbox, server, client)
    assert received == frame
    assert_whole_frames(received, [payload])


def test_drop_oldest_drops_behind_the_partial_head(
    frames_impl: ModuleType, small_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = small_pair
    outbox = frames_impl.Outbox(server, 2, 1 << 22, Wake(), drop_oldest=True)
    big, big_payload = binary_frame(frames_impl, 1 << 20, 1)
    assert outbox.push(big) == frames_impl.PUSH_QUEUED
    assert outbox.queued_bytes < len(big)
    small = [binary_frame(frames_impl, 10, 2 + i) for i in range(3)]
    assert [outbox.push(frame) for frame, _ in small] == [frames_impl.PUSH_QUEUED] * 3
    assert (outbox.queued_frames, outbox.dropped_frames) == (2, 2)
    received = write_out(outbox, server, client)
    assert received == big + small[-1][0]
    assert_whole_frames(received, [big_payload, small[-1][1]])
    outbox.writing = True  # take() cleared the partial state: the new head may go
    assert [outbox.push(frame) for frame in (b"a", b"b", b"c")] == [frames_impl.PUSH_QUEUED] * 3
    assert (outbox.queued_frames, outbox.dropped_frames) == (2, 3)
    assert outbox.take() == b"bc"


def test_drop_oldest_may_drop_a_frame_the_kernel_took_none_of(
    frames_impl: ModuleType, small_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = small_pair
    outbox = frames_impl.Outbox(server, 1, 1 << 20, Wake(), drop_oldest=True)
    filler = clog(server)
    assert filler > 0
    first, _ = binary_frame(frames_impl, 100, 1)
    second, second_payload = binary_frame(frames_impl, 100, 2)
    assert outbox.push(first) == frames_impl.PUSH_QUEUED  # EAGAIN: queued whole, unsent
    assert outbox.queued_bytes == len(first)
    assert outbox.push(second) == frames_impl.PUSH_QUEUED  # so it may go
    assert (outbox.queued_frames, outbox.dropped_frames) == (1, 1)
    received = write_out(outbox, server, client)
    assert received == EMPTY_FRAME * filler + second
    assert_whole_frames(received, [b""] * filler + [second_payload])


queue_ops = st.lists(
    st.tuples(st.sampled_from(("push",) * 6 + ("take",)), st.integers(0, 300)),
    min_size=10,
    max_size=60,
)


@pytest.mark.c_extension
@PROPERTY
@given(
    max_frames=st.integers(0, 8),
    max_bytes=st.integers(0, 1500),
    drop_oldest=st.booleans(),
    steps=queue_ops,
)
def test_outbox_dropping_same_in_c_and_python_and_as_the_model(
    frames_c: ModuleType,
    max_frames: int,
    max_bytes: int,
    drop_oldest: bool,
    steps: list[tuple[str, int]],
) -> None:
    server, client = socket.socketpair()
    try:
        server.setblocking(False)
        boxes = [
            module.Outbox(server, max_frames, max_bytes, Wake(), drop_oldest=drop_oldest)
            for module in (frames_c, _frames_py)
        ]
        for box in boxes:
            box.writing = True  # nothing is sent: every push goes through the limits
        model = ModelOutbox(max_frames, max_bytes, drop_oldest)
        for i, (op, size) in enumerate(steps):
            if op == "push":
                frame = payload_of(size, i)
                expected: object = model.push(_frames_py, frame, frame)
                results = [box.push(frame) for box in boxes]
            else:
                expected = model.take()[0]  # order preserved, dropped frames gone
                results = [box.take() for box in boxes]
            assert results == [expected, expected]
            states = [(b.queued_frames, b.queued_bytes, b.dropped_frames) for b in boxes]
            assert states == [(len(model.queue), model.queued_bytes, model.dropped)] * 2
            assert model.queued_bytes <= max_bytes and len(model.queue) <= max_frames
    finally:
        server.close()
        client.close()


socket_ops = st.lists(
    st.tuples(
        st.sampled_from(("push",) * 8 + ("flush", "writing", "not writing", "clog")),
        st.one_of(st.integers(0, 300), st.integers(4000, 40_000)),  # push: payload size
    ),
    min_size=10,
    max_size=40,
)


@PROPERTY
@given(
    max_frames=st.integers(0, 6),
    max_bytes=st.one_of(st.integers(0, 2000), st.integers(40_000, 120_000), st.just(1 << 24)),
    drop_oldest=st.sampled_from([True, True, True, False]),
    steps=socket_ops,
)
def test_outbox_dropping_over_a_socket_never_tears_a_frame(
    frames_impl: ModuleType,
    max_frames: int,
    max_bytes: int,
    drop_oldest: bool,
    steps: list[tuple[str, int]],
) -> None:
    """Direct sends give partial heads, or whole unsent frames after a clog, as the kernel
    decides; the model follows them."""
    model = ModelOutbox(max_frames, max_bytes, drop_oldest)
    with small_socketpair() as (server, client):
        outbox = frames_impl.Outbox(server, max_frames, max_bytes, Wake(), drop_oldest=drop_oldest)
        expected: list[bytes] = []  # the payloads the peer must get, in order
        received = []
        for i, (op, size) in enumerate(steps):
            if op == "push":
                frame, payload = binary_frame(frames_impl, size, i)
                direct = not model.queue and not outbox.writing
                result = outbox.push(frame)
                if direct:
                    if result == frames_impl.PUSH_SENT:
                        expected.append(payload)
                    else:
                        assert result == frames_impl.PUSH_QUEUED
                        rest = frame[len(frame) - outbox.queued_bytes :]
                        model.queue = [(rest, payload)]
                        model.partial = len(rest) < len(frame)
                else:
                    assert result == model.push(frames_impl, frame, payload)
                    if result == frames_impl.PUSH_QUEUED:
                        assert outbox.queued_frames <= max_frames
                        assert outbox.queued_bytes <= max_bytes
            elif op == "flush":
                expected += model.take()[1]
                received.append(write_out(outbox, server, client))
            elif op == "clog":
                if not model.queue:  # else the empty frames would pass queued ones
                    expected += [b""] * clog(server)
            else:
                outbox.writing = op == "writing"
            assert outbox.queued_frames == len(model.queue)
            assert outbox.queued_bytes == model.queued_bytes
            assert outbox.dropped_frames == model.dropped
            # Over a limit only with the one frame a direct send queued whatever the limits.
            within = outbox.queued_frames <= max_frames and outbox.queued_bytes <= max_bytes
            assert within or outbox.queued_frames == 1
        expected += model.take()[1]
        received.append(write_out(outbox, server, client))
        assert_whole_frames(b"".join(received), expected)


# Outbox: cork ------------------------------------------------------------------------------

CORK_FRAMES = 64
CORK_BYTES = 65536


def corked(frames: ModuleType, sock: socket.socket, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    cork = frames.Cork()
    cork.active = True
    wake = kwargs.pop("wake", None) or Wake()
    return frames.Outbox(sock, *args, wake, cork=cork, **kwargs), cork


def test_corked_pushes_wait_for_the_flush_then_leave_together(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox, cork = corked(frames_impl, server, 8, 1 << 20, wake=wake)
    frames = [frames_impl.encode_frame(frames_impl.OP_TEXT, b"m%d" % i) for i in range(3)]
    assert [outbox.push(f) for f in frames] == [frames_impl.PUSH_QUEUED] * 3
    assert drain(client) == b""  # nothing was sent yet
    assert (outbox.queued_frames, outbox.queued_bytes) == (3, sum(map(len, frames)))
    assert cork.pending == 1  # noted once, not once per frame
    assert cork.flush() == 1
    assert drain(client) == b"".join(frames)
    assert (outbox.queued_frames, outbox.queued_bytes, wake.calls, cork.pending) == (0, 0, 0, 0)
    assert cork.flush() == 0


def test_an_inactive_cork_sends_directly(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    outbox, cork = corked(frames_impl, server, 8, 1 << 20)
    cork.active = False
    assert outbox.push(b"now") == frames_impl.PUSH_SENT
    assert drain(client) == b"now"
    assert cork.pending == 0


def test_corked_outbox_while_writing_leaves_the_queue_to_the_writer(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox, cork = corked(frames_impl, server, 8, 1 << 20, wake=wake)
    assert outbox.push(b"a") == frames_impl.PUSH_QUEUED
    outbox.writing = True  # a writer took the socket before the flush
    assert outbox.push(b"b") == frames_impl.PUSH_QUEUED
    cork.flush()
    assert drain(client) == b""
    assert outbox.queued_frames == 2
    assert write_out(outbox, server, client) == b"ab"


@pytest.mark.parametrize("by", ["frames", "bytes"])
def test_a_corked_outbox_sends_early_once_the_batch_is_big(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket], by: str
) -> None:
    server, client = pair
    outbox, cork = corked(frames_impl, server, 10_000, 1 << 24)
    size = 10 if by == "frames" else 20_000
    batch = CORK_FRAMES if by == "frames" else CORK_BYTES // size
    frames = [payload_of(size, i) for i in range(batch + 1)]
    for frame in frames[:batch]:
        assert outbox.push(frame) == frames_impl.PUSH_QUEUED
    assert drain(client) == b""
    assert outbox.push(frames[batch]) == frames_impl.PUSH_QUEUED
    assert drain(client) == b"".join(frames[:batch])  # the batch left, the new frame waits
    assert outbox.queued_frames == 1
    cork.flush()
    assert drain(client) == frames[batch]


def test_corked_limits_count_only_what_the_kernel_did_not_take(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    outbox, cork = corked(frames_impl, server, 2, 100)
    frames = [payload_of(40, i) for i in range(7)]
    assert [outbox.push(f) for f in frames] == [frames_impl.PUSH_QUEUED] * 7
    cork.flush()
    assert drain(client) == b"".join(frames)


def test_a_corked_flush_under_backpressure_queues_the_rest_and_wakes_once(
    frames_impl: ModuleType, small_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = small_pair
    wake = Wake()
    outbox, cork = corked(frames_impl, server, 1000, 1 << 24, wake=wake)
    frames = [binary_frame(frames_impl, 900, i) for i in range(60)]  # ~54 KiB
    for frame, _ in frames:
        assert outbox.push(frame) == frames_impl.PUSH_QUEUED
    cork.flush()
    assert wake.calls == 1  # the writer takes over what the kernel did not take
    assert outbox.queued_frames == 1  # the rest of the batch, after a partial send
    received = write_out(outbox, server, client)
    assert_whole_frames(received, [payload for _, payload in frames])


def test_a_corked_flush_into_a_full_socket_leaves_the_batch_to_the_writer(
    frames_impl: ModuleType, small_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = small_pair
    wake = Wake()
    outbox, cork = corked(frames_impl, server, 1000, 1 << 24, wake=wake)
    clogged = clog(server)
    frames = [binary_frame(frames_impl, 100, i) for i in range(3)]
    for frame, _ in frames:
        assert outbox.push(frame) == frames_impl.PUSH_QUEUED
    cork.flush()
    assert wake.calls == 1
    assert outbox.queued_frames == 3  # the kernel took nothing: whole frames, droppable
    received = write_out(outbox, server, client)
    assert_whole_frames(received, [b""] * clogged + [payload for _, payload in frames])


def test_a_corked_flush_to_a_closed_peer_closes_the_outbox(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    wake = Wake()
    outbox, cork = corked(frames_impl, server, 8, 1 << 20, wake=wake)
    client.close()
    assert outbox.push(b"lost") == frames_impl.PUSH_QUEUED
    cork.flush()
    assert outbox.closed
    assert outbox.error in (errno.EPIPE, errno.ECONNRESET)
    assert (wake.calls, outbox.queued_frames, outbox.queued_bytes) == (1, 0, 0)
    assert outbox.push(b"more") == frames_impl.PUSH_CLOSED


def test_a_cork_flushes_every_outbox_before_raising_a_wake_error(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    def broken_wake() -> None:
        raise RuntimeError("wake failed")

    cork = frames_impl.Cork()
    cork.active = True
    with small_socketpair() as (server, _):
        clogged = frames_impl.Outbox(server, 8, 1 << 20, broken_wake, cork=cork)
        clog(server)
        healthy = frames_impl.Outbox(pair[0], 8, 1 << 20, Wake(), cork=cork)
        assert clogged.push(b"x") == frames_impl.PUSH_QUEUED
        assert healthy.push(b"y") == frames_impl.PUSH_QUEUED
        with pytest.raises(RuntimeError, match="wake failed"):
            cork.flush()
        assert drain(pair[1]) == b"y"  # flushed although an earlier outbox's wake raised
        assert cork.pending == 0


def test_cork_rejects_other_types(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    with pytest.raises(TypeError):
        frames_impl.Outbox(pair[0], 8, 8, Wake(), cork=object())
    assert frames_impl.Cork().active is False


cork_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 3000)),
        st.tuples(st.just("flush"), st.none()),
        st.tuples(st.just("active"), st.booleans()),
        st.tuples(st.just("writer"), st.none()),
        st.tuples(st.just("read"), st.none()),
    ),
    max_size=120,
)


@pytest.mark.c_extension
@PROPERTY
@given(max_frames=st.integers(1, 200), max_bytes=st.integers(3000, 1 << 20), steps=cork_ops)
def test_corked_outbox_same_in_c_and_python_and_keeps_every_frame_in_order(
    frames_c: ModuleType, max_frames: int, max_bytes: int, steps: list[tuple[str, Any]]
) -> None:
    """The same results, states, wakes and bytes on the wire, through early sends, partial
    sends into a small socket buffer and writer turns; every accepted frame arrives whole,
    once, in order."""
    with small_socketpair() as (server_c, client_c), small_socketpair() as (server_p, client_p):
        pairs = [(server_c, client_c), (server_p, client_p)]
        boxes, corks, wakes = [], [], []
        for module, (server, _) in zip((frames_c, _frames_py), pairs, strict=True):
            wakes.append(Wake())
            box, cork = corked(module, server, max_frames, max_bytes, wake=wakes[-1])
            boxes.append(box)
            corks.append(cork)
        accepted: list[bytes] = []
        received: list[list[bytes]] = [[], []]
        for i, (op, arg) in enumerate(steps):
            if op == "push":
                frame, payload = binary_frame(frames_c, arg, i)
                results = [box.push(frame) for box in boxes]
                if results[0] <= frames_c.PUSH_QUEUED:
                    accepted.append(payload)
            elif op == "flush":
                results = [cork.flush() for cork in corks]
            elif op == "active":
                for cork in corks:
                    cork.active = arg
                results = []
            elif op == "writer":
                results = []
                for box, (server, client), got in zip(boxes, pairs, received, strict=True):
                    got.append(write_out(box, server, client))
            else:
                results = []
                for (_, client), got in zip(pairs, received, strict=True):
                    got.append(drain(client))
            assert results[:1] == results[1:]
            states = [(b.closed, b.queued_frames, b.queued_bytes) for b in boxes]
            assert states[0] == states[1]
            assert [c.pending for c in corks] == [corks[0].pending] * 2
            assert wakes[0].calls == wakes[1].calls
        for box, cork, (server, client), got in zip(boxes, corks, pairs, received, strict=True):
            cork.flush()
            got.append(write_out(box, server, client))
        assert b"".join(received[0]) == b"".join(received[1])
        assert_whole_frames(b"".join(received[0]), accepted)


# fan_out -----------------------------------------------------------------------------------


def _outboxes(frames: ModuleType, server: socket.socket) -> tuple[list[Any], dict[str, Any], Wake]:
    wake = Wake()
    sent = frames.Outbox(server, 8, 1 << 20, wake)
    queued = frames.Outbox(server, 8, 1 << 20, wake)
    queued.writing = True
    full = frames.Outbox(server, 0, 1 << 20, wake)
    full.writing = True
    closed = frames.Outbox(server, 8, 1 << 20, wake)
    closed.close()
    named = {"sent": sent, "queued": queued, "full": full, "closed": closed}
    return [sent, queued, full, closed], named, wake


@pytest.mark.parametrize("container", [list, tuple, iter], ids=["list", "tuple", "iterator"])
def test_fan_out_counts_accepted_and_collects_full(
    frames_impl: ModuleType,
    pair: tuple[socket.socket, socket.socket],
    container: Callable[[list[Any]], Any],
) -> None:
    server, client = pair
    boxes, named, wake = _outboxes(frames_impl, server)
    earlier = object()
    full: list[Any] = [earlier]
    frame = frames_impl.encode_frame(frames_impl.OP_TEXT, b"news")
    assert frames_impl.fan_out(container(boxes), frame, full) == 2
    assert full == [earlier, named["full"]]
    assert full[1] is named["full"]
    assert drain(client) == frame  # the free outbox wrote directly
    assert named["queued"].take() == frame
    assert wake.calls == 0


def test_fan_out_pushes_in_order_to_many(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    boxes = [frames_impl.Outbox(server, 2, 1 << 20, Wake()) for _ in range(100)]
    for box in boxes:
        box.writing = True
    full: list[Any] = []
    assert frames_impl.fan_out(boxes, b"1", full) == 100
    assert frames_impl.fan_out(boxes, b"2", full) == 100
    assert frames_impl.fan_out(boxes, b"3", full) == 0
    assert full == boxes
    assert all(box.take() == b"12" for box in boxes)
    assert frames_impl.fan_out([], b"x", full) == 0


def test_fan_out_counts_pushes_that_dropped_older_frames(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    dropping = frames_impl.Outbox(server, 1, 1 << 20, Wake(), drop_oldest=True)
    refusing = frames_impl.Outbox(server, 1, 1 << 20, Wake())
    for box in (dropping, refusing):
        box.writing = True
    full: list[Any] = []
    assert frames_impl.fan_out([dropping, refusing], b"1", full) == 2
    assert frames_impl.fan_out([dropping, refusing], b"2", full) == 1
    assert full == [refusing]
    assert (dropping.dropped_frames, refusing.dropped_frames) == (1, 0)
    assert (dropping.take(), refusing.take()) == (b"2", b"1")


def test_fan_out_rejects_bad_arguments(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    box = frames_impl.Outbox(pair[0], 8, 1 << 20, Wake())
    box.writing = True
    with pytest.raises(TypeError):
        frames_impl.fan_out([box], bytearray(b"x"), [])
    with pytest.raises(TypeError):
        frames_impl.fan_out([box], b"x", ())
    with pytest.raises(TypeError):
        frames_impl.fan_out([box, object()], b"x", [])
    assert box.queued_frames == 1  # the outboxes before the bad item got the frame


@pytest.mark.c_extension
def test_fan_out_rejects_outboxes_of_the_other_implementation(
    frames_c: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    c_box = frames_c.Outbox(pair[0], 8, 1 << 20, Wake())
    py_box = _frames_py.Outbox(pair[0], 8, 1 << 20, Wake())
    with pytest.raises(TypeError):
        frames_c.fan_out([py_box], b"x", [])
    with pytest.raises(TypeError):
        _frames_py.fan_out([c_box], b"x", [])


# The outbox's sender (TLS) -------------------------------------------------


class Sender:
    """A sender that takes what ``budget`` allows (all or nothing, like TLS), or fails."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.accept = True
        self.fail = 0

    def __call__(self, data: bytes) -> int:
        if self.fail:
            return -self.fail
        if not self.accept:
            return 0
        self.sent.append(data)
        return len(data)


def test_a_sender_takes_the_place_of_the_socket(frames_impl: ModuleType) -> None:
    sender, wake = Sender(), Wake()
    outbox = frames_impl.Outbox(None, 8, 1 << 20, wake, sender=sender)
    assert outbox.push(b"one") == frames_impl.PUSH_SENT
    sender.accept = False  # earlier ciphertext pending: queue
    assert outbox.push(b"two") == frames_impl.PUSH_QUEUED
    assert wake.calls == 1
    assert outbox.push(b"three") == frames_impl.PUSH_QUEUED
    assert outbox.take() == b"twothree"
    assert sender.sent == [b"one"]
    sender.accept, sender.fail = True, errno.ECONNRESET
    assert outbox.push(b"four") == frames_impl.PUSH_CLOSED
    assert (outbox.closed, outbox.error) == (True, errno.ECONNRESET)
    assert wake.calls == 2


def test_a_corked_sender_gets_one_steps_frames_at_once(frames_impl: ModuleType) -> None:
    sender, cork = Sender(), frames_impl.Cork()
    cork.active = True
    outbox = frames_impl.Outbox(None, 8, 1 << 20, Wake(), sender=sender, cork=cork)
    assert [outbox.push(b"%d" % i) for i in range(3)] == [frames_impl.PUSH_QUEUED] * 3
    assert cork.flush() == 1
    assert sender.sent == [b"012"]
    assert outbox.queued_frames == 0


def test_a_sender_is_checked(
    frames_impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    with pytest.raises(TypeError, match="sender"):
        frames_impl.Outbox(None, 8, 10, Wake(), sender=42)
    with pytest.raises(ValueError, match="not both"):
        frames_impl.Outbox(pair[0], 8, 10, Wake(), sender=Sender())
