"""Real Redis servers for the broker tests: started on free loopback ports, stopped by pid.

``RedisServer`` is one ``redis-server`` (no persistence: a restart comes back empty, as a
crashed cache would); ``RedisCluster`` is three masters made one Cluster with
``redis-cli --cluster create``. ``command`` speaks RESP over a plain socket, to look at what
a test left in Redis without going through the code under test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
START_TIMEOUT = 20.0  # seconds a redis-server may take to answer PING


def _missing(what: str) -> None:
    """Skip where Redis is not installed, but fail in CI (which installs it)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must install it: .ci/run)")
    pytest.skip(what)


needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("CI"),
    reason="redis-server is not installed (.ci/run installs it)",
)


def free_port(below: int = 65536) -> int:
    """A free loopback port under ``below``."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < below:
            return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port(below=65536 - 10000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def command(port: int, *args: str | bytes | int, timeout: float = 5.0) -> Any:
    """Send one command to Redis on 127.0.0.1:``port``; its reply (errors as exceptions)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        out = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        sock.sendall(out)
        with sock.makefile("rb") as reader:
            return _read_reply(reader)


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)[:-2]
        return bytes(data)
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(reader) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


def _wait_ping(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode}")
        try:
            if command(port, "PING", timeout=1.0) == "PONG":
                _check_owner(port, proc)
                return
        except (OSError, RuntimeError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not answer within the guard")
        time.sleep(0.02)  # polling a process that is starting: not synchronisation of ours


class PortTaken(Exception):
    """Another process's redis-server answers on the port we chose (suites run side by side
    pick ports the same way): never share it, or its tests' restarts would empty ours."""


def _check_owner(port: int, proc: subprocess.Popen[bytes]) -> None:
    info = command(port, "INFO", "server", timeout=1.0)
    text = info.decode() if isinstance(info, bytes) else str(info)
    lines = text.splitlines()
    pid = next((int(x.split(":", 1)[1]) for x in lines if x.startswith("process_id:")), None)
    if pid != proc.pid:
        raise PortTaken(f"port {port} is served by redis-server pid {pid}, not ours ({proc.pid})")


class RedisServer:
    """One redis-server on 127.0.0.1, its own directory and a free port."""

    def __init__(self, *extra: str, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            _missing("redis-server is not installed")
        self.dir = tempfile.mkdtemp(prefix="redis-rt-")
        self._auto_port = port is None
        self._started = False
        self.port = port if port is not None else free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            str(REDIS_SERVER),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--logfile", os.path.join(self.dir, "redis.log"),
            *self.extra,
        ]  # fmt: skip
        for _attempt in range(5):
            self.proc = subprocess.Popen(
                [*args[:2], str(self.port), *args[3:]],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_ping(self.port, self.proc)
            except PortTaken:
                self.kill()
                if not self._auto_port or self._started:
                    raise  # a fixed port, or a restart that clients expect on the same port
                self.port = free_port()  # someone else's server took it first: another port
                continue
            except BaseException:
                self.kill()
                raise
            self._started = True
            return self
        raise RuntimeError("no free port for redis-server after 5 tries")

    def kill(self) -> None:
        """SIGKILL by pid, and reap it: the port is free again when this returns."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisCluster:
    """Three masters, no replicas, made one Redis Cluster."""

    def __init__(self) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            _missing("redis-server and redis-cli are not installed")
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000",
                port=free_cluster_port(),
            )
            for _ in range(3)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisCluster:
        try:
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                str(REDIS_CLI), "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        self.wait_ok()

    def wait_ok(self) -> None:
        """Until every master says cluster_state:ok (bounded)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            states = []
            for node in self.nodes:
                with contextlib.suppress(OSError, RuntimeError):
                    states.append(b"cluster_state:ok" in command(node.port, "CLUSTER", "INFO"))
            if len(states) == len(self.nodes) and all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not come up within the guard")
            time.sleep(0.05)

    def restart(self, index: int) -> None:
        """SIGKILL one master and start it again (its nodes.conf keeps its slots)."""
        node = self.nodes[index]
        node.kill()
        node.start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
