"""A real browser against a real server: headless Chromium, driven over the DevTools protocol.

The handler serves an HTML page at ``/`` (``Handler.handle_http``) whose script opens
``ws://127.0.0.1:PORT/ws`` (same origin as the page), talks to the server and writes a JSON
summary into ``<pre id=result>``. The test reads that summary over CDP and checks the
server's side of the same conversation (what ``authenticate`` saw, what arrived, the
``TerminateReason``).

Chromium is started as a subprocess from trio with ``--remote-debugging-port=0``; the
DevTools address is read from its stderr and spoken to with trio-websocket. Every wait is
bounded by ``trio.fail_after``; in a ``finally`` the browser gets SIGTERM, then its whole
process group (a session of its own) SIGKILL, and is reaped.

Without ``chromium`` on PATH the tests skip, unless ``CI`` is set: CI installs Chromium
(``.ci/run``), so there a missing browser is a failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from riverside_trio import (
    Accept,
    AuthError,
    AuthRequest,
    Config,
    Connection,
    Handler,
    HTTPRequest,
    HTTPResponse,
    RawCodec,
    Server,
    TerminateReason,
)

from ._helpers import running
from ._tls import Certs

TOKEN = "s3cret-browser-token"
TEST_TIMEOUT = 60.0  # the bound on one whole test (a run takes under a second)
PAGE_TIMEOUT = 30.0  # the bound on one page's run, reported with the page's console

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",  # Debian's wrapper loads some, and their updater looks up hosts
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no DNS: 127.0.0.1 only
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]

# ---------------------------------------------------------------- the page

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>running</title></head>
<body>
<pre id="result"></pre>
<script>
"use strict";
const params = new URLSearchParams(location.search);
const scenario = params.get("scenario");
const token = params.get("token");
const scheme = location.protocol === "https:" ? "wss" : "ws";
const url = `${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}`;
const out = {scenario, url, origin: location.origin, events: [], messages: []};

function decode(data) {
  if (typeof data === "string") return {text: JSON.parse(data)};
  return {binary: Array.from(new Uint8Array(data))};
}

window.__result = new Promise((resolve) => {
  let ws;
  try {
    ws = scenario === "subprotocol"
      ? new WebSocket(url, ["v2.chat", "v1.chat"])
      : new WebSocket(url);
  } catch (e) {
    out.exception = String(e);
    resolve();
    return;
  }
  ws.binaryType = "arraybuffer";
  const expected = {main: 5, deflate: 4, subprotocol: 2, refused: 0}[scenario];
  ws.onopen = () => {
    out.events.push("open");
    out.protocol = ws.protocol;
    out.extensions = ws.extensions;
    if (scenario === "main") {
      ws.send(JSON.stringify({type: "echo", text: "héllo, wörld ✓"}));
      ws.send(JSON.stringify({type: "join", channel: "room-1"}));
      ws.send(new Uint8Array([0, 1, 2, 127, 128, 253, 254, 255]).buffer);
      ws.send(JSON.stringify({type: "echo", text: "last"}));
    } else if (scenario === "deflate") {
      // The same big compressible text twice (with context takeover, the second one
      // compresses to back-references into the first), then a small one.
      ws.send(JSON.stringify({type: "echo", text: "compress me ".repeat(2000)}));
      ws.send(JSON.stringify({type: "echo", text: "compress me ".repeat(2000)}));
      ws.send(JSON.stringify({type: "echo", text: "small"}));
    } else if (scenario === "subprotocol") {
      ws.send(JSON.stringify({type: "echo", text: "over " + ws.protocol}));
    }
  };
  ws.onmessage = (ev) => {
    out.messages.push(decode(ev.data));
    if (out.messages.length === expected) {
      if (scenario === "main") ws.close(4000, "bye from the browser");
      else ws.close(1000, "done");
    }
  };
  ws.onerror = () => { out.events.push("error"); };
  ws.onclose = (ev) => {
    out.events.push("close");
    out.close = {code: ev.code, reason: ev.reason, wasClean: ev.wasClean};
    resolve();
  };
}).then(() => {
  document.getElementById("result").textContent = JSON.stringify(out);
  document.title = "done";
});
</script>
</body>
</html>
"""


class BrowserHandler(Handler):
    """Serves the page, accepts the right token, echoes, and records everything."""

    codec = RawCodec()  # text frames as str (JSON decoded here), binary frames as bytes

    def __init__(self) -> None:
        self.page_requests: list[HTTPRequest] = []
        self.auth_requests: list[AuthRequest] = []
        self.texts: list[Any] = []
        self.binaries: list[bytes] = []
        self.reasons: list[TerminateReason] = []
        self.terminated = trio.Event()

    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        if req.path != "/":
            return None  # /favicon.ico and the like: 404
        self.page_requests.append(req)
        return HTTPResponse(body=PAGE, content_type="text/html; charset=utf-8")

    async def authenticate(self, req: AuthRequest) -> Accept:
        self.auth_requests.append(req)
        if req.query.get("token") != TOKEN:
            raise AuthError(403, body="forbidden\n")
        subprotocol = "v1.chat" if "v1.chat" in req.subprotocols else None
        return Accept(user_id="browser-user", subprotocol=subprotocol)

    async def init(self, conn: Connection) -> None:
        conn.send(json.dumps({"type": "welcome", "user": conn.user_id, "proto": conn.subprotocol}))

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        if isinstance(msg, bytes):
            self.binaries.append(msg)
            conn.send(msg[::-1])  # bytes: a binary frame back
            return
        data = json.loads(msg)
        self.texts.append(data)
        match data:
            case {"type": "echo", "text": str(text)}:
                conn.send(json.dumps({"type": "echo", "text": text}))
            case {"type": "join", "channel": str(channel)}:
                conn.join_channel(channel)
                conn.deliver_channel(
                    channel, json.dumps({"type": "channel", "channel": channel, "joined": True})
                )
            case _:
                conn.send(json.dumps({"type": "error"}))

    async def terminate(self, reason: TerminateReason, conn: Connection) -> None:
        self.reasons.append(reason)
        self.terminated.set()


# ---------------------------------------------------------------- Chromium over CDP


CHROMIUM = shutil.which("chromium")

# Without chromium: skip, unless CI is set; then find_chromium() fails every test.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install chromium); with CI set this fails",
)


def find_chromium() -> str:
    if CHROMIUM is None:
        pytest.fail(
            "chromium is not installed but CI is set: .ci/run must install it "
            "(apt-get install chromium)"
        )
    return CHROMIUM


class CDPError(Exception):
    pass


class CDP:
    """A minimal DevTools protocol client over one trio-websocket connection."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._next_id = 0
        self._waiting: dict[int, trio.Event] = {}
        self._replies: dict[int, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []  # every event, for diagnostics
        self._events_in, self._events_out = trio.open_memory_channel[dict[str, Any]](math.inf)

    async def reader(self) -> None:
        with self._events_in:
            while True:
                try:
                    raw = await self._ws.get_message()
                except ConnectionClosed:
                    for done in self._waiting.values():  # their calls raise CDPError
                        done.set()
                    return
                msg = json.loads(raw)
                if "id" in msg:
                    self._replies[msg["id"]] = msg
                    self._waiting.pop(msg["id"], trio.Event()).set()
                else:
                    self.log.append(msg)
                    self._events_in.send_nowait(msg)

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self._next_id += 1
        call_id = self._next_id
        done = self._waiting[call_id] = trio.Event()
        msg: dict[str, Any] = {"id": call_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        await self._ws.send_message(json.dumps(msg))
        await done.wait()
        reply = self._replies.pop(call_id, None)
        if reply is None:
            raise CDPError(f"{method}: the DevTools connection closed")
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply["result"]

    async def wait_event(self, method: str, session: str, **match: Any) -> dict[str, Any]:
        async for event in self._events_out:
            params = event.get("params", {})
            if (
                event.get("method") == method
                and event.get("sessionId") == session
                and all(params.get(k) == v for k, v in match.items())
            ):
                return params
        raise CDPError(f"the DevTools connection closed while waiting for {method}")

    def console(self) -> list[str]:
        lines = []
        for ev in self.log:
            p = ev.get("params", {})
            if ev.get("method") == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                lines.append(f"console.{p['type']}: {args}")
            elif ev.get("method") == "Runtime.exceptionThrown":
                lines.append(f"exception: {p['exceptionDetails']}")
            elif ev.get("method") == "Log.entryAdded":
                lines.append(f"log.{p['entry']['level']}: {p['entry']['text']}")
        return lines


class Browser:
    def __init__(self, proc: trio.Process, cdp: CDP, stderr: bytearray) -> None:
        self.proc = proc
        self.cdp = cdp
        self.stderr = stderr

    def diagnostics(self) -> str:
        console = "\n".join(self.cdp.console()) or "(nothing)"
        tail = self.stderr[-4000:].decode("utf-8", "replace")
        return f"page console:\n{console}\nchromium stderr (tail):\n{tail}"

    async def run_page(self, url: str) -> dict[str, Any]:
        """Open ``url`` in a new tab; return the JSON the page writes into ``#result``."""
        cdp = self.cdp
        target = await cdp.call("Target.createTarget", url="about:blank")
        attached = await cdp.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await cdp.call(f"{domain}.enable", session)
        await cdp.call("Page.setLifecycleEventsEnabled", session, enabled=True)
        nav = await cdp.call("Page.navigate", session, url=url)
        assert "errorText" not in nav, f"navigation failed: {nav}\n{self.diagnostics()}"
        await cdp.wait_event("Page.lifecycleEvent", session, loaderId=nav["loaderId"], name="load")
        # The page's script defines window.__result at parse time; it resolves once the
        # WebSocket closed and the summary is in the DOM. Awaited, not polled.
        evaluated = await cdp.call(
            "Runtime.evaluate",
            session,
            expression=(
                "window.__result.then(() =>"
                " [document.title, document.getElementById('result').textContent])"
            ),
            awaitPromise=True,
            returnByValue=True,
        )
        assert "exceptionDetails" not in evaluated, f"{evaluated}\n{self.diagnostics()}"
        title, text = evaluated["result"]["value"]
        assert title == "done"
        result: dict[str, Any] = json.loads(text)
        await cdp.call("Target.closeTarget", targetId=target["targetId"])
        return result


async def _read_devtools_url(proc: trio.Process, stderr: bytearray) -> str:
    assert proc.stderr is not None
    pattern = re.compile(rb"DevTools listening on (ws://\S+)")
    while (found := pattern.search(stderr)) is None:
        chunk = await proc.stderr.receive_some(65536)
        if not chunk:
            raise AssertionError(
                f"chromium exited before DevTools listened:\n{stderr.decode('utf-8', 'replace')}"
            )
        stderr += chunk
    return found.group(1).decode()


async def _drain(proc: trio.Process, stderr: bytearray) -> None:
    """Keep reading chromium's stderr (so it never blocks on a full pipe)."""
    assert proc.stderr is not None
    while chunk := await proc.stderr.receive_some(65536):
        stderr += chunk
        del stderr[:-65536]


async def _stop(proc: trio.Process) -> None:
    """Stop chromium: SIGTERM (it reaps its helpers), then SIGKILL its whole process group
    (it was started in a session of its own) for whatever is left, then reap it."""
    with trio.move_on_after(5):
        proc.terminate()
        await proc.wait()
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert proc.stderr is not None
    await proc.stderr.aclose()


@asynccontextmanager
async def open_browser(
    chromium: str, user_data_dir: Path, flags: tuple[str, ...] = ()
) -> AsyncIterator[Browser]:
    user_data_dir.mkdir()
    args = [chromium, *CHROMIUM_FLAGS, *flags, f"--user-data-dir={user_data_dir}", "about:blank"]
    proc = await trio.lowlevel.open_process(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    stderr = bytearray()
    try:
        with trio.fail_after(30):
            ws_url = await _read_devtools_url(proc, stderr)
        m = re.fullmatch(r"ws://127\.0\.0\.1:(\d+)(/devtools/browser/\S+)", ws_url)
        assert m is not None, f"unexpected DevTools address {ws_url!r}"
        stream = await trio.open_tcp_stream("127.0.0.1", int(m.group(1)))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, proc, stderr)
                ws = await wrap_client_stream(
                    nursery, stream, "127.0.0.1", m.group(2), max_message_size=16 * 2**20
                )
                cdp = CDP(ws)
                nursery.start_soon(cdp.reader)
                try:
                    yield Browser(proc, cdp, stderr)
                finally:
                    with trio.move_on_after(5) as cleanup:
                        cleanup.shield = True
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(15):
            await _stop(proc)


@asynccontextmanager
async def scenario(
    tmp_path: Path,
    scenario_name: str,
    token: str = TOKEN,
    *,
    tls: Certs | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Server, BrowserHandler, dict[str, Any]]]:
    """Start a server (``settings`` for its Config) and a browser, run the page's
    scenario; yield what both saw. With ``tls`` the page and the WebSocket are served over
    https:// and wss://, and Chromium trusts the server's self-signed key (by its hash)."""
    chromium = find_chromium()
    handler = BrowserHandler()
    ssl_context = tls.server_context() if tls is not None else None
    flags = (f"--ignore-certificate-errors-spki-list={tls.spki_hash()}",) if tls else ()
    scheme = "https" if tls else "http"
    with trio.fail_after(TEST_TIMEOUT):
        async with running(handler, ssl_context=ssl_context, **settings) as server:
            profile = tmp_path / "chromium-profile"
            async with open_browser(chromium, profile, flags) as browser:
                url = f"{scheme}://127.0.0.1:{server.port}/?scenario={scenario_name}&token={token}"
                try:
                    with trio.fail_after(PAGE_TIMEOUT):
                        result = await browser.run_page(url)
                except trio.TooSlowError:
                    raise AssertionError(
                        f"the page did not finish within {PAGE_TIMEOUT} s\n{browser.diagnostics()}"
                    ) from None
            if "open" in result["events"]:
                # The page is done; terminate runs just after, on the server.
                with trio.move_on_after(5):
                    await handler.terminated.wait()
                assert handler.terminated.is_set(), f"terminate never ran; the page saw {result}"
            yield server, handler, result


# ---------------------------------------------------------------- the tests


async def test_browser_talks_json_and_binary_and_closes_with_4000(tmp_path: Path) -> None:
    async with scenario(tmp_path, "main") as (server, handler, result):
        origin = f"http://127.0.0.1:{server.port}"

        # The browser's view, from the DOM.
        assert result["origin"] == origin
        assert result["url"] == f"ws://127.0.0.1:{server.port}/ws?token={TOKEN}"
        assert result["events"] == ["open", "close"], result
        assert result["messages"] == [
            {"text": {"type": "welcome", "user": "browser-user", "proto": None}},  # from init
            {"text": {"type": "echo", "text": "héllo, wörld ✓"}},
            {"text": {"type": "channel", "channel": "room-1", "joined": True}},
            {"binary": [255, 254, 253, 128, 127, 2, 1, 0]},
            {"text": {"type": "echo", "text": "last"}},
        ]
        # The server echoes the code (RFC 6455 5.5.1), not the reason.
        assert result["close"] == {"code": 4000, "reason": "", "wasClean": True}
        assert result["protocol"] == ""

        # The server's view.
        assert len(handler.page_requests) == 1
        (req,) = handler.auth_requests
        assert req.path == "/ws"
        assert req.query == {"token": TOKEN}
        assert req.origin == origin
        assert req.peer[0] == "127.0.0.1"
        assert req.subprotocols == ()
        assert handler.texts == [
            {"type": "echo", "text": "héllo, wörld ✓"},
            {"type": "join", "channel": "room-1"},
            {"type": "echo", "text": "last"},
        ]
        assert handler.binaries == [bytes([0, 1, 2, 127, 128, 253, 254, 255])]
        assert handler.reasons == [TerminateReason("remote", 4000, "bye from the browser")]


BIG = "compress me " * 2000
DEFLATE_TEXTS = [
    {"type": "echo", "text": BIG},
    {"type": "echo", "text": BIG},
    {"type": "echo", "text": "small"},
]


async def test_browser_offering_permessage_deflate_gets_no_extension(tmp_path: Path) -> None:
    async with scenario(tmp_path, "deflate") as (_server, handler, result):
        (req,) = handler.auth_requests
        offered = ",".join(req.headers.get_all("sec-websocket-extensions"))
        assert "permessage-deflate" in offered  # Chromium always offers it
        assert result["extensions"] == ""  # ...and by default the server agrees to nothing
        # Compressible messages both ways, as plain frames; a compressed one (RSV1) from
        # the browser would have been a protocol error (1002).
        assert handler.texts == DEFLATE_TEXTS
        assert [m["text"] for m in result["messages"][1:]] == DEFLATE_TEXTS
        assert result["close"] == {"code": 1000, "reason": "", "wasClean": True}
        assert handler.reasons == [TerminateReason("remote", 1000, "done")]


@pytest.mark.skipif(
    "permessage_deflate" not in Config.__dataclass_fields__,
    reason="Config.permessage_deflate does not exist (yet)",
)
async def test_browser_negotiates_permessage_deflate_when_enabled(tmp_path: Path) -> None:
    """Chromium as the RFC 7692 peer: its compressed frames inflate, ours inflate in it."""
    settings = {"permessage_deflate": True}
    async with scenario(tmp_path, "deflate", **settings) as (_server, handler, result):
        extensions = [p.strip() for p in result["extensions"].split(";")]
        assert extensions[0] == "permessage-deflate", result["extensions"]
        assert "server_no_context_takeover" in extensions
        assert handler.texts == DEFLATE_TEXTS
        assert [m["text"] for m in result["messages"][1:]] == DEFLATE_TEXTS
        assert result["close"] == {"code": 1000, "reason": "", "wasClean": True}
        assert handler.reasons == [TerminateReason("remote", 1000, "done")]


async def test_browser_subprotocol_selection(tmp_path: Path) -> None:
    async with scenario(tmp_path, "subprotocol") as (_server, handler, result):
        (req,) = handler.auth_requests
        assert req.subprotocols == ("v2.chat", "v1.chat")  # the browser's order
        assert result["protocol"] == "v1.chat"  # ws.protocol: the server's choice
        assert result["messages"] == [
            {"text": {"type": "welcome", "user": "browser-user", "proto": "v1.chat"}},
            {"text": {"type": "echo", "text": "over v1.chat"}},
        ]
        assert result["close"] == {"code": 1000, "reason": "", "wasClean": True}
        assert handler.reasons == [TerminateReason("remote", 1000, "done")]


async def test_browser_refused_upgrade_fires_error_and_close_1006(tmp_path: Path) -> None:
    async with scenario(tmp_path, "refused", token="wrong") as (server, handler, result):
        (req,) = handler.auth_requests
        assert req.query == {"token": "wrong"}
        assert req.origin == f"http://127.0.0.1:{server.port}"
        assert result["events"] == ["error", "close"], result
        assert result["close"] == {"code": 1006, "reason": "", "wasClean": False}
        assert result["messages"] == []
        assert handler.reasons == []  # no connection, so no terminate
        assert server.metrics.rejected[403] == 1
        assert server.connection_count == 0


async def test_browser_over_wss_with_a_self_signed_certificate(
    tmp_path: Path, tls_certs: Certs
) -> None:
    """https:// page, wss:// WebSocket: the same conversation as over ws://."""
    async with scenario(tmp_path, "main", tls=tls_certs) as (server, handler, result):
        assert server.url.startswith("wss://")
        assert result["url"] == f"wss://127.0.0.1:{server.port}/ws?token={TOKEN}"
        assert result["origin"] == f"https://127.0.0.1:{server.port}"
        assert result["events"] == ["open", "close"], result
        assert len(result["messages"]) == 5
        assert result["messages"][3] == {"binary": [255, 254, 253, 128, 127, 2, 1, 0]}
        assert result["close"] == {"code": 4000, "reason": "", "wasClean": True}
        assert handler.reasons == [TerminateReason("remote", 4000, "bye from the browser")]
        assert handler.auth_requests[0].origin == f"https://127.0.0.1:{server.port}"
