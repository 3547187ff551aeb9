"""The broker's counters, exported at /metrics with the server's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from ._directory import Directory

__all__ = ["BrokerStats"]


class _Broker(Protocol):
    """What the counters read of the broker (a protocol: no import cycle)."""

    connected: bool
    subscribed: set[bytes]
    directory: Directory
    _in_send: Any

    def heartbeat_age(self) -> float | None: ...


class BrokerStats:
    """Plain ints, bumped by the broker's tasks, read at scrape time.

    Attributes:
        published: messages sent to Redis (each once, for every other node).
        received: messages from other nodes fanned out here (in fan_out_batches task steps).
        echoes: our own messages that came back (dropped: we delivered them locally).
        dropped_outgoing: messages not published because the outgoing queue was full.
        dropped_unreachable: messages not published because Redis was unreachable (queued
            when it went away, or sent while it was).
        dropped_incoming: messages from Redis dropped because the fan-out queue was full.
        invalid: messages from Redis that were not envelopes of ours.
        sessions: sessions with Redis opened; reconnects: the ones after the first.
        deaf: sessions restarted because our heartbeat stopped coming back.
        subscribe_commands / unsubscribe_commands: batched (UN)SUBSCRIBE commands sent.
    """

    def __init__(self, broker: _Broker) -> None:
        self._broker = broker
        self.published = 0
        self.received = 0
        self.fan_out_batches = 0  # task steps the incoming messages were fanned out in
        self.echoes = 0
        self.dropped_outgoing = 0
        self.dropped_unreachable = 0
        self.dropped_incoming = 0
        self.invalid = 0
        self.sessions = 0
        self.reconnects = 0
        self.deaf = 0
        self.subscribe_commands = 0
        self.unsubscribe_commands = 0

    @property
    def queue_size(self) -> int:
        """Capacity of each of the broker's queues (``broker_queue_size``)."""
        return int(self._broker._in_send.statistics().max_buffer_size)

    @property
    def dropped(self) -> int:
        """Every message lost on the way to or from Redis."""
        return self.dropped_outgoing + self.dropped_unreachable + self.dropped_incoming

    def collect(self) -> Iterator[Metric]:
        """The Prometheus families of the broker and of the cluster."""
        b = self._broker
        yield CounterMetricFamily(
            "riverside_broker_published", "Messages published to Redis", self.published
        )
        yield CounterMetricFamily(
            "riverside_broker_received", "Messages from other nodes delivered here", self.received
        )
        dropped = CounterMetricFamily(
            "riverside_broker_dropped",
            "Messages lost between this node and Redis, by where",
            labels=["where"],
        )
        dropped.add_metric(["outgoing_full"], self.dropped_outgoing)
        dropped.add_metric(["unreachable"], self.dropped_unreachable)
        dropped.add_metric(["incoming_full"], self.dropped_incoming)
        yield dropped
        yield CounterMetricFamily(
            "riverside_broker_reconnects",
            "Sessions with Redis reopened after one failed",
            self.reconnects,
        )
        yield GaugeMetricFamily(
            "riverside_broker_connected",
            "1 while this node's session with Redis is up",
            int(b.connected),
        )
        yield GaugeMetricFamily(
            "riverside_broker_subscriptions",
            "Redis channels this node is subscribed to",
            len(b.subscribed),
        )
        age = b.heartbeat_age()
        yield GaugeMetricFamily(
            "riverside_broker_heartbeat_age_seconds",
            "Seconds since this node's last heartbeat came back through Redis (-1: none yet)",
            -1.0 if age is None else age,
        )
        yield GaugeMetricFamily(
            "riverside_cluster_nodes",
            "Live nodes in the cluster (at the last refresh)",
            b.directory.cluster_nodes,
        )
        yield GaugeMetricFamily(
            "riverside_cluster_connections",
            "WebSocket connections in the whole cluster (at the last refresh)",
            b.directory.cluster_connections,
        )
