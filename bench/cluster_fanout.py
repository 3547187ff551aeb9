"""Fan-out across nodes, side by side in one run (issue 8's figures).

Three set-ups, each serving 1,000 subscribers of one channel, each fed bursts of 100
messages of 64 bytes published by one client on the first node:

- ``one node``: one riverside-trio process (no Redis);
- ``2 nodes``: two riverside-trio processes behind one redis-server (``broker_url``),
  500 subscribers each; the publisher's node delivers its own, the other gets it from Redis;
- ``recipe``: what a user would write by hand: two processes of the ``websockets`` library
  with redis-py's asyncio pub/sub (each PUBLISHes, each node subscribes once and
  ``websockets.broadcast``s what it receives).

Reported per set-up: deliveries per second, server CPU per delivery (the node processes'
user+system time from /proc, Redis not included), loss / duplicates / reordering as seen by
the subscribers, and p50 / p99 from publish to the last subscriber's receipt.

    python bench/cluster_fanout.py [--subscribers 1000] [--bursts 30] [--burst 100]

Needs redis-server on PATH and, for the recipe, ``pip install redis websockets``.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

PAYLOAD_SIZE = 64
SETTLE_TIMEOUT = 30.0


# ---------------------------------------------------------------------- the servers


def serve_riverside(port: int, broker_url: str | None) -> None:
    import riverside_trio
    from riverside_trio import Config, Connection, Handler, RawTextCodec

    class Bench(Handler):
        codec = RawTextCodec()

        async def init(self, conn: Connection) -> None:
            if conn.request.query.get("sub"):
                conn.join_channel("bench")

        async def handle_message(self, msg: Any, conn: Connection) -> None:
            _, n, seq0 = msg.split()
            for seq in range(int(seq0), int(seq0) + int(n)):
                conn.deliver_channel("bench", _payload(seq))

    config = Config(
        port=port,
        reuse_port=False,
        idle_timeout=None,
        ping_interval=None,
        transmission_limit=0,
        max_pending_per_address=10_000,
        broker_url=broker_url,
        log_connections=False,
        log_level="warning",
    )
    riverside_trio.run(Bench(), config)


def serve_recipe(port: int, redis_url: str) -> None:
    import asyncio

    import redis.asyncio as aioredis
    import websockets
    from websockets.asyncio.server import serve

    async def main() -> None:
        r = aioredis.from_url(redis_url)
        clients: set[Any] = set()

        async def handler(ws: Any) -> None:
            if "sub=1" in ws.request.path:
                clients.add(ws)
                try:
                    await ws.wait_closed()
                finally:
                    clients.discard(ws)
                return
            async for msg in ws:
                _, n, seq0 = msg.split()
                for seq in range(int(seq0), int(seq0) + int(n)):
                    await r.publish("bench", _payload(seq))

        async def listen() -> None:
            pubsub = r.pubsub()
            await pubsub.subscribe("bench")
            async for message in pubsub.listen():
                if message["type"] == "message":
                    websockets.broadcast(clients, message["data"].decode())

        async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None):
            await listen()

    asyncio.run(main())


def _payload(seq: int) -> str:
    head = f"{seq} {time.monotonic():.6f} "
    return head + "x" * (PAYLOAD_SIZE - len(head))


# ---------------------------------------------------------------------- the load


class Tally:
    def __init__(self, subscribers: int) -> None:
        self.last = [-1] * subscribers
        self.count = 0
        self.dup_or_reorder = 0
        self.latest: dict[int, float] = {}  # seq -> latest receipt

    def got(self, i: int, seq: int, now: float) -> None:
        if seq <= self.last[i]:
            self.dup_or_reorder += 1
        self.last[i] = seq
        self.count += 1
        if now > self.latest.get(seq, 0.0):
            self.latest[seq] = now


async def subscriber(i: int, port: int, tally: Tally, ready: Any, task_status: Any) -> None:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await sock.send(
        (
            f"GET /ws?sub=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await sock.recv(4096)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    task_status.started()
    while True:
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            if n >= 126:
                raise RuntimeError("unexpected large frame")
            if len(buf) < 2 + n:
                break
            body = buf[2 : 2 + n]
            buf = buf[2 + n :]
            seq, t0, _ = body.split(b" ", 2)
            tally.got(i, int(seq), time.monotonic() - float(t0))
        chunk = await sock.recv(65536)
        if not chunk:
            return
        buf += chunk


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(
    ports: list[int], pids: list[int], subscribers: int, bursts: int, burst: int
) -> dict[str, Any]:
    tally = Tally(subscribers)
    async with trio.open_nursery() as nursery:
        for i in range(subscribers):
            await nursery.start(subscriber, i, ports[i % len(ports)], tally, None)
        await trio.sleep(1.0)  # subscriptions reach Redis (2 nodes) before the first burst
        from trio_websocket import open_websocket_url

        async with open_websocket_url(f"ws://127.0.0.1:{ports[0]}/ws") as control:
            cpu0 = sum(cpu_seconds(p) for p in pids)
            t0 = time.monotonic()
            expected = 0
            for b in range(bursts):
                await control.send_message(f"burst {burst} {b * burst}")
                expected += subscribers * burst
                with trio.move_on_after(SETTLE_TIMEOUT):
                    while tally.count < expected:
                        await trio.sleep(0.001)
            elapsed = time.monotonic() - t0
            cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        nursery.cancel_scope.cancel()
    latencies = sorted(tally.latest.values())
    return {
        "deliveries_per_s": tally.count / elapsed,
        "cpu_us_per_delivery": cpu / max(tally.count, 1) * 1e6,
        "lost": expected - tally.count,
        "dup_or_reorder": tally.dup_or_reorder,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    }


# ---------------------------------------------------------------------- the driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args])


def scenario(name: str, procs: list[tuple[list[str], int]], args: argparse.Namespace) -> dict:
    running = [start(*argv) for argv, _ in procs]
    try:
        ports = [port for _, port in procs]
        for port in ports:
            wait_port(port)
        result = trio.run(
            run_load, ports, [p.pid for p in running], args.subscribers, args.bursts, args.burst
        )
    finally:
        for p in running:
            p.kill()
            p.wait()
    result["name"] = name
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--serve", choices=["riverside", "recipe"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.serve == "riverside":
        serve_riverside(args.port, args.url)
        return
    if args.serve == "recipe":
        serve_recipe(args.port, args.url)
        return

    redis_dir = tempfile.mkdtemp(prefix="bench-redis-")
    redis_port = free_port()
    redis_server = shutil.which("redis-server") or "redis-server"
    redis_args = ["--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    redis_args += ["--appendonly", "no", "--dir", redis_dir]
    redis = subprocess.Popen([redis_server, *redis_args], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        wait_port(redis_port)
        results = []
        p = [free_port() for _ in range(5)]
        results.append(
            scenario("one node", [(["--serve", "riverside", "--port", str(p[0])], p[0])], args)
        )
        results.append(
            scenario(
                "2 nodes + Redis",
                [
                    (["--serve", "riverside", "--port", str(p[1]), "--url", url], p[1]),
                    (["--serve", "riverside", "--port", str(p[2]), "--url", url], p[2]),
                ],
                args,
            )
        )
        results.append(
            scenario(
                "recipe: websockets + redis-py, 2 nodes",
                [
                    (["--serve", "recipe", "--port", str(p[3]), "--url", url], p[3]),
                    (["--serve", "recipe", "--port", str(p[4]), "--url", url], p[4]),
                ],
                args,
            )
        )
    finally:
        redis.kill()
        redis.wait()
        shutil.rmtree(redis_dir, ignore_errors=True)
    one, two, recipe = results
    head = f"{'set-up':42} {'deliveries/s':>13} {'CPU µs/deliv':>13} {'lost':>6} "
    head += f"{'dup/reord':>9} {'p50 ms':>8} {'p99 ms':>8}"
    sys.stdout.write(head + "\n")
    for r in results:
        sys.stdout.write(
            f"{r['name']:42} {r['deliveries_per_s']:13,.0f} {r['cpu_us_per_delivery']:13.3f} "
            f"{r['lost']:6d} {r['dup_or_reorder']:9d} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}\n"
        )
    sys.stdout.write(
        "2 nodes / one node, deliveries/s: "
        f"{two['deliveries_per_s'] / one['deliveries_per_s']:.2f}x\n"
        f"2 nodes / recipe, CPU per delivery: "
        f"{two['cpu_us_per_delivery'] / recipe['cpu_us_per_delivery']:.3f}x\n"
    )


if __name__ == "__main__":
    main()
