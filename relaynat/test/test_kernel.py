"""
Splicing two real TCP connections, in the kernel and with the protocols'
fallback: every byte in order, half-close both ways, resets passed on, flow
control that bounds memory, and no descriptor or pipe left behind.
"""

from __future__ import annotations

import fcntl
import json
from collections import Counter
import os
import sys
from typing import Any, cast

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaynat import kernel
from relaynat.splice import OneProtocolFactory, ProtocolSplice, SpliceHalf, splice
from relaynat.test.net import endpointOf, listen, pollUntil, reactor, runAsync, waitStalled
from relaynat.test.streams import (
    Bulk,
    BulkFactory,
    Collect,
    Echo,
    ReplyAtEnd,
    StalledFactory,
    expectedDigest,
)

MB = 1024 * 1024


def openDescriptors() -> Counter[str]:
    """This process's open sockets and pipe ends, by kind."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            # The directory listing's own descriptor, closed by now.
            continue
        kind = target.split(":", 1)[0]
        if kind in ("socket", "pipe"):
            kinds[kind] += 1
    return kinds


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Accepted(SpliceHalf):
    """The hop's accepted side: held until its connection to the target is made."""

    factory: Hop

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keep(b"")
        self.factory.accepted(self)


class Hop(Factory):
    """A listener that splices each connection to a new one to C{target}."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.splices: list[Any] = []
        self.outcomes: list[Any] = []
        self.ends: list[str] = []

    def buildProtocol(self, addr: object) -> _Accepted:  # type: ignore[override]
        half = _Accepted("client")
        half.factory = self
        return half

    def accepted(self, half: _Accepted) -> None:
        far = SpliceHalf("server")
        d = self.target.connect(protocol.Factory.forProtocol(lambda: far))
        d.addCallback(lambda _: self.splices.append(
            splice(reactor, half, far, self._finished, ended=self.ends.append)
        ))
        d.addErrback(lambda _: half.transport.abortConnection())

    def _finished(self, joined: Any, outcome: Any) -> None:
        self.outcomes.append(outcome)


class _PeerProcess(protocol.ProcessProtocol):
    """A L{relaynat.test.bulkpeer} process: its port, then its report."""

    def __init__(self) -> None:
        self.port: Deferred[int] = Deferred()
        self.report: Deferred[dict[str, Any]] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._out = b""

    def outReceived(self, data: bytes) -> None:
        self._out += data
        while b"\n" in self._out:
            line, self._out = self._out.split(b"\n", 1)
            if line.startswith(b"PORT "):
                self.port.callback(int(line.split()[1]))
            else:
                self.report.callback(json.loads(line))

    def processEnded(self, reason: Failure) -> None:
        if not self.report.called:
            self.report.errback(reason)
        self.ended.callback(None)


def peer(*args: str) -> _PeerProcess:
    process = _PeerProcess()
    reactor.spawnProcess(
        process,
        sys.executable,
        [sys.executable, "-m", "relaynat.test.bulkpeer", *args],
        env=os.environ,
    )
    return process


class KernelSpliceTests(TestCase):
    """A hop that splices in the kernel, on real loopback sockets."""

    kernelPath = True

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        self.pool = kernel.PipePool()
        self.patch(kernel, "_POOL", self.pool)
        self.addCleanup(self.pool.close)
        if not self.kernelPath:
            self.patch(kernel, "available", lambda transport: False)
        # Counted once the reactor runs: it makes a pipe of its own at start.
        return deferLater(reactor, 0, self._countBaseline)

    def _countBaseline(self) -> None:
        self.baseline = openDescriptors()

    async def hop(self, target: Factory[Any]) -> tuple[Hop, Any]:
        server = await listen(target)
        self.addCleanup(server.stopListening)
        hop = Hop(endpointOf(server))
        port = await listen(hop)
        self.addCleanup(port.stopListening)
        return hop, endpointOf(port)

    async def settled(self, hop: Hop, count: int) -> None:
        """Every splice ended, its connections closed, no pipe in use."""
        await pollUntil(lambda: len(hop.outcomes) == count)
        await pollUntil(lambda: self.pool.inUse == 0)
        # What is left open: the two listeners and the pool's idle pipes.
        expected = lambda: Counter(socket=2, pipe=2 * self.pool.idle())  # noqa: E731
        try:
            await pollUntil(lambda: openDescriptors() - self.baseline == expected())
        except AssertionError:
            raise AssertionError(f"left open: {openDescriptors() - self.baseline}, expected {expected()}") from None

    def assertSpliceKind(self, hop: Hop) -> None:
        if self.kernelPath:
            directions = {type(s.engine.a.outgoing) for s in hop.splices}
            self.assertEqual(directions, {kernel.PipeDirection})
        else:
            self.assertEqual({type(s) for s in hop.splices}, {ProtocolSplice})

    @runAsync
    async def test_gibibyteEachWay(self) -> None:
        """1 GiB each way arrives whole and in order (sha256 of both directions)."""
        size = 1 << 30
        server = peer("listen", str(size), "1")
        serverPort = await server.port
        from twisted.internet.endpoints import TCP4ClientEndpoint

        hop = Hop(TCP4ClientEndpoint(reactor, "127.0.0.1", serverPort))
        port = await listen(hop)
        self.addCleanup(port.stopListening)
        client = peer("connect", str(cast(IPv4Address, port.getHost()).port), str(size), "2")
        near, far = await gatherResults([client.report, server.report])
        await gatherResults([client.ended, server.ended])
        self.assertEqual((near["gotBytes"], far["gotBytes"]), (size, size))
        self.assertEqual(near["sent"], far["got"])
        self.assertEqual(far["sent"], near["got"])
        self.assertSpliceKind(hop)
        await pollUntil(lambda: len(hop.outcomes) == 1)
        self.assertEqual(hop.outcomes, [None])
        self.assertEqual([hop.splices[0].carried(n) for n in ("client", "server")], [size, size])
        await pollUntil(lambda: self.pool.inUse == 0)

    @runAsync
    async def test_halfCloseFromClient(self) -> None:
        """A client that shuts its write side still gets the whole reply."""
        hop, endpoint = await self.hop(Factory.forProtocol(lambda: ReplyAtEnd(3 * MB)))
        collector = Collect(b"q" * 200_000, halfClose=True)
        await endpoint.connect(Factory.forProtocol(lambda: collector))
        self.assertEqual(await collector.finished, b"200000\n" + b"r" * (3 * MB))
        self.assertTrue(collector.reason is not None and collector.reason.check(ConnectionDone))
        await self.settled(hop, 1)
        self.assertEqual(hop.outcomes, [None])
        self.assertEqual(hop.ends[0], "client")

    @runAsync
    async def test_halfCloseFromServer(self) -> None:
        """A server that shuts its write side first still gets the client's bytes."""
        server = BulkFactory(2 * MB, seed=7)
        hop, endpoint = await self.hop(server)
        # The client sends only after the server's end arrives.
        done: Deferred[None] = Deferred()

        class Replier(ReplyAtEnd):
            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
                done.callback(None)

        client = Replier(1 * MB)
        await endpoint.connect(Factory.forProtocol(lambda: client))
        await pollUntil(lambda: bool(server.made))
        far = server.made[0]
        await far.finished
        self.assertEqual(far.gotBytes, len(b"%d\n" % (2 * MB)) + MB)
        await done
        await self.settled(hop, 1)
        self.assertEqual(hop.ends[0], "server")

    @runAsync
    async def test_resetPassedOn(self) -> None:
        """A client that resets its connection resets the server's, never a clean end."""
        lost: list[Failure] = []

        class Watch(Echo):
            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
                lost.append(reason)

        hop, endpoint = await self.hop(Factory.forProtocol(Watch))
        collector = Collect(b"hello")
        await endpoint.connect(Factory.forProtocol(lambda: collector))
        await pollUntil(lambda: collector.received == [b"hello"])
        assert collector.transport is not None
        collector.transport.abortConnection()  # type: ignore[attr-defined]
        await pollUntil(lambda: bool(lost))
        self.assertTrue(lost[0].check(ConnectionLost), lost[0])
        await self.settled(hop, 1)
        self.assertEqual(hop.outcomes[0][0], "client")

    @runAsync
    async def test_stalledReader(self) -> None:
        """
        A server that stops reading stalls the sender; this process's memory
        grows by under 10 MB and at most one pipe per direction is pinned;
        every byte arrives once the server reads again.
        """
        stalled = StalledFactory()
        hop, endpoint = await self.hop(stalled)
        size = 300 * MB
        sender = Bulk(size, seed=3)
        before = rss()
        await endpoint.connect(Factory.forProtocol(lambda: sender))
        await waitStalled(sender)
        self.assertLess(rss() - before, 10 * MB)
        self.assertLess(sender.sentBytes, 48 * MB)
        self.assertLessEqual(self.pool.inUse, 2)
        server = stalled.made[0]
        server.resume()
        await server.finished
        self.assertEqual((server.got, server.gotHash.hexdigest()), (size, expectedDigest(size, 3)))
        await sender.finished
        await self.settled(hop, 1)

    @runAsync
    async def test_concurrent(self) -> None:
        """200 spliced connections at once each carry their own bytes back."""
        hop, endpoint = await self.hop(Factory.forProtocol(Echo))
        messages = [b"%03d:" % i + bytes([i % 256]) * 20_000 for i in range(200)]
        collectors = [Collect(m, halfClose=True) for m in messages]
        await gatherResults([endpoint.connect(OneProtocolFactory(c)) for c in collectors])
        self.assertEqual(await gatherResults([c.finished for c in collectors]), messages)
        await self.settled(hop, 200)
        self.assertEqual(set(hop.outcomes), {None})
        self.assertSpliceKind(hop)

    @runAsync
    async def test_idleHoldsNoPipe(self) -> None:
        """A spliced connection with no bytes in flight holds no pipe."""
        hop, endpoint = await self.hop(Factory.forProtocol(Echo))
        collector = Collect(b"x" * 100_000)
        await endpoint.connect(Factory.forProtocol(lambda: collector))
        await pollUntil(lambda: sum(map(len, collector.received)) == 100_000)
        await pollUntil(lambda: self.pool.inUse == 0)
        assert collector.transport is not None
        collector.transport.loseConnection()
        await collector.finished
        await self.settled(hop, 1)


class ProtocolSpliceTests(KernelSpliceTests):
    """The same, through the protocols' fallback (no os.splice, a unix: socket)."""

    kernelPath = False


class PipePoolTests(SynchronousTestCase):
    """The pool's pipes: large while their memory stays within the budget."""

    def test_budget(self) -> None:
        """
        With room for two large pipes, the third is of the kernel's default
        size; a large pipe closed makes room again; every pipe is closed at
        the end.
        """
        pool = kernel.PipePool(size=2**20, limit=1, budget=2 * 2**20)
        pipes = [pool.take() for _ in range(3)]
        sizes = [fcntl.fcntl(p.write, fcntl.F_GETPIPE_SZ) for p in pipes]
        self.assertEqual(sizes, [2**20, 2**20, kernel.DEFAULT_PIPE])
        self.assertEqual([p.size for p in pipes], sizes)
        # One is kept idle (the limit), the others closed.
        for pipe in pipes:
            pool.give(pipe)
        self.assertEqual((pool.inUse, pool.idle()), (0, 1))
        self.assertEqual(pool.take().size, 2**20)
        self.assertEqual(pool.take().size, 2**20)
        pool.close()

    def test_closedAtTheEnd(self) -> None:
        """Pipes given back and then the pool closed leave no descriptor open."""
        before = openDescriptors()
        pool = kernel.PipePool()
        pipes = [pool.take() for _ in range(5)]
        for pipe in pipes:
            pool.give(pipe)
        pool.close()
        self.assertEqual(openDescriptors(), before)
