"""The control API's ``POST /send`` against the WebSocket echo path, side by side in one run.

One riverside-trio server process (a raw-text echo handler, ``api_key`` set, no broker):

- ``api send``: one WebSocket client of user ``u`` (connected with a claim) receives; ``C``
  HTTP clients POST ``/api/send?user=u&type=text`` with a 64-byte body in a loop, each
  request on a new TCP connection (the server answers one request per connection, as all
  its plain HTTP);
- ``ws echo``: ``C`` WebSocket clients each send a 64-byte message and wait for its echo,
  in a loop.

Reported: requests (or echoed messages) per second, and the server's CPU (user + system
from /proc) per request or message. The clients run in this process (Trio), the server in
its own; on a 2-core machine they share the cores, so compare the two lines of one run.

    python bench/api_send.py [--clients 8] [--duration 5] [--log-level info|warning]

The server logs as ``riverside-trio serve --log-format json`` would (to /dev/null): at
``info`` every API call is a log line, as in production; ``warning`` shows the cost without.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import trio
from trio_websocket import open_websocket_url

KEY = "bench-api-key-0123456789"
PAYLOAD = b"x" * 64

SERVER = """
import sys
import riverside_trio
from riverside_trio import Config, Handler, RawCodec
from riverside_trio._logging import configure_logging

configure_logging("json", sys.argv[3])

class Echo(Handler):
    codec = RawCodec()

    async def handle_message(self, msg, conn):
        conn.send(msg)

riverside_trio.run(Echo, Config(port=int(sys.argv[1]), api_key=sys.argv[2],
    log_connections=False, idle_timeout=None, ping_interval=None, transmission_limit=0))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def post(port: int, target: str, body: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = (
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        await stream.send_all(head + body)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        return data


async def api_send(port: int, clients: int, duration: float, pid: int) -> dict[str, float]:
    reply = await post(port, "/api/claim?user=u", b"")
    claim = json.loads(reply.split(b"\r\n\r\n", 1)[1])["claim"]["id"]
    received = 0
    sent = 0
    async with open_websocket_url(f"ws://127.0.0.1:{port}/ws?claim={claim}") as ws:

        async def receive() -> None:
            nonlocal received
            while True:
                await ws.get_message()
                received += 1

        async def send(deadline: float) -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                data = await post(port, "/api/send?user=u&type=text", PAYLOAD)
                assert data.startswith(b"HTTP/1.1 200"), data[:200]
                sent += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            async with trio.open_nursery() as senders:
                for _ in range(clients):
                    senders.start_soon(send, t0 + duration)
            elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
            with trio.move_on_after(5):
                while received < sent:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert received == sent, (received, sent)
    return {"per_s": sent / elapsed, "cpu_us": cpu / sent * 1e6, "n": sent}


async def ws_echo(port: int, clients: int, duration: float, pid: int) -> dict[str, float]:
    done = 0
    ready = trio.Event()
    connected = 0
    deadline = 0.0

    async def client() -> None:
        nonlocal done, connected
        reply = await post(port, "/api/claim?user=e", b"")
        claim = json.loads(reply.split(b"\r\n\r\n", 1)[1])["claim"]["id"]
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws?claim={claim}") as ws:
            connected += 1
            await ready.wait()
            while time.monotonic() < deadline:
                await ws.send_message(PAYLOAD)
                await ws.get_message()
                done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
        while connected < clients:
            await trio.sleep(0.01)
        cpu0, start = cpu_seconds(pid), time.monotonic()
        deadline = start + duration
        ready.set()
    elapsed, cpu = time.monotonic() - start, cpu_seconds(pid) - cpu0
    return {"per_s": done / elapsed, "cpu_us": cpu / done * 1e6, "n": done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--log-level",
        default="info",
        help="the server's (json logs to /dev/null): info logs every API call, warning none",
    )
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), KEY, args.log_level],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        api = trio.run(api_send, port, args.clients, args.duration, server.pid)
        echo = trio.run(ws_echo, port, args.clients, args.duration, server.pid)
    finally:
        server.terminate()
        server.wait(10)
    out = sys.stdout.write
    out(f"{'path':12} {'per second':>12} {'server CPU µs each':>20} {'count':>8}\n")
    for name, r in (("api send", api), ("ws echo", echo)):
        out(f"{name:12} {r['per_s']:12,.0f} {r['cpu_us']:20.1f} {r['n']:8,.0f}\n")
    out(
        f"api send / ws echo: {api['per_s'] / echo['per_s']:.3f}x the rate, "
        f"{api['cpu_us'] / echo['cpu_us']:.2f}x the server CPU each\n"
    )


if __name__ == "__main__":
    main()
