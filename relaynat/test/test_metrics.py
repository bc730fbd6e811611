"""The relay's metrics (L{relaynat.metrics}) after real tunnels, refusals and failed logins."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from relaynat.channel import Channel
from relaynat.metrics import clientRegistry, skeletonRegistry
from relaynat.test.loopback import Stack
from relaynat.test.net import pollUntil, runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.wire import LoginFailed


def samplesOf(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of C{registry}, by name and labels."""
    text = generate_latest(registry).decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the relay's metrics, by name and labels."""
    return samplesOf(stack.relay.metrics.registry)


class RelayMetricsTests(TestCase):
    @runAsync
    async def test_afterTunnelsAndRefusals(self) -> None:
        """
        Servers online, tunnels set up and open by server, bytes each way,
        the setup latency histogram, failed logins and refusals by reason
        are all there and count what happened.
        """
        stack = await Stack().start({"web": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        stack.relay.failedLoginDelay = 0.0
        before = scrape(stack)
        # The client's two ready connections are joined tunnels already.
        self.assertEqual(before[("relaynat_servers_online", ())], 1)
        self.assertEqual(before[("relaynat_tunnels_open", (("server", "web"),))], 2)
        collector = Collect(b"x" * 1000, halfClose=True)
        await stack.connect("web", collector)
        await collector.finished
        await pollUntil(lambda: len(stack.relay.tunnels) == 2)
        link = stack.link(stack.clientPort, "alice", "wrong")
        channel = await link.connect(Channel())
        await self.assertFailure(Deferred.fromCoroutine(link.login(channel, "client")), LoginFailed)
        after = scrape(stack)
        web = (("server", "web"),)
        self.assertEqual(
            after[("relaynat_tunnels_set_up_total", web)]
            - before[("relaynat_tunnels_set_up_total", web)],
            1,
        )
        self.assertGreaterEqual(after[("relaynat_tunnels_set_up_total", web)], 3)
        up = after[("relaynat_tunnel_bytes_total", (("direction", "up"), ("server", "web")))]
        down = after[("relaynat_tunnel_bytes_total", (("direction", "down"), ("server", "web")))]
        # Sealed: the records and the handshake are a little more than the 1000 bytes.
        self.assertGreater(up, 1000)
        self.assertGreater(down, 1000)
        self.assertEqual(after[("relaynat_tunnel_setup_seconds_count", ())], after[("relaynat_tunnels_set_up_total", web)])
        self.assertEqual(after[("relaynat_login_failures_total", (("reason", "password"),))], 1)
        # The failed login's connection, closed by the relay once answered.
        self.assertEqual(after[("relaynat_unauthenticated_connections", ())], 1)
        await pollUntil(lambda: scrape(stack)[("relaynat_unauthenticated_connections", ())] == 0)
        self.assertEqual(after[("relaynat_sessions", ())], 2)


class EndsMetricsTests(TestCase):
    @runAsync
    async def test_clientAndSkeleton(self) -> None:
        """
        The client's metrics count its ready connections, open tunnels and
        their outcomes; the skeleton's its data connections and tunnels
        opened, by server.
        """
        stack = await Stack().start({"web": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        client = clientRegistry(lambda: stack.tunnelFactories.values())
        skeleton = skeletonRegistry(stack.skeleton)
        collector = Collect(b"hello", halfClose=True)
        await stack.connect("web", collector)
        self.assertEqual(await collector.finished, b"hello")
        factory = stack.tunnelFactories["web"]
        await pollUntil(lambda: factory.carrying == 0 and factory.readyNow() == 2)
        ends = samplesOf(client)
        web = (("server", "web"),)
        self.assertEqual(ends[("relaynat_client_ready_connections", web)], 2)
        self.assertEqual(ends[("relaynat_client_tunnels_open", web)], 0)
        self.assertEqual(
            ends[("relaynat_client_tunnels_total", (("outcome", "set_up"), ("server", "web")))], 1
        )
        self.assertEqual(
            ends[("relaynat_client_tunnels_total", (("outcome", "ended"), ("server", "web")))], 1
        )
        far = samplesOf(skeleton)
        self.assertEqual(
            far[("relaynat_skeleton_tunnels_total", (("outcome", "opened"), ("server", "web")))], 1
        )
        self.assertGreaterEqual(far[("relaynat_skeleton_data_connections", ())], 2)
        self.assertEqual(far[("relaynat_skeleton_servers", ())], 1)
