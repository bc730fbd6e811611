"""
The relay's metrics, in Prometheus's format (prometheus-client), each
relay with a registry of its own: what it counts as things happen (tunnels
set up, how long that took, refusals, failed logins, limits hit) and what it
reads off its books at each scrape (servers online, tunnels open, bytes
carried, connections not logged in).

Server ids are labels here: the web port shows these only to the networks
of C{[relay] metrics_allow} (see L{relaynat.web}).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: Setup latency buckets, in seconds: a join from the pool takes a
#: millisecond or two on a LAN, one from a fresh skeleton connection a
#: round trip more, and past the join timeout it fails.
SETUP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RelayMetrics:
    """What one relay counts; L{collecting} adds what it reads off its books."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tunnelsSetUp = PromCounter(
            "relaynat_tunnels_set_up", "Tunnels joined, by server.", ["server"],
            registry=self.registry,
        )
        self.setupSeconds = Histogram(
            "relaynat_tunnel_setup_seconds",
            "Seconds from a client's ticket to its join with a skeleton's connection.",
            buckets=SETUP_BUCKETS,
            registry=self.registry,
        )
        self.loginFailures = PromCounter(
            "relaynat_login_failures",
            "Logins refused, by reason (password: unknown user or wrong password;"
            " malformed; throttled: too many attempts from the source; wrong_port:"
            " a client at the skeletons' port, or a skeleton at the clients').",
            ["reason"],
            registry=self.registry,
        )
        self.refusals = PromCounter(
            "relaynat_join_refusals", "Client data connections not joined, by reason.",
            ["reason"], registry=self.registry,
        )
        #: Bytes of the tunnels that ended, by (server, direction).
        self.bytesDone: Counter[tuple[str, str]] = Counter()

    def collecting(self, relay: Any) -> None:
        """Read C{relay}'s books at every scrape, too."""
        self.registry.register(_Books(relay, self))


class _Books(Collector):
    """The relay's state, read when scraped."""

    def __init__(self, relay: Any, metrics: RelayMetrics) -> None:
        self.relay = relay
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        relay = self.relay
        counts = relay.registry.counts()
        yield GaugeMetricFamily(
            "relaynat_servers_online", "Servers registered by a connected skeleton.",
            value=counts["servers"],
        )
        yield GaugeMetricFamily(
            "relaynat_pooled_connections", "Idle skeleton connections waiting in pools.",
            value=counts["idle"],
        )
        yield GaugeMetricFamily(
            "relaynat_joins_waiting", "Client connections waiting for a skeleton's connection.",
            value=counts["waiting"],
        )
        open_ = GaugeMetricFamily(
            "relaynat_tunnels_open", "Tunnels joined and not ended, by server.", labels=["server"]
        )
        carried = Counter(self.metrics.bytesDone)
        byServer: Counter[str] = Counter()
        for tunnel in relay.tunnels:
            byServer[tunnel.server] += 1
            up, down = tunnel.carried()
            carried[(tunnel.server, "up")] += up
            carried[(tunnel.server, "down")] += down
        for server, count in sorted(byServer.items()):
            open_.add_metric([server], count)
        yield open_
        bytes_ = CounterMetricFamily(
            "relaynat_tunnel_bytes",
            "Bytes carried by tunnels, ended and open, by server and direction"
            " (up: client to server).",
            labels=["server", "direction"],
        )
        for (server, direction), count in sorted(carried.items()):
            bytes_.add_metric([server, direction], count)
        yield bytes_
        yield GaugeMetricFamily(
            "relaynat_unauthenticated_connections",
            "Connections not logged in, or without a good ticket yet.",
            value=len(relay.lobby),
        )
        yield GaugeMetricFamily(
            "relaynat_sessions", "Logins in force.", value=len(relay.sessions)
        )
        yield GaugeMetricFamily(
            "relaynat_skeletons", "Skeletons registered.", value=len(relay.skeletons)
        )
        hits = CounterMetricFamily(
            "relaynat_limits_hit",
            "Times a limit of [relay] refused or dropped something, by its key.",
            labels=["limit"],
        )
        byLimit = Counter(relay.timeouts)
        byLimit["max_unauthenticated"] += relay.lobby.evicted["total"]
        byLimit["max_unauthenticated_per_source"] += relay.lobby.evicted["source"]
        for cap, count in relay.usage.hits.items():
            byLimit[_USAGE_KEYS[cap]] += count
        for limit, count in sorted(byLimit.items()):
            hits.add_metric([limit], count)
        yield hits


#: L{relaynat.caps.Usage}'s caps, by the C{[relay]} keys that set them.
_USAGE_KEYS = {
    "pending": "max_pending",
    "tunnels": "max_tunnels_per_user",
    "servers": "max_servers_per_user",
}


class _Ends(Collector):
    """A skeleton's or a client's state, read when scraped."""

    def __init__(self, read: Any) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        yield from self.read()


def clientRegistry(factories: Any) -> CollectorRegistry:
    """
    A client's metrics: C{factories()} gives its tunnels' factories (the
    set changes on a reload), each with its server id, the connections it
    keeps ready, those being set up and carrying, and what became of local
    connections.
    """

    def read() -> Iterator[Any]:
        ready = GaugeMetricFamily(
            "relaynat_client_ready_connections", "Connections joined and proven, ready for use.",
            labels=["server"],
        )
        carrying = GaugeMetricFamily(
            "relaynat_client_tunnels_open", "Tunnels carrying now.", labels=["server"]
        )
        outcomes = CounterMetricFamily(
            "relaynat_client_tunnels",
            "Local connections by outcome (set_up, ended, cut, or the error that failed one).",
            labels=["server", "outcome"],
        )
        for factory in factories():
            ready.add_metric([factory.serverId], factory.readyNow())
            carrying.add_metric([factory.serverId], factory.carrying)
            for outcome, count in sorted(factory.outcomes.items()):
                outcomes.add_metric([factory.serverId, outcome], count)
        yield from (ready, carrying, outcomes)

    registry = CollectorRegistry()
    registry.register(_Ends(read))
    return registry


def skeletonRegistry(skeleton: Any) -> CollectorRegistry:
    """A skeleton's metrics: its connections to the relay, and its tunnels by outcome."""

    def read() -> Iterator[Any]:
        yield GaugeMetricFamily(
            "relaynat_skeleton_data_connections",
            "Data connections to the relay: pooled, being set up, or carrying.",
            value=len(skeleton.dataConnections),
        )
        yield GaugeMetricFamily(
            "relaynat_skeleton_servers", "Servers this skeleton fronts.",
            value=len(skeleton.servers),
        )
        outcomes = CounterMetricFamily(
            "relaynat_skeleton_tunnels", "Tunnels by server and outcome (opened, target_refused).",
            labels=["server", "outcome"],
        )
        for (server, outcome), count in sorted(skeleton.outcomes.items()):
            outcomes.add_metric([server, outcome], count)
        yield outcomes

    registry = CollectorRegistry()
    registry.register(_Ends(read))
    return registry
