#!/usr/bin/env python3
"""What a session costs: create and restore against a plain request, with the in-memory
store and with the Redis store, side by side in one run.

  session_bench.py [--conns 20] [--duration 5] [--warmup 1] [--repeat 3]
                   [--modes plain:memory,create:memory,restore:memory,plain:redis,...]
                   [--out FILE.json]

Each server (this file, ``serve``) is a subprocess pinned to CPU 0; with the Redis store
it joins a redis-server of its own (started here, pinned to CPU 0 too, so its CPU counts
against the node like a co-located Redis). The load generator (this file, ``loadgen``, on
the project's own Trio client) runs pinned to CPU 1 with C connections, each repeating one
iteration of two round trips as fast as it can:

- ``plain``: two requests that touch no session (``whoami``);
- ``create``: ``login`` (``create_session``) and the client's ``close_session`` (deleted);
- ``restore``: ``restore_session(key)`` of a session another connection holds, and the
  client's ``close_session`` (detached, kept: the holder still has it).

Reported: iterations/s, and the server's (and Redis's) CPU time per iteration, as medians,
with each mode's server CPU per iteration as a ratio to ``plain`` with the same store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _procs import free_port, stop_server, wait_port  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
MODES = "plain:memory,create:memory,restore:memory,plain:redis,create:redis,restore:redis"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(mode: str, args: argparse.Namespace) -> dict[str, float]:
    _, _, store = mode.partition(":")
    pin0 = lambda: (os.setsid(), os.sched_setaffinity(0, {0}))  # noqa: E731
    redis = None
    tmp = tempfile.mkdtemp(prefix="session-bench-")
    try:
        if store == "redis":
            rport = free_port()
            redis = subprocess.Popen(
                [args.redis_server, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin0,
            )  # fmt: skip
            wait_port(rport, redis)
        port = free_port()
        cmd = [sys.executable, __file__, "serve", "--port", str(port)]
        if redis is not None:
            cmd += ["--broker-url", f"redis://127.0.0.1:{rport}/0"]
        server = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pin0
        )
        try:
            wait_port(port, server)
            pids = [str(server.pid)] + ([str(redis.pid)] if redis is not None else [])
            out = subprocess.run(
                [sys.executable, __file__, "loadgen", mode, "--port", str(port),
                 "--pids", ",".join(pids), "--conns", str(args.conns),
                 "--duration", str(args.duration), "--warmup", str(args.warmup)],
                check=True, capture_output=True, timeout=args.duration + args.warmup + 60,
                preexec_fn=lambda: os.sched_setaffinity(0, {1}),
            )  # fmt: skip
            return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))
        finally:
            stop_server(server, grace=5.0)
    finally:
        if redis is not None:
            redis.kill()
            redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default=MODES)
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(args.repeat):
        for mode in modes:
            res = run_one(mode, args)
            runs[mode].append(res)
            sys.stderr.write(f"run {r + 1} {mode}: {json.dumps(res)}\n")
    out = sys.stdout.write
    out("| mode | iterations/s | server CPU µs / iteration | Redis CPU µs / iteration ")
    out("| server CPU ratio to plain |\n|---|---|---|---|---|\n")
    for mode in modes:
        rate = statistics.median(x["iter_per_s"] for x in runs[mode])
        cpu = statistics.median(x["server_us"] for x in runs[mode])
        rcpu = statistics.median(x.get("redis_us", 0.0) for x in runs[mode])
        base = "plain:" + mode.partition(":")[2]
        ratio = "-"
        if base in runs:
            ratios = [
                a["server_us"] / b["server_us"] for a, b in zip(runs[mode], runs[base], strict=True)
            ]
            each = " ".join(f"{x:.2f}" for x in ratios)
            ratio = f"{statistics.median(ratios):.2f}x ({each})"
        out(f"| {mode} | {rate:,.0f} | {cpu:.0f} | {rcpu:.0f} | {ratio} |\n")
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1))


# ------------------------------------------------------------------ the server


def serve(args: argparse.Namespace) -> None:
    import trio

    from riverside_trio import Config, Connection, RPCHandler, request

    class App(RPCHandler):
        @request("whoami")
        async def whoami(self, payload: Any, conn: Connection) -> Any:
            return conn.session.info if conn.session is not None else None

        @request("login")
        async def login(self, payload: Any, conn: Connection) -> Any:
            return (await conn.create_session({"user": payload})).key

    config = Config(
        port=args.port,
        broker_url=args.broker_url,
        log_connections=False,
        idle_timeout=None,
        ping_interval=None,
        max_connections=100_000,
        transmission_limit=0,
    )
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve, App, config)


async def _serve(handler: Any, config: Any) -> None:
    import trio

    import riverside_trio

    async with trio.open_nursery() as nursery:
        await nursery.start(riverside_trio.serve, handler, config)


# ------------------------------------------------------------------ the load generator


def loadgen(args: argparse.Namespace) -> None:
    import trio

    from riverside_trio import open_client

    kind = args.mode.partition(":")[0]
    url = f"ws://127.0.0.1:{args.port}/ws"
    pids = [int(p) for p in args.pids.split(",")]
    counts = [0]
    state = {"counting": False, "stop": False}

    async def worker() -> None:
        async with open_client(url, reconnect=False) as client:
            key = None
            if kind == "restore":
                async with open_client(url, reconnect=False) as holder:
                    key = await holder.request("login", "holder")
                    await _loop(client, key)
            else:
                await _loop(client, key)

    async def _loop(client: Any, key: str | None) -> None:
        while not state["stop"]:
            if kind == "plain":
                await client.request("whoami")
                await client.request("whoami")
            elif kind == "create":
                await client.request("login", "u")
                await client.close_session()
            else:
                assert key is not None
                await client.restore_session(key)
                await client.close_session()
            if state["counting"]:
                counts[0] += 1

    async def main() -> dict[str, float]:
        async with trio.open_nursery() as nursery:
            for _ in range(args.conns):
                nursery.start_soon(worker)
            await trio.sleep(args.warmup)
            cpu0 = [cpu_seconds(p) for p in pids]
            t0 = time.monotonic()
            state["counting"] = True
            await trio.sleep(args.duration)
            state["counting"] = False
            elapsed = time.monotonic() - t0
            cpu1 = [cpu_seconds(p) for p in pids]
            state["stop"] = True  # (the workers leave their clients' blocks themselves: a
            # cancelled open_client block can wait forever for its close handshake)
        n = max(counts[0], 1)
        result = {
            "iter_per_s": counts[0] / elapsed,
            "server_us": (cpu1[0] - cpu0[0]) / n * 1e6,
        }
        if len(pids) > 1:
            result["redis_us"] = (cpu1[1] - cpu0[1]) / n * 1e6
        return result

    sys.stdout.write(json.dumps(trio.run(main)) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("serve", "loadgen"):
        ap = argparse.ArgumentParser()
        ap.add_argument("what")
        ap.add_argument("mode", nargs="?", default="")
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--broker-url", default=None)
        ap.add_argument("--pids", default="")
        ap.add_argument("--conns", type=int, default=20)
        ap.add_argument("--duration", type=float, default=5.0)
        ap.add_argument("--warmup", type=float, default=1.0)
        a = ap.parse_args()
        serve(a) if a.what == "serve" else loadgen(a)
    else:
        main()
