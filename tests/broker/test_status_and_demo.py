"""Two nodes and a real Redis: the status page lists the cluster's nodes (its JSON, and the
page in Chromium), and the demo's ``who`` sees the users of a room on every node."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from riverside_trio import open_client
from riverside_trio._demo import DemoHandler

from .._helpers import ws_open
from .._redis import RedisServer
from .._tabs import Tab
from ..test_browser import CHROMIUM, find_chromium, open_browser
from ..test_status import get
from ._nodes import nodes

pytestmark = pytest.mark.redis

TOKEN = "cluster-status-token"


async def _status(port: int) -> Any:
    status, _, body = await get(port, "/status.json", f"Authorization: Bearer {TOKEN}")
    assert status == 200
    return json.loads(body)


async def test_status_and_who_see_the_whole_cluster(redis: RedisServer, tmp_path: Path) -> None:
    async with (
        nodes(redis.url, handler=DemoHandler, status_token=TOKEN) as (a, b),
        open_client(a.url + "?user=alice") as alice,
        open_client(b.url + "?user=bob") as bob,
    ):
        assert await alice.request("join", "lobby", timeout=10) == ["alice"]
        await bob.request("join", "lobby", timeout=10)
        # the cluster view is Redis's: both nodes write their entries as they change
        with trio.fail_after(30):
            while await alice.request("who", "lobby", timeout=10) != ["alice", "bob"]:
                await trio.sleep(0.02)
        assert await bob.request("who", "lobby", timeout=10) == ["alice", "bob"]

        with trio.fail_after(30):
            while (data := await _status(a.port))["cluster"]["connections"] != 2:
                await trio.sleep(0.02)
        cluster = data["cluster"]
        assert cluster["error"] is None
        assert {n["node_id"] for n in cluster["nodes"]} == {a.node_id, b.node_id}
        assert all(n["pid"] == os.getpid() for n in cluster["nodes"])  # (counts: at refreshes)
        assert cluster["users"] == 2
        assert data["connections"] == 1  # this node's own
        assert data["node_id"] == a.node_id

        if CHROMIUM is None and not os.environ.get("CI"):
            return  # the page in a browser: below, where Chromium is installed
        async with open_browser(find_chromium(), tmp_path / "profile") as browser:
            url = f"http://127.0.0.1:{b.port}/status?token={TOKEN}&every=100"
            page = await Tab.open(browser, url, name="status")
            await page.wait_for(
                "document.getElementById('cluster_nodes').innerText === '2'"
                " && document.getElementById('cluster_connections').innerText === '2'"
                " && document.querySelectorAll('#nodes tr').length === 2"
            )
            rows = await page.text("#nodes")
            assert a.node_id in rows and f"{b.node_id} (this one)" in rows
            async with ws_open(a.url + "?user=carol"):
                await page.wait_for(
                    "document.getElementById('cluster_connections').innerText === '3'"
                )
