"""What a JWT costs the server per connection: handshakes with each algorithm against
anonymous handshakes (no key configured), side by side in one run.

One server per mode (the built-in demo, which has no ``authenticate``: the configured
authenticators decide), each a ``riverside-trio serve`` subprocess pinned to CPU 0; one
client in this process (pinned to CPU 1) opens N connections one after the other: it sends
the upgrade request with ``?jwt=<token>`` (a token minted once per mode, as a client reuses
its token), reads the 101, sends a close frame and waits for the server's. Modes are
interleaved round by round (the machine drifts); each run reports handshakes/s and the
server's CPU time per connection (user + system, read from /proc, in 10 ms ticks: hence
thousands of connections per run). The table at the end gives medians, and the median over
rounds of each mode's CPU against the anonymous mode's in the same round.

    python bench/jwt_handshake.py                     # 5 rounds of 2,000 connections
    python bench/jwt_handshake.py --rounds 7 --conns 5000 --modes none,HS256,EdDSA
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "bench-secret-" + "x" * 40
MODES = ("none", "HS256", "RS256", "ES256", "EdDSA")
TICKS = os.sysconf("SC_CLK_TCK")


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prepare(mode: str, folder: Path) -> tuple[dict[str, str], str]:
    """The server's environment for ``mode`` and the token its clients send."""
    if mode == "none":
        return {}, ""
    claims = {"sub": "bench", "exp": int(time.time()) + 86_400, "channels": ["all"]}
    if mode == "HS256":
        return {"RIVERSIDE_JWT_SECRET": SECRET}, jwt.encode(claims, SECRET, algorithm="HS256")
    key: Any = {
        "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
    }[mode]()
    pem = folder / f"{mode}.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return {"RIVERSIDE_JWT_PUBLIC_KEY_FILE": str(pem)}, jwt.encode(claims, key, algorithm=mode)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def connect_once(port: int, token: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    target = f"/ws?jwt={token}" if token else "/ws"
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("the server closed before its 101")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        sock.sendall(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")  # masked close 1000
        while sock.recv(4096):  # the server's close frame, then its FIN
            pass


def run_mode(mode: str, env: dict[str, str], token: str, conns: int) -> tuple[float, float]:
    port = free_port()
    server_env = {
        **os.environ,
        **env,
        "RIVERSIDE_PORT": str(port),
        "RIVERSIDE_LOG_LEVEL": "warning",
        "RIVERSIDE_LOG_CONNECTIONS": "0",
        "RIVERSIDE_TRANSMISSION_LIMIT": "0",
    }
    command = ["taskset", "-c", "0", sys.executable, "-m", "riverside_trio", "serve"]
    proc = subprocess.Popen(command, env=server_env, stdout=subprocess.DEVNULL)
    try:
        for _ in range(500):  # until it listens (bounded: 10 s)
            try:
                connect_once(port, token)
                break
            except (ConnectionRefusedError, RuntimeError):
                time.sleep(0.02)
        else:
            raise RuntimeError(f"the {mode} server did not start")
        for _ in range(50):  # warm-up
            connect_once(port, token)
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        for _ in range(conns):
            connect_once(port, token)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
    return conns / wall, cpu / conns * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    os.sched_setaffinity(0, {1})
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as folder:
        prepared = {m: prepare(m, Path(folder)) for m in modes}
        for round_ in range(args.rounds):
            order = modes if round_ % 2 == 0 else modes[::-1]
            for mode in order:
                rate, cpu = run_mode(mode, *prepared[mode], args.conns)
                results[mode].append((rate, cpu))
                say(f"round {round_ + 1} {mode:6} {rate:8.0f} handshakes/s {cpu:7.1f} µs CPU")
    # Ratios are taken within each round (the runs of one round are minutes apart at most),
    # then their median: steadier than a ratio of medians on a drifting machine.
    base = modes[0]
    say()
    say(f"medians over {args.rounds} rounds of {args.conns} connections; ratios to {base}")
    say("| mode | handshakes/s | server CPU per connection | CPU ratio | extra CPU |")
    say("|---|---|---|---|---|")
    for mode in modes:
        rate = statistics.median(r for r, _ in results[mode])
        cpu = statistics.median(c for _, c in results[mode])
        pairs = list(zip(results[mode], results[base], strict=True))
        ratio = statistics.median(c / b for (_, c), (_, b) in pairs)
        extra = statistics.median(c - b for (_, c), (_, b) in pairs)
        say(f"| {mode} | {rate:.0f} | {cpu:.0f} µs | {ratio:.2f}x | {extra:+.0f} µs |")


if __name__ == "__main__":
    main()
