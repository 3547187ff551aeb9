"""Servers of the request/reply bench (rpc_bench.py), one mode per process.

  rpc_server.py MODE --port P

  raw_echo    riverside-trio, RawCodec: every message back unchanged (bench/server.py's echo)
  json_echo   riverside-trio, JSONCodec: every message decoded and sent back (re-encoded)
  rpc         riverside-trio, RPCHandler: a request "echo" answered with its payload (a
              handler that never awaits: it runs inline in the connection's reader)
  rpc_await   the same with a handler that awaits once (trio.lowlevel.checkpoint()): it
              runs in the connection's request task, under request_timeout's cancel scope
  socketio    python-socketio (aiohttp): an event "echo" acknowledged with its data (call())

riverside-trio runs with the public API only, as a user would write it.
"""

from __future__ import annotations

import sys
from typing import Any


def _riverside(mode: str, port: int) -> None:
    import trio

    import riverside_trio
    from riverside_trio import (
        Config,
        Connection,
        Handler,
        JSONCodec,
        RawCodec,
        RPCHandler,
        request,
    )

    class RawEcho(Handler):
        codec = RawCodec()

        async def handle_message(self, msg: Any, conn: Connection) -> None:
            conn.send(msg)

    class JSONEcho(Handler):
        codec = JSONCodec()

        async def handle_message(self, msg: Any, conn: Connection) -> None:
            conn.send(msg)

    class Echo(RPCHandler):
        @request("echo")
        async def echo(self, payload: Any, conn: Connection) -> Any:
            return payload

    class AwaitingEcho(RPCHandler):
        @request("echo")
        async def echo(self, payload: Any, conn: Connection) -> Any:
            await trio.lowlevel.checkpoint()
            return payload

    handlers = {"raw_echo": RawEcho, "json_echo": JSONEcho, "rpc": Echo, "rpc_await": AwaitingEcho}
    handler = handlers[mode]()
    config = Config(
        host="127.0.0.1",
        port=port,
        path="/*",
        backlog=4096,
        transmission_limit=0,
        idle_timeout=None,
        ping_interval=None,
    )
    riverside_trio.run(handler, config)


def _socketio(port: int) -> None:
    import socketio  # type: ignore[import-not-found]
    from aiohttp import web  # type: ignore[import-not-found]

    sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])
    app = web.Application()
    sio.attach(app)

    @sio.event  # type: ignore[misc]
    async def echo(sid: str, data: Any) -> Any:
        return data

    web.run_app(app, host="127.0.0.1", port=port, print=None, backlog=4096)


def main() -> None:
    mode = sys.argv[1]
    port = int(sys.argv[sys.argv.index("--port") + 1])
    if mode == "socketio":
        _socketio(port)
    else:
        _riverside(mode, port)


if __name__ == "__main__":
    main()
