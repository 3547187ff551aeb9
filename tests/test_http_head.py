"""A response to ``HEAD`` has no body, refusals included (RFC 9110 section 9.3.2): found by
the ``head`` fuzz target, where a ``HEAD`` whose body was cut short got its 400 with a body.

Real sockets on 127.0.0.1; the client reads until the server closes, so bytes after the
response head are seen whatever ``Content-Length`` says.
"""

from __future__ import annotations

import pytest
import trio

from riverside_trio import Handler, HTTPRequest, HTTPResponse

from ._helpers import running, upgrade_request


class RouteHandler(Handler):
    """``/echo`` echoes the body; ``/boom`` fails."""

    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        if req.path == "/boom":
            raise RuntimeError("handler bug")
        return HTTPResponse(body=req.body) if req.path == "/echo" else None


async def answer(port: int, data: bytes) -> tuple[str, bytes]:
    """Send ``data``, half-close, read until the server closes: (status line, after head)."""
    received = bytearray()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        await stream.send_eof()
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
    head, sep, rest = bytes(received).partition(b"\r\n\r\n")
    assert sep, received
    return head.split(b"\r\n")[0].decode(), rest


def request(method: str, path: str, *extra: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # the fuzzer's input: a body shorter than its Content-Length, then EOF
        (request("HEAD", "/echo", "Content-Length: 5", body=b"hlo"), 400),
        (request("HEAD", "/echo", "Content-Length: 2000", body=b"x" * 2000), 413),
        (request("HEAD", "/boom"), 500),
        (request("HEAD", "/nothing"), 404),
        (upgrade_request("/ws", method="HEAD"), 400),
        (upgrade_request("/elsewhere", method="HEAD"), 404),
    ],
    ids=["short-body", "body-too-large", "handler-fails", "no-route", "upgrade", "upgrade-404"],
)
async def test_head_refusals_carry_no_body(data: bytes, status: int) -> None:
    async with running(RouteHandler, max_message_size=1000) as server:
        status_line, rest = await answer(server.port, data)
        assert status_line.startswith(f"HTTP/1.1 {status} ")
        assert rest == b""
        # the same refusal to POST has its body: only HEAD drops it
        post = data.replace(b"HEAD ", b"POST ", 1)
        status_line, rest = await answer(server.port, post)
        assert status_line.startswith(f"HTTP/1.1 {status} ") and rest
