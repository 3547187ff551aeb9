#!/usr/bin/env python3
"""Instructions per round trip of rpc_server.py's modes, counted by callgrind: a second
measure next to rpc_bench.py's CPU time, one that a loaded machine does not move.

  rpc_callgrind.py [--conns 50] [--warmup 500] [--count 5000]
                   [--modes raw_echo,json_echo,rpc] [--keep DIR]

Each mode's server runs under ``valgrind --tool=callgrind --instr-atstart=no``; the load
generator (rpc_bench.py's message, ``--conns`` connections, each waiting for its answer
before the next) makes ``--warmup`` round trips, then callgrind counts the server's
instructions over ``--count`` round trips (``callgrind_control -i on`` / ``off``).
Reported: instructions per round trip and the ratio to the JSON echo's. ``NAME:MODE``
in ``--modes`` runs MODE on the interpreter given by ``--python NAME=PATH`` (an A/B).
``--keep DIR`` keeps the callgrind output files (read them with ``callgrind_annotate``).

riverside-trio runs on $RIVERSIDE_PYTHON (default python3); the load generator on
$BENCH_PYTHON (default /tmp/benchenv/bin/python, with picows and uvloop).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rpc_bench import PAYLOAD, free_port, wait_port  # noqa: E402


def count_one(mode: str, python: str, args: argparse.Namespace, out_dir: Path) -> float:
    port = free_port()
    label = mode.replace(":", "-")
    out_file = out_dir / f"callgrind.{label}.out"
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out_file}",
            python,
            str(HERE / "rpc_server.py"),
            mode.split(":")[-1],
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=os.setsid,
    )
    try:
        wait_port(port, server, timeout=300.0)
        gen = subprocess.Popen(
            [
                args.bench_python,
                __file__,
                "loadgen",
                "--port",
                str(port),
                "--conns",
                str(args.conns),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert gen.stdin is not None and gen.stdout is not None

        def batch(n: int) -> None:
            assert gen.stdin is not None and gen.stdout is not None
            gen.stdin.write(f"{n}\n")
            gen.stdin.flush()
            line = gen.stdout.readline()
            if line.strip() != "done":
                raise RuntimeError(f"load generator: {line!r}")

        batch(args.warmup)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True
        )
        batch(args.count)
        subprocess.run(
            ["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True
        )
        gen.stdin.close()
        gen.wait(60)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    total = 0
    for f in out_dir.glob(f"callgrind.{label}.out*"):
        m = re.search(r"^totals:\s+(\d+)", f.read_text(errors="replace"), re.M)
        if m:
            total += int(m.group(1))
    return total / args.count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--modes", default="raw_echo,json_echo,rpc")
    ap.add_argument("--python", action="append", default=[], help="NAME=PATH for NAME:MODE")
    ap.add_argument("--keep", default="")
    ap.add_argument("--riverside-python", default=os.environ.get("RIVERSIDE_PYTHON", "python3"))
    ap.add_argument(
        "--bench-python", default=os.environ.get("BENCH_PYTHON", "/tmp/benchenv/bin/python")
    )
    args = ap.parse_args()
    pythons = dict(p.split("=", 1) for p in args.python)
    out_dir = Path(args.keep or tempfile.mkdtemp(prefix="rpc-callgrind-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    for mode in args.modes.split(","):
        name = mode.split(":")[0] if ":" in mode else ""
        python = pythons[name] if name else args.riverside_python
        t0 = time.monotonic()
        results[mode] = count_one(mode, python, args, out_dir)
        sys.stderr.write(
            f"{mode}: {results[mode]:,.0f} instructions per round trip "
            f"({time.monotonic() - t0:.0f} s)\n"
        )
    out = sys.stdout.write
    out("| mode | instructions / round trip | ratio to the JSON echo of its interpreter |\n")
    out("|---|---|---|\n")
    for mode, ir in results.items():
        prefix = mode.split(":")[0] + ":" if ":" in mode else ""
        base = results.get(prefix + "json_echo")
        ratio = f"{ir / base:.2f}x" if base else "-"
        out(f"| {mode} | {ir:,.0f} | {ratio} |\n")


# ------------------------------------------------------------------ the load generator


def loadgen(argv: list[str]) -> None:
    """Round trips in batches: reads N on stdin, makes N round trips, prints "done"."""
    import asyncio

    import uvloop  # type: ignore[import-not-found]
    from picows import WSListener, WSMsgType, ws_connect  # type: ignore[import-not-found]

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=50)
    a = ap.parse_args(argv)
    state = {"left": 0, "busy": 0}
    finished: list[asyncio.Future[None]] = []

    class Client(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.n = 0
            self.transport = None

        def on_ws_connected(self, transport):  # type: ignore[no-untyped-def]
            self.transport = transport

        def on_ws_frame(self, transport, frame):  # type: ignore[no-untyped-def]
            if frame.msg_type != WSMsgType.TEXT:
                return
            state["busy"] -= 1
            self.send()
            if state["busy"] == 0 and finished:
                finished.pop().set_result(None)

        def send(self) -> None:
            if state["left"] <= 0:
                return
            state["left"] -= 1
            state["busy"] += 1
            self.n += 1
            msg = f'{{"$":"req","id":{self.n},"name":"echo","data":"{PAYLOAD}"}}'
            self.transport.send(WSMsgType.TEXT, msg.encode())

    async def run() -> None:
        loop = asyncio.get_running_loop()
        clients = []
        for _ in range(a.conns):
            _, client = await ws_connect(Client, f"ws://127.0.0.1:{a.port}/ws")
            clients.append(client)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            state["left"] = int(line)
            done = loop.create_future()
            finished.append(done)
            for c in clients:
                c.send()
            await done
            sys.stdout.write("done\n")
            sys.stdout.flush()
        for c in clients:
            c.transport.disconnect()

    uvloop.install()
    asyncio.run(run())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen(sys.argv[2:])
    else:
        main()
