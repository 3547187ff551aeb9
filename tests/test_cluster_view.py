"""Without a broker the cluster is this node: ``cluster_view`` lists its connections,
``conn.id`` is unique, and a name's claim is settled at once."""

from __future__ import annotations

import json
import os
from typing import Any

import trio

from riverside_trio import Accept, AuthRequest, Connection, Handler, NameClaim

from ._helpers import NO_TIMERS, running, ws_open


class Named(Handler):
    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query.get("user", "u"))

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        claim = conn.register_name(msg["name"])
        assert isinstance(claim, NameClaim) and claim.done
        await claim  # settled: returns at once
        conn.join_channel("room")
        conn.send({"id": conn.id})


async def test_cluster_view_without_a_broker_is_this_node() -> None:
    async with running(Named, **NO_TIMERS) as server:
        with trio.fail_after(10):
            async with ws_open(server.url + "?user=a") as a, ws_open(server.url + "?user=b") as b:
                ids = []
                for ws, name in ((a, "n1"), (b, "n2")):
                    await ws.send_message(json.dumps({"name": name}))
                    ids.append(json.loads(await ws.get_message())["id"])
                view = await server.cluster_view()
                assert [n.node_id for n in view.nodes] == [server.node_id]
                assert view.nodes[0].pid == os.getpid() and view.nodes[0].connections == 2
                assert view.connection_count == 2
                assert {(c.id, c.user_id, c.channels) for c in view.connections} == {
                    (ids[0], "a", frozenset({"room"})),
                    (ids[1], "b", frozenset({"room"})),
                }
                assert len(set(ids)) == 2 and all(i.startswith(server.node_id) for i in ids)
                assert server.metrics.broker is None
                assert b"riverside_broker" not in server.metrics.render()
