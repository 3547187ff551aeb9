"""Micro-benchmark of the hot path: compiled ``_frames_c`` against the twin ``_frames_py``.

Run ``python bench/micro_frames.py`` after building the extension
(``python setup.py build_ext --inplace`` or ``pip install -e . --no-build-isolation``).
Prints nanoseconds per operation for each implementation and the C/Python speed-up; the
best of several repeats is kept. ``--quick`` makes it shorter and noisier.

The frame parser is also compared with wsproto's ``FrameProtocol(client=False)``, which it
replaces: each message is one masked client frame, fed on its own and drained (``feed`` then
``next_event`` until ``None``; ``receive_bytes`` then ``received_frames``), as a connection
does for each read. The permessage-deflate cases (RSV1 set, ``FrameParser(deflate=True)``)
also inflate the compressed event with one ``zlib`` decompressor kept for the connection, as
the connection does; wsproto, with its ``PerMessageDeflate`` extension, inflates as it parses.
"""

from __future__ import annotations

import argparse
import socket
import sys
import timeit
import zlib
from collections.abc import Callable
from time import perf_counter_ns
from types import ModuleType

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from riverside_trio.wire import _frames_py

try:
    from riverside_trio import _frames_c
except ImportError:
    sys.exit("riverside_trio._frames_c is not built: python setup.py build_ext --inplace")

Case = Callable[[ModuleType], float]  # returns ns per operation
ParseCase = Callable[[ModuleType | None], float]  # None: wsproto


def _best_per_op(timer: timeit.Timer, repeat: int, target_s: float) -> float:
    number, elapsed = timer.autorange()
    number = max(1, int(number * target_s / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat, number)) / number * 1e9


def encode_frame(size: int, repeat: int, target_s: float, *, rsv1: bool = False) -> Case:
    payload = bytes(size)
    stmt = "encode(2, payload, True, True)" if rsv1 else "encode(2, payload)"

    def run(frames: ModuleType) -> float:
        timer = timeit.Timer(stmt, globals={"encode": frames.encode_frame, "payload": payload})
        return _best_per_op(timer, repeat, target_s)

    return run


def token_bucket_take(repeat: int, target_s: float, *, advancing: bool) -> Case:
    """``take`` at one instant (no refill), or at 1,000 increasing instants (refill each)."""
    times = [1.0 + i * 1e-6 if advancing else 1.0 for i in range(1000)]

    def run(frames: ModuleType) -> float:
        bucket = frames.TokenBucket(10**15, 1.0, 0.0)
        state = {"take": bucket.take, "times": times}
        timer = timeit.Timer("for now in times: take(now)", globals=state)
        return _best_per_op(timer, repeat, target_s) / len(times)

    return run


def outbox_push(sock: socket.socket, repeat: int, target_s: float) -> Case:
    def run(frames: ModuleType) -> float:
        outbox = frames.Outbox(sock, 10**12, 10**15, lambda: None)
        outbox.writing = True  # nothing is sent: every push queues
        timer = timeit.Timer(
            "push(frame)",
            setup="take()",  # empty between repeats
            globals={"push": outbox.push, "take": outbox.take, "frame": b"x" * 64},
        )
        return _best_per_op(timer, repeat, target_s)

    return run


def outbox_push_dropping(sock: socket.socket, queued: int, repeat: int, target_s: float) -> Case:
    """``push`` into a full ``drop_oldest`` outbox of ``queued`` frames: each drops the oldest."""

    def run(frames: ModuleType) -> float:
        outbox = frames.Outbox(sock, queued, 10**15, lambda: None, drop_oldest=True)
        outbox.writing = True  # nothing is sent: every push goes through the limits
        frame = b"x" * 64
        for _ in range(queued):
            outbox.push(frame)
        timer = timeit.Timer("push(frame)", globals={"push": outbox.push, "frame": frame})
        ns = _best_per_op(timer, repeat, target_s)
        assert outbox.queued_frames == queued and outbox.dropped_frames > 0
        return ns

    return run


def fan_out(
    sock: socket.socket, count: int, repeat: int, rounds: int, *, as_dict: bool = False
) -> Case:
    """ns per recipient: ``rounds`` fan-outs timed together, then every queue emptied.

    ``as_dict`` passes a dict keyed by outbox, as ``Core.deliver`` does, instead of a list.
    """

    def run(frames: ModuleType) -> float:
        outboxes = [frames.Outbox(sock, 10**9, 10**12, lambda: None) for _ in range(count)]
        for outbox in outboxes:
            outbox.writing = True
        frame = frames.encode_frame(frames.OP_TEXT, b"x" * 64)
        group: object = dict.fromkeys(outboxes) if as_dict else outboxes
        fan = frames.fan_out
        best = float("inf")
        for _ in range(repeat):
            full: list[object] = []
            start = perf_counter_ns()
            for _ in range(rounds):
                fan(group, frame, full)
            best = min(best, (perf_counter_ns() - start) / (rounds * count))
            assert not full
            for outbox in outboxes:
                outbox.take()
        return best

    return run


def _deflate_extension() -> list[PerMessageDeflate]:
    extension = PerMessageDeflate()
    extension.finalize("permessage-deflate")  # negotiated, default parameters
    return [extension]


def parse_message(
    payload: bytes | str, repeat: int, target_s: float, *, deflate: bool = False
) -> ParseCase:
    """ns per message: one client frame fed, then every event taken (and inflated).

    With ``deflate`` the frame is compressed (RSV1) by a fresh compressor, so the same bytes
    inflate again and again in one connection's decompressor.
    """
    client = FrameProtocol(client=True, extensions=_deflate_extension() if deflate else [])
    data = bytes(client.send_data(payload))  # masked
    assert bool(data[0] & 0x40) == deflate

    def run(frames: ModuleType | None) -> float:
        if frames is None:  # wsproto
            extensions = _deflate_extension() if deflate else []
            protocol = FrameProtocol(client=False, extensions=extensions)
            state = {"receive": protocol.receive_bytes, "frames": protocol.received_frames}
            stmt = "receive(data)\nfor _ in frames(): pass"
        elif deflate:
            parser = frames.FrameParser(1 << 20, deflate=True)
            state = {
                "feed": parser.feed,
                "next_event": parser.next_event,
                "inflate": zlib.decompressobj(-15).decompress,
                "tail": b"\x00\x00\xff\xff",
            }
            stmt = (
                "feed(data)\n"
                "while (event := next_event()) is not None:\n"
                "    inflate(event[1] + tail)"
            )
        else:
            parser = frames.FrameParser(1 << 20)
            state = {"feed": parser.feed, "next_event": parser.next_event}
            stmt = "feed(data)\nwhile next_event() is not None: pass"
        timer = timeit.Timer(stmt, globals={**state, "data": data})
        return _best_per_op(timer, repeat, target_s)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    args = parser.parse_args()
    repeat, target_s, rounds = (3, 0.05, 5) if args.quick else (7, 0.2, 20)

    server, client = socket.socketpair()
    server.setblocking(False)
    try:
        cases: list[tuple[str, Case]] = [
            ("encode_frame 64 B", encode_frame(64, repeat, target_s)),
            ("encode_frame 1 KiB", encode_frame(1024, repeat, target_s)),
            ("encode_frame 64 KiB", encode_frame(65536, repeat, target_s)),
            ("encode_frame 64 B rsv1", encode_frame(64, repeat, target_s, rsv1=True)),
            ("TokenBucket.take (same time)", token_bucket_take(repeat, target_s, advancing=False)),
            ("TokenBucket.take (refilling)", token_bucket_take(repeat, target_s, advancing=True)),
            ("Outbox.push (queued)", outbox_push(server, repeat, target_s)),
            (
                "Outbox.push (drop oldest, 1,000)",
                outbox_push_dropping(server, 1_000, repeat, target_s),
            ),
            (
                "Outbox.push (drop oldest, 100,000)",
                outbox_push_dropping(server, 100_000, repeat, target_s),
            ),
            ("fan_out 1,000 (per outbox)", fan_out(server, 1_000, repeat, rounds)),
            ("fan_out 10,000 (per outbox)", fan_out(server, 10_000, repeat, rounds)),
            (
                "fan_out 10,000 dict (per outbox)",
                fan_out(server, 10_000, repeat, rounds, as_dict=True),
            ),
        ]
        out = sys.stdout.write
        out(f"{'operation':<34}{'C ns/op':>12}{'Python ns/op':>15}{'speed-up':>11}\n")
        for name, case in cases:
            c_ns = case(_frames_c)
            py_ns = case(_frames_py)
            out(f"{name:<34}{c_ns:>12.1f}{py_ns:>15.1f}{py_ns / c_ns:>10.1f}x\n")

        parsing: list[tuple[str, ParseCase]] = [
            ("parse 64 B binary", parse_message(bytes(64), repeat, target_s)),
            ("parse 1 KiB binary", parse_message(bytes(1024), repeat, target_s)),
            ("parse 64 B text", parse_message("x" * 64, repeat, target_s)),
            (
                "parse+inflate 1 KiB text (deflate)",
                parse_message("hello, deflate " * 68, repeat, target_s, deflate=True),
            ),
            (
                "parse+inflate 64 KiB binary (deflate)",
                parse_message(bytes(range(256)) * 256, repeat, target_s, deflate=True),
            ),
        ]
        out(f"\n{'message':<34}{'C ns':>12}{'Python ns':>15}{'wsproto ns':>15}")
        out(f"{'C vs wsproto':>15}\n")
        for name, case in parsing:
            c_ns = case(_frames_c)
            py_ns = case(_frames_py)
            ws_ns = case(None)
            out(f"{name:<34}{c_ns:>12.1f}{py_ns:>15.1f}{ws_ns:>15.1f}{ws_ns / c_ns:>14.1f}x\n")
    finally:
        server.close()
        client.close()


if __name__ == "__main__":
    main()
