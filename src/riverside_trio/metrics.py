"""Server metrics: plain ints on the hot path, exported in Prometheus format at scrape time.

Names follow Riverside's::

    riverside_connected_sessions_count                 gauge
    riverside_sessions_total                           counter
    riverside_incoming_messages_total{frame_type}      counter (text, binary, ping, pong, close)
    riverside_outgoing_messages_total{frame_type}      counter (text, binary)
    riverside_connected_duration_seconds               histogram
    riverside_rejected_connections_total{status}       counter (HTTP status of refused upgrades)
    riverside_disconnects_total{reason}                counter (TerminateReason.kind)
    riverside_invalid_messages_total{kind}             counter (wrong_type, undecodable, envelope)
    riverside_dropped_messages_total                   counter (outbox_policy drop_*)
    riverside_pending_handshakes_count                 gauge (sockets not yet WebSockets)
    riverside_refused_sockets_total{reason}            counter (pending_global, pending_per_address)
    riverside_queued_bytes                             gauge   (bytes held for sending, node-wide)
    riverside_memory_shed_connections_total            counter (closed by max_queued_bytes)
    riverside_auth_refused_total{reason}               counter (origin_mismatch, jwt_expired, ...)
    riverside_api_requests_total{route,status}         counter (the HTTP control API)
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["Metrics"]

DURATION_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 6 * 3600.0, 24 * 3600.0)


class Metrics:
    """The counters of one server. Read them directly in tests; scrape them at /metrics."""

    def __init__(
        self,
        connected: Callable[[], int],
        dropped_live: Callable[[], int] | None = None,
        *,
        pending: Callable[[], int] | None = None,
        queued: Callable[[], int] | None = None,
    ) -> None:
        self._connected = connected
        self._pending = pending
        self.refused_sockets: Counter[str] = Counter()
        """Sockets closed at accept, unanswered, by reason (pending_global, pending_per_address)."""
        self._dropped_live = dropped_live
        self._queued = queued
        self.dropped_messages = 0
        self.memory_shed_connections = 0
        self.sessions_total = 0
        self.incoming_text = 0
        self.incoming_binary = 0
        self.incoming_control: Counter[str] = Counter()
        self.outgoing_text = 0
        self.outgoing_binary = 0
        self.rejected: Counter[int] = Counter()
        self.auth_refused: Counter[str] = Counter()
        """Upgrades refused by the Origin rules or authenticate, by reason (AuthError.reason)."""
        self.disconnects: Counter[str] = Counter()
        self.invalid_messages: Counter[str] = Counter()
        self._duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0
        self.api_requests: Counter[tuple[str, int]] = Counter()
        """Control API requests by (route name, HTTP status); route "unknown" for a path
        that names no route (or a refusal before the route is known)."""
        self.broker: Any = None  # with several nodes: the broker's counters (collect())
        self.session_store: Any = None  # the Redis session store's counters (collect())
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    @property
    def connected(self) -> int:
        """Connections open now."""
        return self._connected()

    @property
    def pending_handshakes(self) -> int:
        """Sockets accepted that are not (yet) WebSocket connections."""
        return self._pending() if self._pending is not None else 0

    @property
    def dropped(self) -> int:
        """Messages dropped by the outbox policy (drop_oldest or drop_newest), all time."""
        live = self._dropped_live() if self._dropped_live is not None else 0
        return self.dropped_messages + live

    @property
    def queued_bytes(self) -> int:
        """Bytes held for sending now, node-wide: what ``max_queued_bytes`` limits."""
        return self._queued() if self._queued is not None else 0

    def observe_duration(self, seconds: float) -> None:
        """Record how long a finished connection lasted."""
        self._duration_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._duration_sum += seconds

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield GaugeMetricFamily(
            "riverside_connected_sessions_count", "WebSocket connections open now", m.connected
        )
        yield CounterMetricFamily(
            "riverside_sessions", "WebSocket connections opened", m.sessions_total
        )
        incoming = CounterMetricFamily(
            "riverside_incoming_messages", "Messages received", labels=["frame_type"]
        )
        incoming.add_metric(["text"], m.incoming_text)
        incoming.add_metric(["binary"], m.incoming_binary)
        for kind in ("ping", "pong", "close"):
            incoming.add_metric([kind], m.incoming_control[kind])
        yield incoming
        outgoing = CounterMetricFamily(
            "riverside_outgoing_messages", "Messages sent", labels=["frame_type"]
        )
        outgoing.add_metric(["text"], m.outgoing_text)
        outgoing.add_metric(["binary"], m.outgoing_binary)
        yield outgoing
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*DURATION_BUCKETS, float("inf")), m._duration_counts, strict=False
        ):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "riverside_connected_duration_seconds",
            "How long WebSocket connections stayed open",
            buckets=buckets,
            sum_value=m._duration_sum,
        )
        rejected = CounterMetricFamily(
            "riverside_rejected_connections",
            "Upgrade requests refused, by HTTP status",
            labels=["status"],
        )
        for status, n in sorted(m.rejected.items()):
            rejected.add_metric([str(status)], n)
        yield rejected
        disconnects = CounterMetricFamily(
            "riverside_disconnects", "Connections ended, by terminate reason", labels=["reason"]
        )
        for reason, n in sorted(m.disconnects.items()):
            disconnects.add_metric([reason], n)
        yield disconnects
        invalid = CounterMetricFamily(
            "riverside_invalid_messages",
            "Incoming messages ignored or refused: wrong frame type, undecodable, bad envelope",
            labels=["kind"],
        )
        for kind in ("wrong_type", "undecodable", "envelope"):
            invalid.add_metric([kind], m.invalid_messages[kind])
        yield invalid
        yield CounterMetricFamily(
            "riverside_dropped_messages",
            "Messages dropped because a client's outbox or mailbox was full",
            m.dropped,
        )
        yield GaugeMetricFamily(
            "riverside_pending_handshakes_count",
            "Sockets accepted that are not (yet) WebSocket connections",
            m.pending_handshakes,
        )
        refused = CounterMetricFamily(
            "riverside_refused_sockets",
            "Sockets closed at once when accepted, over a cap of pending handshakes",
            labels=["reason"],
        )
        for reason in ("pending_global", "pending_per_address"):
            refused.add_metric([reason], m.refused_sockets[reason])
        yield refused
        yield GaugeMetricFamily(
            "riverside_queued_bytes",
            "Bytes held for sending (outboxes, batches being written, mailboxes), node-wide",
            m.queued_bytes,
        )
        yield CounterMetricFamily(
            "riverside_memory_shed_connections",
            "Connections closed because the node's queued bytes went over max_queued_bytes",
            m.memory_shed_connections,
        )
        refusals = CounterMetricFamily(
            "riverside_auth_refused",
            "Upgrades refused by the Origin rules or by authenticate, by reason",
            labels=["reason"],
        )
        for reason, n in sorted(m.auth_refused.items()):
            refusals.add_metric([reason], n)
        yield refusals
        if m.api_requests:
            api = CounterMetricFamily(
                "riverside_api_requests",
                "HTTP control API requests, by route and HTTP status",
                labels=["route", "status"],
            )
            for (route, status), n in sorted(m.api_requests.items()):
                api.add_metric([route, str(status)], n)
            yield api
        if m.broker is not None:
            yield from m.broker.collect()
        if m.session_store is not None:
            yield from m.session_store.collect()
