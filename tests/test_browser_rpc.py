"""The browser client (``/riverside.js``) in headless Chromium against a real server: a
page that makes requests, answers the server's, gets a session, is disconnected by the
server, reconnects and restores it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from riverside_trio import (
    Connection,
    HTTPRequest,
    HTTPResponse,
    RequestError,
    RPCHandler,
    request,
    signal,
)

from ._helpers import NO_TIMERS, RawClient, running
from .test_browser import CHROMIUM, PAGE_TIMEOUT, TEST_TIMEOUT, find_chromium, open_browser

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install chromium); with CI set this fails",
)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>running</title></head>
<body><pre id="result"></pre>
<script type="module">
import { RiversideClient, RequestError } from "/riverside.js";
const out = { sessions: [] };
window.__result = (async () => {
  try {
    const client = new RiversideClient(`ws://${location.host}/ws`,
      { backoffMin: 20, backoffMax: 100, requestTimeout: 10000 });
    client.onRequest("double", async (n) => n * 2);
    client.onRequest("refuse", async () => { throw new RequestError("no_way", "not me"); });
    client.onSignal("notice", (data) => { out.notice = data; });
    client.onSession((s) => out.sessions.push(s && s.key));
    client.onMessage((m) => { out.plain = m; });
    await client.connect();
    out.sum = await client.request("add", [2, 3]);
    try { await client.request("nope"); } catch (e) { out.error = [e.code, e.detail]; }
    try { await client.request("no_such_name"); } catch (e) { out.unknown = e.code; }
    try { await client.request("slow", null, { timeout: 50 }); } catch (e) { out.timeout = e.code; }
    out.asked = await client.request("ask_me", 21);
    out.refused = await client.request("ask_refuse");
    client.send({ plain: true });
    out.key = await client.request("login", "browser-user");
    out.info = client.session.info;
    const reopened = new Promise((resolve) => {
      client.on("open", (n) => { if (n === 2) resolve(); });
    });
    client.signal("kick_me");
    await reopened;
    out.connects = client.connects;
    out.restored_key = client.session && client.session.key;
    out.whoami = await client.request("whoami");
    await client.closeSession();
    out.after_close = client.session;
    client.close();
  } catch (e) {
    out.exception = String(e) + " " + (e.stack || "");
  }
  document.getElementById("result").textContent = JSON.stringify(out);
  document.title = "done";
})();
</script></body></html>
"""


class BrowserApp(RPCHandler):
    def __init__(self) -> None:
        self.kicked: list[str] = []
        self.release = trio.Event()

    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        if req.path == "/":
            return HTTPResponse(body=PAGE, content_type="text/html; charset=utf-8")
        return None

    async def init(self, conn: Connection) -> None:
        conn.signal("notice", {"hello": conn.user_id[:4] != ""})

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        conn.send({"echo": msg})

    @request("add")
    async def add(self, payload: Any, conn: Connection) -> Any:
        return payload[0] + payload[1]

    @request("nope")
    async def nope(self, payload: Any, conn: Connection) -> Any:
        raise RequestError("not_found", "no such thing")

    @request("slow")
    async def slow(self, payload: Any, conn: Connection) -> Any:
        await self.release.wait()
        return "late"

    @request("ask_me")
    async def ask_me(self, payload: Any, conn: Connection) -> Any:
        self.release.set()  # the slow one may finish now (its reply is dropped by the page)
        return await conn.request("double", payload, timeout=10)

    @request("ask_refuse")
    async def ask_refuse(self, payload: Any, conn: Connection) -> Any:
        try:
            await conn.request("refuse", None, timeout=10)
        except RequestError as exc:
            return [exc.code, exc.message]
        return None

    @request("login")
    async def login(self, payload: Any, conn: Connection) -> Any:
        return (await conn.create_session({"user": payload})).key

    @request("whoami")
    async def whoami(self, payload: Any, conn: Connection) -> Any:
        return conn.session.info if conn.session is not None else None

    @signal("kick_me")
    async def kick_me(self, payload: Any, conn: Connection) -> None:
        self.kicked.append(conn.session.key if conn.session else "")
        conn.close(1012, "kicked")


async def test_riverside_js_is_served_by_every_server() -> None:
    async with running(BrowserApp(), **NO_TIMERS) as server:
        client = await RawClient.connect(server)
        await client.send(b"GET /riverside.js HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await client.read_head()
        assert status == 200
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert b"export class RiversideClient" in body
        await client.stream.aclose()


async def test_the_browser_client_requests_gets_a_session_reconnects_and_restores_it(
    tmp_path: Path,
) -> None:
    chromium = find_chromium()
    app = BrowserApp()
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            running(app, request_concurrency=4, **NO_TIMERS) as server,
            open_browser(chromium, tmp_path / "profile") as browser,
        ):
            try:
                with trio.fail_after(PAGE_TIMEOUT):
                    result = await browser.run_page(f"http://127.0.0.1:{server.port}/")
            except trio.TooSlowError:
                raise AssertionError(browser.diagnostics()) from None
    assert "exception" not in result, f"{result}\n{browser.diagnostics()}"
    key = result["key"]
    assert len(key) == 64
    assert result["sum"] == 5
    assert result["error"] == ["not_found", "no such thing"]
    assert result["unknown"] == "unknown_name"
    assert result["timeout"] == "timeout"
    assert result["asked"] == 42
    assert result["refused"] == ["no_way", "not me"]
    assert result["notice"] == {"hello": True}
    assert result["plain"] == {"echo": {"plain": True}}
    assert result["info"] == {"user": "browser-user"}
    assert app.kicked == [key]  # the server disconnected the session's connection
    assert result["connects"] == 2
    assert result["restored_key"] == key
    assert result["whoami"] == {"user": "browser-user"}
    assert result["after_close"] is None
    assert result["sessions"] == [key, key, None]
    assert json.dumps(result)  # a plain JSON summary
