"""The Redis session store: sessions that restore on any node of a cluster.

Two keys per session (``P`` is ``broker_prefix``; the ``{key}`` hash tag keeps both in one
slot of a Redis Cluster, so every script below touches one slot)::

    P:session:{<key>}          hash: info (CBOR), created, last_lookup (Unix seconds)
    P:session:{<key>}:conns    hash: node id -> "<connections> <expires, Redis ms>"

Both have the TTL ``session_expiry``, set again on create, on restore and while a node
holds the session (every refresh), so a session expires ``session_expiry`` seconds after
its last connection left it. Each node writes only its own field of ``:conns``, with the
count of its connections it knows; a field expires ``broker_ttl`` after the node's last
refresh (every third of ``min(broker_ttl, session_expiry)``), so the connections of a node
that died stop counting within ``broker_ttl``. A restore is one Lua script: it checks the
session exists, sums the live fields (pruning dead ones), refuses beyond
``max_session_connections``, and writes this node's field, ``last_lookup`` and the TTLs.
A connection leaving only changes this node's count: written in the background, batched.

A session the refresh finds gone (closed on another node, or Redis restarted empty) is
closed for this node's connections too (they are told ``session_closed``). Every failure to
reach Redis raises :class:`~riverside_trio.SessionStoreError`, is counted, and is logged
once until Redis answers again. No script is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import structlog
import trio

from ..errors import CodecError, SessionStoreError
from ._envelope import SessionData
from ._sessions import full

__all__ = ["RedisSessionStore"]

log = structlog.get_logger("riverside_trio.sessions")

FLUSH_DELAY = 0.05  # seconds: connections leaving are written in batches at most this often
BATCH = 500  # sessions per pipeline of the refresh

# Redis's clock in ms, so nodes' clocks never matter.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS session, conns; ARGV info, created, node, node ttl ms, session ttl ms (0: none).
_CREATE = (
    _NOW
    + """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'info', ARGV[1], 'created', ARGV[2], 'last_lookup', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], '1 ' .. (now + tonumber(ARGV[4])))
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return 1
"""
)

# KEYS session, conns; ARGV node, this node's count with the new one, max (0: none),
# node ttl ms, session ttl ms (0: none), now (Unix seconds).
# {0}: no such session; {1}: full; {2, info, created}: restored.
_RESTORE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local total = tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local c, e = string.match(all[i + 1], '^(%d+) (%d+)$')
    if c and tonumber(e) > now then
      total = total + tonumber(c)
    else
      redis.call('HDEL', KEYS[2], all[i])
    end
  end
end
if ARGV[3] ~= '0' and total > tonumber(ARGV[3]) then return {1} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[4])))
redis.call('HSET', KEYS[1], 'last_lookup', ARGV[6])
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local v = redis.call('HMGET', KEYS[1], 'info', 'created')
return {2, v[1], v[2]}
"""
)

# KEYS session, conns; ARGV node, this node's count, node ttl ms, session ttl ms (0: none).
# 0: no such session; 1: written.
_SYNC = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == '0' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
end
if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 1
"""
)

# KEYS session, conns; ARGV node, this node's count, only if unheld ('1'/'0').
# 1: deleted; 0: kept (held elsewhere) or none.
_DELETE = (
    _NOW
    + """
if ARGV[3] == '1' then
  local total = tonumber(ARGV[2])
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if all[i] ~= ARGV[1] then
      local c, e = string.match(all[i + 1], '^(%d+) (%d+)$')
      if c and tonumber(e) > now then total = total + tonumber(c) end
    end
  end
  if total > 0 then
    if ARGV[2] == '0' then redis.call('HDEL', KEYS[2], ARGV[1]) end
    return 0
  end
end
return redis.call('DEL', KEYS[1], KEYS[2]) > 0 and 1 or 0
"""
)


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, int(seconds * 1000))


class RedisSessionStore:
    """A :class:`~riverside_trio.SessionStore` in Redis, shared by every node of a cluster:
    a session created on one node restores on any, ``max_session_connections`` counts the
    connections of every node, and closing a session closes it everywhere.

    The server makes it when ``broker_url`` is set (``session_store = "auto"`` or
    ``"redis"``); it talks to Redis over the broker's connection, under ``broker_prefix``.
    What it stores: each session's ``info`` (CBOR, never pickle: an info CBOR cannot carry
    raises :class:`~riverside_trio.CodecError`), ``created`` and ``last_lookup``, and per
    node the number of its connections holding it.

    Args:
        node_id: this node's id (``server.node_id``).
        prefix: the prefix of its Redis keys (``broker_prefix``).
        node_ttl: seconds after which the connections of a node that stopped refreshing
            (killed) stop counting (``broker_ttl``).
        url: where Redis is, for log lines (no password).
    """

    def __init__(self, node_id: str, prefix: str, node_ttl: float, url: str = "") -> None:
        self.node_id = node_id
        self.prefix = prefix
        self.node_ttl = node_ttl
        self.url = url
        self.errors: dict[str, int] = {}  # operation -> failures to reach Redis
        self.reachable = True  # False from a failure until Redis answers again
        self.closed_here = 0  # sessions found gone by a refresh, closed for this node
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._held: dict[str, list[int]] = {}  # key -> [this node's connections, ttl ms]
        self._dirty: set[str] = set()
        self._busy: dict[str, int] = {}  # key -> scripts running on it (create, restore...)
        self._syncing: set[str] = set()  # keys whose counts the refresh is writing now
        self._synced = trio.Event()  # set when that write is over
        self._wake = trio.Event()
        self._closed: Callable[[str], None] = lambda key: None
        self._ttl_ms = 0  # the last session ttl seen (the refresh interval depends on it)

    # ------------------------------------------------------------------ the protocol

    async def create(self, session: SessionData, ttl: float | None) -> None:
        try:
            info = cbor2.dumps(session.info)
        except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
            raise CodecError(f"a session's info must be CBOR-encodable: {exc}") from None
        key, ttl_ms = session.key, _ms(ttl)
        self._ttl_ms = ttl_ms
        self._held[key] = [1, ttl_ms]
        try:
            await self._run(
                "create",
                key,
                [info, repr(session.created), self.node_id, _ms(self.node_ttl), ttl_ms],
            )
        except BaseException:
            self._held.pop(key, None)
            raise

    async def restore(
        self, key: str, ttl: float | None, max_connections: int
    ) -> SessionData | None:
        ttl_ms = _ms(ttl)
        self._ttl_ms = ttl_ms
        entry = self._held.setdefault(key, [0, ttl_ms])
        entry[0] += 1  # counted before Redis is asked: restores here at once add up
        entry[1] = ttl_ms
        now = time.time()
        try:
            reply = await self._run(
                "restore",
                key,
                [self.node_id, entry[0], max_connections, _ms(self.node_ttl), ttl_ms, repr(now)],
            )
        except BaseException:
            self.release(key)
            raise
        if reply[0] != 2:  # nothing written: take back the count
            entry[0] -= 1
            if entry[0] <= 0 and key not in self._dirty:
                self._held.pop(key, None)
            if reply[0] == 1:
                raise full()
            return None
        info = cbor2.loads(reply[1]) if reply[1] is not None else None
        return SessionData(key, float(reply[2]), now, info)

    def release(self, key: str) -> None:
        entry = self._held.get(key)
        if entry is None or entry[0] <= 0:
            return
        entry[0] -= 1
        self._dirty.add(key)
        self._wake.set()

    async def delete(self, key: str, *, unless_held: bool = False) -> bool:
        entry = self._held.get(key)
        count = entry[0] if entry is not None else 0
        deleted = await self._run("delete", key, [self.node_id, count, "1" if unless_held else "0"])
        if deleted == 1:
            self._held.pop(key, None)
            self._dirty.discard(key)
        return bool(deleted == 1)

    def watch(self, closed: Callable[[str], None]) -> None:
        self._closed = closed

    # ------------------------------------------------------------------ Redis

    def keys(self, key: str) -> tuple[bytes, bytes]:
        """The Redis keys of session ``key``: its data and its connection counts."""
        data = f"{self.prefix}:session:{{{key}}}".encode()
        return data, data + b":conns"

    async def _run(self, op: str, key: str, args: list[Any]) -> Any:
        """Run the script ``op`` on session ``key``; meanwhile the refresh leaves it alone
        (the script writes this node's count itself)."""
        client = self._client
        if client is None:
            self._failed(op, "the broker is not connected")
            raise SessionStoreError(f"the session store at {self.url} is not connected")
        while key in self._syncing:  # one write of this node's count at a time
            await self._synced.wait()
        busy = self._busy
        busy[key] = busy.get(key, 0) + 1
        try:
            result = await self._scripts[op](keys=list(self.keys(key)), args=args)
        except Exception as exc:
            if not _redis_failure(exc):  # not known to mean "Redis went away": show it
                log.exception("session_store_call_failed", op=op)
            self._failed(op, f"{type(exc).__name__}: {exc}")
            raise SessionStoreError(f"the session store at {self.url} failed: {exc}") from None
        finally:
            if busy[key] == 1:
                del busy[key]
            else:  # scripts on one key overlapped: write its count once more after
                busy[key] -= 1
                self._dirty.add(key)
                self._wake.set()
        self._ok()
        return result

    def _failed(self, op: str, error: str) -> None:
        self.errors[op] = self.errors.get(op, 0) + 1
        if self.reachable:
            self.reachable = False
            log.warning("session_store_unreachable", url=self.url, op=op, error=error[:200])

    def _ok(self) -> None:
        if not self.reachable:
            self.reachable = True
            log.info("session_store_reachable", url=self.url)

    async def run(self, client: Any) -> None:
        """Write this node's counts while ``client`` (a broker session's) is up: changes
        batched, and every one again every third of ``min(broker_ttl, session_expiry)``.
        Never raises but Cancelled: a failure is counted, logged once and retried."""
        self._scripts = {
            "create": client.register_script(_CREATE),
            "restore": client.register_script(_RESTORE),
            "sync": client.register_script(_SYNC),
            "delete": client.register_script(_DELETE),
        }
        self._client = client
        try:
            next_refresh = trio.current_time()  # a new connection to Redis: write them all
            while True:
                if trio.current_time() >= next_refresh:
                    self._dirty.update(self._held)
                    next_refresh = trio.current_time() + self._interval()
                await self._sync(client)
                with trio.move_on_at(next_refresh):
                    await self._wake.wait()
                    await trio.sleep(FLUSH_DELAY)  # let a burst of changes gather
                self._wake = trio.Event()
        finally:
            self._client = None

    def _interval(self) -> float:
        ttl = self.node_ttl if not self._ttl_ms else min(self.node_ttl, self._ttl_ms / 1000)
        return ttl / 3

    async def _sync(self, client: Any) -> None:
        """Write the dirty counts; a session found gone is closed for this node."""
        dirty, self._dirty = list(self._dirty), set()
        node_ttl = _ms(self.node_ttl)
        for chunk in _chunks(dirty, BATCH):
            held, busy = self._held, self._busy
            rows = [(k, held[k][0], held[k][1]) for k in chunk if k in held and k not in busy]
            self._dirty.update(k for k in chunk if k in busy)  # (written after the script)
            if not rows:
                continue
            self._syncing, self._synced = {row[0] for row in rows}, trio.Event()
            try:
                async with client.pipeline(transaction=False) as pipe:
                    replies = [
                        self._scripts["sync"](
                            keys=list(self.keys(key)),
                            args=[self.node_id, count, node_ttl, ttl_ms],
                            client=pipe,
                        )
                        for key, count, ttl_ms in rows
                    ]
                results = [await reply for reply in replies]
            except Exception as exc:
                if not _redis_failure(exc):
                    log.exception("session_store_sync_failed")
                else:
                    self._failed("sync", f"{type(exc).__name__}: {exc}")
                self._dirty.update(row[0] for row in rows)
                return
            finally:
                self._syncing = set()
                self._synced.set()
            self._ok()
            for (key, count, _ttl), result in zip(rows, results, strict=True):
                entry = self._held.get(key)
                if entry is None:
                    continue
                if key in self._busy:  # a script runs on it now: write it again after
                    self._dirty.add(key)
                    continue
                if result == 0:  # gone from Redis: closed elsewhere, or Redis lost it
                    del self._held[key]
                    if count:
                        self.closed_here += 1
                        self._closed(key)
                elif count == 0 and entry[0] == 0:  # (not if it changed meanwhile)
                    del self._held[key]

    async def leave(self) -> None:
        """A graceful shutdown: write what changed (connections gone count no more)."""
        client = self._client
        if client is not None and self._dirty:
            await self._sync(client)

    # ------------------------------------------------------------------ metrics

    def collect(self) -> Iterator[Any]:
        """The Prometheus families of the store."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        errors = CounterMetricFamily(
            "riverside_session_store_errors",
            "Session store operations that could not reach Redis, by operation",
            labels=["op"],
        )
        for op in ("create", "restore", "delete", "sync"):
            errors.add_metric([op], self.errors.get(op, 0))
        yield errors
        yield GaugeMetricFamily(
            "riverside_session_store_reachable",
            "1 while the session store's last call to Redis succeeded",
            int(self.reachable and self._client is not None),
        )
        yield GaugeMetricFamily(
            "riverside_session_store_held",
            "Sessions held by connections of this node (as written to Redis)",
            sum(1 for count, _ in self._held.values() if count),
        )


def _redis_failure(exc: BaseException) -> bool:
    """A failure to reach Redis (or of Redis itself), rather than a bug of ours: what
    coredis, and the anyio and Trio streams under it, raise when a connection dies."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_redis_failure(e) for e in exc.exceptions)
    if isinstance(
        exc, OSError | TimeoutError | trio.BrokenResourceError | trio.ClosedResourceError
    ):
        return True
    return type(exc).__module__.split(".")[0] in ("coredis", "anyio")


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
