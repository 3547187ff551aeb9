"""``riverside-trio client URL``: an interactive console client to poke at a server.

Lines typed are sent as they arrive; what the server sends is printed as it arrives (the
standard input is read without blocking the event loop: a non-blocking ``FdStream`` on a
copy of fd 0, or a thread where there is none). Commands::

    {"type": "say"}          a JSON line is sent as it is (a text frame; CBOR with --codec cbor)
    hello                    any other line is sent as text (not with --codec cbor)
    /request NAME [JSON]     a request by name (the request/reply envelope); the reply prints
    /signal NAME [JSON]      a signal (one way)
    /text TEXT               TEXT as a text frame, whatever the codec
    /help, /quit             (end of input quits too)

Received messages go to the standard output, one line each: ``< {...}`` for plain messages,
``< reply 1 (add): 5``, ``< error 2 (add): code: message``, ``< signal name: {...}``.
Status lines (connected, closed) and local errors go to the standard error. Exit status: 0
after ``/quit``, end of input or a normal close by the server (1000, 1001), 1 after any
other close, 2 when the connection cannot be made (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing, suppress
from typing import Any, TextIO

__all__ = ["add_parser", "run"]

PROG = "riverside-trio"
EXIT_USAGE = 2

HELP = """\
commands:
  {json} or text       send the line (JSON is sent as it is; other text as a text frame)
  /request NAME [JSON] make a request by name; the reply is printed when it comes
  /signal NAME [JSON]  send a signal
  /text TEXT           send TEXT as a text frame
  /help                this text
  /quit                close the connection (1000) and exit (end of input does too)
"""


def add_parser(commands: Any) -> None:
    """Add the ``client`` command to the CLI's subcommands (argparse's ``add_subparsers``)."""
    client = commands.add_parser(
        "client",
        help="an interactive console client for a riverside-trio server",
        description=(
            "Connect to URL, send what you type (JSON or text lines, /request NAME JSON, "
            "/signal NAME JSON) and print what the server sends as it arrives. /help lists "
            "the commands; /quit or end of input closes the connection."
        ),
    )
    client.add_argument("url", metavar="URL", help="the server's URL, e.g. ws://127.0.0.1:8000/ws")
    client.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header for the handshake (repeat the flag for several)",
    )
    client.add_argument("--token", metavar="TOKEN", help="sent as 'Authorization: Bearer TOKEN'")
    client.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="a subprotocol to offer (repeat the flag for several)",
    )
    client.add_argument(
        "--codec",
        choices=("json", "cbor", "text"),
        default="json",
        help="the server's codec (default: json)",
    )
    client.add_argument(
        "--cafile",
        metavar="FILE",
        help="trust the CA certificates in FILE for wss:// (default: the system's)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the console client for the parsed ``args``; return the exit status."""
    headers: list[tuple[str, str]] = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            return _error(f"--header: expected 'NAME: VALUE', got {header!r}")
        headers.append((name.strip(), value.strip()))
    if args.token is not None:
        headers.append(("Authorization", f"Bearer {args.token}"))
    if not args.url.startswith(("ws://", "wss://")):
        return _error(f"URL: expected ws://host:port/path or wss://..., got {args.url!r}")
    ssl_context = None
    if args.url.startswith("wss://"):
        try:
            ssl_context = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            return _error(f"--cafile: cannot load {args.cafile!r}: {exc}")

    import trio

    console = _Console(args, headers, ssl_context, sys.stdout, sys.stderr)
    try:
        return trio.run(console.main)
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_USAGE


class _Console:
    def __init__(
        self,
        args: argparse.Namespace,
        headers: list[tuple[str, str]],
        ssl_context: ssl.SSLContext | None,
        out: TextIO,
        err: TextIO,
    ) -> None:
        from .codecs import CBORCodec, Codec, JSONCodec, RawTextCodec

        self.url: str = args.url
        self.headers = headers
        self.subprotocols: list[str] = args.subprotocol
        self.ssl_context = ssl_context
        self.codec_name: str = args.codec
        codecs: dict[str, Callable[[], Codec]] = {
            "json": JSONCodec,
            "cbor": CBORCodec,
            "text": RawTextCodec,
        }
        self.codec = codecs[args.codec]()
        self.out = out
        self.err = err
        self.next_id = 0
        self.pending: dict[Any, str] = {}  # request id -> name, for the reply's line
        self.status = 0
        self.nursery: Any = None
        self.connected = False

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def note(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()

    async def main(self) -> int:
        import trio
        import trio_websocket

        failure: BaseException | None = None
        try:
            return await self.session()
        except (OSError, trio_websocket.HandshakeError) as exc:
            failure = exc
        except BaseExceptionGroup as group:  # a refusal with a body comes from the reader task
            failure = None if self.connected else _leaf(group)
            if failure is None:
                raise
        assert failure is not None
        if isinstance(failure, trio_websocket.ConnectionRejected):
            body = (failure.body or b"").decode("utf-8", "replace").strip()
            detail = f": {body[:200]}" if body else ""
            self.note(
                f"{PROG}: error: {self.url} refused the connection with status "
                f"{failure.status_code}{detail}"
            )
        else:
            self.note(f"{PROG}: error: cannot connect to {self.url}: {_why(failure)}")
        await trio.lowlevel.checkpoint()
        return EXIT_USAGE

    async def session(self) -> int:
        import trio

        from .client._ws import open_stream, wrap_client_stream

        stream = await open_stream(self.url, self.ssl_context)
        async with stream, trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                self.url,
                subprotocols=self.subprotocols or None,
                extra_headers=[(k.encode(), v.encode()) for k, v in self.headers] or None,
            )
            self.connected = True
            proto = f" (subprotocol {ws.subprotocol})" if ws.subprotocol else ""
            self.note(f"connected to {self.url}{proto}; /help lists the commands")
            self.nursery = nursery
            nursery.start_soon(self.read_server, ws, nursery.cancel_scope)
            async with aclosing(_stdin_lines()) as lines:
                async for line in lines:
                    if not await self.handle_line(ws, line):
                        break
            await ws.aclose()
            nursery.cancel_scope.cancel()
        return self.status

    async def handle_line(self, ws: Any, line: str) -> bool:
        """Act on one input line; False to quit."""
        import trio_websocket

        from .rpc._envelope import Request, Signal
        from .rpc._format import format_for

        text = line.strip()
        if not text:
            return True
        command, _, rest = text.partition(" ")
        try:
            if command == "/quit":
                return False
            if command == "/help":
                self.note(HELP.rstrip())
            elif command == "/text":
                await ws.send_message(rest)
            elif command in ("/request", "/signal"):
                if self.codec_name == "text":
                    self.note(f"{command} needs a codec of dicts: --codec json or cbor")
                    return True
                name, _, data = rest.strip().partition(" ")
                if not name:
                    self.note(f"usage: {command} NAME [JSON]")
                    return True
                payload = _json(data) if data.strip() else None
                fmt = format_for(self.codec)
                if command == "/signal":
                    await ws.send_message(self.codec.encode(fmt.out(Signal(name, payload))))
                else:
                    self.next_id += 1
                    self.pending[self.next_id] = name
                    env = Request(self.next_id, name, payload)
                    await ws.send_message(self.codec.encode(fmt.out(env)))
            elif text.startswith("/"):
                self.note(f"unknown command {command!r}; /help lists the commands")
            elif self.codec_name == "cbor":
                await ws.send_message(self.codec.encode(_json(text)))
            else:
                await ws.send_message(text)
        except ValueError as exc:
            self.note(f"not sent: {exc}")
        except trio_websocket.ConnectionClosed:
            return False
        return True

    async def read_server(self, ws: Any, scope: Any) -> None:
        import trio_websocket

        try:
            while True:
                self.show(ws, await ws.get_message())
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            code = reason.code if reason is not None else None
            why = f" {reason.reason}" if reason is not None and reason.reason else ""
            self.note(f"connection closed: {code}{why}")
            self.status = 0 if code in (1000, 1001) else 1
        scope.cancel()

    def show(self, ws: Any, data: str | bytes) -> None:
        from .errors import CodecError
        from .rpc._envelope import ErrorReply, Reply, Request, Signal
        from .rpc._format import format_for

        try:
            msg = self.codec.decode(data)
        except (CodecError, ValueError):
            self.say(f"< {_raw(data)}")
            return
        env = format_for(self.codec).parse(msg)
        if isinstance(env, Reply | ErrorReply):
            name = self.pending.pop(env.id, "?")
            if isinstance(env, Reply):
                self.say(f"< reply {env.id!r} ({name}): {_show(env.payload)}")
            else:
                message = f": {env.message}" if env.message else ""
                self.say(f"< error {env.id!r} ({name}): {env.code}{message}")
        elif isinstance(env, Signal):
            self.say(f"< signal {env.name}: {_show(env.payload)}")
        elif isinstance(env, Request):
            self.say(
                f"< request {env.id!r} {env.name}: {_show(env.payload)} (answered unknown_name)"
            )
            self._refuse(ws, env)
        else:
            self.say(f"< {_show(msg)}")

    def _refuse(self, ws: Any, req: Any) -> None:
        """Answer the server's request with ``unknown_name``: a console cannot answer."""
        from .rpc._envelope import ErrorCode, ErrorReply
        from .rpc._format import format_for

        reply = ErrorReply(req.id, ErrorCode.UNKNOWN_NAME, "the console client answers no requests")
        data = self.codec.encode(format_for(self.codec).out(reply))
        self.nursery.start_soon(_send_quietly, ws, data)


async def _send_quietly(ws: Any, data: str | bytes) -> None:
    import trio_websocket

    with suppress(trio_websocket.ConnectionClosed):
        await ws.send_message(data)


def _leaf(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The connection failure in ``group`` (OSError or a refused handshake), or None."""
    import trio_websocket

    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _leaf(exc)
            if found is not None:
                return found
        elif isinstance(exc, OSError | trio_websocket.HandshakeError):
            return exc
    return None


def _why(exc: BaseException) -> str:
    """The reason a connection failed: the OS's words (trio's "all attempts to connect ...
    failed" carries them in its cause)."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.errno is not None and cause.errno > 0:
        return os.strerror(cause.errno)  # "Connection refused", without trio's prefix
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno}): {text[:80]}") from None


def _show(obj: Any) -> str:
    if isinstance(obj, str | bytes):
        return _raw(obj) if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False)
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        return repr(obj)


def _raw(data: str | bytes) -> str:
    if isinstance(data, str):
        return data
    return f"(binary, {len(data)} bytes) {data[:64].hex()}{'...' if len(data) > 64 else ''}"


async def _stdin_lines() -> AsyncGenerator[str, None]:
    """The lines of the standard input, read without blocking the event loop."""
    import trio

    if not hasattr(trio.lowlevel, "FdStream"):  # Windows: a thread per line
        readline: Callable[[], str] = sys.stdin.readline
        while line := await trio.to_thread.run_sync(readline, abandon_on_cancel=True):
            yield line
        return
    fd = sys.stdin.fileno()
    was_blocking = os.get_blocking(fd)  # FdStream makes the shared file description non-blocking
    try:
        async with trio.lowlevel.FdStream(os.dup(fd)) as stdin:
            buffer = b""
            while chunk := await stdin.receive_some(65536):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", "replace")
            if buffer:
                yield buffer.decode("utf-8", "replace")
    finally:
        os.set_blocking(fd, was_blocking)
