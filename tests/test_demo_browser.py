"""The demo's chat page and the status page in headless Chromium against a real server:
two tabs chat through the server (a room, presence, a direct message, the request/reply
example, a dropped connection that comes back with its session), a screenshot that is not
blank; the status page shows the counts, live, and refuses without its token."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
import trio

from riverside_trio._demo import DemoHandler

from ._helpers import NO_TIMERS, running, wait_until, ws_open
from ._png import PNGError, colours, decode
from ._tabs import Tab
from .test_browser import CHROMIUM, TEST_TIMEOUT, find_chromium, open_browser

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install chromium); with CI set this fails",
)

TOKEN = "status-s3cret"

LOG = "document.getElementById('log').innerText"
MEMBERS = "document.getElementById('members').innerText"


def connected(connects: int = 1) -> str:
    return (
        "document.body.dataset.state === 'connected'"
        f" && document.body.dataset.connects === '{connects}'"
    )


def shows(expression: str, text: str) -> str:
    """A condition: the innerText ``expression`` contains ``text``."""
    return f"{expression}.includes({json.dumps(text)})"


async def test_two_pages_chat_through_the_demo(tmp_path: Path) -> None:
    handler = DemoHandler()
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            running(handler, **NO_TIMERS) as server,
            open_browser(find_chromium(), tmp_path / "profile") as browser,
        ):
            base = f"http://127.0.0.1:{server.port}/"
            alice = await Tab.open(browser, base + "?user=alice", name="alice")
            bob = await Tab.open(browser, base + "?user=bob", name="bob")
            for tab in (alice, bob):
                await tab.wait_for(connected(), "connected")
                assert await tab.text("#me") == tab.name
                assert "Welcome, " + tab.name in await tab.text("#log")  # the greeting

            # presence: each sees both in the lobby (joined by default)
            for tab in (alice, bob):
                await tab.wait_for(shows(MEMBERS, "alice") + " && " + shows(MEMBERS, "bob"))
            await alice.wait_for(shows(LOG, "bob joined lobby"))

            # a room message
            await alice.fill("#text", "hello from alice")
            await alice.submit("#say-form")
            for tab in (alice, bob):
                await tab.wait_for(shows(LOG, "[lobby] alice: hello from alice"))

            # a direct message: the addressee and the sender see it
            await bob.fill("#dm-to", "alice")
            await bob.fill("#dm-text", "psst")
            await bob.submit("#dm-form")
            for tab in (alice, bob):
                await tab.wait_for(shows(LOG, "bob → alice (direct): psst"))

            # the request/reply example
            await alice.click("#who")
            reply = await alice.wait_for("document.getElementById('who-reply').innerText")
            assert reply.startswith('who lobby → ["alice","bob"] in '), reply

            # a second room, joined by both; then alice's connection drops
            for tab in (alice, bob):
                await tab.fill("#room-name", "kitchen")
                await tab.submit("#join-form")
                await tab.wait_for(shows("document.getElementById('rooms').innerText", "# kitchen"))
            key = await alice.wait_for("document.body.dataset.session")
            assert len(key) == 64
            await alice.click("#drop")
            await alice.wait_for(connected(2), "reconnected")
            await alice.wait_for(shows(LOG, "Session restored (connection #2)"))
            assert await alice.evaluate("document.body.dataset.session") == key
            rooms = await alice.text("#rooms")
            assert rooms.split() == ["#", "kitchen", "#", "lobby"], rooms
            await bob.wait_for(shows(LOG, "alice left kitchen"))
            await bob.wait_for(shows(LOG, "alice joined kitchen"))
            # ...and the server put alice back in the room: bob's message reaches her
            await bob.fill("#text", "welcome back")
            await bob.submit("#say-form")
            await alice.wait_for(shows(LOG, "[kitchen] bob: welcome back"))
            await bob.wait_for(shows(MEMBERS, "alice"))

            png = await alice.screenshot()
            assert server.connection_count == 2
            assert [c.user_id for c in server.connections()] == ["bob", "alice"]
    width, height, rows = decode(png)
    assert (width, height) == (900, 640)
    counts = colours(rows)
    white = counts[b"\xff\xff\xff\xff"]
    assert len(counts) > 50, f"{len(counts)} colours: a blank page?"
    assert white < 0.9 * width * height, "mostly white: a blank page?"


async def test_the_status_page_shows_the_counts_live_and_wants_its_token(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            running(DemoHandler(), status_token=TOKEN, **NO_TIMERS) as server,
            open_browser(find_chromium(), tmp_path / "profile") as browser,
            ws_open(server.url + "?user=ann") as ann,
            ws_open(server.url + "?user=ben") as ben,
        ):
            for ws in (ann, ben):
                await ws.get_message()  # the greeting
                await ws.send_message(json.dumps({"type": "join", "channel": "lobby"}))
                await ws.get_message()
            base = f"http://127.0.0.1:{server.port}/status"
            refused = await Tab.open(browser, base, name="no token")
            text = await refused.text("body")
            assert "needs its token (the status_token setting)" in text
            wrong = await Tab.open(browser, base + "?token=nope", name="wrong token")
            assert "status_token" in await wrong.text("body")

            page = await Tab.open(browser, f"{base}?token={TOKEN}&every=100", name="status")
            await page.wait_for(
                "document.getElementById('connections').innerText === '2'"
                " && document.getElementById('users').innerText === '2'"
                " && document.getElementById('channels').innerText === '1'"
                " && document.getElementById('state').innerText === 'live'"
            )
            assert await page.text("#node_id") == server.node_id
            assert await page.text("#dropped_messages") == "0"
            assert await page.text("#shed_connections") == "0"
            assert int(await page.text("#messages_in")) == 2
            assert await page.evaluate("document.getElementById('cluster').hidden") is True
            # live: a third client and more messages show up without a reload
            async with ws_open(server.url + "?user=cy") as cy:
                await cy.get_message()
                for n in range(3):
                    await cy.send_message(json.dumps({"n": n}))
                    await cy.get_message()
                await page.wait_for(
                    "document.getElementById('connections').innerText === '3'"
                    " && document.getElementById('messages_in').innerText === '5'"
                )
                rate = float(await page.text("#in_rate"))
                assert rate >= 0
    await wait_until(lambda: server.connection_count == 0)


def _png(width: int, rows: list[bytes], filters: list[int]) -> bytes:
    """Encode RGB ``rows`` with the given filter type per row (the encoder's side)."""
    bpp, out, prev = 3, bytearray(), bytes(width * 3)
    for row, kind in zip(rows, filters, strict=True):
        line = bytearray()
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            pred = [0, a, b, (a + b) >> 1, paeth][kind]
            line.append((x - pred) & 0xFF)
        out += bytes([kind]) + line
        prev = row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, len(rows), 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(out)))
        + chunk(b"IEND", b"")
    )


def test_the_png_decoder_undoes_every_filter() -> None:
    rows = [
        bytes((x * 37 + y * 91 + c * 13) % 256 for x in range(4) for c in range(3))
        for y in range(5)
    ]
    width, height, decoded = decode(_png(4, rows, [0, 1, 2, 3, 4]))
    assert (width, height) == (4, 5)
    expected = [b"".join(r[i : i + 3] + b"\xff" for i in range(0, 12, 3)) for r in rows]
    assert decoded == expected
    assert len(colours(decoded)) == len(
        {p for r in expected for p in (r[:4], r[4:8], r[8:12], r[12:])}
    )
    with pytest.raises(PNGError):
        decode(b"GIF89a")
    broken = bytearray(_png(4, rows, [0, 1, 2, 3, 4]))
    broken[40] ^= 0xFF
    with pytest.raises(PNGError):
        decode(bytes(broken))
