#!/usr/bin/env python3
"""Request/reply round trips: riverside-trio's RPCHandler against its own plain echo (raw
and JSON) and python-socketio's acknowledged emits (``call()``), side by side in one run.

  rpc_bench.py [--conns 50] [--duration 5] [--warmup 1] [--repeat 3]
               [--modes raw_echo,json_echo,rpc,socketio] [--out FILE.json]
               [--python NAME=PATH ...]

Each server (rpc_server.py) is a subprocess pinned to CPU 0; the load generator (this file,
``loadgen``, on picows + uvloop like ../shared/bench) runs pinned to CPU 1 with C
connections, each sending one message and waiting for its answer before the next (about
60 bytes: ``{"$":"req","id":N,"name":"echo","data":"xxxx..."}`` for the RPC, the same
text for the echoes, ``42N["echo","xxxx..."]`` for Socket.IO). Modes are interleaved run by
run; reported: round trips/s and the server's CPU time (process tree) per round trip, as
medians, and each mode's CPU per round trip as a ratio to the JSON echo's of the same run.
A mode ``NAME:MODE`` runs MODE on the interpreter ``--python NAME=PATH`` gives (another
revision of riverside-trio installed there: an A/B in one run); its ratio is to
``NAME:json_echo`` when that mode runs too.

riverside-trio runs on $RIVERSIDE_PYTHON (default: python3 on PATH); the load generator and
the Socket.IO server on $BENCH_PYTHON (default /tmp/benchenv/bin/python, with
../shared/bench/requirements.txt plus python-socketio and aiohttp).
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

HERE = Path(__file__).resolve().parent
PAYLOAD = "x" * 32


def run_one(mode: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    name, _, mode = mode.rpartition(":")
    python = args.bench_python if mode == "socketio" else args.riverside_python
    if name:
        python = dict(p.split("=", 1) for p in args.python)[name]
    server = subprocess.Popen(
        [python, str(HERE / "rpc_server.py"), mode, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: (os.setsid(), os.sched_setaffinity(0, {0})),
    )
    try:
        wait_port(port, server)
        out = subprocess.run(
            [
                args.bench_python,
                __file__,
                "loadgen",
                mode,
                "--port",
                str(port),
                "--server-pid",
                str(server.pid),
                "--conns",
                str(args.conns),
                "--duration",
                str(args.duration),
                "--warmup",
                str(args.warmup),
            ],
            check=True,
            capture_output=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {1}),
        )
        return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))
    finally:
        stop_server(server)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="raw_echo,json_echo,rpc,socketio")
    ap.add_argument("--out", default="")
    ap.add_argument("--python", action="append", default=[], help="NAME=PATH for NAME:MODE")
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
            sys.stderr.write(f"run {r + 1} {mode}: {json.dumps(res)}\n")
    base = "json_echo" if "json_echo" in modes else modes[0]
    out = sys.stdout.write
    out(f"| mode | round trips/s | server CPU µs / round trip | CPU ratio to {base} |\n")
    out("|---|---|---|---|\n")
    for mode in modes:
        rate = statistics.median(x["msgs_per_s"] for x in runs[mode])
        cpu = statistics.median(x["cpu_us_per_msg"] for x in runs[mode])
        own = mode.rpartition(":")[0] + ":" + base
        ref = runs[own] if own in runs else runs[base]
        ratios = [
            a["cpu_us_per_msg"] / b["cpu_us_per_msg"] for a, b in zip(runs[mode], ref, strict=True)
        ]
        each = " ".join(f"{r:.2f}" for r in ratios)
        out(f"| {mode} | {rate:,.0f} | {cpu:.1f} | {statistics.median(ratios):.2f}x ({each}) |\n")
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1))


# ------------------------------------------------------------------ the load generator


def loadgen(argv: list[str]) -> None:
    import asyncio

    import psutil  # type: ignore[import-not-found]
    import uvloop  # type: ignore[import-not-found]
    from picows import WSListener, WSMsgType, ws_connect  # type: ignore[import-not-found]

    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    a = ap.parse_args(argv)
    sio = a.mode == "socketio"
    counter = [0]

    def message(n: int) -> bytes:
        if sio:
            return f'42{n}["echo","{PAYLOAD}"]'.encode()
        return f'{{"$":"req","id":{n},"name":"echo","data":"{PAYLOAD}"}}'.encode()

    class Client(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.n = 0
            self.ready = asyncio.get_running_loop().create_future()
            self.transport = None

        def on_ws_connected(self, transport):  # type: ignore[no-untyped-def]
            self.transport = transport
            if not sio:
                self.ready.set_result(None)

        def on_ws_frame(self, transport, frame):  # type: ignore[no-untyped-def]
            if frame.msg_type != WSMsgType.TEXT:
                return
            data = frame.get_payload_as_bytes()
            if sio and not self.ready.done():
                if data.startswith(b"0"):
                    transport.send(WSMsgType.TEXT, b"40")
                elif data.startswith(b"40"):
                    self.ready.set_result(None)
                return
            if sio and data == b"2":
                transport.send(WSMsgType.TEXT, b"3")
                return
            counter[0] += 1
            self.n += 1
            transport.send(WSMsgType.TEXT, message(self.n))

        def start(self) -> None:
            self.n += 1
            self.transport.send(WSMsgType.TEXT, message(self.n))

    async def run() -> dict[str, float]:
        path = "/socket.io/?EIO=4&transport=websocket" if sio else "/ws"
        clients = []
        for _ in range(a.conns):
            _, client = await ws_connect(Client, f"ws://127.0.0.1:{a.port}{path}")
            await client.ready
            clients.append(client)
        proc = psutil.Process(a.server_pid)
        tree = [proc, *proc.children(recursive=True)]
        for c in clients:
            c.start()
        await asyncio.sleep(a.warmup)

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in tree)

        c0, n0, t0 = cpu(), counter[0], time.perf_counter()
        await asyncio.sleep(a.duration)
        c1, n1, t1 = cpu(), counter[0], time.perf_counter()
        for c in clients:
            c.transport.disconnect()
        msgs = n1 - n0
        return {
            "msgs_per_s": msgs / (t1 - t0),
            "cpu_us_per_msg": (c1 - c0) / msgs * 1e6,
            "server_cpu_pct": (c1 - c0) / (t1 - t0) * 100,
        }

    uvloop.install()
    sys.stdout.write(json.dumps(asyncio.run(run())) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen(sys.argv[2:])
    else:
        main()
