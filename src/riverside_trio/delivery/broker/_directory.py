"""The cluster's directory in Redis: live nodes, their connections, and unique names.

Keys (``P`` is ``broker_prefix``, every one with a TTL of ``broker_ttl`` that its node
refreshes every third of it, so a node killed with SIGKILL vanishes within ``broker_ttl``)::

    P:nodes                 sorted set: node id -> last refresh (ms); old ones are pruned
    P:node:<id>:info        CBOR {host, pid, started_at, last_seen, connections}
    P:node:<id>:conns       hash: connection id -> CBOR {user, session, channels, connected_at}
    P:name:<name>           "<node id>/<connection id>" of the holder

A name is claimed with a Lua script (SET NX, or refresh when it is ours already) and freed
with one that deletes it only if it is ours. Every refresh re-claims this node's names, so
a Redis that restarted empty gets them back; a name another connection took meanwhile is
lost (:class:`~riverside_trio.cluster.NameLost`). No script is retried on failure.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

import cbor2
import structlog
import trio

from ...cluster import ClusterView, ConnectionInfo, NameClaim, NameLost, NodeInfo
from ...errors import BrokerError, NameInUseError

if TYPE_CHECKING:
    from ..registry import Member, Registry
    from ._url import BrokerURL

__all__ = ["Directory"]

log = structlog.get_logger("riverside_trio.broker")

FLUSH_DELAY = 0.05  # seconds: connection changes are written in batches at most this often

# KEYS[1] name key; ARGV[1] holder, ARGV[2] ttl (ms). 1: held by ARGV[1] now; 0: by another.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] name key; ARGV[1] holder. Deletes the name only if ARGV[1] holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _Node(Protocol):
    """What the directory needs of its broker (a protocol: no import cycle)."""

    url: BrokerURL
    registry: Registry
    node_id: str
    prefix: str
    connected: bool


class Directory:
    """This node's entries in Redis, and the reader of everyone's."""

    def __init__(self, broker: _Node, ttl: float) -> None:
        self.broker = broker
        self.registry = broker.registry
        self.ttl = ttl
        self.ttl_ms = int(ttl * 1000)
        self.interval = ttl / 3
        prefix, node = broker.prefix, broker.node_id
        self.prefix = prefix
        self.nodes_key = f"{prefix}:nodes".encode()
        self.info_key = _info_key(prefix, node)
        self.conns_key = _conns_key(prefix, node)
        self.started_at = time.time()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.client: Any = None
        self._claim: Any = None
        self._release: Any = None
        self._dirty: dict[str, Member] = {}  # connection id -> connection (gone: HDEL)
        self.names: dict[str, tuple[str, Member]] = {}  # name -> (holder, connection)
        self._claims: list[tuple[str, str, NameClaim]] = []
        self._releases: list[tuple[str, str]] = []
        self._wake = trio.Event()
        self.cluster_nodes = 0
        self.cluster_connections = 0
        self._refreshed_at = -float("inf")  # trio time the node's entry was last written

    # ------------------------------------------------------------------ from the node

    def changed(self, member: Member) -> None:
        """``member`` connected, left, or joined or left a channel: rewrite its entry."""
        self._dirty[member.id] = member
        self._wake.set()

    def claim_name(self, member: Member, name: str) -> NameClaim:
        """Claim ``name`` for ``member`` (who holds it on this node) in the whole cluster."""
        claim = NameClaim(name)
        holder = self.holder(member)
        self.names[name] = (holder, member)
        self._claims.append((name, holder, claim))
        self._wake.set()
        return claim

    def release_name(self, name: str) -> None:
        """``name``'s holder here freed it: free it in Redis (if it is still ours there)."""
        entry = self.names.pop(name, None)
        if entry is not None:
            self._releases.append((name, entry[0]))
            self._wake.set()

    def holder(self, member: Member) -> str:
        return f"{self.broker.node_id}/{member.id}"

    # ------------------------------------------------------------------ the session

    async def start(self, client: Any) -> None:
        """A new session: write every entry of this node and re-claim its names."""
        self.client = client
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        for conn in self.registry.connections:
            self._dirty[conn.id] = conn
        await self._refresh()
        await self._flush()

    async def run(self, client: Any) -> None:
        """Refresh every ``ttl / 3``; write changes as they come (batched). Raises when Redis
        fails (the broker's session restarts)."""
        next_refresh = trio.current_time() + self.interval
        while True:
            with trio.move_on_at(next_refresh):
                await self._wake.wait()
                await trio.sleep(FLUSH_DELAY)  # let a burst of changes gather
            self._wake = trio.Event()
            if trio.current_time() >= next_refresh:
                await self._refresh()
                next_refresh = trio.current_time() + self.interval
            await self._flush()

    async def _flush(self) -> None:
        claims, self._claims = self._claims, []
        releases, self._releases = self._releases, []
        for name, holder, claim in claims:
            if self.names.get(name, ("",))[0] != holder:
                claim._settle()  # released before Redis was asked
                continue
            if await self._claim(keys=[self._name_key(name)], args=[holder, self._name_ttl()]) == 1:
                claim._settle()
            else:
                self._lost(name, holder)
                claim._settle(NameInUseError(name))
        for name, holder in releases:
            await self._release(keys=[self._name_key(name)], args=[holder])
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            now, mono = time.time(), trio.current_time()
            present = self.registry.connections
            put: dict[str, bytes] = {}
            gone = []
            for conn_id, conn in dirty.items():
                if conn in present:
                    put[conn_id] = _entry(conn, now, mono)
                else:
                    gone.append(conn_id)
            async with self.client.pipeline(transaction=False) as pipe:
                if put:
                    pipe.hset(self.conns_key, put)
                if gone:
                    pipe.hdel(self.conns_key, gone)
                pipe.pexpire(self.conns_key, self.ttl_ms)

    async def _refresh(self) -> None:
        """Say this node lives; re-claim its names; count the cluster."""
        now = time.time()
        count = len(self.registry)
        info = cbor2.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "started_at": self.started_at,
                "last_seen": now,
                "connections": count,
            }
        )
        # Names first, then the node's own entry: each name's TTL then ends no later than
        # the node's, so a name never outlives, in Redis, the node that held it.
        for name, (holder, _member) in list(self.names.items()):
            if await self._claim(keys=[self._name_key(name)], args=[holder, self.ttl_ms]) != 1:
                self._lost(name, holder)
        client = self.client
        self._refreshed_at = trio.current_time()
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self.info_key, info, px=self.ttl_ms)
            pipe.zadd(self.nodes_key, {self.broker.node_id: int(now * 1000)})
            pipe.zremrangebyscore(self.nodes_key, "-inf", int((now - self.ttl) * 1000))
            alive = pipe.pexpire(self.conns_key, self.ttl_ms)
        if count and not await alive:  # Redis lost our entries (restarted empty)
            for conn in self.registry.connections:
                self._dirty[conn.id] = conn
        nodes = await self._nodes()
        self.cluster_nodes = len(nodes)
        self.cluster_connections = sum(n.connections for n in nodes)

    def _name_ttl(self) -> int:
        """The TTL (ms) of a name claimed between refreshes: it ends a little before the
        node's own entry does, so a node killed now frees the name no later than it vanishes.
        """
        left = self.ttl_ms - int((trio.current_time() - self._refreshed_at) * 1000) - 100
        return max(100, min(self.ttl_ms, left))

    def _lost(self, name: str, holder: str) -> None:
        """Another connection holds ``name`` in Redis: release it here, tell the holder."""
        entry = self.names.get(name)
        if entry is None or entry[0] != holder:
            return
        del self.names[name]
        member = entry[1]
        self.registry.unregister_name(member, name)
        member._post_info(NameLost(name))
        log.warning("name_lost", name=name, connection=member.id)

    def _name_key(self, name: str) -> bytes:
        return f"{self.prefix}:name:{name}".encode("utf-8", "surrogatepass")

    async def leave(self) -> None:
        """A graceful shutdown: remove this node's entries and free its names now."""
        if self.client is None or not self.broker.connected:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete([self.info_key])
            pipe.delete([self.conns_key])
            pipe.zrem(self.nodes_key, [self.broker.node_id])
        releases = self._releases + [(name, entry[0]) for name, entry in self.names.items()]
        self._releases = []
        self.names.clear()
        for name, holder in releases:
            await self._release(keys=[self._name_key(name)], args=[holder])

    # ------------------------------------------------------------------ reading

    async def _nodes(self) -> list[NodeInfo]:
        client = self.client
        ids = await client.zrange(self.nodes_key, 0, -1)  # old ones: pruned, or expired below
        nodes = []
        for raw in ids:
            node_id = raw.decode()
            data = await client.get(_info_key(self.prefix, node_id))
            if data is None:
                continue  # expired: the node is gone
            info = cbor2.loads(data)
            nodes.append(
                NodeInfo(
                    node_id,
                    str(info["host"]),
                    int(info["pid"]),
                    float(info["started_at"]),
                    float(info["last_seen"]),
                    int(info["connections"]),
                )
            )
        return sorted(nodes, key=lambda n: n.node_id)

    async def view(self) -> ClusterView:
        """Every live node and its connections, as Redis has them.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        if self.client is None or not self.broker.connected:
            raise BrokerError(f"the broker is not connected to {self.broker.url}")
        try:
            nodes = await self._nodes()
            conns: list[ConnectionInfo] = []
            for node in nodes:
                entries = await self.client.hgetall(_conns_key(self.prefix, node.node_id))
                for conn_id, data in sorted(entries.items()):
                    e = cbor2.loads(data)
                    conns.append(
                        ConnectionInfo(
                            conn_id.decode(),
                            str(e["user"]),
                            str(e["session"]),
                            frozenset(e["channels"]),
                            node.node_id,
                            float(e["connected_at"]),
                            node.last_seen,
                        )
                    )
        except (OSError, TimeoutError, cbor2.CBORDecodeError) as exc:
            raise BrokerError(f"cannot read the cluster from {self.broker.url}: {exc}") from None
        except Exception as exc:  # coredis's own errors (ConnectionError, ResponseError...)
            if type(exc).__module__.startswith("coredis"):
                raise BrokerError(
                    f"cannot read the cluster from {self.broker.url}: {exc}"
                ) from None
            raise
        return ClusterView(tuple(nodes), tuple(conns))


def _info_key(prefix: str, node_id: str) -> bytes:
    return f"{prefix}:node:{node_id}:info".encode()


def _conns_key(prefix: str, node_id: str) -> bytes:
    return f"{prefix}:node:{node_id}:conns".encode()


def _entry(conn: Member, now: float, mono: float) -> bytes:
    opened = getattr(conn, "_opened_at", mono)
    return cbor2.dumps(
        {
            "user": conn.user_id,
            "session": conn.session_id,
            "channels": sorted(conn._channels or ()),
            "connected_at": now - (mono - opened),
        }
    )
