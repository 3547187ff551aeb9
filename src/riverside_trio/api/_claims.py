"""Claims: one-time tickets a client connects with (``?claim=<id>``), in memory or in Redis.

A claim carries a user, an optional session and channels, and expires at a Unix time. It is
consumed (read and deleted) in one step, so it is used once: in memory one synchronous step
does it; in Redis one Lua script does, so two nodes racing for one claim get it once.

Redis layout (every key shares the hash tag ``{claims}``, so the scripts work on a Redis
Cluster too: all claim keys live in one slot)::

    <prefix>:{claims}:id:<id>        JSON {"user", "session", "channels", "expiration"}
    <prefix>:{claims}:u:<user>       set of the user's claim ids
    <prefix>:{claims}:c:<channel>    set of the ids of claims joining the channel

A claim key lives until ``GRACE`` seconds after its expiration (so an expired claim is
refused as EXPIRED_CLAIM, not MISSING_CLAIM, for a while); index sets live as long as their
longest claim and drop dead ids when read.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import trio

__all__ = ["GRACE", "Claim", "ClaimStore", "MemoryClaims", "RedisClaims", "Target", "WallClock"]

GRACE = 60  # seconds an expired claim is still known (as expired) in Redis
_ID_ALPHABET = string.ascii_letters + string.digits


def new_claim_id() -> str:
    """32 random letters and digits, as dSock makes them."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(32))


class WallClock:
    """Unix time that follows Trio's clock (so MockClock moves it in tests): the offset
    between the two is read once, at the first call inside a Trio run."""

    def __init__(self) -> None:
        self._offset: float | None = None

    def __call__(self) -> float:
        now = trio.current_time()
        if self._offset is None:
            self._offset = time.time() - now
        return now + self._offset


@dataclass(frozen=True, slots=True)
class Claim:
    """A one-time ticket to connect.

    Attributes:
        id: what the client sends as ``?claim=``.
        user: the connection's user id.
        session: the connection's session id (None: a random one).
        channels: the channels the connection joins when it opens.
        expiration: when it expires (Unix time, whole seconds).
    """

    id: str
    user: str
    session: str | None
    channels: tuple[str, ...]
    expiration: int

    def as_json(self) -> dict[str, Any]:
        """The claim as the API answers it (dSock's shape)."""
        out: dict[str, Any] = {"id": self.id, "expiration": self.expiration, "user": self.user}
        if self.session is not None:
            out["session"] = self.session
        out["channels"] = list(self.channels)
        return out


@dataclass(frozen=True, slots=True)
class Target:
    """Who an API call is for: a connection ``id``, else a ``channel``, else a ``user``
    (with ``session``: only that session)."""

    id: str | None = None
    channel: str | None = None
    user: str | None = None
    session: str | None = None

    def claims_match(self, claim: Claim) -> bool:
        """Whether ``claim`` is one of this target's (dSock's order: user [+ session],
        else channel; a connection id has no claims)."""
        if self.user is not None:
            return claim.user == self.user and (
                self.session is None or claim.session == self.session
            )
        if self.channel is not None:
            return self.channel in claim.channels
        return False


class ClaimStore(Protocol):
    """Where claims are kept."""

    async def create(self, claim: Claim) -> bool:
        """Store a new claim; False if its id is taken."""

    async def consume(self, claim_id: str) -> Claim | None:
        """Take the claim (it is gone afterwards), expired or not; None if unknown."""

    async def find(self, target: Target) -> list[Claim]:
        """The target's claims that have not expired."""

    async def delete(self, target: Target) -> int:
        """Delete the target's claims; how many."""

    async def edit_channels(self, target: Target, channel: str, join: bool) -> int:
        """Add ``channel`` to (or remove it from) the target's claims; how many changed."""


class MemoryClaims:
    """Claims in this process (no broker). Expired claims are dropped when claims are
    created (each creation removes a few), so the store does not grow without bound."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._claims: dict[str, Claim] = {}

    def __len__(self) -> int:
        return len(self._claims)

    async def create(self, claim: Claim) -> bool:
        await trio.lowlevel.checkpoint()
        self._sweep()
        if claim.id in self._claims:
            return False
        self._claims[claim.id] = claim
        return True

    def _sweep(self) -> None:
        # the oldest claims come first (insertion order): drop expired ones at the front
        now = self._clock()
        for _ in range(4):
            first = next(iter(self._claims.values()), None)
            if first is None or first.expiration > now:
                return
            del self._claims[first.id]

    async def consume(self, claim_id: str) -> Claim | None:
        claim = self._claims.pop(claim_id, None)  # before the checkpoint: atomic
        await trio.lowlevel.checkpoint()
        return claim

    async def find(self, target: Target) -> list[Claim]:
        await trio.lowlevel.checkpoint()
        now = self._clock()
        return [c for c in self._claims.values() if c.expiration > now and target.claims_match(c)]

    async def delete(self, target: Target) -> int:
        doomed = [c.id for c in self._claims.values() if target.claims_match(c)]
        for claim_id in doomed:
            del self._claims[claim_id]
        await trio.lowlevel.checkpoint()
        return len(doomed)

    async def edit_channels(self, target: Target, channel: str, join: bool) -> int:
        changed = 0
        for claim in [c for c in self._claims.values() if target.claims_match(c)]:
            channels = _edited(claim.channels, channel, join)
            if channels != claim.channels:
                self._claims[claim.id] = replace(claim, channels=channels)
                changed += 1
        await trio.lowlevel.checkpoint()
        return changed


def _edited(channels: tuple[str, ...], channel: str, join: bool) -> tuple[str, ...]:
    if join:
        return channels if channel in channels else (*channels, channel)
    return tuple(c for c in channels if c != channel)


# KEYS: claim key, user index, channel indexes...; ARGV: value, expire-at (ms), id
_CREATE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then return 0 end
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  local at = redis.call('PEXPIRETIME', KEYS[i])
  if at == -1 or at < tonumber(ARGV[2]) then
    redis.call('PEXPIREAT', KEYS[i], ARGV[2])
  end
end
return 1
"""

# KEYS: claim key; ARGV: index prefix, id. GET and DEL in one step: used once.
_CONSUME = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
redis.call('DEL', KEYS[1])
local c = cjson.decode(v)
redis.call('SREM', ARGV[1] .. 'u:' .. c['user'], ARGV[2])
for _, ch in ipairs(c['channels']) do redis.call('SREM', ARGV[1] .. 'c:' .. ch, ARGV[2]) end
return v
"""

# KEYS: index set; ARGV: claim key prefix. The live claims of an index, dropping dead ids.
_FIND = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then table.insert(out, v) else redis.call('SREM', KEYS[1], id) end
end
return out
"""

# KEYS: claim key; ARGV: index prefix, id, channel, "1" join / "0" leave, expected value.
# Rewrites the claim (keeping its TTL) only if it is unchanged since it was read.
_EDIT = """
local v = redis.call('GET', KEYS[1])
if not v or v ~= ARGV[5] then return 0 end
local c = cjson.decode(v)
local kept, found = {}, false
for _, ch in ipairs(c['channels']) do
  if ch == ARGV[3] then found = true end
  if ch ~= ARGV[3] then table.insert(kept, ch) end
end
if ARGV[4] == '1' then
  if found then return 0 end
  table.insert(kept, ARGV[3])
  local idx = ARGV[1] .. 'c:' .. ARGV[3]
  redis.call('SADD', idx, ARGV[2])
  local ttl = redis.call('PTTL', KEYS[1])
  if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
else
  if not found then return 0 end
  redis.call('SREM', ARGV[1] .. 'c:' .. ARGV[3], ARGV[2])
end
c['channels'] = kept
redis.call('SET', KEYS[1], cjson.encode(c), 'KEEPTTL')
return 1
"""


class RedisClaims:
    """Claims in Redis, shared by every node of the cluster (``broker_url``).

    ``client`` returns the broker's current Redis client (None while it is not connected,
    which fails the call with :class:`ConnectionError`).
    """

    def __init__(self, client: Callable[[], Any], prefix: str, clock: Callable[[], float]) -> None:
        self._client = client
        self._clock = clock
        self._index = f"{prefix}:{{claims}}:"
        self._id_prefix = self._index + "id:"

    def _redis(self) -> Any:
        client = self._client()
        if client is None:
            raise ConnectionError("the broker is not connected to Redis")
        return client

    async def create(self, claim: Claim) -> bool:
        value = json.dumps(
            {
                "id": claim.id,
                "user": claim.user,
                "session": claim.session,
                "channels": list(claim.channels),
                "expiration": claim.expiration,
            },
            separators=(",", ":"),
        )
        keys = [self._id_prefix + claim.id, self._index + "u:" + claim.user]
        keys += [self._index + "c:" + c for c in claim.channels]
        expire_at_ms = (claim.expiration + GRACE) * 1000
        done = await self._redis().eval(
            _CREATE, keys=keys, args=[value, str(expire_at_ms), claim.id]
        )
        return bool(done)

    async def consume(self, claim_id: str) -> Claim | None:
        raw = await self._redis().eval(
            _CONSUME, keys=[self._id_prefix + claim_id], args=[self._index, claim_id]
        )
        return None if raw is None else _decode(raw)

    async def _find(self, target: Target) -> list[tuple[Claim, bytes]]:
        if target.user is not None:
            index = self._index + "u:" + target.user
        elif target.channel is not None:
            index = self._index + "c:" + target.channel
        else:
            return []
        raws = await self._redis().eval(_FIND, keys=[index], args=[self._id_prefix])
        found = [(_decode(raw), bytes(raw)) for raw in raws]
        return [(c, raw) for c, raw in found if target.claims_match(c)]

    async def find(self, target: Target) -> list[Claim]:
        now = self._clock()
        return [c for c, _ in await self._find(target) if c.expiration > now]

    async def delete(self, target: Target) -> int:
        deleted = 0
        for claim, _ in await self._find(target):
            if await self.consume(claim.id) is not None:
                deleted += 1
        return deleted

    async def edit_channels(self, target: Target, channel: str, join: bool) -> int:
        changed = 0
        for claim, raw in await self._find(target):
            changed += await self._redis().eval(
                _EDIT,
                keys=[self._id_prefix + claim.id],
                args=[self._index, claim.id, channel, "1" if join else "0", raw],
            )
        return changed


def _decode(raw: bytes | str) -> Claim:
    data = json.loads(raw)
    return Claim(
        id=data["id"],
        user=data["user"],
        session=data.get("session"),
        channels=tuple(data.get("channels") or ()),
        expiration=int(data["expiration"]),
    )
