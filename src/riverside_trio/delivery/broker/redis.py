"""The Redis broker: one node's link to the others through Redis (``broker_url``).

What it does, and the rules it keeps:

- **Subscriptions follow local membership.** The registry says when a destination gets its
  first local member and loses its last; the broker keeps the set of Redis channels it
  wants and one task reconciles the pub/sub connection with it, in batches (one SUBSCRIBE
  or UNSUBSCRIBE command for up to ``CHUNK`` channels), so a join/leave storm is a few
  commands, and a channel joined and left before the task runs costs nothing.
- **Publishing never waits.** ``publish`` encodes the envelope once and puts it in a
  bounded memory channel (``broker_queue_size``); one publisher task sends what queued in
  one pipeline. A full queue, or Redis unreachable, drops the message and counts it.
- **Receiving is bounded too.** The subscriber task reads with ``get_message()`` (coredis's
  ``async for`` can end silently after a restart) and hands each message to a bounded
  memory channel; a fan-out task frames it once and fans it out to local members in one
  task step (one write per client per burst). The origin node delivered its own members
  already and drops its echo.
- **Supervised.** Every Redis task runs in one session; any failure ends the session, and
  the next one starts after a jittered backoff, resubscribes everything and rewrites the
  node's directory entries and names. A heartbeat the node publishes to its own channel
  every ``HEARTBEAT_INTERVAL`` must come back through the subscriber within
  ``DEAF_AFTER``, or the session is restarted (a deaf subscriber).

Cross-node delivery is at-most-once and in order per sender and destination.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
import trio

from ...cluster import ClusterView, NameClaim
from ...destinations import Destination, Name
from ..hub import change_channel, close_members
from ._client import make_client, open_pubsub
from ._directory import Directory
from ._stats import BrokerStats
from ._url import BrokerURL, parse_broker_url
from ._wire import (
    BINARY,
    DISCONNECT,
    HEARTBEAT,
    INFO,
    JOIN,
    LEAVE,
    TEXT,
    TO_CONNECTION,
    Envelope,
    channel_name,
    decode_info,
    node_channel,
    open_disconnect,
    open_envelope,
    open_to_connection,
)

if TYPE_CHECKING:
    from ..hub import Hub
    from ..registry import Member, Registry

__all__ = ["RedisBroker"]

log = structlog.get_logger("riverside_trio.broker")

CHUNK = 2000  # channels per SUBSCRIBE / UNSUBSCRIBE command
PIPELINE = 1000  # messages per pipeline
FAN_OUT_BATCH = 1000  # incoming messages fanned out in one task step
GATHER_STEPS = 64  # checkpoints a burst from Redis may take to arrive before it fans out
GATHER_PATIENCE = 4  # checkpoints in a row without a new message end the gathering
HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats through Redis
DEAF_AFTER = 5.0  # seconds without our own heartbeat back: the subscriber is deaf
BACKOFF_MIN = 0.1  # seconds before the first reconnection attempt
BACKOFF_MAX = 2.0  # seconds at most between attempts (jittered)


_MESSAGE_TYPES = frozenset({"message", "smessage"})
_HEARTBEAT = bytes([HEARTBEAT])


class _Deaf(Exception):
    """Our heartbeats stopped coming back: restart the session."""


class RedisBroker:
    """The :class:`~riverside_trio.delivery.hub.Broker` of a node joined to others by Redis.

    Every method the hub calls is synchronous and never waits for Redis; :meth:`run` owns
    the tasks that talk to it.
    """

    def __init__(
        self,
        url: str | BrokerURL,
        registry: Registry,
        hub: Hub,
        node_id: str,
        *,
        prefix: str = "riverside",
        ttl: float = 15.0,
        queue_size: int = 10_000,
        warn: Any = None,
    ) -> None:
        self.url = parse_broker_url(url) if isinstance(url, str) else url
        self.registry = registry
        self.hub = hub
        self.node_id = node_id
        self.prefix = prefix
        self.envelope = Envelope(node_id)
        self.stats = BrokerStats(self)
        self.directory = Directory(self, ttl)
        self._warn = warn if warn is not None else _log_warning
        self._publish = b"SPUBLISH" if self.url.cluster else b"PUBLISH"
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[bytes, bytes]](queue_size)
        self._in_send, self._in_recv = trio.open_memory_channel[tuple[bytes, bytes]](queue_size)
        self._node_channel = node_channel(prefix, node_id)
        # The channels this node wants (channel -> destination), what the current pub/sub
        # session has, and what changed since the last reconciliation.
        self.wanted: dict[bytes, Destination] = {}
        self.subscribed: set[bytes] = set()
        self._dirty: set[bytes] = set()
        self._changed = trio.Event()
        self.connected = False
        self.client: Any = None  # the Redis client of the session running now (else None)
        self.heartbeat_at: float | None = None  # trio time our last heartbeat came back
        self._session_started = 0.0
        # Tasks run in each session with Redis, given its client (the session store's).
        self.session_tasks: list[Callable[[Any], Awaitable[None]]] = []

    # ------------------------------------------------------------------ membership events

    def first_member(self, destination: Destination) -> None:
        """Subscribe to ``destination``'s channel (batched, by the subscriber task)."""
        channel = channel_name(self.prefix, destination)
        self.wanted[channel] = destination
        self._dirty.add(channel)
        self._changed.set()

    def last_member(self, destination: Destination) -> None:
        """Unsubscribe from ``destination``'s channel (batched); free a unique name."""
        channel = channel_name(self.prefix, destination)
        self.wanted.pop(channel, None)
        self._dirty.add(channel)
        self._changed.set()
        if type(destination) is Name:
            self.directory.release_name(destination.name)

    def member_changed(self, member: Member) -> None:
        """A connection came, went, or joined or left a channel: the directory rewrites it."""
        self.directory.changed(member)

    # ------------------------------------------------------------------ publishing

    def publish(self, destination: Destination, payload: bytes, text: bool) -> None:
        """Queue a message for the other nodes' members of ``destination``."""
        self._send(channel_name(self.prefix, destination), self.envelope.message(payload, text))

    def publish_info(self, destination: Destination, info: Any) -> None:
        """Queue an info for the other nodes.

        Raises:
            CodecError: ``info`` cannot cross nodes (CBOR cannot carry it); nothing is sent.
        """
        data = self.envelope.info(info)
        self._send(channel_name(self.prefix, destination), data)

    def publish_disconnect(self, destination: Destination, code: int, reason: str) -> None:
        """Queue a disconnect for the other nodes."""
        self._send(channel_name(self.prefix, destination), self.envelope.disconnect(code, reason))

    def _send(self, channel: bytes, data: bytes) -> None:
        if not self.connected:
            self.stats.dropped_unreachable += 1
            self._warn("broker_unreachable_dropping", url=str(self.url))
            return
        try:
            self._out_send.send_nowait((channel, data))
        except trio.WouldBlock:
            self.stats.dropped_outgoing += 1
            self._warn("broker_queue_full", queue_size=self._out_send.statistics().max_buffer_size)

    async def publish_now(self, channel: bytes, data: bytes) -> int:
        """Publish one envelope at once (not through the queue), for the control API: how
        many nodes received it (Redis's count of subscribers). A checkpoint.

        Raises:
            ConnectionError: Redis is not connected (nothing was sent).
            Exception: whatever coredis raises when Redis fails meanwhile.
        """
        client = self.client
        if client is None or not self.connected:
            raise ConnectionError(f"the broker is not connected to {self.url}")
        send = client.spublish if self.url.cluster else client.publish
        received = int(await send(channel, data))
        self.stats.published += 1
        return received

    def channel_of(self, destination: Destination) -> bytes:
        """The Redis channel of ``destination``."""
        return channel_name(self.prefix, destination)

    def node_channel_of(self, node_id: str) -> bytes:
        """The Redis channel of the node ``node_id`` (where its connections are reached by id)."""
        return node_channel(self.prefix, node_id)

    def claim_name(self, member: Member, name: str) -> NameClaim:
        """Claim ``name`` (registered on this node already) in the whole cluster."""
        return self.directory.claim_name(member, name)

    async def cluster_view(self) -> ClusterView:
        """The cluster as Redis has it. A checkpoint.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        return await self.directory.view()

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: fan-out, and sessions with Redis restarted after failures.

        Reports started at once; Redis need not be up (local delivery works meanwhile).
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fan_out)
            task_status.started()
            delay = BACKOFF_MIN
            attempt = 0
            while True:
                attempt += 1
                started = trio.current_time()
                try:
                    await self._session()
                except Exception as exc:
                    error = _describe(exc)
                except BaseExceptionGroup as group:
                    # Cancelled while a task failed (coredis turns a connect cut short by
                    # the cancellation into ConnectionError): the cancellation wins.
                    cancelled = group.split(trio.Cancelled)[0]
                    if cancelled is None:
                        raise
                    raise cancelled from None
                else:  # pragma: no cover - a session only ends by failing
                    error = "session ended"
                self.connected = False
                if trio.current_time() - started > BACKOFF_MAX * 2:
                    delay, attempt = BACKOFF_MIN, 1  # it was up a while: retry soon
                wait = delay * (0.5 + random.random())
                log.warning(
                    "broker_unreachable",
                    url=str(self.url),
                    error=error,
                    attempt=attempt,
                    retry_in=round(wait, 2),
                )
                await trio.sleep(wait)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        try:
            async with make_client(self.url) as client, trio.open_nursery() as nursery:
                await self._run_session(client, nursery)
        finally:
            self.client = None

    async def _run_session(self, client: Any, nursery: trio.Nursery) -> None:
        await nursery.start(self._subscriber, client)
        self._session_started = trio.current_time()
        self.heartbeat_at = None
        await self.directory.start(client)
        self.client = client
        self.connected = True
        if self.stats.sessions:
            self.stats.reconnects += 1
        self.stats.sessions += 1
        log.info(
            "broker_connected",
            url=str(self.url),
            node_id=self.node_id,
            subscriptions=len(self.subscribed),
        )
        nursery.start_soon(self._publisher, client)
        nursery.start_soon(self._heartbeat, client)
        nursery.start_soon(self.directory.run, client)
        for task in self.session_tasks:
            nursery.start_soon(task, client)

    # ------------------------------------------------------------------ subscriber

    async def _subscriber(self, client: Any, task_status: trio.TaskStatus[None]) -> None:
        async with open_pubsub(client, self.url.cluster) as pubsub:
            self.subscribed = set()
            self._dirty = set(self.wanted)
            await pubsub.subscribe(self._node_channel)
            await self._reconcile(pubsub)
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reconcile_loop, pubsub)
                await self._read(pubsub)

    async def _read(self, pubsub: Any) -> None:
        """Forward what Redis sends to the fan-out, everything that is in one task step (so
        the fan-out frames a burst in one step too: one write per client)."""
        send = self._in_send.send_nowait
        stats = self.stats
        node = self._node_channel
        # What coredis has parsed already, without a checkpoint per message.
        buffered = getattr(pubsub, "_receive_stream", None)
        more = buffered.receive_nowait if buffered is not None else None
        while True:
            message = await pubsub.get_message()
            while True:
                if message is not None and message["type"] in _MESSAGE_TYPES:
                    channel = message["channel"]
                    if channel == node and message["data"][1:2] == _HEARTBEAT:
                        self.heartbeat_at = trio.current_time()
                    else:
                        try:
                            send((channel, message["data"]))
                        except trio.WouldBlock:
                            stats.dropped_incoming += 1
                            self._warn("broker_incoming_full", queue_size=stats.queue_size)
                if more is None:
                    break
                try:
                    message = more()
                except anyio.WouldBlock:
                    break

    async def _reconcile_loop(self, pubsub: Any) -> None:
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            await self._reconcile(pubsub)

    async def _reconcile(self, pubsub: Any) -> None:
        """Bring the pub/sub connection's channels to what is wanted, in batches."""
        while self._dirty:
            self._changed = trio.Event()
            dirty, self._dirty = self._dirty, set()
            wanted, subscribed = self.wanted, self.subscribed
            add = [c for c in dirty if c in wanted and c not in subscribed]
            remove = [c for c in dirty if c not in wanted and c in subscribed]
            for i in range(0, len(add), CHUNK):
                chunk = add[i : i + CHUNK]
                await pubsub.subscribe(*chunk)
                subscribed.update(chunk)
                self.stats.subscribe_commands += 1
            for i in range(0, len(remove), CHUNK):
                chunk = remove[i : i + CHUNK]
                await pubsub.unsubscribe(*chunk)
                subscribed.difference_update(chunk)
                self.stats.unsubscribe_commands += 1

    # ------------------------------------------------------------------ fan-out

    async def _fan_out(self) -> None:
        """Incoming messages to local members; a batch per task step, so writes coalesce.

        A burst from Redis reaches coredis over a few task steps: while the queue still
        grows, let them run (a few checkpoints, no sleep), then fan out all of it in one.
        """
        receive = self._in_recv.receive
        receive_nowait = self._in_recv.receive_nowait
        statistics = self._in_recv.statistics
        while True:
            item = await receive()
            self.stats.fan_out_batches += 1
            queued = statistics().current_buffer_used
            idle = 0
            for _ in range(GATHER_STEPS):
                await trio.lowlevel.checkpoint()
                now = statistics().current_buffer_used
                if now >= FAN_OUT_BATCH:
                    break
                idle = idle + 1 if now == queued else 0
                if idle == GATHER_PATIENCE:
                    break
                queued = now
            for _ in range(FAN_OUT_BATCH):
                self._deliver_here(*item)
                try:
                    item = receive_nowait()
                except trio.WouldBlock:
                    break
            else:
                self._deliver_here(*item)

    def _deliver_here(self, channel: bytes, data: bytes) -> None:
        stats = self.stats
        stats.received += 1
        destination = self.wanted.get(channel)
        if destination is None and channel != self._node_channel:
            return  # the last member left while the message was on its way
        try:
            kind, origin, body = open_envelope(data)
            if origin == self.envelope.origin:
                stats.received -= 1
                stats.echoes += 1
                return
            if destination is None:  # our own channel: to one connection, by its id
                if kind != TO_CONNECTION:
                    raise ValueError(f"kind {kind!r} on a node's channel")
                conn_id, kind, body = open_to_connection(body)
                members = self.registry.by_id(conn_id)
            else:
                members = self.registry.members(destination)
            if kind in (TEXT, BINARY):
                self.hub.deliver_payload(members, body, kind == TEXT)
            elif kind == INFO:
                self.hub.post_info(members, decode_info(body))
            elif kind == DISCONNECT:
                close_members(members, *open_disconnect(body))
            elif kind in (JOIN, LEAVE):
                change_channel(self.registry, members, body.decode(), kind == JOIN)
        except ValueError as exc:
            stats.invalid += 1
            self._warn(
                "broker_invalid_message", channel=channel.decode(errors="replace"), error=str(exc)
            )

    # ------------------------------------------------------------------ publisher

    async def _publisher(self, client: Any) -> None:
        receive = self._out_recv.receive
        receive_nowait = self._out_recv.receive_nowait
        command = self._publish
        stats = self.stats
        while True:
            batch = [await receive()]
            while len(batch) < PIPELINE:
                try:
                    batch.append(receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                async with client.pipeline(transaction=False) as pipe:
                    if command == b"PUBLISH":
                        for channel, data in batch:
                            pipe.publish(channel, data)
                    else:
                        for channel, data in batch:
                            pipe.spublish(channel, data)
            except BaseException:
                stats.dropped_unreachable += len(batch)
                raise
            stats.published += len(batch)

    async def _heartbeat(self, client: Any) -> None:
        """Publish to our own channel; restart the session if it stops coming back."""
        send = client.spublish if self.url.cluster else client.publish
        while True:
            await send(self._node_channel, self.envelope.heartbeat)
            await trio.sleep(HEARTBEAT_INTERVAL)
            last = self.heartbeat_at if self.heartbeat_at is not None else self._session_started
            if trio.current_time() - last > DEAF_AFTER:
                self.stats.deaf += 1
                raise _Deaf(f"no heartbeat back through Redis for {DEAF_AFTER:g} s")

    def heartbeat_age(self) -> float | None:
        """Seconds since our last heartbeat came back through Redis (None: none yet)."""
        if self.heartbeat_at is None:
            return None
        return trio.current_time() - self.heartbeat_at


def _describe(exc: BaseException) -> str:
    """One line for a failed session, without a traceback."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = _leaves(exc)
        exc = leaves[0] if leaves else exc
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def _log_warning(event: str, **fields: Any) -> None:
    log.warning(event, **fields)
