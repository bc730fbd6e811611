"""
Heartbeats and bounded waits on real loopback sockets: silent skeletons are
dropped and come back, dead pooled connections are replaced, and a pooled
connection that never answers a join does not hang the client.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from relaynat.relay import SkeletonChannel
from relaynat.test.loopback import Stack
from relaynat.test.net import pollUntil, runAsync
from relaynat.test.streams import Collect, Echo


class HeartbeatTests(TestCase):
    """The relay's heartbeat and the skeleton's pings."""

    async def startStack(self, **kw: object) -> Stack:
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)}, **kw)  # type: ignore[arg-type]
        self.addCleanup(stack.stop)
        return stack

    @runAsync
    async def test_silentSkeletonDropped(self) -> None:
        """
        A skeleton silent past the relay's limit is dropped (its servers go
        offline, so a moved skeleton can register again), and the skeleton's
        ClientService reconnects and registers again.
        """
        stack = await self.startStack()
        relay = stack.relay
        firstSession = next(iter(relay.skeletons))
        relay.silenceLimit = 0.0
        relay.heartbeat()
        await pollUntil(lambda: firstSession not in relay.skeletons)
        relay.silenceLimit = 3600.0
        await pollUntil(lambda: relay.registry.counts()["servers"] == 1, timeout=15)
        # The relay has the registration before the skeleton has its answer;
        # stopping the skeleton's ClientService in between cancels its
        # prepareConnection, and Twisted's ClientService then meets the
        # aborted connection's loss in its Stopped state (NoTransition).
        # Polled, not awaited: the test must not end inside the service's
        # own transition, where stopping it would be reentrant.
        registered = stack.services[-1].whenConnected()
        await pollUntil(lambda: registered.called)
        self.assertNotIn(firstSession, relay.skeletons)
        self.flushLoggedErrors()

    @runAsync
    async def test_skeletonPingsKeepItHeard(self) -> None:
        """The skeleton's pings reach the relay: its last-heard time moves on."""
        stack = await self.startStack(heartbeat=0.05)
        control = next(iter(stack.relay.skeletons.values()))
        first = control.lastHeard
        await pollUntil(lambda: control.lastHeard > first + 0.2)
        stack.relay.silenceLimit = 1.0
        stack.relay.heartbeat()
        self.assertIn(control, stack.relay.skeletons.values())

    @runAsync
    async def test_deadPooledConnectionReplaced(self) -> None:
        """
        An idle pooled connection that stops answering is dropped by the
        relay's probe and the pool is refilled with a fresh one.
        """
        stack = await self.startStack()
        relay = stack.relay
        relay.pingTimeout = 0.1
        [idle] = relay.registry.idleConnections()
        [pooled] = stack.skeleton.dataChannels
        pooled.transport.pauseProducing()
        relay.heartbeat()
        await pollUntil(
            lambda: relay.registry.idleConnections() not in ([], [idle])
        )
        self.assertFalse(cast(SkeletonChannel, idle).connected)
        self.assertIsInstance(relay.registry.idleConnections()[0], SkeletonChannel)

    @runAsync
    async def test_unansweredJoinRetried(self) -> None:
        """
        A pooled connection that never answers the join is dropped after
        the join timeout, and the tunnel is joined on a fresh connection.
        """
        stack = await self.startStack(joinTimeout=0.3)
        [pooled] = stack.skeleton.dataChannels
        pooled.transport.pauseProducing()
        collector = Collect(b"still works", halfClose=True)
        await stack.connect("echo", collector)
        self.assertEqual(await collector.finished, b"still works")
        # The relay dropped the silent connection: once the skeleton reads
        # again, it sees the close.
        pooled.transport.resumeProducing()
        await pollUntil(lambda: pooled not in stack.skeleton.dataChannels)
