#!/usr/bin/env python3
"""The control API's ``POST /send`` against the WebSocket echo path, interleaved in one run.

  api_send.py [--conns 16] [--duration 5] [--warmup 1] [--repeat 5]
              [--modes api_send,api_send_ka,api_ping,api_ping_ka,ws_echo]
              [--log-level warning] [--out FILE.json]

Each round starts one riverside-trio server per mode (a raw echo handler with ``api_key``
set, no broker, ``--log-level`` as the CLI's: ``warning`` by default, ``info`` logs a line
per API call), a subprocess pinned to CPU 0; the load generator
(this file, ``loadgen``, on uvloop and picows like ../shared/bench) runs pinned to CPU 1.
Modes are interleaved round by round:

- ``api_send``: one WebSocket client of user ``u`` (connected with a claim) receives; C HTTP
  clients each POST ``/api/send?user=u&type=text`` with a 64-byte body and the key, wait for
  the answer, and start the next. Every message sent is checked to arrive. Each request
  on a new connection (``Connection: close``): every request is a TCP connect, the
  request, the answer and the server's close, the cost a back end without a connection
  pool pays per call.
- ``api_send_ka``: the same over HTTP/1.1 keep-alive, as a back end's pool sends it: each of
  the C clients keeps its connection and sends the next request on it (a new connection
  only when the server closes one, after ``http_keepalive_requests``).
- ``api_ping``, ``api_ping_ka``: the same without the delivery (``GET /api/ping``): the
  HTTP floor of a call, per connection and kept alive.
- ``ws_echo``: C WebSocket clients each send a 64-byte text message and wait for its echo.

Reported per mode: requests (or echoes) per second and the server's CPU time per request,
as medians over the rounds, and the CPU per request as a ratio to ``ws_echo``'s of the
same round (the machine is shared and drifts: compare ratios within one run). ``gen CPU``
is the load generator's own use of its core: near 100 % it, not the server, sets the rate
(the CPU per request still compares).

riverside-trio runs on $RIVERSIDE_PYTHON (default: python3 on PATH); the load generator on
$BENCH_PYTHON (default /tmp/benchenv/bin/python, with ../shared/bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _procs import free_port, stop_server, wait_port  # bench/ is on sys.path when run as a script

KEY = "bench-api-key-0123456789"
PAYLOAD = b"x" * 64
SEND_KA = (
    "POST /api/send?user=u&type=text HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    f"Authorization: Bearer {KEY}\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n"
).encode() + PAYLOAD
PING_KA = f"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n\r\n".encode()
# A request per connection: the client says so (and the server closes after its answer).
SEND = SEND_KA.replace(b"\r\nHost:", b"\r\nConnection: close\r\nHost:", 1)
PING = PING_KA.replace(b"\r\nHost:", b"\r\nConnection: close\r\nHost:", 1)
MODES = ("api_send", "api_send_ka", "api_ping", "api_ping_ka", "ws_echo")
CLAIM = (
    "POST /api/claim?user=u HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    f"Authorization: Bearer {KEY}\r\nContent-Length: 0\r\n\r\n"
).encode()


def run_one(mode: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    command = [args.riverside_python, __file__, "server", "--port", str(port)]
    command += ["--log-level", args.log_level]
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # the logs (a line per API call with --log-level info)
        preexec_fn=lambda: (os.setsid(), os.sched_setaffinity(0, {0})),
    )
    try:
        wait_port(port, server)
        command = [args.bench_python, __file__, "loadgen", mode, "--port", str(port)]
        command += ["--server-pid", str(server.pid), "--conns", str(args.conns)]
        command += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
        out = subprocess.run(
            command, capture_output=True, preexec_fn=lambda: os.sched_setaffinity(0, {1})
        )
        if out.returncode:
            raise RuntimeError(f"{mode}: the load generator failed:\n{out.stderr.decode()}")
        return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))
    finally:
        stop_server(server)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    ap.add_argument("--out", default="")
    ap.add_argument("--riverside-python", default=os.environ.get("RIVERSIDE_PYTHON", "python3"))
    ap.add_argument(
        "--bench-python", default=os.environ.get("BENCH_PYTHON", "/tmp/benchenv/bin/python")
    )
    args = ap.parse_args()
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(args.repeat):
        for mode in modes:
            res = run_one(mode, args)
            runs[mode].append(res)
            sys.stderr.write(f"round {r + 1} {mode}: {json.dumps(res)}\n")
    base = "ws_echo" if "ws_echo" in modes else modes[0]
    out = sys.stdout.write
    out(
        f"| mode | requests/s | server CPU µs / request | gen CPU | CPU ratio to {base} "
        "(each round) |\n|---|---|---|---|---|\n"
    )
    for mode in modes:
        rate = statistics.median(x["per_s"] for x in runs[mode])
        cpu = statistics.median(x["cpu_us"] for x in runs[mode])
        gen = statistics.median(x["gen_cpu_pct"] for x in runs[mode])
        ratios = [a["cpu_us"] / b["cpu_us"] for a, b in zip(runs[mode], runs[base], strict=True)]
        each = " ".join(f"{x:.2f}" for x in ratios)
        out(
            f"| {mode} | {rate:,.0f} | {cpu:.1f} | {gen:.0f} % | "
            f"{statistics.median(ratios):.2f}x ({each}) |\n"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1))


# ------------------------------------------------------------------ the server


def server(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)

    import riverside_trio
    from riverside_trio import Config, Connection, Handler, RawCodec
    from riverside_trio._logging import configure_logging

    configure_logging("json", a.log_level)  # as the CLI does (to stderr: /dev/null here)

    class Echo(Handler):
        codec = RawCodec()

        async def handle_message(self, msg: object, conn: Connection) -> None:
            conn.send(msg)

    config = Config(
        host="127.0.0.1",
        port=a.port,
        api_key=KEY,
        backlog=4096,
        transmission_limit=0,  # the echo clients send as fast as they can (as bench/server.py)
        control_frame_limit=0,
        max_pending_per_address=1024,  # every client is 127.0.0.1
        log_connections=False,
        idle_timeout=None,
        ping_interval=None,
    )
    riverside_trio.run(Echo, config)


# ------------------------------------------------------------------ the load generator


def loadgen(argv: list[str]) -> None:
    import asyncio

    import psutil  # type: ignore[import-not-found]
    import uvloop  # type: ignore[import-not-found]
    from picows import WSListener, WSMsgType, ws_connect  # type: ignore[import-not-found]

    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=MODES)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    a = ap.parse_args(argv)
    done = [0]  # requests answered (or echoes received)
    received = [0]  # messages the api_send receiver got
    stop = [False]

    class Echo(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.transport = None

        def on_ws_connected(self, transport):  # type: ignore[no-untyped-def]
            self.transport = transport

        def on_ws_frame(self, transport, frame):  # type: ignore[no-untyped-def]
            if frame.msg_type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return  # (RawCodec echoes a text message as it came: text)
            done[0] += 1
            if not stop[0]:
                transport.send(WSMsgType.TEXT, PAYLOAD)

    class Receiver(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport, frame):  # type: ignore[no-untyped-def]
            if frame.msg_type == WSMsgType.TEXT:
                received[0] += 1

    class Call(asyncio.Protocol):
        """One HTTP request on a new connection; its answer ends with the server's close."""

        def __init__(self, request: bytes, finished: asyncio.Future[bytes]) -> None:
            self.request = request
            self.finished = finished
            self.data = bytearray()

        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            transport.write(self.request)

        def data_received(self, data: bytes) -> None:
            self.data += data

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.finished.done():
                self.finished.set_result(bytes(self.data))

    async def call(request: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[bytes] = loop.create_future()
        await loop.create_connection(lambda: Call(request, finished), "127.0.0.1", a.port)
        return await finished

    class Pooled(asyncio.Protocol):
        """One kept-alive connection: a request, its answer (framed by Content-Length), the
        next request on the same connection."""

        def __init__(self) -> None:
            self.data = bytearray()
            self.waiter: asyncio.Future[bytes] | None = None
            self.lost = False

        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.data += data
            end = self.data.find(b"\r\n\r\n")
            if end < 0 or self.waiter is None:
                return
            head = bytes(self.data[:end]).lower()
            length = int(head.split(b"\r\ncontent-length: ", 1)[1].split(b"\r\n", 1)[0])
            if len(self.data) >= end + 4 + length:
                answer = bytes(self.data[: end + 4 + length])
                del self.data[: end + 4 + length]
                self.waiter.set_result(answer)
                self.waiter = None

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost = True
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(b"")

        async def call(self, request: bytes) -> bytes:
            self.waiter = asyncio.get_running_loop().create_future()
            self.transport.write(request)
            return await self.waiter

    async def pooled_worker(request: bytes) -> None:
        loop = asyncio.get_running_loop()
        conn: Pooled | None = None
        while not stop[0]:
            if conn is None or conn.lost:
                _, conn = await loop.create_connection(Pooled, "127.0.0.1", a.port)
            answer = await conn.call(request)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(answer[:300].decode("latin-1") or "closed before an answer")
            done[0] += 1
            if b"\r\nconnection: close\r\n" in answer.lower():
                conn.transport.close()  # the server's last request on it: a new one next
                conn = None
        if conn is not None:
            conn.transport.close()

    async def http_worker(request: bytes) -> None:
        while not stop[0]:
            answer = await call(request)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(answer[:300].decode("latin-1"))
            done[0] += 1

    async def run() -> dict[str, float]:
        url = f"ws://127.0.0.1:{a.port}/ws"
        keep = []
        if a.mode == "ws_echo":
            for _ in range(a.conns):
                claim = json.loads((await call(CLAIM)).split(b"\r\n\r\n", 1)[1])["claim"]["id"]
                _, client = await ws_connect(Echo, f"{url}?claim={claim}")
                keep.append(client)
            for client in keep:
                client.transport.send(WSMsgType.TEXT, PAYLOAD)
        else:
            if a.mode.startswith("api_send"):
                claim = json.loads((await call(CLAIM)).split(b"\r\n\r\n", 1)[1])["claim"]["id"]
                receiver, _ = await ws_connect(Receiver, f"{url}?claim={claim}")
            kept = a.mode.endswith("_ka")
            if a.mode.startswith("api_send"):
                request = SEND_KA if kept else SEND
            else:
                request = PING_KA if kept else PING
            worker = pooled_worker if kept else http_worker
            workers = [asyncio.ensure_future(worker(request)) for _ in range(a.conns)]
        server = psutil.Process(a.server_pid)
        tree = [server, *server.children(recursive=True)]
        me = psutil.Process()
        await asyncio.sleep(a.warmup)

        def cpu(procs: list[psutil.Process]) -> float:
            return sum(sum(p.cpu_times()[:2]) for p in procs)

        c0, g0, n0, t0 = cpu(tree), cpu([me]), done[0], time.perf_counter()
        await asyncio.sleep(a.duration)
        c1, g1, n1, t1 = cpu(tree), cpu([me]), done[0], time.perf_counter()
        stop[0] = True
        result = {
            "per_s": (n1 - n0) / (t1 - t0),
            "cpu_us": (c1 - c0) / (n1 - n0) * 1e6,
            "server_cpu_pct": (c1 - c0) / (t1 - t0) * 100,
            "gen_cpu_pct": (g1 - g0) / (t1 - t0) * 100,
        }
        if a.mode != "ws_echo":
            await asyncio.gather(*workers)
            if a.mode.startswith("api_send"):
                for _ in range(500):  # every message sent arrives (bounded wait)
                    if received[0] >= done[0]:
                        break
                    await asyncio.sleep(0.01)
                if received[0] != done[0]:
                    raise RuntimeError(f"sent {done[0]}, received {received[0]}")
                receiver.disconnect()
        for client in keep:
            client.transport.disconnect()
        return result

    uvloop.install()
    sys.stdout.write(json.dumps(asyncio.run(run())) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "server":
        server(sys.argv[2:])
    else:
        main()
