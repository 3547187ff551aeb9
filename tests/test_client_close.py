"""The Trio client's block always ends, even when the server never answers its close."""

from __future__ import annotations

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from riverside_trio.client import open_client


async def _deaf_server(stream: trio.abc.Stream, accepted: trio.Event) -> None:
    """Accept the upgrade, then read everything and answer nothing (no close frame)."""
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
                accepted.set()


async def test_a_cancelled_block_ends_when_the_server_never_answers_the_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    accepted = trio.Event()

    async def factory() -> trio.abc.Stream:
        return client_end

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_deaf_server, server_end, accepted)
        with trio.CancelScope() as scope:
            async with open_client("ws://deaf/ws", stream_factory=factory, reconnect=False):
                await accepted.wait()
                scope.cancel()
                await trio.sleep_forever()
        # the block ended (a bounded wait for the close reply), and nothing is left running
        # but the deaf server
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()
