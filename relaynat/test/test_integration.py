"""
The relay, a skeleton and a client in one process on real loopback sockets:
bytes, concurrency, half-close, backpressure, failures and clean-up.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper
from twisted.trial.unittest import TestCase

from relaynat.client import ClientEnd, LocalHalf, TunnelFactory, listServers
from relaynat.skeleton import FrontedServer, RelayEnd, Skeleton, SkeletonControl
from relaynat.splice import READ_SIZE
from relaynat.test.loopback import Stack
from relaynat.test.net import endpointOf, listen, openConnections, pollUntil, runAsync, waitStalled
from relaynat.test.streams import (
    Bulk,
    BulkFactory,
    Collect,
    Echo,
    ReplyAtEnd,
    Stalled,
    StalledFactory,
    expectedDigest,
)
from relaynat.wire import DuplicateServer, ServerOffline, UnknownServer

MB = 1024 * 1024


def tcpUnder(transport: Any) -> Any:
    """The TCP transport under a TLS one (or the transport itself)."""
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


def protocolOf(transport: Any) -> Any:
    """The protocol of a TCP connection, under an endpoint's wrapper."""
    protocol = transport.protocol
    return getattr(protocol, "_wrappedProtocol", protocol)


def logged(test: TestCase) -> list[dict[str, Any]]:
    """Every log event from now to the end of C{test}."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    test.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, events.append))
    return events


class IntegrationTests(TestCase):
    """Real sockets, the real roles, one reactor; tunnels sealed."""

    sealed = True

    async def startStack(self, targets: dict, **kw) -> Stack:  # type: ignore[type-arg]
        stack = await Stack().start(targets, sealed=self.sealed, **kw)
        self.addCleanup(stack.stop)
        return stack

    async def assertNoLeaks(self, stack: Stack) -> None:
        """
        Tunnels close on every hop, and what is left is the skeleton's and
        the client's control connections (two sockets each, in this
        process), the skeleton's refilled pool (two) and the client's
        connections kept ready (four: each is joined at the relay).
        """
        ready = sum(f.readyCount for f in stack.tunnelFactories.values())
        # The relay cannot tell a connection kept ready from a tunnel in use.
        await pollUntil(lambda: len(stack.relay.tunnels) == ready)
        counts = stack.relay.registry.counts
        await pollUntil(lambda: (counts()["waiting"], counts()["requested"]) == (0, 0))
        await pollUntil(
            lambda: all(f.readyNow() == f.readyCount for f in stack.tunnelFactories.values())
        )
        expected = lambda: 2 * 2 + 2 * counts()["idle"] + 4 * ready  # noqa: E731
        await pollUntil(lambda: len(openConnections()) == expected())

    @runAsync
    async def test_bulkBothWays(self) -> None:
        """
        50 MB each way arrive whole and in order: the sha256 of what each end
        sent equals the sha256 of what the other end received.
        """
        size = 50 * MB
        server = BulkFactory(size, seed=2)
        stack = await self.startStack({"bulk": server})
        client = Bulk(size, seed=1)
        await stack.connect("bulk", client)
        await client.finished
        await pollUntil(lambda: server.made and server.made[0].finished.called)
        far = server.made[0]
        self.assertEqual((client.gotBytes, far.gotBytes), (size, size))
        self.assertEqual(far.gotHash.hexdigest(), expectedDigest(size, 1))
        self.assertEqual(client.gotHash.hexdigest(), expectedDigest(size, 2))
        await self.assertNoLeaks(stack)

    @runAsync
    async def test_concurrentTunnels(self) -> None:
        """200 tunnels to one server at once all carry their own bytes back."""
        stack = await self.startStack({"echo": Factory.forProtocol(Echo)})
        messages = [b"%03d:" % i + bytes([i % 256]) * 5000 for i in range(200)]
        collectors = [Collect(m, halfClose=True) for m in messages]
        await gatherResults([stack.connect("echo", c) for c in collectors])
        answers = await gatherResults([c.finished for c in collectors])
        self.assertEqual(answers, messages)
        await self.assertNoLeaks(stack)

    @runAsync
    async def test_halfClose(self) -> None:
        """
        A client that sends and shuts its write side still receives the
        server's whole reply, which the server only sends after that end.
        """
        stack = await self.startStack({"rae": Factory.forProtocol(lambda: ReplyAtEnd(2 * MB))})
        collector = Collect(b"q" * 300_000, halfClose=True)
        await stack.connect("rae", collector)
        answer = await collector.finished
        self.assertEqual(answer, b"300000\n" + b"r" * (2 * MB))
        await self.assertNoLeaks(stack)

    @runAsync
    async def test_backpressure(self) -> None:
        """
        A server that stops reading stalls the client's sender: the sender is
        paused by flow control, and what it got rid of stays bounded (kernel
        socket buffers on six sockets plus 64 KiB per transport) instead of
        growing with the time it pushes.  When the server reads again, every
        byte arrives in order.
        """
        stalled = StalledFactory()
        stack = await self.startStack({"slow": stalled})
        size = 400 * MB
        sender = Bulk(size, seed=3)
        await stack.connect("slow", sender)

        await waitStalled(sender)
        self.assertLess(sender.sentBytes, 64 * MB)
        self.assertGreater(sender.toSend, 300 * MB)

        server = stalled.made[0]
        server.resume()
        await server.finished
        self.assertEqual(server.got, size)
        self.assertEqual(server.gotHash.hexdigest(), expectedDigest(size, 3))
        await sender.finished
        await self.assertNoLeaks(stack)

    @runAsync
    async def test_backpressureTowardsClient(self) -> None:
        """
        The same the other way: a client that stops reading stalls the
        server's sender, and every byte arrives once it reads again.
        """
        size = 400 * MB
        server = BulkFactory(size, seed=4)
        stack = await self.startStack({"fast": server})
        reader = Stalled()
        reader.factory = StalledFactory()
        await stack.connect("fast", reader)
        await pollUntil(lambda: bool(server.made))
        sender = server.made[0]
        await waitStalled(sender)
        self.assertLess(sender.sentBytes, 64 * MB)
        reader.resume()
        await reader.finished
        self.assertEqual(reader.got, size)
        self.assertEqual(reader.gotHash.hexdigest(), expectedDigest(size, 4))
        await self.assertNoLeaks(stack)

    @runAsync
    async def test_targetRefused(self) -> None:
        """
        A registered server whose target refuses: the client resets the
        local connection and logs why, in one line.
        """
        unused = await listen(Factory.forProtocol(Echo))
        deadPort = cast(IPv4Address, unused.getHost()).port
        await cast(Deferred[None], unused.stopListening())
        stack = await self.startStack({"web": deadPort})
        events = logged(self)
        collector = Collect(b"hello")
        await stack.connect("web", collector)
        self.assertEqual(await collector.finished, b"")
        assert collector.reason is not None
        self.assertFalse(collector.reason.check(ConnectionDone))
        await pollUntil(lambda: any("target refused" in formatEvent(e) for e in events))
        lines = [formatEvent(e) for e in events if "tunnel to web failed" in formatEvent(e)]
        self.assertEqual(
            lines,
            ["tunnel to web failed: server web is registered but its target refused the connection"],
        )
        await self.assertNoLeaks(stack)

    @runAsync
    async def test_unknownAndOffline(self) -> None:
        """
        An id never registered and an id whose skeleton left get their own
        errors; the skeleton's leaving empties the server list.
        """
        stack = await self.startStack({"echo": Factory.forProtocol(Echo)})
        link = stack.clientLink
        self.assertEqual([s["id"] for s in await listServers(link)], ["echo"])
        nowhere = TunnelFactory(link, "nope", b"s" * 32)
        error: Exception = cast(
            UnknownServer,
            await self.assertFailure(ensureDeferred(nowhere.openEnd()), UnknownServer),
        )
        self.assertIn("no server nope", str(error))
        await stack.stopSkeleton()
        await pollUntil(lambda: not stack.relay.registry.counts()["servers"])
        self.assertEqual(await listServers(link), [])
        offline = TunnelFactory(link, "echo", stack.secrets["echo"])
        error = cast(
            ServerOffline,
            await self.assertFailure(ensureDeferred(offline.openEnd()), ServerOffline),
        )
        self.assertIn("server echo is offline", str(error))

    @runAsync
    async def test_poolMissAndRefill(self) -> None:
        """
        With a pool of one, two tunnels at once both succeed (the second from
        a connection opened on demand) and the pool is full again afterwards.
        """
        stack = await self.startStack({"echo": Factory.forProtocol(Echo)}, pool=1)
        collectors = [Collect(b"x%d" % i, halfClose=True) for i in range(2)]
        await DeferredList([stack.connect("echo", c) for c in collectors])
        self.assertEqual(
            await gatherResults([c.finished for c in collectors]), [b"x0", b"x1"]
        )
        await pollUntil(lambda: stack.relay.registry.counts()["idle"] == 1)
        await self.assertNoLeaks(stack)


class UnsealedIntegrationTests(IntegrationTests):
    """The same with the server not sealed: the ends splice in the kernel too."""

    sealed = False


class ReadSizeTests(TestCase):
    @runAsync
    async def test_tunnelsReadLarge(self) -> None:
        """
        Every TCP connection a tunnel's bytes cross at the ends reads and
        buffers L{READ_SIZE} at a time; control connections keep Twisted's
        default.
        """
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        collector = Collect(b"x")
        await stack.connect("echo", collector)
        await pollUntil(lambda: collector.received == [b"x"])
        kinds = (LocalHalf, ClientEnd, RelayEnd)
        ends = [c for c in openConnections() if isinstance(protocolOf(c), kinds)]
        self.assertEqual({type(protocolOf(c)) for c in ends}, set(kinds))
        self.assertEqual({c.bufferSize for c in ends}, {READ_SIZE})
        [control] = stack.relay.skeletons.values()
        self.assertEqual(tcpUnder(control.transport).bufferSize, 2**16)
        assert collector.transport is not None
        collector.transport.loseConnection()
        await collector.finished


class RelayBooksTests(TestCase):
    """What the relay tells its operator, and what it tells nobody."""

    @runAsync
    async def test_tunnelEndLogged(self) -> None:
        """
        The end of each tunnel is logged with its server id, the bytes each
        way, the duration and which side closed it.
        """
        events: list[dict] = []  # type: ignore[type-arg]
        globalLogPublisher.addObserver(cast(ILogObserver, events.append))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, events.append))
        stack = await Stack().start({"rae": Factory.forProtocol(lambda: ReplyAtEnd(1000))})
        self.addCleanup(stack.stop)
        collector = Collect(b"q" * 123, halfClose=True)
        await stack.connect("rae", collector)
        await collector.finished
        await pollUntil(lambda: any("ended" in e.get("log_format", "") for e in events))
        [end] = [e for e in events if "ended" in e.get("log_format", "")]
        # Bytes on the wire, sealed: the handshake message (51 bytes), then
        # records of 19 bytes and their body each: BEGIN, the payload in one
        # read, END.  Down: message 2 (51), BEGIN, the reply in one or more
        # reads, END.
        self.assertEqual((end["server"], end["user"], end["up"]), ("rae", "alice", 51 + 19 + (19 + 123) + 19))
        self.assertGreaterEqual(end["down"], 51 + 19 + (19 + 1004) + 19)
        # Each end closes once both ways are done; either may come first.
        self.assertIn(end["how"], ["closed by server", "closed by client"])
        self.assertGreaterEqual(end["duration"], 0)
        self.assertIn("rae", formatEvent(end))

    @runAsync
    async def test_quietPerTunnel(self) -> None:
        """
        A tunnel costs the three roles' logs three lines in all: joined and
        ended at the relay, opened at the skeleton; no factory's start and
        stop lines for the connections it takes.
        """
        stack = await Stack().start({"rae": Factory.forProtocol(lambda: ReplyAtEnd(10))})
        self.addCleanup(stack.stop)
        await pollUntil(lambda: stack.relay.registry.counts()["idle"] == 1)
        events: list[dict] = []  # type: ignore[type-arg]
        globalLogPublisher.addObserver(cast(ILogObserver, events.append))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, events.append))
        collector = Collect(b"q", halfClose=True)
        await stack.connect("rae", collector)
        await collector.finished
        factory = stack.tunnelFactories["rae"]
        await pollUntil(lambda: len(stack.relay.tunnels) == factory.readyCount)
        await pollUntil(lambda: factory.readyNow() == factory.readyCount)
        await pollUntil(lambda: stack.relay.registry.counts()["idle"] == 1)
        lines = sorted(formatEvent(e) for e in events)
        # The tunnel's end at the relay, its start at the skeleton, and the
        # join of the connection kept ready that replaces it.
        self.assertEqual(len(lines), 3, lines)
        self.assertFalse([line for line in lines if "factory" in line.lower()])

    @runAsync
    async def test_duplicateServerRefused(self) -> None:
        """
        A second skeleton claiming a registered id is refused with an error
        that names the id and the first skeleton, but no address; the first
        keeps its server.
        """
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        link = stack.link(stack.skeletonPort, "alice")
        target = endpointOf(stack.targetPorts["echo"])
        second = Skeleton(link, "intruder", {"echo": FrontedServer("echo", "", target, b"s" * 32)})
        control = await link.connect(
            cast(SkeletonControl, second.controlFactory().buildProtocol(None))
        )
        self.addCleanup(control.transport.loseConnection)
        error = cast(
            DuplicateServer, await self.assertFailure(second.register(control), DuplicateServer)
        )
        self.assertEqual(
            str(error),
            "server echo is already registered by another skeleton;"
            " give this one another id, or stop the other skeleton",
        )
        self.assertNotIn("127.0.0.1", str(error))
        [entry] = stack.relay.registry.listing()
        self.assertEqual(entry["description"], "test echo")


class ReadyConnectionTests(TestCase):
    """The client opens connections to the relay before they are needed."""

    @runAsync
    async def test_tunnelUsesReadyConnection(self) -> None:
        """
        A local connection is carried on a connection opened in advance,
        and another is opened to take its place.
        """
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        factory = stack.tunnelFactories["echo"]
        oldest = factory.readyEnds()[0]
        collector = Collect(b"ready", halfClose=True)
        await stack.connect("echo", collector)
        self.assertEqual(await collector.finished, b"ready")
        self.assertIsNotNone(oldest.splice)
        await pollUntil(lambda: factory.readyNow() == factory.readyCount)
        self.assertNotIn(oldest, factory.readyEnds())

    @runAsync
    async def test_readyConnectionsClosedWithListener(self) -> None:
        """Stopping the local listener closes the connections kept ready."""
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        factory = stack.tunnelFactories["echo"]
        channels = factory.readyEnds()
        self.assertEqual(len(channels), 2)
        port = stack.locals["echo"]
        stack.ports.remove(port)
        await cast(Deferred[None], port.stopListening())
        await pollUntil(lambda: not any(c.connected for c in channels))
        self.assertEqual(factory.readyNow(), 0)
