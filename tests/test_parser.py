"""Tests of ``FrameParser``, the parser of client frames, in ``_frames_c`` and ``_frames_py``.

wsproto's ``FrameProtocol(client=False, extensions=[])`` is the oracle: on generated frame
streams and on random bytes, fed in random chunks, our parser must give the same complete
events after each chunk and fail on the same chunk with the same close code. The one
deliberate difference, the 1009 size limit, is kept out of those tests by a limit they never
reach, and tested on its own. Behaviour tests take the ``frames_impl`` fixture and run once
per implementation; the C-against-Python tests carry the ``c_extension`` marker.

With ``deflate=True`` (permessage-deflate, RFC 7692) the oracle is wsproto with its
``PerMessageDeflate`` extension, which inflates; our compressed events are inflated by the
test before the comparison. It is the oracle only on streams of well-formed compressed data
with no control frame between the fragments of a compressed message: wsproto inflates as
the bytes arrive (so corrupt data fails earlier there than in our caller), and 1.3 drops the
"compressed" state of a message at such a control frame. The rest is covered by behaviour
tests and by C against Python on random streams.
"""

from __future__ import annotations

import functools
import itertools
import random
import sys
import zlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed, XorMaskerSimple

from riverside_trio.errors import ProtocolError
from riverside_trio.wire import _frames_py

PROPERTY = settings(
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NO_LIMIT = sys.maxsize  # a max_message_size the generated streams never reach
KEY = b"\x37\xfa\x21\x3d"
EV_TEXT, EV_BINARY, EV_CLOSE, EV_PING, EV_PONG = 1, 2, 8, 9, 10
EV_TEXT_DEFLATED, EV_BINARY_DEFLATED = 3, 4
RSV1 = 4  # the ``rsv`` argument of frame(): RSV1 is 4, RSV2 2, RSV3 1
TAIL = b"\x00\x00\xff\xff"  # ends every compressed message; not sent (RFC 7692 7.2.1)
MiB = 1 << 20

Event = tuple[Any, ...]
Outcome = tuple[list[list[Event]], tuple[int, str] | None, list[int]]


# Building client frames --------------------------------------------------------------------


def masked(payload: bytes, key: bytes) -> bytes:
    """``payload`` masked with ``key`` by wsproto's own masker, independent of our code."""
    return bytes(XorMaskerSimple(key).process(bytearray(payload)))


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    key: bytes = KEY,
    length: int | None = None,
    width: int | None = None,
) -> bytes:
    """One client frame. ``length`` declares another payload length than the real one;
    ``width`` (7, 16 or 64) forces the length encoding, minimal or not."""
    declared = len(payload) if length is None else length
    if width is None:
        width = 7 if declared < 126 else 16 if declared < 0x10000 else 64
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if mask else 0
    if width == 7:
        head = bytes((first, mask_bit | declared))
    elif width == 16:
        head = bytes((first, mask_bit | 126)) + declared.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + declared.to_bytes(8, "big")
    if not mask:
        return head + payload
    return head + key + masked(payload, key)


def header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """Only the header of a masked frame declaring ``length`` payload bytes."""
    return frame(opcode, b"", fin=fin, length=length)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def compress(payload: bytes, compressor: Any = None) -> bytes:
    """``payload`` as the compressed payload of one message: deflated, flushed, tail cut.

    Pass the same ``compressor`` for messages of one stream to keep the context (the default
    of RFC 7692); each message is compressed on its own otherwise.
    """
    if compressor is None:
        compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    return bytes(data[:-4])


def inflate(payload: bytes) -> bytes:
    """What the caller does with a compressed event's payload (one message, no context)."""
    return zlib.decompressobj(-15).decompress(payload + TAIL)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, repeats allowed: empty chunks)."""
    points = [0, *sorted(min(max(c, 0), len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# Running parsers ---------------------------------------------------------------------------


def drive(parser: Any, chunks: Iterable[bytes]) -> Outcome:
    """Feed ``chunks`` one by one, draining events after each.

    Returns the events after each chunk, the error ``(code, reason)`` or ``None``, and
    ``buffered`` after each chunk that did not fail. Checks that an error is raised again.
    """
    per_chunk: list[list[Event]] = []
    sizes: list[int] = []
    for chunk in chunks:
        parser.feed(chunk)
        events: list[Event] = []
        per_chunk.append(events)
        try:
            while (event := parser.next_event()) is not None:
                events.append(event)
        except ProtocolError as exc:
            error = (exc.code, exc.reason)
            parser.feed(b"\x81\x80" + KEY)  # ignored
            with pytest.raises(ProtocolError) as again:
                parser.next_event()
            assert (again.value.code, again.value.reason) == error
            assert parser.buffered == 0
            return per_chunk, error, sizes
        sizes.append(parser.buffered)
    return per_chunk, None, sizes


def oracle(
    chunks: Iterable[bytes], *, deflate: bool = False
) -> tuple[list[list[Event]], int | None]:
    """What wsproto's server-side parser makes of ``chunks``, as our events and close code;
    with ``deflate``, through its permessage-deflate extension (negotiated with the default
    parameters: the client keeps its context), so compressed messages come out inflated."""
    extensions = []
    if deflate:
        extension = PerMessageDeflate()
        extension.finalize("permessage-deflate")
        extensions.append(extension)
    protocol = FrameProtocol(client=False, extensions=extensions)
    per_chunk: list[list[Event]] = []
    parts: list[Any] = []
    for chunk in chunks:
        protocol.receive_bytes(chunk)
        events: list[Event] = []
        per_chunk.append(events)
        try:
            for received in protocol.received_frames():
                payload: Any = received.payload  # (code, reason), str or bytes
                if received.opcode is Opcode.CLOSE:
                    events.append((EV_CLOSE, int(payload[0]), payload[1]))
                elif received.opcode in (Opcode.PING, Opcode.PONG):
                    events.append((int(received.opcode), bytes(payload)))
                else:
                    parts.append(payload)
                    if received.message_finished:
                        if received.opcode is Opcode.TEXT:
                            events.append((EV_TEXT, "".join(parts)))
                        else:
                            events.append((EV_BINARY, b"".join(parts)))
                        parts = []
        except ParseFailed as exc:
            return per_chunk, int(exc.code)
    return per_chunk, None


def inflated(per_chunk: list[list[Event]]) -> list[list[Event]]:
    """Our events with compressed messages inflated in order, with one context for the whole
    stream (as wsproto keeps it), as the events wsproto gives for them."""
    decompressor = zlib.decompressobj(-15)
    result: list[list[Event]] = []
    for events in per_chunk:
        row: list[Event] = []
        for event in events:
            if event[0] in (EV_TEXT_DEFLATED, EV_BINARY_DEFLATED):
                data = decompressor.decompress(event[1] + TAIL)
                if event[0] == EV_TEXT_DEFLATED:
                    event = (EV_TEXT, data.decode("utf-8"))
                else:
                    event = (EV_BINARY, data)
            row.append(event)
        result.append(row)
    return result


def parse_all(
    frames: ModuleType, data: bytes, max_size: int = NO_LIMIT, *, deflate: bool = False
) -> list[Event]:
    """Every event of ``data`` fed at once; fails the test on a ProtocolError."""
    parser = frames.FrameParser(max_size, deflate=deflate)
    parser.feed(data)
    events = []
    while (event := parser.next_event()) is not None:
        events.append(event)
    return events


def error_of(
    frames: ModuleType, data: bytes, max_size: int = NO_LIMIT, *, deflate: bool = False
) -> ProtocolError:
    parser = frames.FrameParser(max_size, deflate=deflate)
    parser.feed(data)
    with pytest.raises(ProtocolError) as info:
        while parser.next_event() is not None:
            pass
    return info.value


# Generating frame streams ------------------------------------------------------------------


class Spec(NamedTuple):
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    mask: bool = True
    key: bytes = KEY
    length: int | None = None
    width: int | None = None

    def encode(self) -> bytes:
        return frame(
            self.opcode,
            self.payload,
            fin=self.fin,
            rsv=self.rsv,
            mask=self.mask,
            key=self.key,
            length=self.length,
            width=self.width,
        )


BAD_UTF8 = [
    b"\xff",
    b"\x80",
    b"\xc0\xaf",  # overlong
    b"\xe0\x80\x80",  # overlong
    b"\xed\xa0\x80",  # surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",
    b"\xe2\x82",  # truncated
    b"\xf0\x9f\x98",  # truncated
]
CLOSE_CODES = [0, 999, 1000, 1001, 1003, 1004, 1005, 1006, 1007, 1010, 1013, 1014, 1015, 1016]
CLOSE_CODES += [2999, 3000, 4999, 5000, 65535]


def _insert(data: bytes, bad: bytes, at: int) -> bytes:
    at = min(at, len(data))
    return data[:at] + bad + data[at:]


def _seeded(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


keys = st.binary(min_size=4, max_size=4)
valid_text = st.text(max_size=40).map(lambda text: text.encode("utf-8"))
text_payloads = st.one_of(
    valid_text,
    valid_text,
    st.builds(_insert, valid_text, st.sampled_from(BAD_UTF8), st.integers(0, 50)),
    st.binary(max_size=12),
    st.builds(lambda n, tail: "é€😀".encode() * n + tail, st.integers(21_000, 22_000), valid_text),
)
binary_payloads = st.one_of(
    st.binary(max_size=200),
    st.builds(_seeded, st.integers(0x10000, 0x10400), st.integers(0, 2**32)),
)
close_payloads = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.builds(
        close_payload,
        st.one_of(
            st.sampled_from(CLOSE_CODES), st.sampled_from(CLOSE_CODES), st.integers(0, 65535)
        ),
        st.one_of(
            st.text(max_size=20).map(lambda text: text.encode("utf-8")),
            st.builds(_insert, st.binary(max_size=10), st.sampled_from(BAD_UTF8), st.integers()),
        ),
    ),
)
MUTATIONS = [None] * 14 + ["rsv", "unmasked", "fin", "opcode", "wide16", "wide64", "msb", "lie"]


@st.composite
def mutated(draw: st.DrawFn, spec: Spec, mutations: list[str | None] = MUTATIONS) -> Spec:
    """``spec``, mostly unchanged, sometimes broken in one way."""
    mutation = draw(st.sampled_from(mutations))
    size = len(spec.payload)
    if mutation == "rsv":
        return spec._replace(rsv=draw(st.integers(1, 7)))
    if mutation == "unmasked":
        return spec._replace(mask=False)
    if mutation == "fin":
        return spec._replace(fin=not spec.fin)
    if mutation == "opcode":
        return spec._replace(opcode=draw(st.integers(0, 15)))
    if mutation == "wide16" and size < 0x10000:
        return spec._replace(width=16)
    if mutation == "wide64":
        return spec._replace(width=64)
    if mutation == "msb":
        return spec._replace(width=64, length=size | 1 << 63)
    if mutation == "lie":
        return spec._replace(
            length=draw(st.one_of(st.integers(0, size + 10), st.integers(0, 2**62)))
        )
    return spec


@st.composite
def messages(draw: st.DrawFn) -> list[Spec]:
    """A text or binary message cut into fragments at random bytes, control frames between."""
    opcode = draw(st.sampled_from([EV_TEXT, EV_BINARY]))
    payload = draw(text_payloads if opcode == EV_TEXT else binary_payloads)
    pieces = split(payload, draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    specs = []
    for i, piece in enumerate(pieces):
        if i and draw(st.integers(0, 3)) == 0:
            specs.append(draw(control_frames()))
        spec = Spec(opcode if i == 0 else 0, piece, fin=i == len(pieces) - 1, key=draw(keys))
        specs.append(draw(mutated(spec)))
    return specs


@st.composite
def control_frames(draw: st.DrawFn, *, tame: bool = False) -> Spec:
    opcode = draw(st.sampled_from([EV_PING, EV_PONG, EV_CLOSE]))
    if opcode == EV_CLOSE and draw(st.integers(0, 2)):
        payload = draw(close_payloads)
    elif tame:  # mostly valid: tame streams are for the messages between
        payload = draw(st.binary(max_size=125))
    else:
        payload = draw(st.one_of(st.binary(max_size=125), st.binary(min_size=126, max_size=130)))
    spec = Spec(opcode, payload, key=draw(keys))
    return draw(tamely_mutated(spec) if tame else mutated(spec))


random_frames = st.builds(
    Spec,
    opcode=st.integers(0, 15),
    payload=st.one_of(st.binary(max_size=30), st.binary(min_size=126, max_size=300)),
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1, 2, 4, 7]),
    mask=st.sampled_from([True, True, True, False]),
    key=keys,
    length=st.none(),
    width=st.none(),
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Frames (valid and not) serialised, sometimes cut short."""
    specs: list[Spec] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["message", "message", "control", "frame"]))
        if kind == "message":
            specs.extend(draw(messages()))
        elif kind == "control":
            specs.append(draw(control_frames()))
        else:
            specs.append(draw(random_frames))
    data = b"".join(spec.encode() for spec in specs)
    if data and draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


# Header-only breakage: wsproto fails on the same byte whether or not it inflates.
TAME_MUTATIONS: list[str | None] = [None] * 60 + ["rsv", "unmasked", "wide16", "wide64", "msb"]
WILD_MUTATIONS: list[str | None] = [None] * 30 + MUTATIONS  # fewer: more messages get through


@st.composite
def tamely_mutated(draw: st.DrawFn, spec: Spec) -> Spec:
    """``spec``, mostly unchanged, sometimes broken in its header only: never with RSV1 alone
    on the first frame of an uncompressed message, which wsproto would start inflating."""
    mutation = draw(st.sampled_from(TAME_MUTATIONS))
    if mutation == "rsv":
        rsv = draw(st.integers(1, 7))
        if rsv == RSV1 and spec.opcode in (EV_TEXT, EV_BINARY) and not spec.rsv:
            rsv |= draw(st.integers(1, 3))  # RSV2 or RSV3 too: 1002 in both
        return spec._replace(rsv=rsv)
    return draw(mutated(spec, [mutation]))


@st.composite
def deflate_messages(draw: st.DrawFn, compressor: Any, *, wild: bool) -> list[Spec]:
    """A message, compressed with ``compressor`` (RSV1 on its first fragment) or not, cut
    into fragments at random bytes.

    Tame (``wild=False``), for wsproto as the oracle: compressed text is valid UTF-8, no
    control frame comes between the fragments of a compressed message, and frames are only
    broken in their headers. Wild: anything, for C against Python.
    """
    opcode = draw(st.sampled_from([EV_TEXT, EV_BINARY]))
    compressed = draw(st.sampled_from([True, True, False]))
    if opcode == EV_TEXT:
        content = draw(text_payloads if wild or not compressed else valid_text)
    else:
        content = draw(binary_payloads)
    payload = compress(content, compressor) if compressed else content
    pieces = split(payload, draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    specs = []
    for i, piece in enumerate(pieces):
        if i and (wild or not compressed) and draw(st.integers(0, 3)) == 0:
            specs.append(draw(control_frames(tame=not wild)))
        spec = Spec(
            opcode if i == 0 else 0,
            piece,
            fin=i == len(pieces) - 1,
            rsv=RSV1 if compressed and i == 0 else 0,
            key=draw(keys),
        )
        specs.append(draw(mutated(spec, WILD_MUTATIONS) if wild else tamely_mutated(spec)))
    return specs


@st.composite
def deflate_streams(draw: st.DrawFn, *, wild: bool) -> bytes:
    """Compressed and uncompressed messages and control frames of one permessage-deflate
    session (one compression context), sometimes cut short; see ``deflate_messages``."""
    compressor = zlib.compressobj(wbits=-15)
    kinds = ["message", "message", "control", *(["frame"] if wild else [])]
    specs: list[Spec] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(kinds))
        if kind == "message":
            specs.extend(draw(deflate_messages(compressor, wild=wild)))
        elif kind == "control":
            specs.append(draw(control_frames(tame=not wild)))
        else:
            specs.append(draw(random_frames))
    data = b"".join(spec.encode() for spec in specs)
    if data and draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` in one piece, byte by byte (when short) or cut at random places."""
    how = draw(st.sampled_from(["whole", "bytes", "bytes", "cuts", "cuts"]))
    if how == "whole":
        return [data]
    if how == "bytes" and len(data) <= 2000:
        return [data[i : i + 1] for i in range(len(data))]
    return split(data, draw(st.lists(st.integers(0, len(data)), max_size=10)))


# Differential tests against wsproto --------------------------------------------------------


def assert_same_as_wsproto(frames: ModuleType, chunks: list[bytes]) -> None:
    events, error, _ = drive(frames.FrameParser(NO_LIMIT), chunks)
    expected_events, expected_code = oracle(chunks)
    assert events == expected_events
    assert (error[0] if error else None) == expected_code


@PROPERTY
@given(data=st.data(), stream=streams())
def test_frame_streams_parse_as_wsproto_parses_them(
    frames_impl: ModuleType, data: st.DataObject, stream: bytes
) -> None:
    assert_same_as_wsproto(frames_impl, data.draw(chunkings(stream)))


@PROPERTY
@given(data=st.data(), noise=st.binary(max_size=300))
def test_random_bytes_parse_as_wsproto_parses_them(
    frames_impl: ModuleType, data: st.DataObject, noise: bytes
) -> None:
    assert_same_as_wsproto(frames_impl, data.draw(chunkings(noise)))


@PROPERTY
@given(data=st.data(), prefix=streams(), noise=st.binary(max_size=40))
def test_frames_followed_by_noise_parse_as_wsproto_parses_them(
    frames_impl: ModuleType, data: st.DataObject, prefix: bytes, noise: bytes
) -> None:
    assert_same_as_wsproto(frames_impl, data.draw(chunkings(prefix + noise)))


# Not 2**63 - 1: after a fragment, that would be over even a sys.maxsize limit (1009).
LENGTHS = [0, 1, 2, 125, 126, 127, 128, 65535, 65536, 2**62, 2**63 - 2**32, 2**63, 2**64 - 1]


@st.composite
def single_frames(draw: st.DrawFn) -> bytes:
    """Any FIN, RSV and opcode, either MASK bit, a length near an encoding boundary
    in any encoding wide enough, some payload; after no message, or inside a text or a binary
    message."""
    opcode = draw(st.one_of(st.sampled_from([0, 1, 2, 8, 9, 10]), st.integers(0, 15)))
    rsv = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 4, 7]))
    first = (0x80 if draw(st.booleans()) else 0) | rsv << 4 | opcode
    declared = draw(st.one_of(st.integers(0, 140), st.sampled_from(LENGTHS)))
    widths = [None] + [w for w, top in ((16, 0xFFFF), (64, 2**64 - 1)) if declared <= top]
    payload = draw(st.binary(max_size=min(declared, 140)))
    if first & 0x0F == EV_CLOSE and draw(st.booleans()):
        payload = draw(close_payloads)
    spec = Spec(
        first & 0x0F,
        payload,
        fin=bool(first & 0x80),
        rsv=first >> 4 & 7,
        mask=draw(st.sampled_from([True, True, False])),
        key=draw(keys),
        length=declared if declared != len(payload) else None,
        width=draw(st.sampled_from(widths)),
    )
    before = draw(
        st.sampled_from(
            [b"", frame(EV_TEXT, "é".encode()[:1], fin=False), frame(EV_BINARY, b"", fin=False)]
        )
    )
    return before + spec.encode()


@PROPERTY
@given(data=single_frames())
def test_single_frames_fed_byte_by_byte_parse_as_wsproto_parses_them(
    frames_impl: ModuleType, data: bytes
) -> None:
    assert_same_as_wsproto(frames_impl, [data[i : i + 1] for i in range(len(data))])


@functools.cache
def close_codes_wsproto_accepts() -> frozenset[int]:
    accepted = set()
    for code in range(65536):
        _, error = oracle([frame(EV_CLOSE, close_payload(code))])
        if error is None:
            accepted.add(code)
    return frozenset(accepted)


def test_close_codes_are_accepted_exactly_as_wsproto_accepts_them(
    frames_impl: ModuleType,
) -> None:
    accepted = set()
    for code in range(65536):
        parser = frames_impl.FrameParser(NO_LIMIT)
        parser.feed(frame(EV_CLOSE, close_payload(code, b"why")))
        try:
            assert parser.next_event() == (EV_CLOSE, code, "why")
        except ProtocolError as exc:
            assert (exc.code, exc.reason) == (1002, "invalid close code")
        else:
            accepted.add(code)
    assert accepted == close_codes_wsproto_accepts()
    expected = {*range(1000, 1004), *range(1007, 1014), *range(3000, 5000)}
    assert accepted == expected  # wsproto 1.3 refuses 1014


# C against Python --------------------------------------------------------------------------


def assert_same_in_c_and_python(
    frames_c: ModuleType, chunks: list[bytes], max_size: int, *, deflate: bool = False
) -> None:
    c_outcome = drive(frames_c.FrameParser(max_size, deflate=deflate), chunks)
    py_outcome = drive(_frames_py.FrameParser(max_size, deflate=deflate), chunks)
    assert c_outcome == py_outcome


@pytest.mark.c_extension
@PROPERTY
@given(data=st.data(), noise=st.binary(max_size=400), max_size=st.integers(0, 400))
def test_random_bytes_parse_the_same_in_c_and_python(
    frames_c: ModuleType, data: st.DataObject, noise: bytes, max_size: int
) -> None:
    assert_same_in_c_and_python(frames_c, data.draw(chunkings(noise)), max_size)


@pytest.mark.c_extension
@PROPERTY
@given(
    data=st.data(),
    stream=streams(),
    max_size=st.one_of(st.integers(0, 300), st.integers(0, 70_000), st.just(NO_LIMIT)),
)
def test_frame_streams_parse_the_same_in_c_and_python(
    frames_c: ModuleType, data: st.DataObject, stream: bytes, max_size: int
) -> None:
    assert_same_in_c_and_python(frames_c, data.draw(chunkings(stream)), max_size)


@pytest.mark.c_extension
@PROPERTY
@given(data=st.data(), noise=st.binary(max_size=400), max_size=st.integers(0, 400))
def test_random_bytes_parse_the_same_in_c_and_python_with_deflate(
    frames_c: ModuleType, data: st.DataObject, noise: bytes, max_size: int
) -> None:
    assert_same_in_c_and_python(frames_c, data.draw(chunkings(noise)), max_size, deflate=True)


@pytest.mark.c_extension
@PROPERTY
@given(
    data=st.data(),
    stream=st.one_of(deflate_streams(wild=True), streams()),
    noise=st.one_of(st.just(b""), st.binary(max_size=40)),
    max_size=st.one_of(st.integers(0, 300), st.integers(0, 70_000), st.just(NO_LIMIT)),
)
def test_frame_streams_parse_the_same_in_c_and_python_with_deflate(
    frames_c: ModuleType, data: st.DataObject, stream: bytes, noise: bytes, max_size: int
) -> None:
    chunks = data.draw(chunkings(stream + noise))
    assert_same_in_c_and_python(frames_c, chunks, max_size, deflate=True)


# permessage-deflate against wsproto --------------------------------------------------------


@PROPERTY
@given(data=st.data(), stream=deflate_streams(wild=False))
def test_deflate_streams_parse_as_wsproto_with_permessage_deflate_parses_them(
    frames_impl: ModuleType, data: st.DataObject, stream: bytes
) -> None:
    chunks = data.draw(chunkings(stream))
    events, error, _ = drive(frames_impl.FrameParser(NO_LIMIT, deflate=True), chunks)
    expected_events, expected_code = oracle(chunks, deflate=True)
    assert inflated(events) == expected_events
    assert (error[0] if error else None) == expected_code


@PROPERTY
@given(data=st.data(), stream=streams())
def test_deflate_changes_only_what_rsv1_means(
    frames_impl: ModuleType, data: st.DataObject, stream: bytes
) -> None:
    """Up to the first frame with RSV1 alone, where the parser without deflate fails, a
    stream parses the same with and without deflate."""
    chunks = data.draw(chunkings(stream))
    plain = drive(frames_impl.FrameParser(NO_LIMIT), chunks)
    deflate = drive(frames_impl.FrameParser(NO_LIMIT, deflate=True), chunks)
    if plain[1] != (1002, "reserved bits set"):
        assert deflate == plain
        return
    failed = len(plain[0]) - 1  # the chunk it failed on
    assert deflate[0][:failed] == plain[0][:failed]
    assert deflate[0][failed][: len(plain[0][failed])] == plain[0][failed]
    assert deflate[2][:failed] == plain[2]


# The size limit ----------------------------------------------------------------------------


@PROPERTY
@given(
    payload=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=4),
    slack=st.integers(-5, 5),
    text=st.booleans(),
)
def test_size_limit_fails_on_the_header_of_the_frame_that_crosses_it(
    frames_impl: ModuleType, payload: bytes, cuts: list[int], slack: int, text: bool
) -> None:
    if text:
        payload = payload.hex().encode()
    max_size = max(len(payload) + slack, 0)
    pieces = split(payload, cuts)
    parser = frames_impl.FrameParser(max_size)
    so_far = 0
    for i, piece in enumerate(pieces):
        data = frame(0 if i else (EV_TEXT if text else EV_BINARY), piece, fin=i == len(pieces) - 1)
        head, rest = data[: len(data) - len(piece)], data[len(data) - len(piece) :]
        parser.feed(head)
        if so_far + len(piece) > max_size:
            with pytest.raises(ProtocolError) as info:
                parser.next_event()  # the header alone
            assert (info.value.code, info.value.reason) == (1009, "message too big")
            assert len(payload) > max_size
            return
        so_far += len(piece)
        parser.feed(rest)
        event = parser.next_event()
        if i < len(pieces) - 1:
            assert event is None
    expected = payload.decode() if text else payload
    assert len(payload) <= max_size
    assert event == (EV_TEXT if text else EV_BINARY, expected)


def test_size_limit_fails_on_a_header_alone_however_large_the_declared_length(
    frames_impl: ModuleType,
) -> None:
    for length in (101, 65536, 2**40, 2**63 - 1):
        error = error_of(frames_impl, header(EV_BINARY, length), max_size=100)
        assert (error.code, error.reason) == (1009, "message too big")


def test_size_limit_of_sys_maxsize_allows_any_length_but_counts_fragments(
    frames_impl: ModuleType,
) -> None:
    parser = frames_impl.FrameParser(sys.maxsize)
    parser.feed(header(EV_BINARY, 2**63 - 1) + b"\x00")
    assert parser.next_event() is None  # wsproto waits too
    assert parser.buffered == 1
    # The documented difference: wsproto has no limit at all.
    data = frame(EV_BINARY, b"x", fin=False) + header(0, 2**63 - 1)
    error = error_of(frames_impl, data, sys.maxsize)
    assert error.code == 1009
    assert oracle([data]) == ([[]], None)


def test_size_limit_counts_every_fragment_of_the_message(frames_impl: ModuleType) -> None:
    parser = frames_impl.FrameParser(100)
    parser.feed(frame(EV_TEXT, b"a" * 60, fin=False) + frame(EV_PING, b"p" * 100))
    assert parser.next_event() == (EV_PING, b"p" * 100)  # control frames do not count
    assert parser.buffered == 60
    parser.feed(header(0, 41))
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.code == 1009


def test_size_limit_allows_a_message_of_exactly_the_limit(frames_impl: ModuleType) -> None:
    data = frame(EV_BINARY, b"a" * 60, fin=False) + frame(0, b"b" * 40)
    assert parse_all(frames_impl, data, 100) == [(EV_BINARY, b"a" * 60 + b"b" * 40)]
    assert parse_all(frames_impl, frame(EV_TEXT, b"x" * 100), 100) == [(EV_TEXT, "x" * 100)]


def test_size_limit_zero_allows_only_empty_messages(frames_impl: ModuleType) -> None:
    data = frame(EV_TEXT, b"") + frame(EV_PING, b"ping") + frame(EV_BINARY, b"", fin=False)
    data += frame(0, b"")
    assert parse_all(frames_impl, data, 0) == [(EV_TEXT, ""), (EV_PING, b"ping"), (EV_BINARY, b"")]
    assert error_of(frames_impl, frame(EV_BINARY, b"x"), 0).code == 1009


# Each rule with its close code -------------------------------------------------------------

RULE_VIOLATIONS = {
    "rsv1": (frame(EV_TEXT, b"hi", rsv=4), 1002),
    "rsv2": (frame(EV_BINARY, b"hi", rsv=2), 1002),
    "rsv3": (frame(EV_PING, b"", rsv=1), 1002),
    **{f"opcode-{op:#x}": (frame(op, b"x"), 1002) for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xF)},
    "unmasked": (frame(EV_TEXT, b"hi", mask=False), 1002),
    "unmasked-close": (frame(EV_CLOSE, b"", mask=False), 1002),
    "control-not-fin": (frame(EV_PING, b"", fin=False), 1002),
    "close-not-fin": (frame(EV_CLOSE, close_payload(1000), fin=False), 1002),
    "control-126-bytes": (frame(EV_PONG, b"x" * 126), 1002),
    "control-16-bit-length": (frame(EV_PING, b"x" * 5, width=16), 1002),
    "16-bit-length-of-125": (frame(EV_BINARY, b"x" * 125, width=16), 1002),
    "16-bit-length-of-0": (frame(EV_BINARY, b"", width=16), 1002),
    "64-bit-length-of-65535": (frame(EV_BINARY, b"x" * 65535, width=64), 1002),
    "64-bit-length-of-5": (frame(EV_BINARY, b"x" * 5, width=64), 1002),
    "64-bit-length-msb": (header(EV_BINARY, 1 << 63), 1002),
    "64-bit-length-all-ones": (header(EV_BINARY, 2**64 - 1), 1002),
    "continuation-first": (frame(0, b"x"), 1002),
    "empty-continuation-first": (frame(0, b""), 1002),
    "text-inside-message": (frame(EV_TEXT, b"a", fin=False) + frame(EV_TEXT, b"b"), 1002),
    "binary-inside-message": (frame(EV_TEXT, b"a", fin=False) + frame(EV_BINARY, b"b"), 1002),
    "continuation-after-message": (frame(EV_BINARY, b"a") + frame(0, b"b"), 1002),
    "invalid-utf8": (frame(EV_TEXT, b"ok\xffok"), 1007),
    "overlong-utf8": (frame(EV_TEXT, b"\xc0\xaf"), 1007),
    "surrogate-utf8": (frame(EV_TEXT, b"a\xed\xa0\x80"), 1007),
    "above-unicode": (frame(EV_TEXT, b"\xf4\x90\x80\x80"), 1007),
    "text-ends-inside-character": (frame(EV_TEXT, b"euro \xe2\x82"), 1007),
    "message-ends-inside-character": (
        frame(EV_TEXT, b"\xe2", fin=False) + frame(0, b"\x82", fin=False) + frame(0, b""),
        1007,
    ),
    "invalid-utf8-in-a-later-fragment": (
        frame(EV_TEXT, b"ok", fin=False) + frame(0, b"\xe2\x28\xa1"),
        1007,
    ),
    "close-1-byte": (frame(EV_CLOSE, b"\x03"), 1002),
    **{
        f"close-code-{code}": (frame(EV_CLOSE, close_payload(code)), 1002)
        for code in (0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2000, 2999, 5000, 65535)
    },
    "close-reason-invalid-utf8": (frame(EV_CLOSE, close_payload(1000, b"\xff")), 1007),
    "close-reason-truncated-utf8": (frame(EV_CLOSE, close_payload(1000, b"\xc3")), 1007),
}


@pytest.mark.parametrize(("data", "code"), RULE_VIOLATIONS.values(), ids=RULE_VIOLATIONS.keys())
def test_rule_violation_fails_with_its_close_code(
    frames_impl: ModuleType, data: bytes, code: int
) -> None:
    _, expected = oracle([data])
    assert expected == code  # wsproto agrees
    for chunks in ([data], split(data, range(len(data)))):
        _, error, _ = drive(frames_impl.FrameParser(NO_LIMIT), chunks)
        assert error is not None
        assert error[0] == code
        reason = error[1]
        assert reason and reason.isascii() and len(reason) <= 100


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999]
)
def test_close_frame_gives_code_and_reason(frames_impl: ModuleType, code: int) -> None:
    data = frame(EV_CLOSE, close_payload(code, "au revoir é".encode()))
    assert parse_all(frames_impl, data) == [(EV_CLOSE, code, "au revoir é")]


def test_empty_close_frame_gives_1005(frames_impl: ModuleType) -> None:
    assert parse_all(frames_impl, frame(EV_CLOSE)) == [(EV_CLOSE, 1005, "")]


def test_rule_violation_raises_the_errors_protocol_error(frames_impl: ModuleType) -> None:
    error = error_of(frames_impl, frame(EV_TEXT, b"x", rsv=4))
    assert type(error) is ProtocolError
    assert (error.code, error.reason) == (1002, "reserved bits set")


# Events ------------------------------------------------------------------------------------


def test_events_of_a_mixed_stream(frames_impl: ModuleType) -> None:
    data = b"".join(
        [
            frame(EV_TEXT, "héllo".encode()),
            frame(EV_BINARY, b"\x00\x01"),
            frame(EV_PING, b"are you there"),
            frame(EV_TEXT, b"frag", fin=False),
            frame(EV_PONG, b""),
            frame(0, b"men", fin=False),
            frame(0, b"ted"),
            frame(EV_BINARY, b"", fin=False),
            frame(0, b""),
            frame(EV_TEXT, b""),
            frame(EV_CLOSE, close_payload(1001, b"going")),
        ]
    )
    events = parse_all(frames_impl, data)
    assert events == [
        (EV_TEXT, "héllo"),
        (EV_BINARY, b"\x00\x01"),
        (EV_PING, b"are you there"),
        (EV_PONG, b""),
        (EV_TEXT, "fragmented"),
        (EV_BINARY, b""),
        (EV_TEXT, ""),
        (EV_CLOSE, 1001, "going"),
    ]
    assert [type(event[1]) for event in events[:6]] == [str, bytes, bytes, bytes, str, bytes]


def test_control_frames_between_fragments_come_out_at_once(frames_impl: ModuleType) -> None:
    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(frame(EV_BINARY, b"one", fin=False) + frame(EV_PING, b"1"))
    assert parser.next_event() == (EV_PING, b"1")
    assert parser.next_event() is None
    parser.feed(frame(0, b"two", fin=False) + frame(EV_PONG, b"2") + frame(0, b"three"))
    assert parser.next_event() == (EV_PONG, b"2")
    assert parser.next_event() == (EV_BINARY, b"onetwothree")
    assert parser.next_event() is None


def test_events_before_an_error_come_out_first(frames_impl: ModuleType) -> None:
    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(frame(EV_TEXT, b"fine") + frame(EV_PING, b"") + frame(EV_TEXT, b"x", mask=False))
    assert parser.next_event() == (EV_TEXT, "fine")
    assert parser.next_event() == (EV_PING, b"")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert (info.value.code, info.value.reason) == (1002, "unmasked frame")


def test_error_is_raised_again_and_later_bytes_are_ignored(frames_impl: ModuleType) -> None:
    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(frame(EV_BINARY, b"partial message", fin=False) + frame(0xB, b""))
    for _ in range(3):
        with pytest.raises(ProtocolError) as info:
            parser.next_event()
        assert (info.value.code, info.value.reason) == (1002, "invalid opcode")
        assert parser.buffered == 0
        parser.feed(frame(EV_TEXT, b"ignored"))
        assert parser.buffered == 0


def test_parser_is_finished_after_a_close_event(frames_impl: ModuleType) -> None:
    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(frame(EV_BINARY, b"half", fin=False) + frame(EV_CLOSE) + frame(EV_TEXT, b"after"))
    assert parser.next_event() == (EV_CLOSE, 1005, "")
    assert parser.buffered == 0
    parser.feed(frame(EV_TEXT, b"later") + b"\xff\xff")  # not even checked
    assert parser.buffered == 0
    assert parser.next_event() is None
    assert parser.next_event() is None


def test_misplaced_frame_fails_on_its_first_payload_byte_as_in_wsproto(
    frames_impl: ModuleType,
) -> None:
    parser = frames_impl.FrameParser(NO_LIMIT)
    data = frame(0, b"stray")
    parser.feed(data[:6])  # the whole header, no payload: wsproto waits too
    assert parser.next_event() is None
    assert parser.buffered == 6
    parser.feed(data[6:7])
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert (info.value.code, info.value.reason) == (1002, "continuation frame without a message")
    # Over the size limit, it fails with its header: 1002 before 1009.
    error = error_of(frames_impl, header(0, 1000), max_size=10)
    assert (error.code, error.reason) == (1002, "continuation frame without a message")
    error = error_of(frames_impl, frame(EV_TEXT, b"", fin=False) + header(EV_TEXT, 11), 10)
    assert (error.code, error.reason) == (1002, "expected a continuation frame")


# Fail fast on invalid UTF-8 (Autobahn 6.4.x) -----------------------------------------------


def test_invalid_utf8_fails_in_the_first_chunk_of_a_big_text_frame(
    frames_impl: ModuleType,
) -> None:
    payload = b"a" * 1000 + b"\xff" + b"b" * (100_000 - 1001)
    data = frame(EV_TEXT, payload)
    assert data[13] != 0xFF  # a 64-bit length: the header and key take 14 bytes
    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(data[:2000])
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert (info.value.code, info.value.reason) == (1007, "invalid UTF-8 in text message")

    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(data[:14])  # header and key, no payload yet
    assert parser.next_event() is None
    parser.feed(data[14:1000])
    assert parser.next_event() is None
    parser.feed(data[1000:2000])  # the bad byte is at 14 + 1000
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert (info.value.code, info.value.reason) == (1007, "invalid UTF-8 in text message")


def test_invalid_continuation_byte_fails_as_soon_as_it_arrives(frames_impl: ModuleType) -> None:
    payload = "€uro".encode() * 100 + b"\xf0\x9f" + b"\x28" + b"z" * 1000
    data = frame(EV_TEXT, payload)
    parser = frames_impl.FrameParser(NO_LIMIT)
    cut = len(data) - 1001  # ends after the two valid bytes of a 4-byte character
    parser.feed(data[:cut])
    assert parser.next_event() is None  # a valid start: wait for the rest of the character
    assert parser.buffered == len(payload) - 1001
    parser.feed(data[cut : cut + 1])
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.code == 1007


def test_invalid_utf8_fails_in_its_fragment_before_the_message_ends(
    frames_impl: ModuleType,
) -> None:
    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(frame(EV_TEXT, "κόσμε".encode(), fin=False))
    assert parser.next_event() is None
    parser.feed(frame(0, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80", fin=False))
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.code == 1007


def test_characters_split_across_fragments_and_chunks_are_joined(
    frames_impl: ModuleType,
) -> None:
    text = "a€😀é" * 50
    payload = text.encode()
    pieces = split(payload, [1, 2, 5, 6, 7, 99, 100])
    data = b"".join(
        frame(0 if i else EV_TEXT, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    )
    for step in (1, 2, 3, 7, len(data)):
        chunks = [data[i : i + step] for i in range(0, len(data), step)]
        events, error, _ = drive(frames_impl.FrameParser(NO_LIMIT), chunks)
        assert error is None
        assert [event for chunk in events for event in chunk] == [(EV_TEXT, text)]


# Chunking, unmasking, sizes ----------------------------------------------------------------


def _mixed_stream() -> bytes:
    rng = random.Random(7)
    parts = []
    for i in range(60):
        key = rng.randbytes(4)
        kind = i % 5
        if kind == 0:
            parts.append(frame(EV_TEXT, ("é" * rng.randrange(200)).encode(), key=key))
        elif kind == 1:
            parts.append(frame(EV_BINARY, rng.randbytes(rng.randrange(300)), key=key))
        elif kind == 2:
            parts.append(frame(EV_PING, rng.randbytes(rng.randrange(126)), key=key))
        elif kind == 3:
            parts.append(frame(EV_BINARY, rng.randbytes(70), fin=False, key=key))
            parts.append(frame(EV_PONG, b"between", key=key))
            size = 70_000 if i == 3 else rng.randrange(300)  # once with a 64-bit length
            parts.append(frame(0, rng.randbytes(size), key=rng.randbytes(4)))
        else:
            parts.append(frame(EV_TEXT, "😀".encode() * 10, key=key))
    parts.append(frame(EV_CLOSE, close_payload(1000, b"done")))
    return b"".join(parts)


def test_feeding_byte_by_byte_gives_the_events_of_feeding_at_once(
    frames_impl: ModuleType,
) -> None:
    data = _mixed_stream()
    whole = parse_all(frames_impl, data)
    assert len(whole) == 73  # kind 3 gives two events
    assert whole == [event for chunk in oracle([data])[0] for event in chunk]
    rng = random.Random(3)
    for chunks in (
        [data[i : i + 1] for i in range(len(data))],
        split(data, [rng.randrange(len(data)) for _ in range(500)]),
    ):
        events, error, _ = drive(frames_impl.FrameParser(NO_LIMIT), chunks)
        assert error is None
        assert [event for chunk in events for event in chunk] == whole


def test_unmasking_continues_across_partial_arrivals(frames_impl: ModuleType) -> None:
    payload = bytes(range(256)) * 40
    data = frame(EV_BINARY, payload, key=b"\x01\x80\xff\x5a")
    sizes = [1, 2, 3, 5, 7, 8, 9, 13, 64]
    chunks, at = [], 0
    while at < len(data):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(data[at : at + size])
        at += size
    events, error, _ = drive(frames_impl.FrameParser(NO_LIMIT), chunks)
    assert error is None
    assert [event for chunk in events for event in chunk] == [(EV_BINARY, payload)]


def test_many_small_frames_in_one_feed(frames_impl: ModuleType) -> None:
    count = 50_000
    data = b"".join(frame(EV_BINARY, b"%d" % (i % 10)) for i in range(count))
    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(data)
    assert parser.buffered == len(data)
    for i in range(count):
        assert parser.next_event() == (EV_BINARY, b"%d" % (i % 10))
    assert parser.next_event() is None
    assert parser.buffered == 0


@pytest.mark.parametrize("kind", ["binary", "text"])
@pytest.mark.parametrize("chunk", [MiB + 14, 65536, 1000])
@pytest.mark.parametrize("fragments", [1, 16])
def test_one_mebibyte_messages(
    frames_impl: ModuleType, kind: str, chunk: int, fragments: int
) -> None:
    if kind == "binary":
        payload = _seeded(MiB, 1)
        expected: Event = (EV_BINARY, payload)
    else:
        text = ("abc€déf😀" * (MiB // 14 + 1)).encode()[: MiB - 2].decode("utf-8", "ignore")
        payload = text.encode()
        expected = (EV_TEXT, text)
    opcode = EV_BINARY if kind == "binary" else EV_TEXT
    step = -(-len(payload) // fragments)
    pieces = [payload[i : i + step] for i in range(0, len(payload), step)]
    data = b"".join(
        frame(0 if i else opcode, piece, fin=i == len(pieces) - 1, key=bytes((i, 2, 3, 4)))
        for i, piece in enumerate(pieces)
    )
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    events, error, sizes = drive(frames_impl.FrameParser(MiB), chunks)
    assert error is None
    assert [event for chunk in events for event in chunk] == [expected]
    assert max(sizes[:-1], default=0) <= MiB + 14
    assert sizes[-1] == 0


def test_buffered_counts_unparsed_bytes_and_the_message_so_far(frames_impl: ModuleType) -> None:
    parser = frames_impl.FrameParser(4096)
    assert parser.buffered == 0
    first = frame(EV_BINARY, b"x" * 3000, fin=False)  # an 8-byte header
    second = frame(0, b"y" * 1096)
    steps = [
        (first[:1], 1),  # a partial header waits in the buffer
        (first[1:8], 8),  # a whole header waits for its first payload byte
        (first[8:1008], 1000),  # payload goes into the message as it arrives
        (first[1008:], 3000),
        (second[:3], 3003),
        (second[3:8], 3008),
        (second[8:508], 3500),
    ]
    for chunk, buffered in steps:
        parser.feed(chunk)
        assert parser.next_event() is None
        assert parser.buffered == buffered
    parser.feed(second[508:])
    assert parser.next_event() == (EV_BINARY, b"x" * 3000 + b"y" * 1096)
    assert parser.buffered == 0
    parser.feed(frame(EV_PING, b"p" * 100)[:50])
    assert parser.next_event() is None
    assert parser.buffered == 50  # a control frame waits whole
    parser.feed(frame(EV_BINARY, b"z" * 10)[:9])
    assert parser.buffered == 59  # fed, not parsed yet


def test_buffered_stays_bounded_while_a_message_streams_in(frames_impl: ModuleType) -> None:
    limit = 256 * 1024
    parser = frames_impl.FrameParser(limit)
    data = frame(EV_TEXT, ("ü" * (limit // 2)).encode())
    for i in range(0, len(data), 777):
        parser.feed(data[i : i + 777])
        event = parser.next_event()
        assert parser.buffered <= min(i + 777, len(data))
        assert parser.buffered <= limit + 14
    assert event == (EV_TEXT, "ü" * (limit // 2))
    assert parser.buffered == 0


# permessage-deflate (RFC 7692) ------------------------------------------------------------

DEFLATE_CONTENTS = ["", "x", "hello, deflate " * 40, "é€😀" * 3000]


@pytest.mark.parametrize("opcode", [EV_TEXT, EV_BINARY], ids=["text", "binary"])
@pytest.mark.parametrize("content", DEFLATE_CONTENTS, ids=["empty", "1", "repeated", "unicode"])
def test_compressed_message_gives_its_compressed_bytes_unmasked(
    frames_impl: ModuleType, opcode: int, content: str
) -> None:
    payload = content.encode("utf-8")
    body = compress(payload)
    data = frame(opcode, body, rsv=RSV1)
    expected = (opcode + 2, body)  # EV_TEXT_DEFLATED, EV_BINARY_DEFLATED
    assert parse_all(frames_impl, data, deflate=True) == [expected]
    events, error, sizes = drive(
        frames_impl.FrameParser(NO_LIMIT, deflate=True), [data[i : i + 1] for i in range(len(data))]
    )
    assert error is None
    assert [event for chunk in events for event in chunk] == [expected]
    assert sizes[-1] == 0
    event = parse_all(frames_impl, data, deflate=True)[0]
    assert type(event[1]) is bytes
    assert inflate(event[1]) == payload


@pytest.mark.parametrize("opcode", [EV_TEXT, EV_BINARY], ids=["text", "binary"])
def test_fragmented_compressed_message_joins_its_compressed_fragments(
    frames_impl: ModuleType, opcode: int
) -> None:
    payload = ("fragmented and compressed " * 300 + "é😀").encode()
    body = compress(payload)
    pieces = split(body, [0, 1, 5, len(body) // 2, len(body) - 1])  # an empty first fragment
    data = b"".join(
        frame(
            0 if i else opcode,
            piece,
            fin=i == len(pieces) - 1,
            rsv=0 if i else RSV1,  # RSV1 on the first fragment only
            key=bytes((i, 9, 8, 7)),
        )
        for i, piece in enumerate(pieces)
    )
    for step in (1, 3, 64, len(data)):
        chunks = [data[i : i + step] for i in range(0, len(data), step)]
        events, error, _ = drive(frames_impl.FrameParser(NO_LIMIT, deflate=True), chunks)
        assert error is None
        assert [event for chunk in events for event in chunk] == [(opcode + 2, body)]
    assert inflate(body) == payload
    assert inflated(oracle([data], deflate=True)[0]) == inflated([[(opcode + 2, body)]])


@pytest.mark.parametrize("chunk", [MiB + 100, 65536])
@pytest.mark.parametrize("fragments", [1, 16])
def test_compressed_mebibyte_message(frames_impl: ModuleType, chunk: int, fragments: int) -> None:
    body = compress(_seeded(MiB, 2))  # incompressible: a bit over a mebibyte
    step = -(-len(body) // fragments)
    pieces = [body[i : i + step] for i in range(0, len(body), step)]
    data = b"".join(
        frame(0 if i else EV_BINARY, piece, fin=i == len(pieces) - 1, rsv=0 if i else RSV1)
        for i, piece in enumerate(pieces)
    )
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    events, error, sizes = drive(frames_impl.FrameParser(len(body), deflate=True), chunks)
    assert error is None
    assert [event for chunk in events for event in chunk] == [(EV_BINARY_DEFLATED, body)]
    assert sizes[-1] == 0


@pytest.mark.parametrize("first_rsv", [RSV1, 0], ids=["compressed", "uncompressed"])
def test_rsv1_on_a_continuation_frame_fails_with_1002(
    frames_impl: ModuleType, first_rsv: int
) -> None:
    body = compress(b"abcdef")
    data = frame(EV_TEXT, body[:3], fin=False, rsv=first_rsv) + frame(0, body[3:], rsv=RSV1)
    error = error_of(frames_impl, data, deflate=True)
    assert (error.code, error.reason) == (1002, "RSV1 set on a continuation frame")
    assert oracle([data], deflate=True)[1] == 1002
    # Without a message in progress too, on its header alone: before any payload byte.
    error = error_of(frames_impl, frame(0, b"x", rsv=RSV1)[:6], deflate=True)
    assert (error.code, error.reason) == (1002, "RSV1 set on a continuation frame")


@pytest.mark.parametrize("opcode", [EV_PING, EV_PONG, EV_CLOSE])
@pytest.mark.parametrize("inside", [False, True], ids=["between", "inside-compressed"])
def test_rsv1_on_a_control_frame_fails_with_1002(
    frames_impl: ModuleType, opcode: int, inside: bool
) -> None:
    before = frame(EV_BINARY, compress(b"abc"), fin=False, rsv=RSV1) if inside else b""
    payload = close_payload(1000) if opcode == EV_CLOSE else b"hi"
    data = before + frame(opcode, payload, rsv=RSV1)
    error = error_of(frames_impl, data, deflate=True)
    assert (error.code, error.reason) == (1002, "RSV1 set on a control frame")
    assert oracle([data], deflate=True)[1] == 1002


def test_rsv1_without_deflate_fails_with_1002(frames_impl: ModuleType) -> None:
    data = frame(EV_TEXT, compress(b"hello"), rsv=RSV1)
    for error in (error_of(frames_impl, data), error_of(frames_impl, data, deflate=False)):
        assert (error.code, error.reason) == (1002, "reserved bits set")
    assert oracle([data]) == ([[]], 1002)


@pytest.mark.parametrize("rsv", [1, 2, 3, 5, 6, 7])
def test_rsv2_and_rsv3_fail_with_1002_with_deflate(frames_impl: ModuleType, rsv: int) -> None:
    for before, opcode in [
        (b"", EV_TEXT),
        (b"", EV_BINARY),
        (b"", EV_PING),
        (frame(EV_TEXT, b"", fin=False), 0),
        (frame(EV_TEXT, b"", fin=False, rsv=RSV1), 0),
    ]:
        data = before + frame(opcode, b"x", rsv=rsv)
        error = error_of(frames_impl, data, deflate=True)
        assert (error.code, error.reason) == (1002, "reserved bits set")
        assert oracle([data], deflate=True)[1] == 1002


@pytest.mark.parametrize("bad", BAD_UTF8)
def test_invalid_utf8_in_a_compressed_text_message_is_left_to_the_caller(
    frames_impl: ModuleType, bad: bytes
) -> None:
    payload = "ok é ".encode() + bad + b" more"
    body = compress(payload)
    single = frame(EV_TEXT, body, rsv=RSV1)
    fragmented = frame(EV_TEXT, body[:2], fin=False, rsv=RSV1) + frame(0, body[2:])
    for data in (single, fragmented):
        assert parse_all(frames_impl, data, deflate=True) == [(EV_TEXT_DEFLATED, body)]
    assert inflate(body) == payload
    # Nor is data that does not even inflate: the caller finds out (1007).
    data = frame(EV_TEXT, b"\xff" * 10, fin=False, rsv=RSV1) + frame(0, bad)
    assert parse_all(frames_impl, data, deflate=True) == [(EV_TEXT_DEFLATED, b"\xff" * 10 + bad)]
    # Uncompressed text in the same session is checked as ever.
    error = error_of(frames_impl, frame(EV_TEXT, payload), deflate=True)
    assert (error.code, error.reason) == (1007, "invalid UTF-8 in text message")


def test_compressed_and_uncompressed_messages_mix_in_one_session(frames_impl: ModuleType) -> None:
    compressor = zlib.compressobj(wbits=-15)  # the client keeps its context
    hello = compress(b"hello " * 40, compressor)
    again = compress(b"hello " * 40, compressor)
    empty = compress(b"", compressor)
    assert len(again) < len(hello)  # it refers back to the first message
    data = b"".join(
        [
            frame(EV_TEXT, hello, rsv=RSV1),
            frame(EV_TEXT, "plain é".encode()),
            frame(EV_BINARY, again[:3], fin=False, rsv=RSV1),
            frame(0, again[3:]),
            frame(EV_BINARY, b"\x00raw", fin=False),
            frame(EV_PING, b"p"),
            frame(0, b"\x01"),
            frame(EV_TEXT, empty, rsv=RSV1),
            frame(EV_TEXT, b""),
            frame(EV_CLOSE, close_payload(1000)),
        ]
    )
    events = parse_all(frames_impl, data, deflate=True)
    assert events == [
        (EV_TEXT_DEFLATED, hello),
        (EV_TEXT, "plain é"),
        (EV_BINARY_DEFLATED, again),
        (EV_PING, b"p"),
        (EV_BINARY, b"\x00raw\x01"),
        (EV_TEXT_DEFLATED, empty),
        (EV_TEXT, ""),
        (EV_CLOSE, 1000, ""),
    ]
    expected = [
        (EV_TEXT, "hello " * 40),
        (EV_TEXT, "plain é"),
        (EV_BINARY, b"hello " * 40),
        (EV_PING, b"p"),
        (EV_BINARY, b"\x00raw\x01"),
        (EV_TEXT, ""),
        (EV_TEXT, ""),
        (EV_CLOSE, 1000, ""),
    ]
    assert inflated([events]) == [expected]
    assert oracle([data], deflate=True) == ([expected], None)


def test_control_frames_between_compressed_fragments_come_out_at_once(
    frames_impl: ModuleType,
) -> None:
    """wsproto 1.3 fails this stream with 1007: a control frame makes it forget that the
    message is compressed, and it takes the next fragment as plain text."""
    text = "interleaved " * 100
    body = compress(text.encode())
    first, second, third = split(body, [10, 20])
    parser = frames_impl.FrameParser(NO_LIMIT, deflate=True)
    parser.feed(frame(EV_TEXT, first, fin=False, rsv=RSV1) + frame(EV_PING, b"1"))
    assert parser.next_event() == (EV_PING, b"1")
    assert parser.next_event() is None
    parser.feed(frame(0, second, fin=False) + frame(EV_PONG, b"2") + frame(0, third))
    assert parser.next_event() == (EV_PONG, b"2")
    assert parser.next_event() == (EV_TEXT_DEFLATED, body)
    assert parser.next_event() is None
    assert inflate(body).decode() == text
    # A close frame there ends it all, as without compression.
    parser = frames_impl.FrameParser(NO_LIMIT, deflate=True)
    parser.feed(frame(EV_TEXT, first, fin=False, rsv=RSV1) + frame(EV_CLOSE) + frame(0, second))
    assert parser.next_event() == (EV_CLOSE, 1005, "")
    assert parser.next_event() is None
    assert parser.buffered == 0


def test_compressed_frame_inside_a_message_fails_as_an_uncompressed_one(
    frames_impl: ModuleType,
) -> None:
    body = compress(b"second")
    for first_rsv in (0, RSV1):
        data = frame(EV_TEXT, b"a", fin=False, rsv=first_rsv) + frame(EV_TEXT, body, rsv=RSV1)
        error = error_of(frames_impl, data, deflate=True)
        assert (error.code, error.reason) == (1002, "expected a continuation frame")


def test_size_limit_counts_compressed_bytes_from_the_header_on(frames_impl: ModuleType) -> None:
    payload = b"a" * 100_000
    body = compress(payload)
    assert 10 < len(body) < 125
    single = frame(EV_BINARY, body, rsv=RSV1)
    assert parse_all(frames_impl, single, len(body), deflate=True) == [(EV_BINARY_DEFLATED, body)]
    error = error_of(frames_impl, single[:6], len(body) - 1, deflate=True)  # header and key
    assert (error.code, error.reason) == (1009, "message too big")
    fragmented = frame(EV_TEXT, body[:10], fin=False, rsv=RSV1) + frame(0, body[10:])
    assert parse_all(frames_impl, fragmented, len(body), deflate=True) == [(EV_TEXT_DEFLATED, body)]
    error = error_of(frames_impl, fragmented[:22], len(body) - 1, deflate=True)
    assert (error.code, error.reason) == (1009, "message too big")


# API ---------------------------------------------------------------------------------------


def test_parser_rejects_bad_limits(frames_impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        frames_impl.FrameParser(-1)
    with pytest.raises(TypeError):
        frames_impl.FrameParser(1.5)
    with pytest.raises(TypeError):
        frames_impl.FrameParser("10")
    with pytest.raises(OverflowError):
        frames_impl.FrameParser(2**70)


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda b: memoryview(b"-" + b + b"-")[1:-1]],
    ids=["bytes", "bytearray", "memoryview", "memoryview-slice"],
)
def test_feed_accepts_any_contiguous_buffer(frames_impl: ModuleType, wrap: Any) -> None:
    parser = frames_impl.FrameParser(NO_LIMIT)
    parser.feed(wrap(frame(EV_BINARY, b"abc")))
    assert parser.next_event() == (EV_BINARY, b"abc")


def test_feed_rejects_non_buffers(frames_impl: ModuleType) -> None:
    parser = frames_impl.FrameParser(NO_LIMIT)
    for data in ("text", 42, None):
        with pytest.raises(TypeError):
            parser.feed(data)
    with pytest.raises(BufferError):
        parser.feed(memoryview(b"abcdef")[::2])
    assert parser.buffered == 0


def test_buffered_is_read_only(frames_impl: ModuleType) -> None:
    parser = frames_impl.FrameParser(10)
    with pytest.raises(AttributeError):
        parser.buffered = 5


def test_event_constants_are_the_opcodes(frames_impl: ModuleType) -> None:
    constants = [frames_impl.EV_TEXT, frames_impl.EV_BINARY, frames_impl.EV_CLOSE]
    constants += [frames_impl.EV_PING, frames_impl.EV_PONG]
    assert constants == [EV_TEXT, EV_BINARY, EV_CLOSE, EV_PING, EV_PONG]
    assert constants == [int(op) for op in (Opcode.TEXT, Opcode.BINARY, Opcode.CLOSE)] + [9, 10]


def test_compressed_event_constants_follow_the_data_events(frames_impl: ModuleType) -> None:
    # The connection tells them apart with ``kind <= EV_BINARY``, then ``<= EV_BINARY_DEFLATED``.
    assert (frames_impl.EV_TEXT_DEFLATED, frames_impl.EV_BINARY_DEFLATED) == (3, 4)
    assert frames_impl.EV_BINARY < frames_impl.EV_TEXT_DEFLATED
    assert frames_impl.EV_BINARY_DEFLATED < frames_impl.EV_CLOSE


def test_deflate_is_keyword_only(frames_impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        frames_impl.FrameParser(10, True)
    data = frame(EV_TEXT, b"x", rsv=RSV1)
    for value in (1, "yes", [0]):  # any truth value, as a C ``bint``
        assert parse_all(frames_impl, data, deflate=value) == [(EV_TEXT_DEFLATED, b"x")]
    for value in (0, "", None):
        error = error_of(frames_impl, data, deflate=value)
        assert (error.code, error.reason) == (1002, "reserved bits set")
