"""A real browser brings its JWT the only way it can: in ``Sec-WebSocket-Protocol``.

Headless Chromium (driven as in ``test_browser.py``) opens
``new WebSocket(url, [...protocols, "riverside.jwt", token])`` against a handler without
``authenticate``: a valid token opens the connection (Chromium would fail it if the 101
selected a protocol it did not offer, or none), an expired one is refused before the
upgrade, and the page reports what the browser saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from riverside_trio import Connection, Handler, HTTPRequest, HTTPResponse

from . import test_browser
from ._helpers import NO_TIMERS, running
from ._jwt import SECRET, mint
from .test_browser import PAGE_TIMEOUT, TEST_TIMEOUT, find_chromium, open_browser

pytestmark = test_browser.pytestmark  # skipped without chromium, as test_browser.py is

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>running</title></head>
<body>
<pre id="result"></pre>
<script>
"use strict";
const params = new URLSearchParams(location.search);
const protocols = JSON.parse(params.get("protocols"));
const out = {events: [], messages: []};
window.__result = new Promise((resolve) => {
  const ws = new WebSocket(`ws://${location.host}/ws`, protocols);
  ws.onopen = () => { out.events.push("open"); out.protocol = ws.protocol; };
  ws.onmessage = (ev) => { out.messages.push(JSON.parse(ev.data)); ws.close(1000, "done"); };
  ws.onerror = () => { out.events.push("error"); };
  ws.onclose = (ev) => { out.events.push("close"); out.code = ev.code; resolve(); };
}).then(() => {
  document.getElementById("result").textContent = JSON.stringify(out);
  document.title = "done";
});
</script>
</body>
</html>
"""


class TokenPage(Handler):
    """Serves the page; no authenticate of its own, so the JWT settings decide."""

    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        if req.path != "/":
            return None
        return HTTPResponse(body=PAGE, content_type="text/html; charset=utf-8")

    async def init(self, conn: Connection) -> None:
        conn.send({"user": conn.user_id, "channels": sorted(conn.channels)})


async def test_chromium_connects_with_its_token_in_the_subprotocol_list(tmp_path: Path) -> None:
    chromium = find_chromium()
    good = mint(channels=["room-1"])
    expired = mint(exp=int(time.time()) - 60)
    pages: dict[str, list[str]] = {
        "token alone": ["riverside.jwt", good],
        "after its own protocol": ["chat.v2", "riverside.jwt", good],
        "expired": ["riverside.jwt", expired],
    }
    results: dict[str, dict[str, Any]] = {}
    settings = {"jwt_secret": SECRET, "default_channels": ["global"], **NO_TIMERS}
    with trio.fail_after(TEST_TIMEOUT):
        async with running(TokenPage, **settings) as server:
            async with open_browser(chromium, tmp_path / "profile") as browser:
                for name, protocols in pages.items():
                    url = (
                        f"http://127.0.0.1:{server.port}/?protocols={quote(json.dumps(protocols))}"
                    )
                    with trio.fail_after(PAGE_TIMEOUT):
                        results[name] = await browser.run_page(url)
            refused = dict(server.metrics.auth_refused)
    for name in ("token alone", "after its own protocol"):
        got = results[name]
        assert got["events"] == ["open", "close"], (name, got)
        # the 101 selected the marker, never the token, and the browser accepted it
        assert got["protocol"] == "riverside.jwt", (name, got)
        assert got["messages"] == [{"user": "alice", "channels": ["global", "room-1"]}]
        assert got["code"] == 1000
    # refused before the upgrade: the browser sees an error and 1006, never an open
    assert results["expired"]["events"] == ["error", "close"]
    assert results["expired"]["code"] == 1006
    assert refused == {"jwt_expired": 1}
