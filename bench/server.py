"""riverside-trio as a peer of ../shared/bench (PROTOCOL.md): /echo and /fanout.

Written with the public API only, as a user would: one Handler with the raw codec
(text stays text, binary stays binary). Every /fanout connection joins one channel; each
message a member sends is delivered to the whole channel, the sender included.
The port comes from $BENCH_PORT (or --port N); ``--tls-cert FILE --tls-key FILE`` serves
wss:// (bench/tls_echo.py).
"""

from __future__ import annotations

import os
import sys

import riverside_trio
from riverside_trio import Config, Connection, Handler, RawCodec

GROUP = "fanout"


class BenchHandler(Handler):
    codec = RawCodec()

    async def init(self, conn: Connection) -> None:
        if conn.path.startswith("/fanout"):
            conn.join_channel(GROUP)

    async def handle_message(self, msg: str | bytes, conn: Connection) -> None:
        if conn.path.startswith("/fanout"):
            conn.deliver_channel(GROUP, msg)
        else:
            conn.send(msg)


def main() -> None:
    argv = sys.argv[1:]

    def option(name: str) -> str | None:
        return argv[argv.index(name) + 1] if name in argv else None

    port = int(option("--port") or os.environ["BENCH_PORT"])
    config = Config(
        tls_certfile=option("--tls-cert"),  # wss:// (bench/tls_echo.py)
        tls_keyfile=option("--tls-key"),
        host="127.0.0.1",
        port=port,
        path="/*",
        backlog=4096,
        max_connections=100_000,
        max_message_size=16 * 1024 * 1024,
        transmission_limit=0,  # the harness sends as fast as it can
        outbox_size=100_000,  # the harness always reads: backpressure, never shedding
        outbox_bytes=1 << 30,
        max_queued_bytes=None,  # ... nor shedding for the node's budget
        control_frame_limit=0,
        # The harness opens up to 100 handshakes at once, all from 127.0.0.1 (one address for
        # many clients): the per-address cap of pending sockets would refuse some of them.
        max_pending_per_address=1024,
        idle_timeout=None,
        ping_interval=None,
        log_connections=False,  # no log line per connection (the peers log none either)
    )
    riverside_trio.run(BenchHandler(), config)


if __name__ == "__main__":
    main()
