"""
Bursts: a client sets up at most L{client.SETUP_LIMIT} tunnels of one
listener at once, and a skeleton opens at most L{skeleton.OPEN_LIMIT} data
connections at once; the rest wait their turn, oldest first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaynat import client
from relaynat.client import LocalHalf, TunnelFactory
from relaynat.skeleton import FrontedServer, Skeleton, SkeletonControl


TICKET = b"t" * 32


class FakeLink:
    """What the client's factory and the skeleton need of a link here."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.session = None
        self.wanted: set[str] = set()


class FakeEnd:
    """A ready connection to the relay, as far as a local connection's setup sees it."""

    lost = None

    def __init__(self) -> None:
        self.attached: LocalHalf | None = None

    def attach(self, local: LocalHalf, finished: object) -> None:
        self.attached = local


class ClientSetupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.started: list[Deferred[FakeEnd]] = []

        async def take() -> FakeEnd:
            d: Deferred[FakeEnd] = Deferred()
            self.started.append(d)
            return await d

        self.patch(client, "SETUP_LIMIT", 2)
        self.factory = TunnelFactory(FakeLink(), "web", b"s")  # type: ignore[arg-type]
        self.factory.take = take  # type: ignore[method-assign,assignment]

    def connect(self) -> LocalHalf:
        local = self.factory.buildProtocol(None)
        local.makeConnection(StringTransport())
        return local

    def finish(self, index: int) -> FakeEnd:
        end = FakeEnd()
        self.started[index].callback(end)
        return end

    def test_burstWaitsItsTurn(self) -> None:
        """
        Four local connections at once: two are set up, two wait; each
        finished setup lets the oldest waiting one start.
        """
        locals = [self.connect() for _ in range(4)]
        self.assertEqual(len(self.started), 2)
        self.assertEqual(self.factory.settingUp(), 2)
        self.assertIs(self.finish(0).attached, locals[0])
        self.assertEqual(len(self.started), 3)
        self.started[1].errback(RuntimeError("no"))
        self.assertTrue(locals[1].transport.disconnecting)  # type: ignore[attr-defined]
        self.assertEqual(len(self.started), 4)
        self.assertEqual([self.finish(i).attached for i in (2, 3)], locals[2:])
        self.assertEqual(self.factory.settingUp(), 0)
        self.flushLoggedErrors()

    def test_goneWhileWaiting(self) -> None:
        """A local connection closed while it waited is never set up."""
        locals = [self.connect() for _ in range(3)]
        locals[2].connectionLost(Failure(ConnectionDone()))
        self.finish(0)
        self.assertEqual(len(self.started), 2)
        self.assertEqual(self.factory.settingUp(), 1)


class SkeletonOpenTests(SynchronousTestCase):
    def control(self, limit: int) -> SkeletonControl:
        """
        A connected control connection of a skeleton that opens C{limit}
        connections at once; each open waits on a Deferred in C{started}.
        """
        server = FrontedServer("web", "", object(), b"s")  # type: ignore[arg-type]
        skeleton = Skeleton(FakeLink(), "s", {"web": server})  # type: ignore[arg-type]
        skeleton.opening = DeferredSemaphore(limit)
        self.started: list[Deferred[None]] = []

        def offerConnection(serverId: str, ticket: bytes) -> Deferred[None]:
            self.started.append(Deferred())
            return self.started[-1]

        skeleton.offerConnection = offerConnection  # type: ignore[method-assign,assignment]
        control = SkeletonControl(skeleton)
        control.connected = True
        return control

    def test_opensWaitTheirTurn(self) -> None:
        """
        Of three L{OpenConnection} requests with room for two, the third
        starts when the first is done; each is answered as its own ends.
        """
        control = self.control(2)
        started = self.started
        answers: list[Deferred[Any]] = [control.openConnection("web", TICKET) for _ in range(3)]
        self.assertEqual(len(started), 2)
        started[0].callback(None)
        self.assertEqual(self.successResultOf(answers[0]), {})
        self.assertEqual(len(started), 3)
        self.assertNoResult(answers[2])
        started[2].callback(None)
        started[1].callback(None)
        self.assertEqual([self.successResultOf(a) for a in answers[1:]], [{}, {}])

    def test_controlGoneWhileWaiting(self) -> None:
        """
        A request still waiting its turn when the control connection closes
        opens nothing: the relay forgot it with that connection.
        """
        control = self.control(1)
        first, second = control.openConnection("web", TICKET), control.openConnection("web", TICKET)
        control.connected = False
        self.started[0].callback(None)
        self.assertEqual([self.successResultOf(first), self.successResultOf(second)], [{}, {}])
        self.assertEqual(len(self.started), 1)
