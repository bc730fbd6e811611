"""
The relay's AMP responders and the join, driven over L{twisted.test.iosim}:
every connection is an in-memory pair on a L{MemoryReactorClock}, completed
and pumped by hand until nothing moves, so no socket and no real time is
involved.  The real roles (L{Relay}, L{Skeleton}) talk to each other, or a
bare AMP peer stands in for one side to send what a real one would not.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.test.iosim import ConnectionCompleter, IOPump
from twisted.trial.unittest import SynchronousTestCase

from relaynat.relay import Relay
from relaynat.skeleton import FrontedServer, Skeleton, SkeletonControl
from relaynat.splice import OneProtocolFactory
from relaynat.test.streams import Collect, Echo
from relaynat.wire import (
    BadRequest,
    Channel,
    DuplicateServer,
    JoinTimeout,
    ListServers,
    Offer,
    OpenConnection,
    Ping,
    Register,
    SkeletonGone,
    TargetRefused,
    Tunnel,
    UnknownServer,
    UnknownSession,
)

P = TypeVar("P", bound=Protocol)

#: Port numbers on the memory reactor: nothing is bound, they only pair
#: connectors with listeners.
CLIENTS, SKELETONS, TARGET, NOBODY = 7000, 7001, 8000, 9999


class Network:
    """
    A L{MemoryReactorClock} whose TCP connections are completed and pumped
    by L{settle}, for as long as anything moves.
    """

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.completer = ConnectionCompleter(self.reactor)
        self.pumps: list[IOPump] = []

    def endpoint(self, port: int) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "192.0.2.1", port)

    def settle(self) -> None:
        """Complete every connection that has a listener; pump until idle."""
        for _ in range(1000):
            moved = False
            while (pump := self.completer.succeedOnce()) is not None:
                self.pumps.append(pump)
                moved = True
            for pump in self.pumps:
                moved = pump.flush() or moved
            if not moved:
                return
        raise AssertionError("the network never settled")

    def pending(self) -> list[int]:
        """Ports of the connection attempts nobody has completed."""
        return [port for _, port, _, _, _ in self.reactor.tcpClients]


class StalledSkeleton(Channel):
    """
    A skeleton's control connection that registers like a real one but
    answers L{OpenConnection} only when the test fires the Deferreds it
    keeps in C{asked}: the test decides when, and whether, it succeeds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[Deferred[dict[str, object]]] = []

    @OpenConnection.responder
    def openConnection(self, server: str) -> Deferred[dict[str, object]]:
        d: Deferred[dict[str, object]] = Deferred()
        self.asked.append(d)
        return d


class Deaf(Channel):
    """A data connection that never answers the relay's pings."""

    @Ping.responder
    def _ping(self) -> Deferred[dict[str, object]]:  # type: ignore[override]
        return Deferred()


class Raw(Protocol):
    """A peer that writes what it is told and keeps what it receives."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def boxes(self) -> list[amp.AmpBox]:
        """The AMP boxes received so far (only valid before any switch)."""
        return amp.parseString(self.received)  # type: ignore[no-any-return]


class Recording(Factory):
    """A factory that keeps every protocol another factory builds."""

    def __init__(self, wrapped: Factory) -> None:
        self.wrapped = wrapped
        self.built: list[Any] = []

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol = self.wrapped.buildProtocol(addr)
        self.built.append(protocol)
        return protocol


class RelayTestCase(SynchronousTestCase):
    """A relay on a memory network, with an echo server as the target."""

    joinTimeout = 5.0

    def setUp(self) -> None:
        self.net = Network()
        self.reactor = self.net.reactor
        self.relay = Relay(self.reactor, joinTimeout=self.joinTimeout)
        clients = self.relay.clientFactory()
        skeletons = Recording(self.relay.skeletonFactory())
        self.skeletonChannels = skeletons.built
        self.reactor.listenTCP(CLIENTS, clients)
        self.reactor.listenTCP(SKELETONS, skeletons)
        self.echoes: list[Echo] = []
        self.reactor.listenTCP(TARGET, Factory.forProtocol(self.makeEcho))

    def makeEcho(self) -> Echo:
        echo = Echo()
        self.echoes.append(echo)
        return echo

    def connect(self, port: int, protocol: P) -> P:
        d = connectProtocol(self.net.endpoint(port), protocol)
        self.net.settle()
        return self.successResultOf(d)

    def call(self, channel: amp.AMP, command: type[amp.Command], **kw: object) -> Deferred:
        """
        Send C{command} and settle the network; a Deferred with the answer.
        The answer is taken before the network moves: AMP hands an error
        nobody has taken yet to its unhandled-error handler.
        """
        answer: Deferred = Deferred()
        channel.callRemote(command, **kw).chainDeferred(answer)
        self.net.settle()
        return answer

    def startSkeleton(
        self,
        servers: dict[str, int] | None = None,
        pool: int = 1,
        name: str = "test-skeleton",
    ) -> tuple[Skeleton, SkeletonControl]:
        """A real skeleton fronting C{servers} (id to target port), registered."""
        servers = {"web": TARGET} if servers is None else servers
        fronted = {
            serverId: FrontedServer(serverId, f"{serverId} server", self.net.endpoint(port))
            for serverId, port in servers.items()
        }
        skeleton = Skeleton(
            self.net.endpoint(SKELETONS), name, fronted, pool, clock=self.reactor
        )
        control = self.connect(SKELETONS, SkeletonControl(skeleton))
        d = skeleton.register(control)
        self.net.settle()
        self.successResultOf(d)
        return skeleton, control

    def register(
        self, channel: amp.AMP, servers: list[str], pool: int = 0, name: str = "raw"
    ) -> Deferred:
        return self.call(
            channel,
            Register,
            name=name,
            servers=[{"id": s, "description": ""} for s in servers],
            pool=pool,
        )

    def tunnel(self, server: str, inner: Protocol) -> Deferred:
        """Ask the relay, as a client, for a tunnel to C{server} ending in C{inner}."""
        client = self.connect(CLIENTS, Channel())
        return self.call(
            client, Tunnel, server=server, _protoToSwitchToFactory=OneProtocolFactory(inner)
        )


class RegisterTests(RelayTestCase):
    """L{Register} on the relay's skeleton port."""

    def test_registerGivesSession(self) -> None:
        """
        A skeleton that registers gets a session the relay knows it by, and
        the relay asks it for its pool, which it fills.
        """
        skeleton, control = self.startSkeleton(pool=2)
        self.assertIsInstance(skeleton.session, str)
        self.assertGreaterEqual(len(skeleton.session or ""), 24)
        channel = self.relay.sessions[skeleton.session or ""]
        self.assertEqual(channel.role, "control")
        self.assertEqual(channel.name, "test-skeleton")
        self.assertEqual(
            self.relay.registry.counts(),
            {"servers": 1, "idle": 2, "waiting": 0, "requested": 0},
        )
        self.assertTrue(skeleton.registered.called)

    def test_sessionsDiffer(self) -> None:
        """Two skeletons get two different sessions."""
        one, _ = self.startSkeleton({"a": TARGET}, pool=0)
        two, _ = self.startSkeleton({"b": TARGET}, pool=0)
        self.assertNotEqual(one.session, two.session)

    def test_secondRegisterOnOneConnection(self) -> None:
        """
        A connection that has registered cannot register again: the second
        L{Register} fails with L{BadRequest} and the first stands.
        """
        channel = self.connect(SKELETONS, Channel())
        self.successResultOf(self.register(channel, ["web"]))
        failure = self.failureResultOf(self.register(channel, ["db"]), BadRequest)
        self.assertEqual(failure.getErrorMessage(), "this connection is already in use")
        self.assertEqual([s["id"] for s in self.relay.registry.listing()], ["web"])

    def test_registerNothing(self) -> None:
        """A registration without servers is refused with L{BadRequest}."""
        channel = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(self.register(channel, []), BadRequest)
        self.assertEqual(
            failure.getErrorMessage(), "a skeleton must register at least one server"
        )
        self.assertEqual(self.relay.sessions, {})

    def test_registerBadId(self) -> None:
        """A registration with a malformed id is refused with L{BadRequest}."""
        channel = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(self.register(channel, ["no/slashes"]), BadRequest)
        self.assertIn("bad server id 'no/slashes'", failure.getErrorMessage())
        self.assertEqual(self.relay.registry.listing(), [])

    def test_registerDuplicate(self) -> None:
        """
        A second skeleton registering a taken id gets L{DuplicateServer}
        over the wire, naming the first skeleton; it may then register other
        ids on the same connection.
        """
        self.startSkeleton(name="first")
        channel = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(self.register(channel, ["web"]), DuplicateServer)
        self.assertEqual(
            failure.getErrorMessage(),
            "server web is already registered by skeleton 'first'; give this"
            " one another id or stop the other skeleton",
        )
        self.successResultOf(self.register(channel, ["web2"]))
        self.assertEqual(
            [s["id"] for s in self.relay.registry.listing()], ["web", "web2"]
        )

    def test_disconnectUnregisters(self) -> None:
        """
        When a skeleton's control connection closes, its session is
        forgotten, its servers go offline and its idle connections close.
        """
        skeleton, control = self.startSkeleton(pool=2)
        pooled = [c for c in self.skeletonChannels if c.role == "data"]
        self.assertEqual(len(pooled), 2)
        control.transport.loseConnection()
        self.net.settle()
        self.assertEqual(self.relay.sessions, {})
        self.assertEqual(self.relay.registry.counts()["servers"], 0)
        self.assertTrue(all(not c.connected for c in pooled))
        client = self.connect(CLIENTS, Channel())
        self.assertEqual(self.successResultOf(self.call(client, ListServers)), {"servers": []})

    def test_ping(self) -> None:
        """Both ports answer L{Ping}."""
        for port in (CLIENTS, SKELETONS):
            channel = self.connect(port, Channel())
            self.assertEqual(self.successResultOf(self.call(channel, Ping)), {})


class OfferTests(RelayTestCase):
    """L{Offer}, the first command of a skeleton's data connection."""

    def stalledSkeleton(self, servers: list[str], pool: int) -> tuple[StalledSkeleton, str]:
        """A registered L{StalledSkeleton} and its session."""
        control = self.connect(SKELETONS, StalledSkeleton())
        answer = self.successResultOf(self.register(control, servers, pool=pool))
        return control, answer["session"]

    def test_wrongSession(self) -> None:
        """An offer naming a session nobody has fails with L{UnknownSession}."""
        self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(
            self.call(data, Offer, session="guessed", server="web"), UnknownSession
        )
        self.assertEqual(
            failure.getErrorMessage(), "unknown session: register the skeleton first"
        )
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_serverOfAnotherSkeleton(self) -> None:
        """
        A skeleton cannot offer connections for another skeleton's server:
        L{UnknownServer}, and the other server's pool is unchanged.
        """
        self.stalledSkeleton(["web"], pool=1)
        _, mine = self.stalledSkeleton(["db"], pool=1)
        data = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(
            self.call(data, Offer, session=mine, server="web"), UnknownServer
        )
        self.assertEqual(
            failure.getErrorMessage(), "server web is not registered by this skeleton"
        )
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_offerPoolsTheConnection(self) -> None:
        """An accepted offer puts the connection in its server's pool."""
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        self.assertEqual(
            self.successResultOf(self.call(data, Offer, session=session, server="web")), {}
        )
        self.assertEqual(self.relay.registry.listing()[0]["idle"], 1)
        self.assertTrue(data.connected)

    def test_unaskedOfferClosed(self) -> None:
        """
        An offer nobody asked for (the pool is full and no client waits) is
        accepted and then closed by the relay.
        """
        _, session = self.stalledSkeleton(["web"], pool=0)
        data = self.connect(SKELETONS, Channel())
        self.successResultOf(self.call(data, Offer, session=session, server="web"))
        self.assertEqual(self.relay.registry.listing()[0]["idle"], 0)
        self.assertFalse(data.connected)

    def test_secondOfferOnOneConnection(self) -> None:
        """
        A data connection offers itself once: a second L{Offer}, or a
        L{Register}, on it fails with L{BadRequest}, and it stays pooled.
        """
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        self.successResultOf(self.call(data, Offer, session=session, server="web"))
        failure = self.failureResultOf(
            self.call(data, Offer, session=session, server="web"), BadRequest
        )
        self.assertEqual(failure.getErrorMessage(), "this connection is already in use")
        self.failureResultOf(self.register(data, ["other"]), BadRequest)
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_offerOnControlConnection(self) -> None:
        """A control connection cannot offer itself as a data connection."""
        control, session = self.stalledSkeleton(["web"], pool=0)
        failure = self.failureResultOf(
            self.call(control, Offer, session=session, server="web"), BadRequest
        )
        self.assertEqual(failure.getErrorMessage(), "this connection is already in use")

    def test_skeletonGoneClosesPool(self) -> None:
        """
        Pooled connections are closed when their skeleton's control
        connection goes.
        """
        control, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        self.successResultOf(self.call(data, Offer, session=session, server="web"))
        control.transport.loseConnection()
        self.net.settle()
        self.assertFalse(data.connected)
        self.assertEqual(self.relay.registry.counts()["servers"], 0)


class ListServersTests(RelayTestCase):
    """L{ListServers} on the relay's client port."""

    def test_empty(self) -> None:
        """A relay without skeletons lists no servers."""
        client = self.connect(CLIENTS, Channel())
        self.assertEqual(self.successResultOf(self.call(client, ListServers)), {"servers": []})

    def test_registered(self) -> None:
        """
        The list has every registered server with its description, the
        relay clock's time of registration and its idle connections.
        """
        self.reactor.advance(1234.5)
        self.startSkeleton({"web": TARGET, "db": TARGET}, pool=1)
        client = self.connect(CLIENTS, Channel())
        self.assertEqual(
            self.successResultOf(self.call(client, ListServers)),
            {
                "servers": [
                    {"id": "db", "description": "db server", "since": 1234.5, "idle": 1},
                    {"id": "web", "description": "web server", "since": 1234.5, "idle": 1},
                ]
            },
        )

    def test_notOnSkeletonPort(self) -> None:
        """
        The skeleton port does not answer L{ListServers}: skeletons do not
        see each other's servers.
        """
        channel = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(self.call(channel, ListServers), amp.UnhandledCommand)
        self.assertIn("ListServers", failure.getErrorMessage())


class TunnelTests(RelayTestCase):
    """L{Tunnel}: a client joined to a server through the skeleton."""

    def test_tunnelEndToEnd(self) -> None:
        """
        A client's tunnel reaches the target through a pooled connection:
        the bytes it sends come back from the echo server, the relay books
        one tunnel, and the pool is filled again.
        """
        self.startSkeleton(pool=1)
        inner = Collect(b"hello through the relay")
        self.successResultOf(self.tunnel("web", inner))
        self.net.settle()
        self.assertEqual(b"".join(inner.received), b"hello through the relay")
        self.assertEqual(len(self.echoes), 1)
        self.assertEqual([t.server for t in self.relay.tunnels], ["web"])
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_tunnelOnDemand(self) -> None:
        """
        With a pool of zero, a tunnel still succeeds: the relay asks the
        skeleton for a connection and joins the client to it.
        """
        self.startSkeleton(pool=0)
        inner = Collect(b"on demand")
        self.successResultOf(self.tunnel("web", inner))
        self.net.settle()
        self.assertEqual(b"".join(inner.received), b"on demand")
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_unknownServer(self) -> None:
        """A tunnel to an id nobody registered fails with L{UnknownServer}."""
        failure = self.failureResultOf(self.tunnel("nope", Collect()), UnknownServer)
        self.assertIn("no server nope", failure.getErrorMessage())

    def test_badServerId(self) -> None:
        """A tunnel to a malformed id fails with L{BadRequest}."""
        failure = self.failureResultOf(self.tunnel("a b", Collect()), BadRequest)
        self.assertIn("bad server id 'a b'", failure.getErrorMessage())

    def test_targetRefused(self) -> None:
        """
        A target that refuses fails the tunnel with L{TargetRefused}, whose
        message does not reveal the target's address, and the skeleton's
        data connection is closed.
        """
        self.startSkeleton({"web": NOBODY}, pool=1)
        d = self.tunnel("web", Collect())
        self.assertNoResult(d)
        self.assertEqual(self.net.pending(), [NOBODY])
        self.net.completer.failOnce()
        self.net.settle()
        failure = self.failureResultOf(d, TargetRefused)
        self.assertEqual(
            failure.getErrorMessage(),
            "server web is registered but its target refused the connection",
        )
        self.assertEqual(self.relay.tunnels, set())
        # The refused join's connection was dropped and the pool refilled.
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_joinTimeout(self) -> None:
        """
        A skeleton that never provides a connection makes the tunnel fail
        with L{JoinTimeout} after the relay's join timeout, not before.
        """
        stalled = self.connect(SKELETONS, StalledSkeleton())
        self.successResultOf(self.register(stalled, ["web"], pool=0))
        d = self.tunnel("web", Collect())
        self.assertEqual(len(stalled.asked), 1)
        self.reactor.advance(self.joinTimeout - 0.1)
        self.net.settle()
        self.assertNoResult(d)
        self.reactor.advance(0.2)
        self.net.settle()
        failure = self.failureResultOf(d, JoinTimeout)
        self.assertEqual(
            failure.getErrorMessage(), "server web did not provide a connection within 5 s"
        )

    def test_skeletonCannotOpen(self) -> None:
        """
        A skeleton that answers L{OpenConnection} with an error fails the
        waiting client at once with L{SkeletonGone}.
        """
        stalled = self.connect(SKELETONS, StalledSkeleton())
        self.successResultOf(self.register(stalled, ["web"], pool=0))
        d = self.tunnel("web", Collect())
        stalled.asked[0].errback(SkeletonGone("the skeleton could not reach the relay"))
        self.net.settle()
        failure = self.failureResultOf(d, SkeletonGone)
        self.assertIn("could not open a connection", failure.getErrorMessage())

    def test_clientLeavesWhileWaiting(self) -> None:
        """
        A client that disconnects while its join waits is forgotten by the
        registry at once, not at the join timeout.
        """
        stalled = self.connect(SKELETONS, StalledSkeleton())
        self.successResultOf(self.register(stalled, ["web"], pool=0))
        client = self.connect(CLIENTS, Channel())
        d = self.call(
            client, Tunnel, server="web", _protoToSwitchToFactory=OneProtocolFactory(Collect())
        )
        self.assertEqual(self.relay.registry.counts()["waiting"], 1)
        client.transport.loseConnection()
        self.net.settle()
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)
        self.failureResultOf(d)

    def test_skeletonLeavesWhileWaiting(self) -> None:
        """
        A skeleton that disconnects while a client waits for one of its
        connections fails the client with L{SkeletonGone}.
        """
        stalled = self.connect(SKELETONS, StalledSkeleton())
        self.successResultOf(self.register(stalled, ["web"], pool=0))
        d = self.tunnel("web", Collect())
        stalled.transport.loseConnection()
        self.net.settle()
        self.failureResultOf(d, SkeletonGone)
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)

    def test_skeletonLeavesWhileWaitingMessage(self) -> None:
        """
        The client of a skeleton that left is told that the skeleton went
        away, not that it "could not open a connection" for a reason that
        only speaks of a connection closed cleanly.
        """
        stalled = self.connect(SKELETONS, StalledSkeleton())
        self.successResultOf(self.register(stalled, ["web"], pool=0))
        d = self.tunnel("web", Collect())
        stalled.transport.loseConnection()
        self.net.settle()
        failure = self.failureResultOf(d, SkeletonGone)
        self.assertEqual(failure.getErrorMessage(), "the skeleton of server web went away")


    def test_openConnectionForUnknownServer(self) -> None:
        """
        A skeleton asked to open a connection for a server it does not
        front answers L{UnknownServer}.
        """
        skeleton, control = self.startSkeleton(pool=0)
        relaySide = self.relay.sessions[skeleton.session or ""]
        failure = self.failureResultOf(
            self.call(relaySide, OpenConnection, server="db"), UnknownServer
        )
        self.assertEqual(failure.getErrorMessage(), "this skeleton does not front db")

    def test_secondTunnelOnOneConnection(self) -> None:
        """
        A client connection carries one tunnel: a second L{Tunnel} sent on
        the same connection before the first is answered is refused with
        L{BadRequest} and takes no second connection from the skeleton.
        """
        self.startSkeleton(pool=2)
        client = self.connect(CLIENTS, Raw())
        assert client.transport is not None
        client.transport.write(
            pipelined(
                amp.AmpBox(_command=b"Tunnel", _ask=b"1", server=b"web"),
                amp.AmpBox(_command=b"Tunnel", _ask=b"2", server=b"web"),
            )
        )
        self.net.settle()
        refusal, switch = client.boxes()
        self.assertEqual(
            refusal,
            {
                b"_error": b"2",
                b"_error_code": b"BAD_REQUEST",
                b"_error_description": b"one tunnel per connection: open another connection",
            },
        )
        self.assertEqual(switch, {b"_answer": b"1"})
        self.assertEqual(len(self.relay.tunnels), 1)
        self.assertEqual(len(self.echoes), 1)


class HeartbeatTests(RelayTestCase):
    """L{Relay.heartbeat}: silent skeletons and dead pooled connections."""

    def test_silentSkeletonDropped(self) -> None:
        """
        A skeleton not heard from for longer than the silence limit is
        dropped and its servers go offline; one heard from recently stays.
        """
        silent = self.connect(SKELETONS, StalledSkeleton())
        self.successResultOf(self.register(silent, ["quiet"], pool=0))
        self.reactor.advance(self.relay.silenceLimit - 1)
        chatty = self.connect(SKELETONS, StalledSkeleton())
        self.successResultOf(self.register(chatty, ["loud"], pool=0))
        self.reactor.advance(2)
        self.relay.heartbeat()
        self.net.settle()
        self.assertFalse(silent.connected)
        self.assertTrue(chatty.connected)
        self.assertEqual([s["id"] for s in self.relay.registry.listing()], ["loud"])

    def test_pingsKeepSkeletonHeard(self) -> None:
        """
        The real skeleton pings its control connection every heartbeat, so
        the relay never finds it silent.
        """
        self.startSkeleton(pool=0)
        for _ in range(5):
            self.reactor.advance(self.relay.silenceLimit / 2)
            self.net.settle()
            self.relay.heartbeat()
            self.net.settle()
        self.assertEqual(self.relay.registry.counts()["servers"], 1)

    def test_deadPooledConnectionReplaced(self) -> None:
        """
        An idle pooled connection that does not answer the relay's ping
        within the ping timeout is dropped, and a replacement is asked for.
        """
        control = self.connect(SKELETONS, StalledSkeleton())
        answer = self.successResultOf(self.register(control, ["web"], pool=1))
        data = self.connect(SKELETONS, Deaf())
        self.successResultOf(
            self.call(data, Offer, session=answer["session"], server="web")
        )
        control.asked[0].callback({})
        self.net.settle()
        self.relay.heartbeat()
        self.net.settle()
        self.assertTrue(data.connected)
        self.reactor.advance(self.relay.pingTimeout)
        self.net.settle()
        self.assertFalse(data.connected)
        self.assertEqual(len(control.asked), 2)
        self.assertEqual(self.relay.registry.counts()["requested"], 1)

    def test_livePooledConnectionKept(self) -> None:
        """A pooled connection that answers the relay's ping stays pooled."""
        self.startSkeleton(pool=1)
        [pooled] = self.relay.registry.idleConnections()
        self.relay.heartbeat()
        self.net.settle()
        self.reactor.advance(self.relay.pingTimeout)
        self.net.settle()
        self.assertEqual(self.relay.registry.idleConnections(), [pooled])


def pipelined(*boxes: amp.AmpBox) -> bytes:
    """The bytes of C{boxes} one after the other, as a peer might send them."""
    return b"".join(box.serialize() for box in boxes)
