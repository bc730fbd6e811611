"""
The relay's AMP responders and the join, driven over L{twisted.test.iosim}:
every connection is an in-memory pair on a L{MemoryReactorClock}, completed
and pumped by hand until nothing moves, so no socket and no real time is
involved.  The bytes are real TLS: the relay's factories are TLS-wrapped and
every peer pins the relay's key, as a real skeleton or client does.  The real
roles (L{Relay}, L{Skeleton}, the client's L{TunnelFactory}) talk to each
other, or a bare AMP peer stands in for one side to send what a real one
would not.

Logins here are real SCRAM-SHA-256-PLUS logins through L{RelayLink.login};
what can go wrong with a login itself (wrong passwords, throttling, replayed
transcripts, expiry) is covered by test_security.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp, tls
from twisted.test.iosim import ConnectionCompleter, IOPump
from twisted.trial.unittest import SynchronousTestCase

from relaynat.client import ClientControl, TunnelFactory
from relaynat.identity import PinnedRelay
from relaynat.link import Credentials, LoginSession, RelayLink
from relaynat.relay import Relay, SkeletonChannel
from relaynat.secret import joinProof
from relaynat.skeleton import FrontedServer, Skeleton, SkeletonControl
from relaynat.splice import OneProtocolFactory, splicePair
from relaynat.test.loopback import ANYTHING, PASSWORD, relayIdentity, writeUsers
from relaynat.test.streams import Collect, Echo
from relaynat.wire import (
    BadRequest,
    Channel,
    DuplicateServer,
    Hello,
    JoinTimeout,
    ListServers,
    LoginRequired,
    Offer,
    OpenConnection,
    Ping,
    Prepare,
    Register,
    SessionRefused,
    SkeletonGone,
    TargetRefused,
    Tunnel,
    UnknownServer,
)

C = TypeVar("C", bound=Channel)

#: Port numbers on the memory reactor: nothing is bound, they only pair
#: connectors with listeners.
CLIENTS, SKELETONS, TARGET, LOCAL, NOBODY = 7000, 7001, 8000, 8080, 9999

#: Every fronted server's secret in these tests.
SECRET = b"s" * 32

#: A client's or a raw skeleton's half of a join's challenge.
NONCE = b"n" * 16


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

    def take(self) -> list[amp.AmpBox]:
        """The AMP boxes received since the last call (only before a switch)."""
        boxes, self.received = amp.parseString(self.received), b""
        return boxes  # type: ignore[no-any-return]


class RelayTestCase(SynchronousTestCase):
    """
    A TLS relay on a memory network, with user alice (who may do anything)
    and an echo server as the target.
    """

    joinTimeout = 5.0
    sessionLifetime = 86400.0

    def setUp(self) -> None:
        self.net = Network()
        self.reactor = self.net.reactor
        # TLS holds small writes back until the next reactor turn, on the
        # global reactor unless told otherwise; neither the relay nor
        # wrapClientTLS takes a clock, so point Twisted's documented test
        # hook at the memory reactor, which the pumps advance.
        self.patch(tls, "_get_default_clock", lambda: self.reactor)
        directory = self.mktemp()
        os.makedirs(directory)
        self.identity = relayIdentity(directory)
        users = writeUsers(os.path.join(directory, "users"), {"alice": ANYTHING})
        self.relay = Relay(
            self.reactor,
            self.identity,
            users,
            joinTimeout=self.joinTimeout,
            sessionLifetime=self.sessionLifetime,
        )
        self.reactor.listenTCP(CLIENTS, self.relay.clientFactory())
        self.reactor.listenTCP(SKELETONS, self.relay.skeletonFactory())
        self.echoes: list[Echo] = []
        self.reactor.listenTCP(TARGET, Factory.forProtocol(self.makeEcho))

    def makeEcho(self) -> Echo:
        echo = Echo()
        self.echoes.append(echo)
        return echo

    def link(self, port: int) -> RelayLink:
        """Alice's way to the relay's C{port}, pinning the relay's key."""
        return RelayLink(
            self.net.endpoint(port),
            PinnedRelay(self.identity.fingerprint),
            Credentials("alice", PASSWORD),
            self.reactor,
        )

    def connectVia(self, link: RelayLink, channel: C) -> C:
        """C{channel} connected through C{link}, its TLS handshake done."""
        d = Deferred.fromCoroutine(link.connect(channel))
        self.net.settle()
        return self.successResultOf(d)

    def connect(self, port: int, channel: C) -> C:
        return self.connectVia(self.link(port), channel)

    def login(self, channel: Channel) -> LoginSession:
        """Log in as alice on C{channel}; the session the relay issued."""
        # The link only lends its credentials: the login runs on C{channel},
        # whatever port that is connected to.
        d = Deferred.fromCoroutine(self.link(CLIENTS).login(channel))
        self.net.settle()
        return self.successResultOf(d)

    def loggedIn(self, port: int, channel: C) -> tuple[C, LoginSession]:
        """C{channel} connected to C{port} and logged in."""
        channel = self.connect(port, channel)
        return channel, self.login(channel)

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

    def proof(self, channel: Channel, session: LoginSession) -> bytes:
        """Ask C{channel} for a challenge and answer it with C{session}'s key."""
        hello = self.successResultOf(self.call(channel, Hello))
        return session.proof(hello["challenge"])

    def startSkeleton(
        self,
        servers: dict[str, int] | None = None,
        pool: int = 1,
        name: str = "test-skeleton",
    ) -> tuple[Skeleton, SkeletonControl]:
        """A real skeleton fronting C{servers} (id to target port), registered."""
        servers = {"web": TARGET} if servers is None else servers
        fronted = {
            serverId: FrontedServer(
                serverId, f"{serverId} server", self.net.endpoint(port), SECRET
            )
            for serverId, port in servers.items()
        }
        skeleton = Skeleton(self.link(SKELETONS), name, fronted, pool)
        control = self.connectVia(skeleton.link, SkeletonControl(skeleton))
        d = skeleton.register(control)
        self.net.settle()
        self.successResultOf(d)
        return skeleton, control

    def startClient(self, server: str = "web", secret: bytes = SECRET) -> RelayLink:
        """
        A real client, logged in, with a local listener on L{LOCAL} whose
        connections are carried to C{server}.
        """
        link = self.link(CLIENTS)
        control = self.connectVia(link, ClientControl(link))
        d = Deferred.fromCoroutine(control.start())
        self.net.settle()
        self.successResultOf(d)
        self.reactor.listenTCP(LOCAL, TunnelFactory(link, server, secret))
        return link

    def stalledSkeleton(
        self, servers: list[str], pool: int
    ) -> tuple[StalledSkeleton, LoginSession]:
        """A logged-in, registered L{StalledSkeleton} and its session."""
        control, session = self.loggedIn(SKELETONS, StalledSkeleton())
        self.successResultOf(self.register(control, servers, pool=pool))
        return control, session

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

    def offer(
        self, channel: Channel, session: LoginSession, server: str, nonce: bytes = NONCE
    ) -> Deferred:
        """Offer C{channel} for C{server}, proving C{session}."""
        return self.call(
            channel,
            Offer,
            session=session.id,
            proof=self.proof(channel, session),
            server=server,
            nonce=nonce,
        )

    def prepare(self, server: str, nonce: bytes = NONCE) -> tuple[Channel, Deferred]:
        """
        A client's data connection (its login on a control connection that
        stays open) and the Deferred answer to its L{Prepare} for C{server}.
        """
        _, session = self.loggedIn(CLIENTS, Channel())
        channel = self.connect(CLIENTS, Channel())
        d = self.call(
            channel,
            Prepare,
            session=session.id,
            proof=self.proof(channel, session),
            server=server,
            nonce=nonce,
        )
        return channel, d

    def tunnel(
        self,
        channel: Channel,
        prepared: dict[str, Any],
        nonce: bytes = NONCE,
        secret: bytes = SECRET,
    ) -> Deferred:
        """Send L{Tunnel} for a prepared join, proving C{secret}."""
        return self.call(
            channel,
            Tunnel,
            join=prepared["join"],
            proof=joinProof(secret, nonce, prepared["nonce"], prepared["join"]),
            _protoToSwitchToFactory=OneProtocolFactory(splicePair()[0]),
        )

    def collect(self, message: bytes) -> Collect:
        """A local connection to the client's listener, sending C{message}."""
        collector = Collect(message)
        connectProtocol(self.net.endpoint(LOCAL), collector)
        self.net.settle()
        return collector


class RegisterTests(RelayTestCase):
    """L{Register} on the relay's skeleton port."""

    def test_registeredUnderItsLogin(self) -> None:
        """
        A skeleton that logs in and registers is known by its login's
        session, and the relay asks it for its pool, which it fills with
        connections offered under that session.
        """
        skeleton, control = self.startSkeleton(pool=2)
        session = skeleton.link.session
        assert session is not None
        self.assertEqual(list(self.relay.skeletons), [session.id])
        channel = self.relay.skeletons[session.id]
        self.assertEqual(channel.role, "control")
        self.assertEqual(channel.name, "test-skeleton")
        self.assertEqual(
            self.relay.registry.counts(),
            {"servers": 1, "idle": 2, "waiting": 0, "requested": 0},
        )

    def test_sessionsDiffer(self) -> None:
        """Two skeletons of one user log in with two different sessions."""
        one, _ = self.startSkeleton({"a": TARGET}, pool=0)
        two, _ = self.startSkeleton({"b": TARGET}, pool=0)
        assert one.link.session is not None and two.link.session is not None
        self.assertNotEqual(one.link.session.id, two.link.session.id)
        self.assertEqual(
            set(self.relay.skeletons), {one.link.session.id, two.link.session.id}
        )

    def test_registerNeedsLogin(self) -> None:
        """
        L{Register} before a login is refused with L{LoginRequired}, and
        nothing is registered.
        """
        channel = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(self.register(channel, ["web"]), LoginRequired)
        self.assertEqual(failure.getErrorMessage(), "log in first")
        self.assertEqual(self.relay.registry.listing(), [])
        self.assertEqual(self.relay.skeletons, {})

    def test_loginOnAnotherConnectionNotEnough(self) -> None:
        """
        The login must be on the registering connection itself: a login
        on another connection of the same user does not count.
        """
        self.loggedIn(SKELETONS, Channel())
        other = self.connect(SKELETONS, Channel())
        self.failureResultOf(self.register(other, ["web"]), LoginRequired)
        self.assertEqual(self.relay.registry.listing(), [])

    def test_secondRegisterOnOneConnection(self) -> None:
        """
        A connection that has registered cannot register again: the second
        L{Register} fails with L{BadRequest} and the first stands.
        """
        channel, _ = self.loggedIn(SKELETONS, Channel())
        self.successResultOf(self.register(channel, ["web"]))
        failure = self.failureResultOf(self.register(channel, ["db"]), BadRequest)
        self.assertEqual(failure.getErrorMessage(), "this connection is already in use")
        self.assertEqual([s["id"] for s in self.relay.registry.listing()], ["web"])

    def test_registerNothing(self) -> None:
        """A registration without servers is refused with L{BadRequest}."""
        channel, _ = self.loggedIn(SKELETONS, Channel())
        failure = self.failureResultOf(self.register(channel, []), BadRequest)
        self.assertEqual(
            failure.getErrorMessage(), "a skeleton must register at least one server"
        )
        self.assertEqual(self.relay.skeletons, {})

    def test_registerBadId(self) -> None:
        """A registration with a malformed id is refused with L{BadRequest}."""
        channel, _ = self.loggedIn(SKELETONS, Channel())
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
        channel, _ = self.loggedIn(SKELETONS, Channel())
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
        When a skeleton's control connection closes, the relay forgets it
        and revokes its session, its servers go offline and its idle
        connections close.
        """
        skeleton, control = self.startSkeleton(pool=2)
        session = skeleton.link.session
        assert session is not None
        pooled = self.relay.registry.idleConnections()
        self.assertEqual(len(pooled), 2)
        control.transport.loseConnection()
        self.net.settle()
        self.assertEqual(self.relay.skeletons, {})
        self.assertIsNone(self.relay.sessions.check(session.id, b"c", session.proof(b"c")))
        self.assertEqual(self.relay.registry.counts()["servers"], 0)
        self.assertTrue(all(not c.connected for c in pooled))  # type: ignore[attr-defined]
        client, _ = self.loggedIn(CLIENTS, Channel())
        self.assertEqual(self.successResultOf(self.call(client, ListServers)), {"servers": []})

    def test_ping(self) -> None:
        """Both ports answer L{Ping}, before any login."""
        for port in (CLIENTS, SKELETONS):
            channel = self.connect(port, Channel())
            self.assertEqual(self.successResultOf(self.call(channel, Ping)), {})


class OfferTests(RelayTestCase):
    """L{Offer}, the command of a skeleton's data connection after L{Hello}."""

    def test_offerPoolsTheConnection(self) -> None:
        """
        An offer proving the registered skeleton's session puts the
        connection in its server's pool.
        """
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        self.assertEqual(self.successResultOf(self.offer(data, session, "web")), {})
        self.assertEqual(self.relay.registry.listing()[0]["idle"], 1)
        self.assertTrue(data.connected)

    def test_unknownSession(self) -> None:
        """
        An offer naming a session the relay never issued fails with
        L{SessionRefused}, and nothing is pooled.
        """
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(
            self.offer(data, LoginSession("guessed", session.key, session.expires), "web"),
            SessionRefused,
        )
        self.assertEqual(
            failure.getErrorMessage(),
            "session refused (expired, or not this relay's): log in again",
        )
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_wrongProof(self) -> None:
        """
        An offer naming the right session but proving another key fails
        with L{SessionRefused}: the session id alone is worth nothing.
        """
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        forged = LoginSession(session.id, b"k" * 32, session.expires)
        self.failureResultOf(self.offer(data, forged, "web"), SessionRefused)
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_proofIsForOneChallenge(self) -> None:
        """
        A proof answers one challenge on one connection: replayed after a
        new L{Hello}, it is refused.
        """
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        old = self.proof(data, session)
        self.successResultOf(self.call(data, Hello))
        self.failureResultOf(
            self.call(data, Offer, session=session.id, proof=old, server="web", nonce=NONCE),
            SessionRefused,
        )

    def test_serverOfAnotherSkeleton(self) -> None:
        """
        A skeleton cannot offer connections for another skeleton's server:
        L{UnknownServer}, and the other server's pool is unchanged.
        """
        self.stalledSkeleton(["web"], pool=1)
        _, mine = self.stalledSkeleton(["db"], pool=1)
        data = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(self.offer(data, mine, "web"), UnknownServer)
        self.assertEqual(
            failure.getErrorMessage(), "server web is not registered by this skeleton"
        )
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_sessionWithoutSkeleton(self) -> None:
        """
        A valid session whose login registered no skeleton (a client's, say)
        cannot offer connections: L{UnknownServer}.
        """
        self.stalledSkeleton(["web"], pool=1)
        _, clientSession = self.loggedIn(CLIENTS, Channel())
        data = self.connect(SKELETONS, Channel())
        self.failureResultOf(self.offer(data, clientSession, "web"), UnknownServer)
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_badNonce(self) -> None:
        """A nonce shorter than 16 bytes is refused with L{BadRequest}."""
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        failure = self.failureResultOf(
            self.offer(data, session, "web", nonce=b"short"), BadRequest
        )
        self.assertEqual(failure.getErrorMessage(), "the nonce must be 16 to 64 bytes")
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_unaskedOfferClosed(self) -> None:
        """
        An offer nobody asked for (the pool is full and no client waits) is
        accepted and then closed by the relay.
        """
        _, session = self.stalledSkeleton(["web"], pool=0)
        data = self.connect(SKELETONS, Channel())
        self.successResultOf(self.offer(data, session, "web"))
        self.assertEqual(self.relay.registry.listing()[0]["idle"], 0)
        self.assertFalse(data.connected)

    def test_secondOfferOnOneConnection(self) -> None:
        """
        A data connection offers itself once: a second L{Offer} fails with
        L{BadRequest}, a L{Register} too even after a login on it, and it
        stays pooled.
        """
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        self.successResultOf(self.offer(data, session, "web"))
        failure = self.failureResultOf(self.offer(data, session, "web"), BadRequest)
        self.assertEqual(failure.getErrorMessage(), "this connection is already in use")
        self.failureResultOf(self.register(data, ["other"]), LoginRequired)
        self.login(data)
        failure = self.failureResultOf(self.register(data, ["other"]), BadRequest)
        self.assertEqual(failure.getErrorMessage(), "this connection is already in use")
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_offerLostBeforePooled(self) -> None:
        """
        A data connection that goes away right after its offer, before the
        relay pools it, is asked for again while a client still waits; the
        skeleton's answer to the first request changes nothing.
        """
        control, session = self.stalledSkeleton(["web"], pool=0)
        _, prepared = self.prepare("web")
        self.assertEqual(len(control.asked), 1)
        # Hold the pooling back until the connection is gone, as a busy
        # relay's next turn may.
        pool = SkeletonChannel._pool
        held: list[SkeletonChannel] = []
        self.patch(SkeletonChannel, "_pool", lambda channel: held.append(channel))
        data = self.connect(SKELETONS, Channel())
        self.successResultOf(self.offer(data, session, "web"))
        data.transport.loseConnection()
        self.net.settle()
        [channel] = held
        pool(channel)
        self.net.settle()
        self.assertNoResult(prepared)
        control.asked[0].callback({})
        self.net.settle()
        self.assertEqual(len(control.asked), 2)
        self.assertEqual(self.relay.registry.counts()["requested"], 1)

    def test_offerOnControlConnection(self) -> None:
        """A control connection cannot offer itself as a data connection."""
        control, session = self.stalledSkeleton(["web"], pool=0)
        failure = self.failureResultOf(self.offer(control, session, "web"), BadRequest)
        self.assertEqual(failure.getErrorMessage(), "this connection is already in use")

    def test_skeletonGoneClosesPool(self) -> None:
        """
        Pooled connections are closed when their skeleton's control
        connection goes.
        """
        control, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        self.successResultOf(self.offer(data, session, "web"))
        control.transport.loseConnection()
        self.net.settle()
        self.assertFalse(data.connected)
        self.assertEqual(self.relay.registry.counts()["servers"], 0)

    def test_offerWithoutHello(self) -> None:
        """
        An offer with no challenge asked for on its connection is refused
        with L{LoginRequired} (the error the wire has for a proof that came
        too early), and nothing is pooled.
        """
        _, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Channel())
        d = self.call(
            data, Offer, session=session.id, proof=session.proof(b""), server="web", nonce=NONCE
        )
        logged = self.flushLoggedErrors(LoginRequired)
        self.failureResultOf(d, LoginRequired)
        self.assertEqual(logged, [])
        self.assertEqual(self.relay.registry.counts()["idle"], 0)



class ListServersTests(RelayTestCase):
    """L{ListServers} on the relay's client port."""

    def test_empty(self) -> None:
        """A relay without skeletons lists no servers."""
        client, _ = self.loggedIn(CLIENTS, Channel())
        self.assertEqual(self.successResultOf(self.call(client, ListServers)), {"servers": []})

    def test_registered(self) -> None:
        """
        The list has every registered server with its description, the
        relay clock's time of registration and its idle connections.
        """
        self.reactor.advance(1234.5)
        self.startSkeleton({"web": TARGET, "db": TARGET}, pool=1)
        client, _ = self.loggedIn(CLIENTS, Channel())
        self.assertEqual(
            self.successResultOf(self.call(client, ListServers)),
            {
                "servers": [
                    {"id": "db", "description": "db server", "since": 1234.5, "idle": 1},
                    {"id": "web", "description": "web server", "since": 1234.5, "idle": 1},
                ]
            },
        )

    def test_needsLogin(self) -> None:
        """
        Without a login on the same connection the list is refused with
        L{LoginRequired}: a login on another connection does not count.
        """
        self.startSkeleton(pool=0)
        self.loggedIn(CLIENTS, Channel())
        client = self.connect(CLIENTS, Channel())
        failure = self.failureResultOf(self.call(client, ListServers), LoginRequired)
        self.assertEqual(failure.getErrorMessage(), "log in first")

    def test_notOnSkeletonPort(self) -> None:
        """
        The skeleton port does not answer L{ListServers}, even logged in:
        skeletons do not see each other's servers.
        """
        channel, _ = self.loggedIn(SKELETONS, Channel())
        failure = self.failureResultOf(self.call(channel, ListServers), amp.UnhandledCommand)
        self.assertIn("ListServers", failure.getErrorMessage())

    def test_deletedUser(self) -> None:
        """
        A user deleted from the users file since its login is refused with
        L{SessionRefused}, said over the wire.
        """
        client, _ = self.loggedIn(CLIENTS, Channel())
        writeUsers(self.relay.users.path, {})
        self.assertTrue(self.relay.users.reload())
        d = self.call(client, ListServers)
        logged = self.flushLoggedErrors(SessionRefused)
        failure = self.failureResultOf(d, SessionRefused)
        self.assertEqual(failure.getErrorMessage(), "user alice no longer exists")
        self.assertEqual(logged, [])



class TunnelTests(RelayTestCase):
    """L{Prepare} and L{Tunnel}: a client joined to a server through the skeleton."""

    def test_tunnelEndToEnd(self) -> None:
        """
        A real client's tunnel reaches the target through a pooled
        connection: the bytes it sends come back from the echo server, the
        relay books one tunnel, and the pool is filled again.
        """
        self.startSkeleton(pool=1)
        self.startClient()
        collector = self.collect(b"hello through the relay")
        self.assertEqual(b"".join(collector.received), b"hello through the relay")
        self.assertEqual(len(self.echoes), 1)
        self.assertEqual([t.server for t in self.relay.tunnels], ["web"])
        self.assertEqual([t.user for t in self.relay.tunnels], ["alice"])
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_tunnelOnDemand(self) -> None:
        """
        With a pool of zero, a tunnel still succeeds: the relay asks the
        skeleton for a connection and joins the client to it.
        """
        self.startSkeleton(pool=0)
        self.startClient()
        collector = self.collect(b"on demand")
        self.assertEqual(b"".join(collector.received), b"on demand")
        self.assertEqual(self.relay.registry.counts()["idle"], 0)

    def test_prepareGivesJoinAndNonce(self) -> None:
        """
        L{Prepare} sets a pooled connection aside and answers with a join
        id and that connection's nonce, for the client's secret proof.
        """
        skeleton, _ = self.startSkeleton(pool=1)
        [pooled] = skeleton.dataChannels
        _, d = self.prepare("web")
        prepared = self.successResultOf(d)
        self.assertEqual(prepared["nonce"], pooled.nonce)
        self.assertTrue(prepared["join"].startswith("t1-"))
        self.assertNotIn(pooled, self.relay.registry.idleConnections())

    def test_unknownServer(self) -> None:
        """A join to an id nobody registered fails with L{UnknownServer}."""
        _, d = self.prepare("nope")
        failure = self.failureResultOf(d, UnknownServer)
        self.assertIn("no server nope", failure.getErrorMessage())

    def test_badServerId(self) -> None:
        """A join to a malformed id fails with L{BadRequest}."""
        _, d = self.prepare("a b")
        failure = self.failureResultOf(d, BadRequest)
        self.assertIn("bad server id 'a b'", failure.getErrorMessage())

    def test_badNonce(self) -> None:
        """A client nonce longer than 64 bytes is refused with L{BadRequest}."""
        self.startSkeleton(pool=1)
        _, d = self.prepare("web", nonce=b"n" * 65)
        failure = self.failureResultOf(d, BadRequest)
        self.assertEqual(failure.getErrorMessage(), "the nonce must be 16 to 64 bytes")
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_prepareNeedsSession(self) -> None:
        """A L{Prepare} proving a session the relay never issued is refused."""
        self.startSkeleton(pool=1)
        channel = self.connect(CLIENTS, Channel())
        forged = LoginSession("made-up", b"k" * 32, 0.0)
        d = self.call(
            channel,
            Prepare,
            session=forged.id,
            proof=self.proof(channel, forged),
            server="web",
            nonce=NONCE,
        )
        self.failureResultOf(d, SessionRefused)
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_prepareWithoutHello(self) -> None:
        """
        A L{Prepare} with no challenge asked for on its connection is
        refused with L{LoginRequired}, and takes no connection.
        """
        self.startSkeleton(pool=1)
        _, session = self.loggedIn(CLIENTS, Channel())
        channel = self.connect(CLIENTS, Channel())
        d = self.call(
            channel, Prepare, session=session.id, proof=session.proof(b""), server="web",
            nonce=NONCE,
        )
        logged = self.flushLoggedErrors(LoginRequired)
        self.failureResultOf(d, LoginRequired)
        self.assertEqual(logged, [])
        self.assertEqual(self.relay.registry.counts()["idle"], 1)


    def test_tunnelWithoutPrepare(self) -> None:
        """A L{Tunnel} with a join id this connection was not given is refused."""
        self.startSkeleton(pool=1)
        channel = self.connect(CLIENTS, Channel())
        failure = self.failureResultOf(
            self.tunnel(channel, {"join": "t1-00000000", "nonce": NONCE}), BadRequest
        )
        self.assertEqual(
            failure.getErrorMessage(), "unknown join id: send Prepare on this connection first"
        )
        self.assertEqual(self.echoes, [])

    def test_targetRefused(self) -> None:
        """
        A target that refuses fails the tunnel with L{TargetRefused}, whose
        message does not reveal the target's address, and the skeleton's
        data connection is closed.
        """
        self.startSkeleton({"web": NOBODY}, pool=1)
        channel, d = self.prepare("web")
        d = self.tunnel(channel, self.successResultOf(d))
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
        A skeleton that never provides a connection makes the join fail
        with L{JoinTimeout} after the relay's join timeout, not before.
        """
        stalled, _ = self.stalledSkeleton(["web"], pool=0)
        _, d = self.prepare("web")
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
        stalled, _ = self.stalledSkeleton(["web"], pool=0)
        _, d = self.prepare("web")
        stalled.asked[0].errback(SkeletonGone("the skeleton could not reach the relay"))
        self.net.settle()
        failure = self.failureResultOf(d, SkeletonGone)
        self.assertIn("could not open a connection", failure.getErrorMessage())

    def test_clientLeavesWhileWaiting(self) -> None:
        """
        A client that disconnects while its join waits is forgotten by the
        registry at once, not at the join timeout.
        """
        self.stalledSkeleton(["web"], pool=0)
        client, d = self.prepare("web")
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
        stalled, _ = self.stalledSkeleton(["web"], pool=0)
        _, d = self.prepare("web")
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
        stalled, _ = self.stalledSkeleton(["web"], pool=0)
        _, d = self.prepare("web")
        stalled.transport.loseConnection()
        self.net.settle()
        failure = self.failureResultOf(d, SkeletonGone)
        self.assertEqual(failure.getErrorMessage(), "the skeleton of server web went away")

    def test_preparedJoinExpires(self) -> None:
        """
        A prepared join never used within the join timeout gives up its
        skeleton connection (closed, the pool refilled), and its join id is
        refused after that.
        """
        self.startSkeleton(pool=1)
        [pooled] = self.relay.registry.idleConnections()
        channel, d = self.prepare("web")
        prepared = self.successResultOf(d)
        self.reactor.advance(self.joinTimeout - 0.1)
        self.net.settle()
        self.assertTrue(pooled.connected)  # type: ignore[attr-defined]
        self.reactor.advance(0.2)
        self.net.settle()
        self.assertFalse(pooled.connected)  # type: ignore[attr-defined]
        self.assertEqual(self.relay.registry.counts()["idle"], 1)
        failure = self.failureResultOf(self.tunnel(channel, prepared), BadRequest)
        self.assertIn("unknown join id", failure.getErrorMessage())
        self.assertEqual(self.echoes, [])

    def test_clientLeavesAfterPrepare(self) -> None:
        """
        A client that disconnects after L{Prepare} gives its skeleton
        connection up at once, not at the join timeout.
        """
        self.startSkeleton(pool=1)
        [pooled] = self.relay.registry.idleConnections()
        channel, d = self.prepare("web")
        self.successResultOf(d)
        channel.transport.loseConnection()
        self.net.settle()
        self.assertFalse(pooled.connected)  # type: ignore[attr-defined]
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_openConnectionForUnknownServer(self) -> None:
        """
        A skeleton asked to open a connection for a server it does not
        front answers L{UnknownServer}.
        """
        skeleton, control = self.startSkeleton(pool=0)
        assert skeleton.link.session is not None
        relaySide = self.relay.skeletons[skeleton.link.session.id]
        failure = self.failureResultOf(
            self.call(relaySide, OpenConnection, server="db"), UnknownServer
        )
        self.assertEqual(failure.getErrorMessage(), "this skeleton does not front db")

    def test_secondPrepareOnOneConnection(self) -> None:
        """
        A client connection carries one tunnel: a second L{Prepare} on it
        is refused with L{BadRequest} and takes no second connection from
        the skeleton.
        """
        self.startSkeleton(pool=2)
        _, session = self.loggedIn(CLIENTS, Channel())
        channel = self.connect(CLIENTS, Channel())
        for _ in range(2):
            d = self.call(
                channel,
                Prepare,
                session=session.id,
                proof=self.proof(channel, session),
                server="web",
                nonce=NONCE,
            )
        failure = self.failureResultOf(d, BadRequest)
        self.assertEqual(
            failure.getErrorMessage(), "one tunnel per connection: open another connection"
        )
        counts = self.relay.registry.counts()
        self.assertEqual((counts["idle"], counts["requested"]), (2, 0))
        self.assertEqual(len(self.relay.registry.idleConnections()), 2)

    def test_secondTunnelOnOneConnection(self) -> None:
        """
        A client connection carries one tunnel: a second L{Tunnel} sent on
        the same connection before the first is answered is refused with
        L{BadRequest} and takes no second connection from the skeleton.
        """
        self.startSkeleton(pool=2)
        _, session = self.loggedIn(CLIENTS, Channel())
        raw = Raw()
        tls = wrapClientTLS(PinnedRelay(self.identity.fingerprint), self.net.endpoint(CLIENTS))
        connectProtocol(tls, raw)
        self.net.settle()
        assert raw.transport is not None
        raw.transport.write(amp.AmpBox(_command=b"Hello", _ask=b"1").serialize())
        self.net.settle()
        [hello] = raw.take()
        raw.transport.write(
            amp.AmpBox(
                _command=b"Prepare",
                _ask=b"2",
                session=session.id.encode(),
                proof=session.proof(hello[b"challenge"]),
                server=b"web",
                nonce=NONCE,
            ).serialize()
        )
        self.net.settle()
        [prepared] = raw.take()
        join = prepared[b"join"]
        proof = joinProof(SECRET, NONCE, prepared[b"nonce"], join.decode())
        raw.transport.write(
            pipelined(
                amp.AmpBox(_command=b"Tunnel", _ask=b"3", join=join, proof=proof),
                amp.AmpBox(_command=b"Tunnel", _ask=b"4", join=join, proof=proof),
            )
        )
        self.net.settle()
        refusal, switch = raw.take()
        self.assertEqual(
            refusal,
            {
                b"_error": b"4",
                b"_error_code": b"BAD_REQUEST",
                b"_error_description": b"one tunnel per connection: open another connection",
            },
        )
        self.assertEqual(switch, {b"_answer": b"3"})
        self.assertEqual(len(self.relay.tunnels), 1)
        self.assertEqual(len(self.echoes), 1)


class LoginRenewalTests(RelayTestCase):
    """A skeleton's login renewed on its control connection."""

    sessionLifetime = 100.0

    def test_offersAfterRenewal(self) -> None:
        """
        After the skeleton logs in again on its control connection (at 80%
        of its session's life), the relay still knows the skeleton by its
        new session, so the connections it offers under it are pooled.
        """
        skeleton, control = self.startSkeleton(pool=1)
        first = skeleton.link.session
        for _ in range(9):
            self.reactor.advance(10)
            self.net.settle()
        second = skeleton.link.session
        assert first is not None and second is not None
        self.assertNotEqual(first.id, second.id)
        # A join takes the pooled connection; its replacement is offered
        # under the new session.
        self.successResultOf(self.prepare("web")[1])
        self.assertEqual(self.relay.registry.counts()["idle"], 1)
        self.assertEqual(list(self.relay.skeletons), [second.id])



class HeartbeatTests(RelayTestCase):
    """L{Relay.heartbeat}: silent skeletons and dead pooled connections."""

    def test_silentSkeletonDropped(self) -> None:
        """
        A skeleton not heard from for longer than the silence limit is
        dropped and its servers go offline; one heard from recently stays.
        """
        silent, _ = self.stalledSkeleton(["quiet"], pool=0)
        self.reactor.advance(self.relay.silenceLimit - 1)
        chatty, _ = self.stalledSkeleton(["loud"], pool=0)
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
        control, session = self.stalledSkeleton(["web"], pool=1)
        data = self.connect(SKELETONS, Deaf())
        self.successResultOf(self.offer(data, session, "web"))
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
        self.assertIsInstance(pooled, SkeletonChannel)
        self.relay.heartbeat()
        self.net.settle()
        self.reactor.advance(self.relay.pingTimeout)
        self.net.settle()
        self.assertEqual(self.relay.registry.idleConnections(), [pooled])


def pipelined(*boxes: amp.AmpBox) -> bytes:
    """The bytes of C{boxes} one after the other, as a peer might send them."""
    return b"".join(box.serialize() for box in boxes)
