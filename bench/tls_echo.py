"""Echo over TLS (wss://), side by side: riverside-trio against websockets, in one run.

Both servers get the same self-signed certificate (made with the ``openssl`` command) and
the same load: one client process (picows on uvloop when the client's interpreter has them,
pinned to the other CPU) holding N wss:// connections, each sending a 64-byte binary message
and sending the next as soon as the echo is back. Runs are interleaved (A B, B A, A B, ...),
since the machine drifts; each reports messages/s and the server's CPU time per message
(user + system, read from /proc). The table at the end gives medians and the ratios
riverside / websockets.

    python bench/tls_echo.py                       # 5 interleaved pairs, 50 connections
    python bench/tls_echo.py --repeat 7 --conns 100 --duration 5
    python bench/tls_echo.py --client-python /tmp/benchenv/bin/python

The servers run with this interpreter (it must have riverside-trio and websockets); the
client runs with ``--client-python`` (picows, and uvloop if it is there), by default
/tmp/benchenv/bin/python when it exists (see ../shared/bench), else this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

WEBSOCKETS_SERVER = """
import asyncio, ssl, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for msg in ws:
        await ws.send(msg)

async def main(port, cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    async with serve(echo, "127.0.0.1", port, ssl=ctx, compression=None, ping_interval=None,
                     max_size=2**24, backlog=4096) as server:
        print("listening", flush=True)
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""

CLIENT = """
import asyncio, json, os, ssl, sys, time
try:
    import uvloop
except ImportError:
    uvloop = None
from picows import WSListener, WSMsgType, ws_connect

port, cert, conns, duration, warmup, size = sys.argv[1:7]
conns, duration, warmup, size = int(conns), float(duration), float(warmup), int(size)
payload = os.urandom(size)
state = {"count": 0, "measuring": False, "running": True, "errors": 0}

class Echo(WSListener):
    def on_ws_connected(self, transport):
        self.t = transport
    def on_ws_frame(self, transport, frame):
        if frame.msg_type != WSMsgType.BINARY:
            return
        if frame.payload_size != size:
            state["errors"] += 1
        if state["measuring"]:
            state["count"] += 1
        if state["running"]:
            transport.send(WSMsgType.BINARY, payload)

async def main():
    ctx = ssl.create_default_context(cafile=cert)
    url = f"wss://127.0.0.1:{port}/echo"
    opened = [await ws_connect(Echo, url, ssl_context=ctx) for _ in range(conns)]
    for transport, _ in opened:
        transport.send(WSMsgType.BINARY, payload)
    await asyncio.sleep(warmup)
    print("measure", flush=True)
    sys.stdin.readline()  # the parent reads the server's CPU time, then says go
    state["measuring"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    count = state["count"]
    print(json.dumps({"messages": count, "elapsed": elapsed, "errors": state["errors"]}),
          flush=True)
    state["running"] = False
    await asyncio.sleep(0.2)
    for transport, _ in opened:
        transport.send_close()
        transport.disconnect()

if uvloop is not None:
    uvloop.install()
asyncio.run(main())
"""


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not listen in time")


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if cpu is not None else command


def server_command(name: str, port: int, cert: str, key: str) -> list[str]:
    if name == "riverside-trio":
        server = str(HERE / "server.py")
        return [sys.executable, server, "--port", str(port), "--tls-cert", cert, "--tls-key", key]
    return [sys.executable, "-c", WEBSOCKETS_SERVER, str(port), cert, key]


def one_run(name: str, args: argparse.Namespace, cert: str, key: str) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSIDE_")}
    server = subprocess.Popen(
        pinned(args.server_cpu, server_command(name, port, cert, key)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_listening(port, server)
        client = subprocess.Popen(
            pinned(
                args.client_cpu,
                [
                    args.client_python,
                    "-c",
                    CLIENT,
                    str(port),
                    cert,
                    str(args.conns),
                    str(args.duration),
                    str(args.warmup),
                    str(args.size),
                ],
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdin is not None and client.stdout is not None
        if client.stdout.readline().strip() != "measure":
            raise RuntimeError(f"the client failed against {name}")
        cpu0 = cpu_seconds(server.pid)
        client.stdin.write("go\n")
        client.stdin.flush()
        result = json.loads(client.stdout.readline())
        cpu1 = cpu_seconds(server.pid)
        client.wait(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
    messages = result["messages"]
    return {
        "msgs_per_s": messages / result["elapsed"],
        "cpu_us_per_msg": (cpu1 - cpu0) * 1e6 / messages if messages else float("inf"),
        "errors": result["errors"],
    }


def make_certificate(directory: str) -> tuple[str, str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def main() -> None:
    default_client = "/tmp/benchenv/bin/python"
    if not os.path.exists(default_client):
        default_client = sys.executable
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved pairs of runs")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--client-python", default=default_client)
    args = ap.parse_args()
    names = ["riverside-trio", "websockets"]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="tls-echo-") as tmp:
        cert, key = make_certificate(tmp)
        say(f"echo over TLS: {args.conns} connections x {args.size} B, {args.duration} s a run")
        for r in range(args.repeat):
            order = names if r % 2 == 0 else names[::-1]
            ratios = {}
            for name in order:
                res = one_run(name, args, cert, key)
                results[name].append(res)
                ratios[name] = res
                say(
                    f"run {r + 1} {name:15} {res['msgs_per_s']:10,.0f} msg/s "
                    f"{res['cpu_us_per_msg']:6.1f} us CPU/msg  errors {res['errors']}"
                )
            a, b = ratios["riverside-trio"], ratios["websockets"]
            say(
                f"run {r + 1} ratio riverside/websockets: "
                f"msg/s {a['msgs_per_s'] / b['msgs_per_s']:.2f}x, "
                f"CPU/msg {a['cpu_us_per_msg'] / b['cpu_us_per_msg']:.2f}x"
            )
    say()
    say("| server | msg/s (median) | server CPU per message (median) |")
    say("|---|---|---|")
    med = {}
    for name in names:
        rate = statistics.median(r["msgs_per_s"] for r in results[name])
        cpu = statistics.median(r["cpu_us_per_msg"] for r in results[name])
        med[name] = (rate, cpu)
        say(f"| {name} | {rate:,.0f} | {cpu:.1f} µs |")
    pair = [
        a["msgs_per_s"] / b["msgs_per_s"]
        for a, b in zip(results["riverside-trio"], results["websockets"], strict=True)
    ]
    say(
        f"| ratio riverside / websockets | {med[names[0]][0] / med[names[1]][0]:.2f}x "
        f"(per pair: {', '.join(f'{x:.2f}' for x in pair)}) "
        f"| {med[names[0]][1] / med[names[1]][1]:.2f}x |"
    )


if __name__ == "__main__":
    main()
