"""wss:// over real sockets: trio-websocket, the websockets library, raw TLS clients,
client certificates, and settings that name what is wrong with a certificate or key.

The certificates are made by the tests (``tests/_tls.py``, with ``cryptography``). Headless
Chromium over wss:// is in ``tests/test_browser.py``, next to its ws:// runs.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from websockets.exceptions import ConnectionClosedError
from websockets.trio.client import connect as websockets_connect

from riverside_trio import (
    Accept,
    AuthRequest,
    Config,
    ConfigError,
    Connection,
    Handler,
    RawTextCodec,
    TerminateReason,
    make_ssl_context,
    open_client,
)
from riverside_trio.cli import main

from ._helpers import NO_TIMERS, RawClient, client_frame, running, ws_open
from ._tls import Certs

OP_TEXT = 0x1


class Echo(Handler):
    """Echoes text; ``close <code>`` closes with that code; records what it saw."""

    codec = RawTextCodec()

    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []
        self.reasons: list[TerminateReason] = []
        self.terminated = trio.Event()

    async def authenticate(self, req: AuthRequest) -> Accept:
        self.requests.append(req)
        return Accept(user_id=req.query.get("user", "anon"))

    async def handle_message(self, msg: str, conn: Connection) -> None:
        if msg.startswith("close "):
            conn.close(int(msg.split()[1]), "asked to")
        elif msg.startswith("big "):
            conn.send("x" * int(msg.split()[1]))
        else:
            conn.send(msg)

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append(reason)
        self.terminated.set()


# ---------------------------------------------------------------- clients


async def test_trio_websocket_talks_over_wss(tls_certs: Certs) -> None:
    handler = Echo()
    ctx = tls_certs.client_context()
    with trio.fail_after(20):
        async with running(handler, ssl_context=tls_certs.server_context(), **NO_TIMERS) as server:
            assert server.url == f"wss://127.0.0.1:{server.port}/ws"
            async with ws_open(server.url + "?user=tw", ssl_context=ctx) as ws:
                for i in range(20):
                    await ws.send_message(f"hello {i} ✓")
                    assert await ws.get_message() == f"hello {i} ✓"
                # A message bigger than a TLS record (16 KiB) and than one read.
                await ws.send_message("big 300000")
                assert await ws.get_message() == "x" * 300_000
                await ws.send_message("close 4001")
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 4001
            await handler.terminated.wait()
            # What was queued or pending (ciphertext) was charged to the memory budget, and
            # everything was given back.
            assert server._core.budget.used == 0
    assert handler.reasons == [TerminateReason("closed", 4001, "asked to")]
    assert handler.requests[0].query == {"user": "tw"}


async def test_our_trio_client_closes_wss_cleanly_every_time(tls_certs: Certs) -> None:
    # The client's close used to race trio-websocket's reader, which closes the TLS stream
    # when the server's TCP close arrives: a second SSLStream.aclose() running while the
    # first sat in the socket's closing checkpoint sent close_notify on a closed socket and
    # the client raised ClosedResourceError out of its nursery (about one close in five;
    # Trio's scheduler shuffles the order, so 30 rounds catch it).
    handler = Echo()
    ctx = tls_certs.client_context()
    with trio.fail_after(60):
        async with running(handler, ssl_context=tls_certs.server_context(), **NO_TIMERS) as server:
            for i in range(30):
                async with open_client(server.url, codec=RawTextCodec(), ssl_context=ctx) as c:
                    await c.send(f"hi {i}")
                    assert await c.receive() == f"hi {i}"
    assert len(handler.reasons) == 30
    assert {reason.kind for reason in handler.reasons} == {"remote"}


async def test_the_websockets_library_talks_over_wss(tls_certs: Certs) -> None:
    handler = Echo()
    ctx = tls_certs.client_context()
    with trio.fail_after(20):
        async with running(handler, ssl_context=tls_certs.server_context(), **NO_TIMERS) as server:
            async with websockets_connect(server.url + "?user=ws", ssl=ctx) as ws:
                for i in range(20):
                    await ws.send(f"héllo {i}")
                    assert await ws.recv() == f"héllo {i}"
                await ws.send("big 70000")
                assert await ws.recv() == "x" * 70_000
                await ws.aclose(4002, "client says bye")
                assert ws.close_code == 4002  # the server echoed it
            await handler.terminated.wait()
    assert handler.reasons == [TerminateReason("remote", 4002, "client says bye")]


async def test_a_server_initiated_close_reaches_the_websockets_library(tls_certs: Certs) -> None:
    """The close frame, then close_notify: the client sees a clean close with the reason."""
    handler = Echo()
    ctx = tls_certs.client_context()
    with trio.fail_after(20):
        async with running(handler, ssl_context=tls_certs.server_context(), **NO_TIMERS) as server:
            async with websockets_connect(server.url, ssl=ctx) as ws:
                await ws.send("close 4003")
                with pytest.raises(ConnectionClosedError) as closed:  # not 1000: "Error"
                    await ws.recv()
                # The closing handshake completed: ours received, the echo sent.
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4003, "asked to")
                assert closed.value.sent is not None and closed.value.sent.code == 4003
            await handler.terminated.wait()
    assert handler.reasons == [TerminateReason("closed", 4003, "asked to")]


async def _clean_eof(client: RawClient) -> bytes:
    """Read to the end: what arrived. A TLS end without close_notify (a truncation, which
    trio.SSLStream reports as BrokenResourceError) fails the test."""
    got = bytes(client.buf)
    while chunk := await client.stream.receive_some(65536):
        got += chunk
    return got


@pytest.mark.parametrize("who", ["server", "client", "protocol-error", "http"])
async def test_every_close_ends_tls_with_close_notify(tls_certs: Certs, who: str) -> None:
    """The close frame (or HTTP response), then close_notify: never a truncated stream."""
    handler = Echo()
    with trio.fail_after(20):
        async with running(handler, ssl_context=tls_certs.server_context(), **NO_TIMERS) as server:
            client = await RawClient.connect(server, tls_certs.client_context())
            try:
                if who == "http":
                    await client.send(
                        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                    )
                    assert (await _clean_eof(client)).endswith(b"\r\n\r\nOK")
                    return
                assert (await client.upgrade())[0] == 101
                if who == "server":
                    await client.send(client_frame(OP_TEXT, b"close 4005"))
                    assert await client.read_close() == (4005, "asked to")
                    await client.send(client_frame(0x8, b"\x0f\xa5"))  # 4005, echoed
                elif who == "client":
                    await client.send(client_frame(0x8, b"\x03\xe8"))  # 1000
                    assert await client.read_close() == (1000, "")
                else:
                    await client.send(client_frame(OP_TEXT, b"x", mask=False))
                    assert (await client.read_close())[0] == 1002
                assert await _clean_eof(client) == b""
            finally:
                await trio.aclose_forcefully(client.stream)
            await handler.terminated.wait()
    assert len(handler.reasons) == 1


async def test_plain_http_and_a_protocol_error_over_tls(tls_certs: Certs) -> None:
    """/health answers over TLS; a protocol violation gets its close frame before TCP ends."""
    handler = Echo()
    client_ctx = tls_certs.client_context()
    with trio.fail_after(20):
        async with running(handler, ssl_context=tls_certs.server_context(), **NO_TIMERS) as server:
            client = await RawClient.connect(server, client_ctx)
            try:
                await client.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert (await client.read_head())[0::2] == (200, b"OK")
                assert await client.at_eof()
            finally:
                await client.aclose()

            client = await RawClient.connect(server, client_ctx)
            try:
                status, _, _ = await client.upgrade()
                assert status == 101
                await client.send(client_frame(OP_TEXT, b"unmasked", mask=False))
                code, reason = await client.read_close()
                assert code == 1002
                assert reason.startswith("protocol_error: ")
                assert await client.at_eof()
            finally:
                await client.aclose()
            await handler.terminated.wait()
    assert [r.kind for r in handler.reasons] == ["protocol_error"]


async def test_a_plain_tcp_client_on_a_tls_port_is_dropped_and_others_served(
    tls_certs: Certs,
) -> None:
    handler = Echo()
    with trio.fail_after(20):
        async with running(handler, ssl_context=tls_certs.server_context(), **NO_TIMERS) as server:
            plain = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with plain:
                await plain.send_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                got = b""
                with pytest.raises(trio.BrokenResourceError):  # a reset after the alert
                    while chunk := await plain.receive_some(4096):
                        got += chunk
                    raise trio.BrokenResourceError  # EOF counts as dropped too
                assert b"HTTP/1.1" not in got
            async with ws_open(server.url, ssl_context=tls_certs.client_context()) as ws:
                await ws.send_message("still here")
                assert await ws.get_message() == "still here"
    assert handler.requests and all(r.query == {} for r in handler.requests)


# ---------------------------------------------------------------- client certificates


async def _try_upgrade(server: Any, ctx: ssl.SSLContext) -> int | None:
    """The upgrade's status, or None if TLS refused the client (at or after the handshake:
    in TLS 1.3 the server checks the client's certificate after the client's handshake)."""
    try:
        client = await RawClient.connect(server, ctx)
    except (trio.BrokenResourceError, ssl.SSLError, OSError):
        return None
    try:
        status, _, _ = await client.upgrade()
    except (EOFError, trio.BrokenResourceError, ssl.SSLError, OSError):
        return None
    finally:
        await trio.aclose_forcefully(client.stream)
    return status


@pytest.mark.parametrize("presented", [None, "stranger"], ids=["no-cert", "wrong-cert"])
async def test_client_certificates_are_required_with_tls_ca_file(
    tls_certs: Certs, presented: str | None
) -> None:
    handler = Echo()
    server_ctx = tls_certs.server_context(client_certs=True)
    with trio.fail_after(20):
        async with running(handler, ssl_context=server_ctx, **NO_TIMERS) as server:
            refused = await _try_upgrade(server, tls_certs.client_context(cert=presented))
            assert refused is None
            assert handler.requests == []  # authenticate never ran
            accepted = await _try_upgrade(server, tls_certs.client_context(cert="good"))
            assert accepted == 101
            # And a whole conversation with the good certificate.
            ctx = tls_certs.client_context(cert="good")
            async with ws_open(server.url, ssl_context=ctx) as ws:
                await ws.send_message("with a certificate")
                assert await ws.get_message() == "with a certificate"


# ---------------------------------------------------------------- settings


def _files(tls_certs: Certs, tmp_path: Path) -> dict[str, str]:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    return {
        "cert": str(tls_certs.cert),
        "key": str(tls_certs.key),
        "other_key": str(tls_certs.client_key),
        "junk": str(junk),
        "missing": str(tmp_path / "missing.pem"),
    }


BAD_SETTINGS = [
    # (tls_certfile, tls_keyfile, tls_ca_file) -> the setting named, a phrase of the message
    (("missing", "key", None), "tls_certfile", "cannot read"),
    (("junk", "key", None), "tls_certfile", "no PEM certificate"),
    (("cert", "missing", None), "tls_keyfile", "cannot read"),
    (("cert", "junk", None), "tls_keyfile", "no PEM private key"),
    (("cert", None, None), "tls_certfile", "no PEM private key"),
    (("cert", "other_key", None), "tls_keyfile", "does not match"),
    (("cert", "key", "missing"), "tls_ca_file", "cannot read"),
    (("cert", "key", "junk"), "tls_ca_file", "no PEM certificate"),
]


@pytest.mark.parametrize(("files", "setting", "phrase"), BAD_SETTINGS)
def test_a_bad_certificate_key_or_ca_file_names_the_setting(
    tls_certs: Certs,
    tmp_path: Path,
    files: tuple[str, str | None, str | None],
    setting: str,
    phrase: str,
) -> None:
    paths = _files(tls_certs, tmp_path)
    cert, key, ca = (paths[f] if f else None for f in files)
    with pytest.raises(ConfigError) as caught:
        make_ssl_context(Config(tls_certfile=cert, tls_keyfile=key, tls_ca_file=ca))
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"{setting}: ")
    assert phrase in str(caught.value)


def test_the_cli_refuses_a_bad_key_with_one_line_and_exit_2(
    tls_certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _files(tls_certs, tmp_path)
    argv = ["serve", "--port", "0", "--tls-certfile", paths["cert"], "--tls-keyfile"]
    assert main([*argv, paths["other_key"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("riverside-trio: error: tls_keyfile: the key in ")
    assert "does not match the certificate" in err


def test_the_cli_serves_wss_with_a_good_certificate(tls_certs: Certs, tmp_path: Path) -> None:
    """A real process: ``riverside-trio serve --tls-certfile --tls-keyfile`` speaks wss://."""
    command = [sys.executable, "-m", "riverside_trio", "serve", "--port", "0"]
    command += ["--tls-certfile", str(tls_certs.cert), "--tls-keyfile", str(tls_certs.key)]
    command += ["--log-format", "json"]
    with subprocess.Popen(
        command, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            event = json.loads(line)
            if event.get("event") == "listening":
                assert event["tls"] is True
                port = event["port"]
                break
        assert port is not None

        async def talk() -> None:
            url = f"wss://127.0.0.1:{port}/ws"
            with trio.fail_after(20):
                async with ws_open(url, ssl_context=tls_certs.client_context()) as ws:
                    assert json.loads(await ws.get_message())["type"] == "welcome"  # the demo's
                    await ws.send_message(json.dumps({"type": "echo", "text": "hi"}))
                    assert json.loads(await ws.get_message())["text"] == "hi"

        try:
            trio.run(talk)
        finally:
            proc.terminate()
            proc.stderr.read()
