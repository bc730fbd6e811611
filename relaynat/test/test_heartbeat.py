"""
Heartbeats and bounded waits on real loopback sockets: silent skeletons are
dropped and come back, control connections ping, every data connection has
TCP keepalive, dead pooled connections are replaced, and a pooled connection
that never answers a handshake does not hang the client.
"""

from __future__ import annotations

import socket

from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from relaynat import client
from relaynat.relay import ClientChannel, DataConnection
from relaynat.test.loopback import Stack
from relaynat.test.net import openConnections, pollUntil, runAsync
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
        # The relay has the registration before the skeleton's service holds
        # the connection: the test ends once it does.
        registered = stack.services[-1].whenConnected()
        await pollUntil(lambda: registered.called)
        self.assertNotIn(firstSession, relay.skeletons)

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
    async def test_clientPingsKeepItHeard(self) -> None:
        """The client's control connection pings the relay too."""
        stack = await self.startStack(heartbeat=0.05)
        [control] = [c for c in openChannels(stack) if isinstance(c, ClientChannel)]
        first = control.lastHeard
        await pollUntil(lambda: control.lastHeard > first + 0.2)

    @runAsync
    async def test_resetPooledConnectionReplaced(self) -> None:
        """
        A pooled connection that the network resets is dropped from the
        pool at once and replaced by a fresh one.
        """
        stack = await self.startStack()
        relay = stack.relay
        [idle] = relay.registry.idleConnections()
        [pooled] = [c for c in stack.skeleton.dataConnections if c.sealed is None]
        pooled.transport.abortConnection()
        await pollUntil(lambda: relay.registry.idleConnections() not in ([], [idle]))
        self.assertIsInstance(relay.registry.idleConnections()[0], DataConnection)

    @runAsync
    async def test_keepAlive(self) -> None:
        """
        Every data connection, at all three roles, pooled, ready or carrying
        a tunnel, has TCP keepalive with probes after 20 s idle, every 10 s,
        3 times: a NAT that dropped it is noticed within a minute.
        """
        stack = await self.startStack()
        collector = Collect(b"x")
        await stack.connect("echo", collector)
        await pollUntil(lambda: collector.received == [b"x"])
        relaySide = [c for c in openConnections() if isinstance(protocolOf(c), DataConnection)]
        ends = [c.transport for c in stack.skeleton.dataConnections]
        ends += [e.transport for e in stack.tunnelFactories["echo"].readyEnds()]
        self.assertGreaterEqual(len(relaySide), 4)
        for transport in relaySide + ends:
            handle = transport.getHandle()
            self.assertEqual(
                [
                    handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                ],
                [1, 20, 10, 3],
            )
        assert collector.transport is not None
        collector.transport.loseConnection()
        await collector.finished

    @runAsync
    async def test_unansweredHandshakeRetried(self) -> None:
        """
        A pooled connection whose skeleton never answers the tunnel's
        handshake fails the setup after the client's wait, and the tunnel is
        set up once more on a fresh connection.
        """
        self.patch(client, "HANDSHAKE_WAIT", 0.3)
        stack = await self.startStack()
        factory = stack.tunnelFactories["echo"]
        # No connection kept ready: the next local connection opens one.
        factory.readyCount = 0
        for end in factory.readyEnds():
            end.transport.loseConnection()
        await pollUntil(lambda: factory.readyNow() == 0)
        [pooled] = [c for c in stack.skeleton.dataConnections if c.sealed is None]
        pooled.transport.pauseProducing()
        collector = Collect(b"still works", halfClose=True)
        await stack.connect("echo", collector)
        self.assertEqual(await collector.finished, b"still works")
        # The client gave the silent connection up: once the skeleton reads
        # again, it sees the close.
        pooled.transport.resumeProducing()
        await pollUntil(lambda: pooled not in stack.skeleton.dataConnections)


def protocolOf(transport: object) -> object:
    """The protocol a relay's port gave this connection to."""
    first = getattr(transport, "protocol", None)
    return getattr(first, "inner", first)


def openChannels(stack: Stack) -> list[object]:
    """The relay's control channels, under their TLS."""
    found = []
    for transport in openConnections():
        inner = protocolOf(transport)
        wrapped = getattr(inner, "wrappedProtocol", None)
        if wrapped is not None:
            found.append(wrapped)
    return found
