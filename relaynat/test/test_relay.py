"""
The relay, driven over L{twisted.test.iosim}: every connection is an
in-memory pair on a L{MemoryReactorClock}, completed and pumped by hand
until nothing moves, so no socket and no real time is involved.

Control connections are real TLS with the relay's key pinned, and logins
real SCRAM-SHA-256-PLUS logins through L{RelayLink.login}.  Data
connections are plain bytes: a ticket, then what the relay splices.  The
real roles (L{Relay}, L{Skeleton}, the client's L{TunnelFactory}) talk to
each other, or a bare AMP peer (L{StalledSkeleton}) or a raw protocol
(L{Raw}) stands in for one side to send what a real one would not, and to
see the bytes exactly as the relay passes them on.

iosim's transports neither pause nor half-close, and splice only by their
protocols (the kernel splice needs real sockets): backpressure, half-close
and the kernel path are covered on real sockets by test_kernel and the
integration tests.  What can go wrong with a login itself (wrong passwords,
throttling, replayed transcripts, expiry) is covered by test_security.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols import amp, tls
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter, FakeTransport, IOPump
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from relaynat.channel import Channel
from relaynat.client import ClientControl, TunnelFactory
from relaynat.identity import PinnedRelay
from relaynat.link import STOP_GRACE, ControlService, Credentials, LoginSession, RelayLink
from relaynat.caps import Limits
from relaynat.relay import DataConnection, FirstBytes, Relay
from relaynat.skeleton import FrontedServer, RelayEnd, Skeleton, SkeletonControl
from relaynat.test.logs import logEvents
from relaynat.test.loopback import ANYTHING, PASSWORD, relayIdentity, writeUsers
from relaynat.test.streams import Collect, Echo
from relaynat.tickets import TICKET_LIFETIME
from relaynat.users import Rights, User, saveUsers
from relaynat.wire import (
    JOIN_REFUSED,
    TICKET_BATCH,
    TICKET_BYTES,
    TICKETS_PER_SESSION,
    TLS_HANDSHAKE,
    BadRequest,
    DuplicateServer,
    LimitReached,
    ListServers,
    Login,
    LoginRequired,
    OpenConnection,
    PermissionDenied,
    Ping,
    Register,
    ServerOffline,
    ServerWithdrawn,
    SessionEnded,
    SessionRefused,
    SkeletonGone,
    Tickets,
    UnknownServer,
)

#: The first-bytes deadline of a relay with the default limits.
FIRST_BYTES_WAIT = Limits().first_bytes_timeout

C = TypeVar("C", bound=Channel)

#: Port numbers on the memory reactor: nothing is bound, they only pair
#: connectors with listeners.
CLIENTS, SKELETONS, TARGET, LOCAL, NOBODY = 7000, 7001, 8000, 8080, 9999

#: Every fronted server's secret in these tests.
SECRET = b"s" * 32

#: The refusal codes a client's data connection can read (L{wire.JOIN_REFUSALS}),
#: spelled out so that a changed code fails here.  (Code 1, UnknownServer,
#: is had with a ticket only for a server its skeleton withdrew since:
#: tickets are only issued for servers registered.)
UNKNOWN_SERVER, SERVER_OFFLINE, JOIN_TIMEOUT, SKELETON_GONE, SESSION_REFUSED, LIMIT_REACHED = (
    1, 2, 3, 4, 5, 6
)

#: The most bytes a data connection may send after its ticket before it is
#: joined (the relay's limit, which is private to it).
EARLY_LIMIT = 4096

#: Every byte value, in an order that is no protocol's: what the tests send
#: through the relay to see that it arrives untouched.
EVERY_BYTE = bytes(range(256))[::-1] + JOIN_REFUSED + bytes([TLS_HANDSHAKE])


class Network:
    """
    A L{MemoryReactorClock} whose TCP connections are completed and pumped
    by L{settle}, for as long as anything moves.  It remembers every
    connection, and which transports were aborted rather than closed.
    """

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.completer = ConnectionCompleter(self.reactor)
        #: Connections still open on at least one side.
        self.pumps: list[IOPump] = []
        #: Every connection ever completed.
        self.connections: list[IOPump] = []
        #: Transports whose protocol called abortConnection.
        self.aborted: list[FakeTransport] = []

    def endpoint(self, port: int) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "192.0.2.1", port)

    def settle(self) -> None:
        """Complete every connection that has a listener; pump until idle."""
        for _ in range(1000):
            moved = False
            while (pump := self.completer.succeedOnce()) is not None:
                self.pumps.append(pump)
                self.connections.append(pump)
                moved = True
            for pump in self.pumps:
                moved = pump.flush() or moved
            self.pumps = [
                p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)
            ]
            if not moved:
                return
        raise AssertionError("the network never settled")

    def pending(self) -> list[int]:
        """Ports of the connection attempts nobody has completed."""
        return [port for _, port, _, _, _ in self.reactor.tcpClients]

    def pumpOf(self, protocol: Protocol) -> IOPump:
        """The connection whose connecting side C{protocol} is."""
        for pump in self.connections:
            if pump.clientIO is protocol.transport:
                return pump
        raise AssertionError(f"{protocol!r} is not connected")

    def relaySide(self, protocol: Protocol) -> FirstBytes:
        """The relay's protocol for C{protocol}'s connection to it."""
        server = self.pumpOf(protocol).server
        assert isinstance(server, FirstBytes)
        return server

    def abortedByRelay(self, protocol: Protocol) -> bool:
        """Did the relay abort (reset) C{protocol}'s connection to it?"""
        return self.pumpOf(protocol).serverIO in self.aborted

    def relayData(self, kind: str) -> list[DataConnection]:
        """The relay's data connections of C{kind} ("client" or "skeleton"), oldest first."""
        found = []
        for pump in self.connections:
            inner = getattr(pump.server, "inner", None)
            if isinstance(inner, DataConnection) and inner.kind == kind:
                found.append(inner)
        return found


class Raw(Protocol):
    """
    A peer that writes C{greeting} when connected, and then what it is
    told; it keeps what it receives and how its connection ended.
    """

    transport: Any

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = b""
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason

    @property
    def closed(self) -> bool:
        return self.reason is not None


@attrs.define
class Request:
    """One L{OpenConnection} a L{StalledSkeleton} was sent, not answered yet."""

    server: str
    ticket: bytes
    answer: Deferred[dict[str, object]]


class Peer(Channel):
    """A control connection that keeps what the relay tells it unasked."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[str] = []
        self.withdrawn: list[tuple[str, str]] = []

    @SessionEnded.responder
    def sessionEnded(self, reason: str) -> dict[str, object]:
        self.ended.append(reason)
        return {}

    @ServerWithdrawn.responder
    def serverWithdrawn(self, server: str, reason: str) -> dict[str, object]:
        self.withdrawn.append((server, reason))
        return {}


class StalledSkeleton(Peer):
    """
    A skeleton's control connection that registers like a real one but
    only keeps the relay's L{OpenConnection} requests in C{asked}: the test
    decides when, whether and how each is answered, and what its data
    connection sends.
    """

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[Request] = []

    @OpenConnection.responder
    def openConnection(self, server: str, ticket: bytes) -> Deferred[dict[str, object]]:
        d: Deferred[dict[str, object]] = Deferred()
        self.asked.append(Request(server, ticket, d))
        return d

    def unanswered(self) -> list[Request]:
        return [r for r in self.asked if not r.answer.called]


@implementer(ILogObserver)
class EventList:
    """A log observer that keeps every event."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """A L{StringTransport} that says it is TCP and records its socket options."""

    keepAlive = False
    noDelay = False

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepAlive = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.keepAlive

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = bool(enabled)

    def getTcpNoDelay(self) -> bool:
        return self.noDelay

    def loseWriteConnection(self) -> None:
        pass

    def getHandle(self) -> None:
        # No socket: keepAlive sets the options it can set through the transport.
        return None


class RelayTestCase(SynchronousTestCase):
    """
    A TLS relay on a memory network, with user alice (who may do anything),
    bob (who may register and join only "web"), and an echo server as the
    target.
    """

    joinTimeout = 5.0
    sessionLifetime = 86400.0
    limits = Limits()

    def setUp(self) -> None:
        self.net = Network()
        self.reactor = self.net.reactor
        # TLS holds small writes back until the next reactor turn, on the
        # global reactor unless told otherwise.  The relay's TLS factory
        # could be given the clock, but wrapClientTLS (in RelayLink) takes
        # none, so point Twisted's documented test hook at the memory
        # reactor, which the pumps advance.
        self.patch(tls, "_get_default_clock", lambda: self.reactor)
        # iosim's abortConnection only closes; remember who called it, to
        # tell the relay's resets from its orderly closes.
        abort = FakeTransport.abortConnection

        def recordAbort(transport: FakeTransport) -> None:
            self.net.aborted.append(transport)
            abort(transport)

        self.patch(FakeTransport, "abortConnection", recordAbort)
        directory = self.mktemp()
        os.makedirs(directory)
        self.identity = relayIdentity(directory)
        self.usersPath = os.path.join(directory, "users")
        users = writeUsers(self.usersPath, self.everyone())
        self.relay = Relay(
            self.reactor,
            self.identity,
            users,
            joinTimeout=self.joinTimeout,
            sessionLifetime=self.sessionLifetime,
            limits=self.limits,
        )
        self.reactor.listenTCP(CLIENTS, self.relay.clientFactory())
        self.reactor.listenTCP(SKELETONS, self.relay.skeletonFactory())
        self.echoes: list[Echo] = []
        self.reactor.listenTCP(TARGET, Factory.forProtocol(self.makeEcho))

    @staticmethod
    def everyone(**changed: Rights | None) -> dict[str, Rights]:
        """The users and their rights, with C{changed} ones replaced (None: deleted)."""
        users: dict[str, Rights | None] = {
            "alice": ANYTHING,
            "bob": Rights(register=frozenset({"web"}), join=frozenset({"web"})),
        }
        users.update(changed)
        return {name: rights for name, rights in users.items() if rights is not None}

    def changeUsers(self, **changed: Rights | None) -> None:
        """
        Rewrite the users file with C{changed} rights (their passwords kept)
        and have the relay reload it.
        """
        before = self.relay.users.users
        saveUsers(
            self.usersPath,
            {
                name: attrs.evolve(before[name], rights=rights)
                if name in before
                else User.create(name, PASSWORD, rights)
                for name, rights in self.everyone(**changed).items()
            },
        )
        self.assertTrue(self.relay.users.reload())

    def makeEcho(self) -> Echo:
        echo = Echo()
        self.echoes.append(echo)
        return echo

    # Control connections.

    def link(self, port: int, user: str = "alice") -> RelayLink:
        """C{user}'s way to the relay's C{port}, pinning the relay's key."""
        return RelayLink(
            self.net.endpoint(port),
            PinnedRelay(self.identity.fingerprint),
            Credentials(user, PASSWORD),
            self.reactor,
        )

    def connectVia(self, link: RelayLink, channel: C) -> C:
        """C{channel} connected through C{link}, its TLS handshake done."""
        d = Deferred.fromCoroutine(link.connect(channel))
        self.net.settle()
        return self.successResultOf(d)

    def connect(self, port: int, channel: C) -> C:
        return self.connectVia(self.link(port), channel)

    def login(self, channel: Channel, user: str = "alice", role: str = "client") -> LoginSession:
        """Log in as C{user}, a C{role}, on C{channel}; the session the relay issued."""
        # The link only lends its credentials: the login runs on C{channel},
        # whatever port that is connected to.
        d = Deferred.fromCoroutine(self.link(CLIENTS, user).login(channel, role))
        self.net.settle()
        return self.successResultOf(d)

    def loggedIn(self, port: int, channel: C, user: str = "alice") -> tuple[C, LoginSession]:
        """C{channel} connected to C{port} and logged in as C{user}."""
        channel = self.connect(port, channel)
        return channel, self.login(channel, user, "client" if port == CLIENTS else "skeleton")

    def call(self, channel: amp.AMP, command: type[amp.Command], **kw: object) -> Deferred[Any]:
        """
        Send C{command} and settle the network; a Deferred with the answer.
        The answer is taken before the network moves: AMP hands an error
        nobody has taken yet to its unhandled-error handler.
        """
        answer: Deferred[Any] = Deferred()
        channel.callRemote(command, **kw).chainDeferred(answer)
        self.net.settle()
        return answer

    def register(
        self, channel: amp.AMP, servers: list[str], pool: int = 0, name: str = "raw"
    ) -> Deferred[Any]:
        return self.call(
            channel,
            Register,
            name=name,
            servers=[{"id": s, "description": ""} for s in servers],
            pool=pool,
        )

    def askTickets(self, channel: amp.AMP, server: str = "web", count: int = 1) -> Deferred[Any]:
        return self.call(channel, Tickets, server=server, count=count)

    def clientTickets(
        self, server: str = "web", count: int = 1, user: str = "alice"
    ) -> tuple[Channel, list[bytes]]:
        """A client's logged-in control connection and C{count} tickets for C{server}."""
        channel, _ = self.loggedIn(CLIENTS, Peer(), user)
        answer = self.successResultOf(self.askTickets(channel, server, count))
        return channel, answer["tickets"]

    # Skeletons.

    def startSkeleton(
        self,
        servers: dict[str, int] | None = None,
        pool: int = 1,
        name: str = "test-skeleton",
        sealed: bool = True,
        user: str = "alice",
    ) -> tuple[Skeleton, SkeletonControl]:
        """A real skeleton of C{user} fronting C{servers} (id to target port), registered."""
        servers = {"web": TARGET} if servers is None else servers
        fronted = {
            serverId: self.fronted(serverId, port, sealed) for serverId, port in servers.items()
        }
        skeleton = Skeleton(self.link(SKELETONS, user), name, fronted, pool)
        return skeleton, self.registered(skeleton)

    def registered(self, skeleton: Skeleton) -> SkeletonControl:
        """A new control connection of C{skeleton}, logged in and registered."""
        control = self.connectVia(skeleton.link, SkeletonControl(skeleton))
        d = skeleton.register(control)
        self.net.settle()
        self.successResultOf(d)
        return control

    def fronted(self, serverId: str, port: int = TARGET, sealed: bool = True) -> FrontedServer:
        """What a skeleton fronts as C{serverId}: the target at C{port}."""
        return FrontedServer(
            serverId, f"{serverId} server", self.net.endpoint(port), SECRET, sealed
        )

    def listed(self, user: str = "alice") -> dict[str, dict[str, Any]]:
        """What L{ListServers} says to C{user} now, by server id."""
        client, _ = self.loggedIn(CLIENTS, Peer(), user)
        answer = self.successResultOf(self.call(client, ListServers))
        client.transport.loseConnection()
        self.net.settle()
        return {s["id"]: s for s in answer["servers"]}

    def stalledSkeleton(
        self, servers: list[str] | None = None, pool: int = 0, user: str = "alice"
    ) -> StalledSkeleton:
        """A logged-in, registered L{StalledSkeleton}."""
        control, _ = self.loggedIn(SKELETONS, StalledSkeleton(), user)
        self.successResultOf(self.register(control, servers or ["web"], pool=pool))
        return control

    def offer(self, request: Request, answer: bool = True) -> Raw:
        """
        What a skeleton does for C{request}: a data connection to the
        skeleton port that sends its ticket, and (if C{answer}) the answer.
        """
        raw = self.data(SKELETONS, request.ticket)
        if answer:
            request.answer.callback({})
            self.net.settle()
        return raw

    def pooled(
        self, pool: int = 1, servers: list[str] | None = None
    ) -> tuple[StalledSkeleton, list[Raw]]:
        """A L{StalledSkeleton} whose pool of C{pool} is filled with L{Raw} connections."""
        control = self.stalledSkeleton(servers, pool)
        raws = [self.offer(r) for r in control.unanswered()]
        self.assertEqual(self.relay.registry.counts()["idle"], pool * len(servers or ["web"]))
        return control, raws

    # Data connections.

    def data(self, port: int, greeting: bytes) -> Raw:
        """A raw data connection to C{port} that sends C{greeting} first."""
        raw = Raw(greeting)
        connectProtocol(self.net.endpoint(port), raw)
        self.net.settle()
        return raw

    def assertRefused(self, raw: Raw, code: int) -> None:
        """The relay wrote C{raw} the refusal with C{code} and nothing else, and closed."""
        self.assertEqual(raw.received, JOIN_REFUSED + bytes([code]))
        self.assertTrue(raw.closed)

    # Clients.

    def startClient(
        self, server: str = "web", secret: bytes = SECRET, ready: int = 0
    ) -> TunnelFactory:
        """
        A real client, logged in, with a local listener on L{LOCAL} whose
        connections are carried to C{server}, keeping C{ready} connections
        ready (the memory reactor does not start factories: this does).
        """
        link = self.link(CLIENTS)
        control = self.connectVia(link, ClientControl(link))
        d = Deferred.fromCoroutine(control.start())
        self.net.settle()
        self.successResultOf(d)
        factory = TunnelFactory(link, server, secret, ready=ready)
        self.reactor.listenTCP(LOCAL, factory)
        if ready:
            factory.doStart()
            self.addCleanup(factory.doStop)
            self.net.settle()
        return factory

    def collect(self, message: bytes) -> Collect:
        """A local connection to the client's listener, sending C{message}."""
        collector = Collect(message)
        connectProtocol(self.net.endpoint(LOCAL), collector)
        self.net.settle()
        return collector


class FirstBytesTests(RelayTestCase):
    """How the relay tells a control connection from a data connection."""

    def test_tlsIsControl(self) -> None:
        """
        A connection whose first byte is a TLS handshake record's is a
        control connection, on either port: TLS with the relay's key, then
        AMP, which answers L{Ping} before any login.
        """
        for port in (CLIENTS, SKELETONS):
            channel = self.connect(port, Peer())
            self.assertEqual(self.successResultOf(self.call(channel, Ping)), {})
        self.assertEqual(self.net.relayData("client") + self.net.relayData("skeleton"), [])

    def test_otherIsData(self) -> None:
        """
        A connection whose first byte is anything else is a data connection
        of its port's kind, from that byte on: even one byte is enough to
        decide, and nothing is written back while its ticket is incomplete.
        """
        for port, kind in ((CLIENTS, "client"), (SKELETONS, "skeleton")):
            raw = self.data(port, b"\x17")
            inner = self.net.relaySide(raw).inner
            self.assertIsInstance(inner, DataConnection)
            assert isinstance(inner, DataConnection)
            self.assertEqual(inner.kind, kind)
            self.assertEqual(raw.received, b"")
            self.assertFalse(raw.closed)

    def test_ticketInPieces(self) -> None:
        """
        A ticket may arrive in pieces, the first one a single byte: the
        relay reads the whole ticket before it looks it up.
        """
        control = self.stalledSkeleton(pool=1)
        [request] = control.asked
        raw = self.data(SKELETONS, request.ticket[:1])
        for i in range(1, TICKET_BYTES, 5):
            self.assertEqual(self.relay.registry.counts()["idle"], 0)
            raw.transport.write(request.ticket[i : i + 5])
            self.net.settle()
        self.assertEqual(self.relay.registry.counts()["idle"], 1)
        self.assertFalse(raw.closed)

    def test_silentConnectionAborted(self) -> None:
        """
        A connection that sends nothing is aborted after L{FIRST_BYTES_WAIT}
        seconds, and not before.
        """
        for port in (CLIENTS, SKELETONS):
            raw = self.data(port, b"")
            self.reactor.advance(FIRST_BYTES_WAIT - 0.1)
            self.net.settle()
            self.assertFalse(raw.closed)
            self.reactor.advance(0.2)
            self.net.settle()
            self.assertTrue(raw.closed)
            self.assertTrue(self.net.abortedByRelay(raw))
            self.assertEqual(raw.received, b"")

    def test_partialTicketAborted(self) -> None:
        """
        A data connection that sends part of a ticket is aborted
        L{FIRST_BYTES_WAIT} seconds after its first byte, and not before;
        the ticket it was part of stays good for a connection that sends
        all of it.
        """
        self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        raw = self.data(CLIENTS, ticket[: TICKET_BYTES - 1])
        self.reactor.advance(FIRST_BYTES_WAIT - 0.1)
        self.net.settle()
        self.assertFalse(raw.closed)
        self.reactor.advance(0.2)
        self.net.settle()
        self.assertTrue(raw.closed)
        self.assertTrue(self.net.abortedByRelay(raw))
        self.assertEqual(raw.received, b"")
        whole = self.data(CLIENTS, ticket)
        self.assertFalse(whole.closed)
        self.assertEqual(self.relay.registry.counts()["waiting"], 1)

    def test_wholeTicketStopsTheClock(self) -> None:
        """
        A data connection that sent its whole ticket is not aborted at
        L{FIRST_BYTES_WAIT}: from then on the join's own timeout (or the
        pool) decides.
        """
        self.pooled(pool=1)
        [pooled] = self.net.relayData("skeleton")
        self.reactor.advance(FIRST_BYTES_WAIT * 3)
        self.net.settle()
        self.assertEqual(self.relay.registry.idleConnections(), [pooled])

    def test_tlsGarbageDropped(self) -> None:
        """
        A connection that starts like TLS and then is not TLS is closed,
        and the relay goes on serving the next control connection.
        """
        raw = self.data(CLIENTS, bytes([TLS_HANDSHAKE]) + b"\x03\x01\x00\x05hello" * 10)
        self.assertTrue(raw.closed)
        self.assertEqual(self.net.relayData("client"), [])
        channel = self.connect(CLIENTS, Peer())
        self.assertEqual(self.successResultOf(self.call(channel, Ping)), {})

    def test_dataConnectionKeepAlive(self) -> None:
        """
        The relay turns TCP keepalive on for every data connection, on
        either port: it is what watches a pooled connection, on which
        nothing may be written.  Control connections are watched by their
        pings instead.  (That keepAlive sets the socket's probe times is
        seen on real sockets, by the integration tests.)
        """
        for factory in (self.relay.clientFactory(), self.relay.skeletonFactory()):
            data = TCPStringTransport()
            protocol = factory.buildProtocol(data.getPeer())
            protocol.makeConnection(data)
            self.assertFalse(data.keepAlive)
            protocol.dataReceived(b"\x00")
            self.assertTrue(data.keepAlive)
            self.assertTrue(data.noDelay)
            control = TCPStringTransport()
            protocol = factory.buildProtocol(control.getPeer())
            protocol.makeConnection(control)
            protocol.dataReceived(bytes([TLS_HANDSHAKE]))
            self.assertFalse(control.keepAlive)
            protocol.connectionLost(Failure(Exception("test over")))
            self.reactor.advance(FIRST_BYTES_WAIT * 2)


class DeadlineTests(RelayTestCase):
    """
    The deadlines and caps of connections that have not logged in (or sent
    a good ticket), on the clock: L{Limits}, L{relaynat.lobby}.
    """

    limits = Limits(
        handshake_timeout=4.0, login_timeout=6.0, max_unauthenticated=5,
        max_unauthenticated_per_source=3,
    )

    def test_handshakeDeadline(self) -> None:
        """A TLS handshake begun and never finished is aborted at the handshake timeout."""
        raw = self.data(CLIENTS, bytes([TLS_HANDSHAKE, 3, 1]))
        self.reactor.advance(3.9)
        self.net.settle()
        self.assertFalse(raw.closed)
        self.reactor.advance(0.2)
        self.net.settle()
        self.assertTrue(raw.closed)
        self.assertTrue(self.net.abortedByRelay(raw))

    def test_loginDeadline(self) -> None:
        """
        A control connection that finished its handshake but does not log
        in is aborted at the login timeout, counted from its start; one that
        logged in stays, however long it is quiet.
        """
        idle = self.connect(CLIENTS, Peer())
        busy, _ = self.loggedIn(CLIENTS, Peer())
        self.reactor.advance(5.9)
        self.net.settle()
        self.assertTrue(idle.connected)
        self.reactor.advance(0.2)
        self.net.settle()
        self.assertFalse(idle.connected)
        self.reactor.advance(3600)
        self.net.settle()
        self.assertTrue(busy.connected)
        self.assertEqual(len(self.relay.lobby), 0)

    def test_oldestEvictedPerSource(self) -> None:
        """
        Past the cap per source, each new connection pushes the oldest
        unauthenticated one of its source out; logged-in ones are not
        counted, and their logins keep working.
        """
        busy, _ = self.loggedIn(CLIENTS, Peer())
        raws = [self.data(CLIENTS, b"") for _ in range(5)]
        self.assertEqual([r.closed for r in raws], [True, True, False, False, False])
        self.assertTrue(self.net.abortedByRelay(raws[0]))
        self.assertEqual(len(self.relay.lobby), 3)
        self.successResultOf(self.call(busy, ListServers))

    def test_goodTicketLeavesTheLobby(self) -> None:
        """A data connection whose ticket is good is no longer counted."""
        self.stalledSkeleton(pool=0)
        _, tickets = self.clientTickets(count=3)
        raws = [self.data(CLIENTS, t) for t in tickets]
        self.assertEqual(len(self.relay.lobby), 0)
        self.assertEqual([r.closed for r in raws], [False] * 3)


class UserCapsTests(RelayTestCase):
    """What one user may hold (L{Limits}), on the clock."""

    limits = Limits(max_pending_per_session=2, max_pending_per_user=3, max_servers_per_user=2)

    def test_pendingJoinsCapped(self) -> None:
        """
        Joins waiting for a skeleton's connection are capped per login and
        per user; past the cap the client reads the limit's code.  When one
        stops waiting, another may.
        """
        self.stalledSkeleton(pool=0)
        _, first = self.clientTickets(count=3)
        _, second = self.clientTickets(count=2)
        waiting = [self.data(CLIENTS, t) for t in first[:2]]
        self.assertRefused(self.data(CLIENTS, first[2]), LIMIT_REACHED)
        waiting.append(self.data(CLIENTS, second[0]))
        self.assertRefused(self.data(CLIENTS, second[1]), LIMIT_REACHED)
        self.assertEqual([w.closed for w in waiting], [False] * 3)
        self.assertEqual(self.relay.usage.hits["pending"], 2)
        waiting[0].transport.loseConnection()
        self.net.settle()
        self.reactor.advance(self.joinTimeout + 1)
        self.net.settle()
        self.assertEqual(self.relay.usage.pending, {})

    def test_serversCapped(self) -> None:
        """A user's skeletons may register so many servers together, no more."""
        self.stalledSkeleton(["web"])
        channel, _ = self.loggedIn(SKELETONS, Peer())
        failure = self.failureResultOf(self.register(channel, ["db", "mail"]), LimitReached)
        self.assertEqual(
            failure.getErrorMessage(),
            "user alice may register at most 2 servers (1 registered now)",
        )
        self.successResultOf(self.register(channel, ["db"]))

    def test_serversCappedWhenRegisteredAgain(self) -> None:
        """
        Registering again on a connection counts what it holds as replaced,
        not added: its two servers may become two others, not three; the
        refused set leaves the two as they were, and fewer free the rest.
        """
        control = self.stalledSkeleton(["web", "db"])
        self.successResultOf(self.register(control, ["db", "mail"]))
        failure = self.failureResultOf(
            self.register(control, ["db", "mail", "ftp"]), LimitReached
        )
        self.assertEqual(
            failure.getErrorMessage(),
            "user alice may register at most 2 servers (2 registered now)",
        )
        self.assertEqual(sorted(self.listed()), ["db", "mail"])
        self.assertEqual(self.relay.usage.servers, {"alice": 2})
        self.successResultOf(self.register(control, ["ftp"]))
        self.assertEqual(self.relay.usage.servers, {"alice": 1})
        other, _ = self.loggedIn(SKELETONS, Peer())
        self.successResultOf(self.register(other, ["web"]))
        self.assertEqual(self.relay.usage.servers, {"alice": 2})


class RegisterTests(RelayTestCase):
    """L{Register} on the relay's skeleton port."""

    def test_registeredUnderItsLogin(self) -> None:
        """
        A skeleton that logs in and registers is known by its login's
        session, and the relay asks it for its pool, which it fills with
        data connections that bring tickets of that session.
        """
        skeleton, control = self.startSkeleton(pool=2)
        session = skeleton.link.session
        assert session is not None
        self.assertEqual(list(self.relay.skeletons), [session.id])
        channel = self.relay.skeletons[session.id]
        self.assertEqual(channel.name, "test-skeleton")
        self.assertEqual(
            self.relay.registry.counts(),
            {"servers": 1, "idle": 2, "waiting": 0, "requested": 0},
        )
        pooled = self.relay.registry.idleConnections()
        self.assertEqual(sorted(map(id, pooled)), sorted(map(id, self.net.relayData("skeleton"))))
        for connection in pooled:
            assert isinstance(connection, DataConnection) and connection.grant is not None
            self.assertEqual(connection.grant.session, session.id)
            self.assertEqual(connection.grant.server, "web")
        self.assertEqual(len(skeleton.dataConnections), 2)
        # Every ticket was used: none is left over.
        self.assertEqual(self.relay.tickets.outstanding(session.id), 0)

    def test_sessionsDiffer(self) -> None:
        """Two skeletons of one user log in with two different sessions."""
        one, _ = self.startSkeleton({"a": TARGET}, pool=0)
        two, _ = self.startSkeleton({"b": TARGET}, pool=0)
        assert one.link.session is not None and two.link.session is not None
        self.assertNotEqual(one.link.session.id, two.link.session.id)
        self.assertEqual(set(self.relay.skeletons), {one.link.session.id, two.link.session.id})

    def test_registerNeedsLogin(self) -> None:
        """
        L{Register} before a login is refused with L{LoginRequired}, and
        nothing is registered.
        """
        channel = self.connect(SKELETONS, Peer())
        failure = self.failureResultOf(self.register(channel, ["web"]), LoginRequired)
        self.assertEqual(failure.getErrorMessage(), "log in first")
        self.assertEqual(self.relay.registry.listing(), [])
        self.assertEqual(self.relay.skeletons, {})

    def test_loginOnAnotherConnectionNotEnough(self) -> None:
        """
        The login must be on the registering connection itself: a login
        on another connection of the same user does not count.
        """
        self.loggedIn(SKELETONS, Peer())
        other = self.connect(SKELETONS, Peer())
        self.failureResultOf(self.register(other, ["web"]), LoginRequired)
        self.assertEqual(self.relay.registry.listing(), [])

    def test_registerNothing(self) -> None:
        """A registration without servers is refused with L{BadRequest}."""
        channel, _ = self.loggedIn(SKELETONS, Peer())
        failure = self.failureResultOf(self.register(channel, []), BadRequest)
        self.assertEqual(failure.getErrorMessage(), "a skeleton must register at least one server")
        self.assertEqual(self.relay.skeletons, {})

    def test_registerBadId(self) -> None:
        """A registration with a malformed id is refused with L{BadRequest}."""
        channel, _ = self.loggedIn(SKELETONS, Peer())
        failure = self.failureResultOf(self.register(channel, ["no/slashes"]), BadRequest)
        self.assertIn("bad server id 'no/slashes'", failure.getErrorMessage())
        self.assertEqual(self.relay.registry.listing(), [])

    def test_registerNotPermitted(self) -> None:
        """
        A user may register only the ids its rights list: bob's skeleton
        registering "web" and "db" is refused with L{PermissionDenied} for
        "db", registers neither, and is asked for no connection.
        """
        channel, _ = self.loggedIn(SKELETONS, StalledSkeleton(), user="bob")
        failure = self.failureResultOf(
            self.register(channel, ["web", "db"], pool=1), PermissionDenied
        )
        self.assertEqual(failure.getErrorMessage(), "user bob may not register server db")
        self.assertEqual(self.relay.registry.listing(), [])
        self.assertEqual(self.relay.skeletons, {})
        self.assertEqual(channel.asked, [])
        self.successResultOf(self.register(channel, ["web"]))
        self.assertEqual([s["id"] for s in self.relay.registry.listing()], ["web"])

    def test_registerDuplicate(self) -> None:
        """
        A second skeleton registering a taken id gets L{DuplicateServer}
        over the wire, naming the first skeleton; it may then register other
        ids on the same connection.
        """
        self.startSkeleton(name="first")
        channel, _ = self.loggedIn(SKELETONS, Peer())
        failure = self.failureResultOf(self.register(channel, ["web"]), DuplicateServer)
        self.assertEqual(
            failure.getErrorMessage(),
            "server web is already registered by another skeleton;"
            " give this one another id, or stop the other skeleton",
        )
        self.successResultOf(self.register(channel, ["web2"]))
        self.assertEqual([s["id"] for s in self.relay.registry.listing()], ["web", "web2"])

    def test_disconnectUnregisters(self) -> None:
        """
        When a skeleton's control connection closes, the relay forgets it
        and ends its session, its servers go offline and its pooled data
        connections close.
        """
        skeleton, control = self.startSkeleton(pool=2)
        session = skeleton.link.session
        assert session is not None
        pooled = self.net.relayData("skeleton")
        self.assertEqual(len(pooled), 2)
        control.transport.loseConnection()
        self.net.settle()
        self.assertEqual(self.relay.skeletons, {})
        self.assertIsNone(self.relay.sessions.get(session.id))
        self.assertEqual(self.relay.registry.counts()["servers"], 0)
        self.assertTrue(all(c.lost is not None for c in pooled))
        self.assertEqual(skeleton.dataConnections, set())
        client, _ = self.loggedIn(CLIENTS, Peer())
        self.assertEqual(self.successResultOf(self.call(client, ListServers)), {"servers": []})

    def test_openConnectionForUnknownServer(self) -> None:
        """
        A real skeleton asked to open a connection for a server it does not
        front answers L{UnknownServer}; one asked with a ticket of the
        wrong length answers L{BadRequest}; neither opens a connection.
        """
        skeleton, _ = self.startSkeleton(pool=0)
        assert skeleton.link.session is not None
        relaySide = self.relay.skeletons[skeleton.link.session.id]
        failure = self.failureResultOf(
            self.call(relaySide, OpenConnection, server="db", ticket=b"t" * TICKET_BYTES),
            UnknownServer,
        )
        self.assertEqual(failure.getErrorMessage(), "this skeleton does not front db")
        failure = self.failureResultOf(
            self.call(relaySide, OpenConnection, server="web", ticket=b"short"), BadRequest
        )
        self.assertEqual(failure.getErrorMessage(), "a ticket is 32 bytes")
        self.assertEqual(self.net.relayData("skeleton"), [])
        self.assertEqual(self.net.pending(), [])


class RegisterAgainTests(RelayTestCase):
    """
    L{Register} again on a registered connection (a skeleton's reload): the
    set of servers replaced, the kept ones untouched.
    """

    def test_replacedOnTheSameConnection(self) -> None:
        """
        A second L{Register} replaces the connection's servers: web, kept,
        keeps its C{since} and its open tunnel, which carries bytes both
        ways; db is withdrawn (its pooled connection closed, no longer
        listed, offline to clients); mail is added (listed since now, its
        pool asked for).  The connection stays, is told of no withdrawal,
        and alice holds two servers.
        """
        self.reactor.advance(10)
        control = self.stalledSkeleton(["web", "db"], pool=1)
        byServer = {r.server: self.offer(r) for r in control.unanswered()}
        _, [ticket] = self.clientTickets("web")
        client = self.data(CLIENTS, ticket + b"up")
        self.assertEqual(byServer["web"].received, b"up")
        self.reactor.advance(100)

        self.successResultOf(self.register(control, ["web", "mail"], pool=1))

        self.assertTrue(byServer["db"].closed)
        byServer["web"].transport.write(b"down")
        client.transport.write(b" and more")
        self.net.settle()
        self.assertEqual(client.received, b"down")
        self.assertEqual(byServer["web"].received, b"up and more")
        self.assertFalse(client.closed or byServer["web"].closed)
        listed = self.listed()
        self.assertEqual(sorted(listed), ["mail", "web"])
        self.assertEqual((listed["web"]["since"], listed["mail"]["since"]), (10.0, 110.0))
        # Asked for: web's replacement of the connection its tunnel took, and mail's pool.
        self.assertEqual(sorted(r.server for r in control.unanswered()), ["mail", "web"])
        self.assertTrue(control.connected)
        self.assertEqual(control.withdrawn, [])
        self.assertEqual(len(self.relay.tunnels), 1)
        self.assertEqual(self.relay.usage.servers, {"alice": 2})
        channel, _ = self.loggedIn(CLIENTS, Peer())
        self.failureResultOf(self.askTickets(channel, "db"), UnknownServer)

    def test_withdrawnServerUnknownToATicket(self) -> None:
        """
        A ticket for a server its skeleton withdrew since (a reload) is
        refused as for a server never registered (code 1), not as one whose
        skeleton is offline: the skeleton is connected.
        """
        control = self.stalledSkeleton(["web", "db"])
        _, [ticket] = self.clientTickets("db")
        self.successResultOf(self.register(control, ["web"]))
        self.assertRefused(self.data(CLIENTS, ticket), UNKNOWN_SERVER)

    def test_describedAnew(self) -> None:
        """
        A kept server with a new description is listed with it, and keeps
        its C{since} and its pooled connection; so does a new name.
        """
        control = self.stalledSkeleton(["web"], pool=1)
        [pooled] = [self.offer(r) for r in control.unanswered()]
        since = self.listed()["web"]["since"]
        self.reactor.advance(5)
        self.successResultOf(
            self.call(
                control,
                Register,
                name="renamed",
                servers=[{"id": "web", "description": "the new web"}],
                pool=1,
            )
        )
        self.assertEqual(
            self.listed()["web"],
            {"id": "web", "description": "the new web", "since": since, "idle": 1},
        )
        self.assertFalse(pooled.closed)
        [channel] = self.relay.skeletons.values()
        self.assertEqual(channel.name, "renamed")

    def test_renamedLogged(self) -> None:
        """
        A new name alone is taken and logged, in the line that says what a
        registration changed; a refused registration with a new name keeps
        the old one, and its refusal names the skeleton by it.
        """
        control = self.stalledSkeleton(["web"])
        self.stalledSkeleton(["taken"])
        events = logEvents(self)
        self.successResultOf(self.register(control, ["web"], name="renamed"))
        [channel] = [c for c in self.relay.skeletons.values() if c.name == "renamed"]
        self.assertEqual(
            [formatEvent(e) for e in events if "changed its servers" in formatEvent(e)],
            [
                "skeleton 'renamed' of alice changed its servers: added none, withdrew none,"
                " changed none; renamed from 'raw'"
            ],
        )
        self.failureResultOf(
            self.register(control, ["web", "taken"], name="again"), DuplicateServer
        )
        self.assertEqual(channel.name, "renamed")
        [refused] = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertIn("skeleton 'renamed' of alice from", refused)

    def test_refusedChangesNothing(self) -> None:
        """
        A new set that is refused (another skeleton's id, a malformed id,
        no server, a server its user may not register) changes nothing: the
        servers held stay listed as they were, with their pooled
        connections, and are counted as before.
        """
        alice = self.stalledSkeleton(["db"], pool=1)
        self.stalledSkeleton(["taken"])
        bob = self.stalledSkeleton(["web"], pool=1, user="bob")
        pooled = [self.offer(r) for r in alice.unanswered() + bob.unanswered()]
        before = self.listed()
        self.reactor.advance(5)
        self.failureResultOf(self.register(alice, ["db", "taken"]), DuplicateServer)
        self.failureResultOf(self.register(alice, ["db", "no/slashes"]), BadRequest)
        self.failureResultOf(self.register(alice, []), BadRequest)
        failure = self.failureResultOf(self.register(bob, ["web", "db2"]), PermissionDenied)
        self.assertEqual(failure.getErrorMessage(), "user bob may not register server db2")
        self.assertEqual(self.listed(), before)
        self.assertFalse(any(raw.closed for raw in pooled))
        self.assertEqual(self.relay.usage.servers, {"alice": 2, "bob": 1})
        self.assertTrue(alice.connected and bob.connected)

    def test_revocationAfterRegisteringAgain(self) -> None:
        """
        The users file reloaded after a skeleton registered again: a server
        it added is withdrawn as any other (the skeleton is told), and the
        counts stay right, to nothing once it disconnects.
        """
        control = self.stalledSkeleton(["web"])
        self.successResultOf(self.register(control, ["web", "db"]))
        self.changeUsers(alice=Rights(register=frozenset({"web"}), join=None))
        self.net.settle()
        self.assertEqual(control.withdrawn, [("db", "user alice may no longer register it")])
        self.assertEqual(sorted(self.listed()), ["web"])
        self.assertEqual(self.relay.usage.servers, {"alice": 1})
        control.transport.loseConnection()
        self.net.settle()
        self.assertEqual(self.relay.usage.servers, {})
        self.assertEqual(self.relay.registry.counts()["servers"], 0)


class SkeletonReconfigureTests(RelayTestCase):
    """A real skeleton's reload told to the real relay on its control connection."""

    def test_liveConnectionKept(self) -> None:
        """
        A reload that keeps web, drops db and adds mail goes to the relay on
        the control connection, which stays: a tunnel to web open across it
        carries bytes, web keeps its C{since}, mail is listed, db is not, and
        the skeleton's connections for db close (once the relay has taken
        the new set, so that it asks for no replacement).  C{reconfigure}
        returns False: nobody needs to reconnect.
        """
        skeleton, control = self.startSkeleton({"web": TARGET, "db": TARGET}, pool=1)
        self.startClient("web")
        collector = self.collect(b"before")
        self.assertEqual(b"".join(collector.received), b"before")
        since = self.listed()["web"]["since"]
        forDb = {end for end in skeleton.dataConnections if end.server.id == "db"}
        self.assertEqual(len(forDb), 1)
        self.reactor.advance(50)
        servers = {"web": skeleton.servers["web"], "mail": self.fronted("mail")}

        skeleton.reconfigure(servers, "test-skeleton", 1)
        # Not closed before the relay has taken the new set: it would ask
        # for a replacement, which the skeleton would refuse.
        self.assertFalse(any(end.transport.disconnecting for end in forDb))
        self.net.settle()

        self.assertTrue(control.connected)
        self.assertIs(skeleton.control, control)
        self.assertEqual(len(self.relay.skeletons), 1)
        listed = self.listed()
        self.assertEqual(sorted(listed), ["mail", "web"])
        self.assertEqual((listed["web"]["since"], listed["mail"]["since"]), (since, since + 50))
        self.assertTrue(all(end.lost is not None for end in forDb))
        assert collector.transport is not None
        collector.transport.write(b" and after")
        self.net.settle()
        self.assertEqual(b"".join(collector.received), b"before and after")
        self.assertIsNone(collector.reason)
        # Each pool full again, mail's with the new server.
        self.assertEqual(self.relay.registry.counts()["idle"], 2)
        self.assertEqual(control.held, skeleton.registration())

    def test_reloadsInARow(self) -> None:
        """
        A second reload before the relay answered the first: the relay ends
        with the second's servers and name, on the same connection.
        """
        skeleton, control = self.startSkeleton({"web": TARGET}, pool=0)
        web = skeleton.servers["web"]
        skeleton.reconfigure({"web": web, "db": self.fronted("db")}, "test-skeleton", 0)
        skeleton.reconfigure({"web": web, "mail": self.fronted("mail")}, "renamed", 0)
        self.net.settle()
        self.assertEqual(sorted(self.listed()), ["mail", "web"])
        [channel] = self.relay.skeletons.values()
        self.assertEqual(channel.name, "renamed")
        self.assertTrue(control.connected)
        self.assertEqual(control.held, skeleton.registration())

    def test_unchangedSendsNothing(self) -> None:
        """A reload that changes no registration sends no L{Register}."""
        skeleton, control = self.startSkeleton({"web": TARGET}, pool=0)
        sent: list[object] = []
        original = control.callRemote

        def spy(command: Any, **kw: Any) -> Deferred[Any]:
            sent.append(command)
            return original(command, **kw)

        self.patch(control, "callRemote", spy)
        skeleton.reconfigure(dict(skeleton.servers), "test-skeleton", 0)
        self.net.settle()
        self.assertEqual(sent, [])

    def test_withoutConnection(self) -> None:
        """
        A reload while no control connection is up tells nobody; the next
        connection registers the new set.
        """
        skeleton, control = self.startSkeleton({"web": TARGET}, pool=0)
        control.transport.loseConnection()
        self.net.settle()
        self.assertIsNone(skeleton.control)
        skeleton.reconfigure({"db": self.fronted("db")}, "test-skeleton", 0)
        self.registered(skeleton)
        self.assertEqual(sorted(self.listed()), ["db"])

    def test_refusedAdditionLeftOut(self) -> None:
        """
        A reload adding a server its user may not register: the relay
        refuses the new set whole, the skeleton sends it again without that
        server on the same connection, and says so in one error line; the
        kept server keeps its C{since} and its pooled connection.
        """
        skeleton, control = self.startSkeleton({"web": TARGET}, pool=1, user="bob")
        [pooled] = skeleton.dataConnections
        since = self.listed("bob")["web"]["since"]
        events = logEvents(self)
        self.reactor.advance(5)
        servers = {"web": self.fronted("web"), "db": self.fronted("db")}
        servers["web"] = skeleton.servers["web"]
        skeleton.reconfigure(servers, "test-skeleton", 1)
        self.net.settle()
        [line] = [formatEvent(e) for e in events if "not registered" in formatEvent(e)]
        self.assertIn("server db, added by a reload, not registered", line)
        self.assertIn("user bob may not register server db", line)
        self.assertEqual(self.listed("bob")["web"]["since"], since)
        self.assertIsNone(pooled.lost)
        self.assertTrue(control.connected)
        self.assertEqual(sorted(skeleton.servers), ["web"])

    def test_nothingLeftDropsTheConnection(self) -> None:
        """
        A reload that leaves only a server the relay withdrew has nothing
        to register: the connection is dropped (the relay forgets its
        servers) with an error line, as the next connection is refused.
        """
        skeleton, control = self.startSkeleton({"web": TARGET, "db": TARGET}, pool=0)
        self.changeUsers(alice=Rights(register=frozenset({"web"}), join=None))
        self.net.settle()
        self.assertEqual(sorted(skeleton.servers), ["web"])
        events = logEvents(self)
        skeleton.reconfigure({"db": self.fronted("db")}, "test-skeleton", 0)
        self.net.settle()
        self.assertFalse(control.connected)
        self.assertEqual(self.listed(), {})
        [line] = [formatEvent(e) for e in events if "refused the reloaded" in formatEvent(e)]
        self.assertIn("every server of it was withdrawn", line)


class ReloadRefusedTests(RelayTestCase):
    """
    A reload the relay refuses whole for a reason no added server explains:
    the relay holds what it held, and the skeleton goes back to it, on the
    same connection.
    """

    def errors(self, events: list[dict[str, Any]]) -> list[str]:
        return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]

    def test_refusedDescriptionKeepsTheRunningSet(self) -> None:
        """
        A reload that gives web a description the relay refuses (not
        printable) and adds mail is refused whole: the control connection
        stays, web stays listed as it was (its description, its C{since}),
        the skeleton fronts web as before the reload (the same object, so
        its pool is refilled with the old settings) and not mail, and one
        error line says what the relay refused and what to do; nothing more
        is sent or said as time passes.
        """
        skeleton, control = self.startSkeleton({"web": TARGET}, pool=1)
        web = skeleton.servers["web"]
        before = self.listed()
        events = logEvents(self)
        self.reactor.advance(5)
        skeleton.reconfigure(
            {"web": attrs.evolve(web, description="bell\x07"), "mail": self.fronted("mail")},
            "test-skeleton",
            1,
        )
        self.net.settle()
        self.assertTrue(control.connected)
        self.assertIs(skeleton.control, control)
        self.assertEqual(self.listed(), before)
        self.assertEqual(skeleton.servers, {"web": web})
        self.assertIs(skeleton.servers["web"], web)
        self.assertEqual(skeleton.untried, set())
        self.assertEqual(control.held, skeleton.registration())
        self.assertEqual([end.server for end in skeleton.dataConnections], [web])
        self.assertEqual(self.relay.registry.counts()["idle"], 1)
        [line] = self.errors(events)
        self.assertIn("the relay refused the reloaded configuration: bad description", line)
        self.assertIn("goes on with what it ran before the reload (web registered)", line)
        self.assertIn("fix the file and reload again", line)
        for _ in range(3):
            self.reactor.advance(60)
            self.net.settle()
        self.assertEqual(len(self.errors(events)), 1)
        self.assertTrue(control.connected)

    def test_refusedNameKeepsTheRunningSet(self) -> None:
        """
        A reload to a name the relay refuses (a newline in it) keeps the
        connection, the name the relay knows and the servers; the next
        connection, should this one go, registers them again.
        """
        skeleton, control = self.startSkeleton({"web": TARGET}, pool=0)
        events = logEvents(self)
        skeleton.reconfigure(dict(skeleton.servers), "two\nlines", 0)
        self.net.settle()
        self.assertTrue(control.connected)
        self.assertEqual(skeleton.name, "test-skeleton")
        [channel] = self.relay.skeletons.values()
        self.assertEqual(channel.name, "test-skeleton")
        [line] = self.errors(events)
        self.assertIn("bad skeleton name 'two\\nlines'", line)
        control.transport.loseConnection()
        self.net.settle()
        self.registered(skeleton)
        self.assertEqual(sorted(self.listed()), ["web"])

    def test_firstRegistrationRefusedSaidOnce(self) -> None:
        """
        A skeleton whose first registration is refused (a name the relay
        does not take) is dropped and tries again, as its service does, and
        the refusal is one error line, however many times it is tried.
        """
        servers = {"web": self.fronted("web")}
        skeleton = Skeleton(self.link(SKELETONS), "bell\x07", servers, 0)
        service = ControlService(
            skeleton.link.endpoint,
            lambda: SkeletonControl(skeleton),
            self.reactor,
            retryPolicy=lambda attempt: 1.0,
        )
        events = logEvents(self)
        service.startService()
        attempts = 4
        for _ in range(attempts):
            self.net.settle()
            self.reactor.advance(1.0)
        self.net.settle()
        stopped = service.stopService()
        self.net.settle()
        self.reactor.advance(STOP_GRACE)
        self.net.settle()
        self.successResultOf(stopped)
        self.assertEqual(self.relay.skeletons, {})
        tried = [formatEvent(e) for e in events if "logged in to the relay" in formatEvent(e)]
        self.assertGreaterEqual(len(tried), attempts)
        [line] = self.errors(events)
        self.assertIn("the relay refused this skeleton: bad skeleton name", line)


class ReloadRaceTests(RelayTestCase):
    """Reloads that cross the relay's own changes, or each other."""

    def test_refusalAfterWithdrawalBlamesNobody(self) -> None:
        """
        The relay withdraws db (its user lost the right) while the new set
        of a reload that keeps db and adds mail is on its way: the relay
        refuses that set for db, after telling the skeleton db is withdrawn.
        The skeleton sends what it offers now (web and mail) rather than
        blame mail, which is registered.
        """
        skeleton, control = self.startSkeleton({"web": TARGET, "db": TARGET}, pool=0)
        events = logEvents(self)
        servers = {**skeleton.servers, "mail": self.fronted("mail")}
        skeleton.reconfigure(servers, "test-skeleton", 0)
        # Before the relay reads the new set.
        self.changeUsers(alice=Rights(register=frozenset({"web", "mail"}), join=None))
        self.net.settle()
        self.assertEqual(said(events, "not registered"), [])
        self.assertEqual(sorted(self.listed()), ["mail", "web"])
        self.assertEqual(sorted(skeleton.servers), ["mail", "web"])
        self.assertEqual(skeleton.withdrawn, {"db"})
        self.assertEqual(control.held, skeleton.registration())
        self.assertTrue(control.connected)

    def test_removedAndAddedAgainReplacesItsConnections(self) -> None:
        """
        Reloads in a row while a registration is on its way: one that
        describes web anew, one that removes db, one that adds db again
        with a new secret.  The relay never hears db removed (the last set
        has it, as it held), but db's pooled connection, opened with the
        old secret, is closed, and the pool refilled with the new one.
        """
        skeleton, control = self.startSkeleton({"web": TARGET, "db": TARGET}, pool=1)
        web, db = skeleton.servers["web"], skeleton.servers["db"]
        [oldDb] = [end for end in skeleton.dataConnections if end.server is db]
        newWeb = attrs.evolve(web, description="the new web")
        newDb = FrontedServer("db", "db server", self.net.endpoint(TARGET), b"t" * 32)
        skeleton.reconfigure({"web": newWeb, "db": db}, "test-skeleton", 1)
        skeleton.reconfigure({"web": newWeb}, "test-skeleton", 1)
        skeleton.reconfigure({"web": newWeb, "db": newDb}, "test-skeleton", 1)
        self.net.settle()
        self.assertIsNotNone(oldDb.lost)
        pooled = {end.server.id: end.server for end in skeleton.dataConnections}
        self.assertEqual(pooled, {"web": newWeb, "db": newDb})
        self.assertIs(pooled["db"], newDb)
        self.assertEqual(self.relay.registry.counts()["idle"], 2)
        self.assertEqual(sorted(self.listed()), ["db", "web"])
        self.assertEqual(control.held, skeleton.registration())


def said(events: list[dict[str, Any]], words: str) -> list[str]:
    """The lines of C{events} with C{words} in them."""
    return [formatEvent(e) for e in events if words in formatEvent(e)]


class StrangerLogTests(RelayTestCase):
    """
    What anyone who connects can make the relay log is bounded by its log
    budget (ten lines of a kind a minute, the rest summed up): malformed
    commands, logins at the wrong port.
    """

    def warnings(self, events: list[dict[str, Any]], words: str) -> list[str]:
        return [
            formatEvent(e)
            for e in events
            if e.get("log_level") == LogLevel.warn and words in formatEvent(e)
        ]

    def test_malformedLoginsBounded(self) -> None:
        """
        A hundred Login boxes that do not parse (without the role, or with
        a role that is not UTF-8) on one connection are each answered
        L{BadRequest}, and give ten warnings, then one line that sums up
        the other ninety once the minute is over.
        """
        channel = self.connect(CLIENTS, Peer())
        events = logEvents(self)
        answers: list[Deferred[Any]] = []
        for i in range(100):
            if i % 2:
                box = channel.callRemoteString(b"Login", message=b"n,,n=alice,r=abc")
            else:
                box = channel.callRemoteString(b"Login", role=b"\xff\xfe", message=b"n,,")
            # Taken before the network moves, as L{call} does.
            answers.append(Deferred())
            box.chainDeferred(answers[-1])
        self.net.settle()
        for answer in answers:
            failure = self.failureResultOf(answer)
            self.assertEqual(failure.value.errorCode, b"BAD_REQUEST")
        self.assertTrue(channel.connected)
        self.assertEqual(len(self.warnings(events, "sent a malformed command")), 10)
        self.reactor.advance(60)
        self.relay.heartbeat()
        [summary] = self.warnings(events, "left out of the log")
        self.assertEqual(
            summary, "90 more warnings of malformed commands left out of the log in 60 s"
        )
        self.assertEqual(len(self.warnings(events, "malformed command")), 11)

    def test_wrongPortLoginsCountedNotThrottled(self) -> None:
        """
        Twenty logins as a skeleton at the clients' port are each told the
        port is wrong, give at most ten warnings and a summing-up line, are
        counted in the metrics as C{wrong_port}, and leave the throttle
        untouched: a mistake of configuration guesses no password.
        """
        channel = self.connect(CLIENTS, Peer())
        events = logEvents(self)
        answers: list[Deferred[Any]] = []
        for _ in range(20):
            answers.append(Deferred())
            login = channel.callRemote(Login, role="skeleton", message="n,,n=alice,r=abc")
            login.chainDeferred(answers[-1])
        self.net.settle()
        for answer in answers:
            failure = self.failureResultOf(answer, BadRequest)
            self.assertIn("this is the relay's port for clients", failure.getErrorMessage())
        self.assertEqual(len(self.warnings(events, "logs in as a 'skeleton'")), 10)
        self.reactor.advance(60)
        self.relay.heartbeat()
        self.assertEqual(
            self.warnings(events, "left out"),
            ["10 more warnings of logins at the wrong port left out of the log in 60 s"],
        )
        self.assertEqual(len(self.relay.throttle), 0)
        self.assertEqual(
            self.relay.metrics.registry.get_sample_value(
                "relaynat_login_failures_total", {"reason": "wrong_port"}
            ),
            20,
        )


class ListServersTests(RelayTestCase):
    """L{ListServers} on the relay's client port."""

    def test_empty(self) -> None:
        """A relay without skeletons lists no servers."""
        client, _ = self.loggedIn(CLIENTS, Peer())
        self.assertEqual(self.successResultOf(self.call(client, ListServers)), {"servers": []})

    def test_registered(self) -> None:
        """
        The list has every registered server with its description, the
        relay clock's time of registration and its idle connections.
        """
        self.reactor.advance(1234.5)
        self.startSkeleton({"web": TARGET, "db": TARGET}, pool=1)
        client, _ = self.loggedIn(CLIENTS, Peer())
        self.assertEqual(
            self.successResultOf(self.call(client, ListServers)),
            {
                "servers": [
                    {"id": "db", "description": "db server", "since": 1234.5, "idle": 1},
                    {"id": "web", "description": "web server", "since": 1234.5, "idle": 1},
                ]
            },
        )

    def test_onlyWhatTheUserMayJoin(self) -> None:
        """A user sees only the servers its rights let it join."""
        self.startSkeleton({"web": TARGET, "db": TARGET}, pool=0)
        client, _ = self.loggedIn(CLIENTS, Peer(), user="bob")
        listed = self.successResultOf(self.call(client, ListServers))["servers"]
        self.assertEqual([s["id"] for s in listed], ["web"])

    def test_needsLogin(self) -> None:
        """
        Without a login on the same connection the list is refused with
        L{LoginRequired}: a login on another connection does not count.
        """
        self.startSkeleton(pool=0)
        self.loggedIn(CLIENTS, Peer())
        client = self.connect(CLIENTS, Peer())
        failure = self.failureResultOf(self.call(client, ListServers), LoginRequired)
        self.assertEqual(failure.getErrorMessage(), "log in first")

    def test_notOnSkeletonPort(self) -> None:
        """
        A client sent to the skeleton port is told at its first step that
        it is at the wrong port; and the skeleton port does not list
        servers, even logged in (skeletons do not see each other's servers).
        """
        channel = self.connect(SKELETONS, Peer())
        login = Deferred.fromCoroutine(self.link(CLIENTS).login(channel, "client"))
        self.net.settle()
        failure = self.failureResultOf(login, BadRequest)
        self.assertEqual(
            failure.getErrorMessage(),
            "this is the relay's port for skeletons (port Y); a client connects to"
            " its port for clients (port X): check [client] relay",
        )
        channel, _ = self.loggedIn(SKELETONS, Peer())
        self.failureResultOf(self.call(channel, ListServers), amp.UnhandledCommand)

    def test_skeletonNotOnClientPort(self) -> None:
        """A skeleton sent to the clients' port is told so at its first step."""
        channel = self.connect(CLIENTS, Peer())
        login = Deferred.fromCoroutine(self.link(CLIENTS).login(channel, "skeleton"))
        self.net.settle()
        failure = self.failureResultOf(login, BadRequest)
        self.assertIn("this is the relay's port for clients (port X)", failure.getErrorMessage())

    def test_deletedUser(self) -> None:
        """
        A user deleted from the users file since its login is told so when
        the file is reloaded (L{SessionEnded}), its session is ended and its
        connection closed; another user's login stays.
        """
        client, session = self.loggedIn(CLIENTS, Peer())
        other, otherSession = self.loggedIn(CLIENTS, Peer(), "bob")
        self.changeUsers(alice=None)
        self.net.settle()
        self.assertEqual(client.ended, ["user alice was deleted"])
        self.assertFalse(client.connected)
        self.assertIsNone(self.relay.sessions.get(session.id))
        self.assertEqual(other.ended, [])
        self.assertIsNotNone(self.relay.sessions.get(otherSession.id))
        self.successResultOf(self.call(other, ListServers))

    def test_passwordChanged(self) -> None:
        """
        A user whose password changed is told its login ended when the file
        is reloaded, and its session goes; its rights changing alone ends
        nothing.
        """
        client, session = self.loggedIn(CLIENTS, Peer())
        self.changeUsers(alice=Rights(register=None, join=frozenset({"web"})))
        self.net.settle()
        self.assertEqual(client.ended, [])
        writeUsers(self.usersPath, self.everyone())
        self.assertTrue(self.relay.users.reload())
        self.net.settle()
        self.assertEqual(client.ended, ["the password of alice changed"])
        self.assertIsNone(self.relay.sessions.get(session.id))
        self.assertFalse(client.connected)


class TicketsTests(RelayTestCase):
    """L{Tickets}: a logged-in client asks for one-time tickets."""

    def test_tickets(self) -> None:
        """
        A logged-in client gets as many tickets as it asked for: distinct,
        L{TICKET_BYTES} long, none starting like TLS, all counted against
        its session.
        """
        self.stalledSkeleton()
        channel, session = self.loggedIn(CLIENTS, Peer())
        tickets = self.successResultOf(self.askTickets(channel, count=3))["tickets"]
        self.assertEqual(len(set(tickets)), 3)
        self.assertEqual({len(t) for t in tickets}, {TICKET_BYTES})
        self.assertNotIn(TLS_HANDSHAKE, {t[0] for t in tickets})
        self.assertEqual(self.relay.tickets.outstanding(session.id), 3)

    def test_countBounds(self) -> None:
        """
        A client may ask for 1 to L{TICKET_BATCH} tickets at a time; 0, a
        negative count or one more than the batch are refused with
        L{BadRequest}, and hand out nothing.
        """
        self.stalledSkeleton()
        channel, session = self.loggedIn(CLIENTS, Peer())
        for count in (0, -1, TICKET_BATCH + 1):
            failure = self.failureResultOf(self.askTickets(channel, count=count), BadRequest)
            self.assertEqual(
                failure.getErrorMessage(), f"ask for 1 to {TICKET_BATCH} tickets at a time"
            )
        self.assertEqual(self.relay.tickets.outstanding(session.id), 0)
        answer = self.successResultOf(self.askTickets(channel, count=TICKET_BATCH))
        self.assertEqual(len(answer["tickets"]), TICKET_BATCH)

    def test_sessionCap(self) -> None:
        """
        A session holds at most L{TICKETS_PER_SESSION} unused tickets: the
        request that would pass the cap is refused with L{BadRequest}; once
        one is used, one more may be had.
        """
        self.pooled(pool=1)
        channel, session = self.loggedIn(CLIENTS, Peer())
        held: list[bytes] = []
        for _ in range(TICKETS_PER_SESSION // TICKET_BATCH):
            held += self.successResultOf(self.askTickets(channel, count=TICKET_BATCH))["tickets"]
        self.assertEqual(self.relay.tickets.outstanding(session.id), TICKETS_PER_SESSION)
        failure = self.failureResultOf(self.askTickets(channel, count=1), BadRequest)
        self.assertEqual(
            failure.getErrorMessage(),
            f"this login holds {TICKETS_PER_SESSION} unused tickets;"
            " use them before asking for more",
        )
        self.assertEqual(self.relay.tickets.outstanding(session.id), TICKETS_PER_SESSION)
        self.data(CLIENTS, held[0])
        self.assertEqual(len(self.relay.tunnels), 1)
        self.successResultOf(self.askTickets(channel, count=1))
        self.failureResultOf(self.askTickets(channel, count=1), BadRequest)

    def test_capIsPerSession(self) -> None:
        """Another login of the same user has its own cap."""
        self.stalledSkeleton()
        one, _ = self.loggedIn(CLIENTS, Peer())
        for _ in range(TICKETS_PER_SESSION // TICKET_BATCH):
            self.successResultOf(self.askTickets(one, count=TICKET_BATCH))
        two, _ = self.loggedIn(CLIENTS, Peer())
        self.successResultOf(self.askTickets(two, count=TICKET_BATCH))

    def test_unknownServer(self) -> None:
        """Tickets for an id nobody registered are refused with L{UnknownServer}."""
        channel, session = self.loggedIn(CLIENTS, Peer())
        failure = self.failureResultOf(self.askTickets(channel, "nope"), UnknownServer)
        self.assertEqual(
            failure.getErrorMessage(),
            "no server nope is registered at this relay; 'relaynat list' shows the ones that are",
        )
        self.assertEqual(self.relay.tickets.outstanding(session.id), 0)

    def test_notPermitted(self) -> None:
        """
        Tickets for a server the user may not join are refused with
        L{UnknownServer}, in the very words used for an id nobody
        registered: what it may not join, it does not learn about either.
        """
        self.stalledSkeleton(["web", "db"])
        channel, session = self.loggedIn(CLIENTS, Peer(), user="bob")
        hidden = self.failureResultOf(self.askTickets(channel, "db"), UnknownServer)
        unknown = self.failureResultOf(self.askTickets(channel, "dc"), UnknownServer)
        self.assertEqual(hidden.getErrorMessage(), unknown.getErrorMessage().replace("dc", "db"))
        self.assertEqual(self.relay.tickets.outstanding(session.id), 0)
        self.successResultOf(self.askTickets(channel, "web"))

    def test_serverOffline(self) -> None:
        """
        Tickets for a server whose skeleton is gone are refused with
        L{ServerOffline}, which tells it from one never registered.
        """
        control = self.stalledSkeleton()
        control.transport.loseConnection()
        self.net.settle()
        channel, session = self.loggedIn(CLIENTS, Peer())
        failure = self.failureResultOf(self.askTickets(channel), ServerOffline)
        self.assertEqual(
            failure.getErrorMessage(), "server web is offline: its skeleton is not connected"
        )
        self.assertEqual(self.relay.tickets.outstanding(session.id), 0)

    def test_needsLogin(self) -> None:
        """
        Tickets asked for before a login on the same connection are refused
        with L{LoginRequired}, and none is issued.
        """
        self.stalledSkeleton()
        self.loggedIn(CLIENTS, Peer())
        channel = self.connect(CLIENTS, Peer())
        failure = self.failureResultOf(self.askTickets(channel), LoginRequired)
        self.assertEqual(failure.getErrorMessage(), "log in first")
        self.assertEqual(len(self.relay.tickets), 0)

    def test_badServerId(self) -> None:
        """Tickets for a malformed id are refused with L{BadRequest}."""
        channel, _ = self.loggedIn(CLIENTS, Peer())
        failure = self.failureResultOf(self.askTickets(channel, "a b"), BadRequest)
        self.assertIn("bad server id 'a b'", failure.getErrorMessage())

    def test_deletedUser(self) -> None:
        """
        A user deleted since its login gets no more tickets (its connection
        is closed), and the tickets it already held are worthless.
        """
        self.stalledSkeleton(user="bob")
        channel, [ticket] = self.clientTickets()
        self.changeUsers(alice=None)
        self.failureResultOf(self.askTickets(channel), ConnectionDone)
        self.assertEqual(len(self.relay.tickets), 0)
        self.assertRefused(self.data(CLIENTS, ticket), SESSION_REFUSED)

    def test_notOnSkeletonPort(self) -> None:
        """The skeleton port hands out no client tickets, even to a skeleton logged in."""
        self.stalledSkeleton()
        channel, _ = self.loggedIn(SKELETONS, Peer())
        self.failureResultOf(self.askTickets(channel), amp.UnhandledCommand)
        self.assertEqual(len(self.relay.tickets), 0)


class TicketUseTests(RelayTestCase):
    """What the relay does with the ticket a data connection starts with."""

    def test_clientTicketOnce(self) -> None:
        """
        A client's ticket admits one data connection: the second connection
        with it is refused with L{SessionRefused}'s code and closed, and
        takes no pooled connection.
        """
        self.pooled(pool=2)
        _, [ticket] = self.clientTickets()
        first = self.data(CLIENTS, ticket)
        self.assertEqual(len(self.relay.tunnels), 1)
        self.assertFalse(first.closed)
        second = self.data(CLIENTS, ticket)
        self.assertRefused(second, SESSION_REFUSED)
        self.assertEqual(len(self.relay.tunnels), 1)
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_unknownTicket(self) -> None:
        """
        A client data connection with a ticket the relay never issued is
        refused with L{SessionRefused}'s code and closed; one at the
        skeleton port is closed with nothing said; nothing is joined or
        pooled.
        """
        self.pooled(pool=1)
        made = b"\x01" * TICKET_BYTES
        client = self.data(CLIENTS, made + b"and more")
        self.assertRefused(client, SESSION_REFUSED)
        skeleton = self.data(SKELETONS, made)
        self.assertTrue(skeleton.closed)
        self.assertEqual(skeleton.received, b"")
        self.assertEqual(self.relay.tunnels, set())
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_clientTicketAtSkeletonPort(self) -> None:
        """
        A client's ticket shown at the skeleton port is refused (it is the
        wrong kind): the connection is closed with nothing said and not
        pooled, and the ticket is spent, refused at the client port too.
        """
        self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        wrongPort = self.data(SKELETONS, ticket)
        self.assertTrue(wrongPort.closed)
        self.assertEqual(wrongPort.received, b"")
        self.assertEqual(self.relay.registry.counts()["idle"], 0)
        self.assertRefused(self.data(CLIENTS, ticket), SESSION_REFUSED)
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)

    def test_skeletonTicketOnce(self) -> None:
        """
        A skeleton's ticket (from L{OpenConnection}) pools one connection:
        a second connection with it is closed, and the pool's books are
        unchanged by it.
        """
        control = self.stalledSkeleton(pool=1)
        [request] = control.asked
        self.offer(request)
        again = self.data(SKELETONS, request.ticket)
        self.assertTrue(again.closed)
        self.assertEqual(
            self.relay.registry.counts(),
            {"servers": 1, "idle": 1, "waiting": 0, "requested": 0},
        )
        self.assertEqual(len(control.asked), 1)

    def test_skeletonTicketAfterSkeletonLeft(self) -> None:
        """
        A skeleton's ticket is worthless once its control connection has
        closed: the data connection it brings is closed, not pooled.
        """
        control = self.stalledSkeleton(pool=1)
        [request] = control.asked
        control.transport.loseConnection()
        self.net.settle()
        late = self.data(SKELETONS, request.ticket)
        self.assertTrue(late.closed)
        self.assertEqual(self.relay.registry.idleConnections(), [])

    def test_ticketsDieWithTheLogin(self) -> None:
        """
        A client's tickets are revoked when the control connection of its
        login closes: a data connection with one is refused.
        """
        self.pooled(pool=1)
        channel, [ticket] = self.clientTickets()
        channel.transport.loseConnection()
        self.net.settle()
        self.assertEqual(len(self.relay.tickets), 0)
        self.assertRefused(self.data(CLIENTS, ticket), SESSION_REFUSED)
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_ticketsSurviveARenewedLogin(self) -> None:
        """
        A client that logs in again on its control connection gets a new
        session; the old one's unused tickets pass to it (connections on
        their way are not lost to a renewal), and the new one's work too.
        """
        self.pooled(pool=2)
        channel, [old] = self.clientTickets()
        self.login(channel)
        [new] = self.successResultOf(self.askTickets(channel))["tickets"]
        self.data(CLIENTS, old)
        self.data(CLIENTS, new)
        self.assertEqual(len(self.relay.tunnels), 2)

    def test_expiredTicket(self) -> None:
        """
        A ticket is good for L{TICKET_LIFETIME} seconds after it was
        issued: used just before, it is joined; just after, refused.
        """
        self.pooled(pool=2)
        _, [early, late] = self.clientTickets(count=2)
        self.reactor.advance(TICKET_LIFETIME - 0.1)
        self.data(CLIENTS, early)
        self.assertEqual(len(self.relay.tunnels), 1)
        self.reactor.advance(0.1)
        self.assertRefused(self.data(CLIENTS, late), SESSION_REFUSED)
        self.assertEqual(len(self.relay.tunnels), 1)

    def test_joinRightRemoved(self) -> None:
        """
        A user whose right to join the server was taken away (the users
        file changed and reloaded) after it got its tickets is refused when
        it uses one, and the pooled connection stays pooled, untouched.
        """
        _, [skeleton] = self.pooled(pool=1)
        _, [ticket] = self.clientTickets()
        self.changeUsers(alice=Rights(register=None, join=frozenset({"other"})))
        self.assertRefused(self.data(CLIENTS, ticket + b"hello"), SESSION_REFUSED)
        self.assertEqual(self.relay.registry.counts()["idle"], 1)
        self.assertEqual(skeleton.received, b"")
        self.assertFalse(skeleton.closed)

    def test_userDeleted(self) -> None:
        """A user deleted since it got its tickets is refused when it uses one."""
        self.stalledSkeleton(pool=0, user="bob")
        _, [ticket] = self.clientTickets()
        self.changeUsers(alice=None)
        self.assertRefused(self.data(CLIENTS, ticket), SESSION_REFUSED)
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)

    def test_serverWentOffline(self) -> None:
        """
        A good ticket for a server whose skeleton left since is refused
        with L{ServerOffline}'s code.
        """
        control = self.stalledSkeleton()
        _, [ticket] = self.clientTickets()
        control.transport.loseConnection()
        self.net.settle()
        self.assertRefused(self.data(CLIENTS, ticket), SERVER_OFFLINE)

    def test_ticketIsForTheServerNotTheSkeleton(self) -> None:
        """
        A ticket names a server id, not a skeleton: if the server's
        skeleton is replaced by another one meanwhile, the ticket joins the
        new one.
        """
        first = self.stalledSkeleton()
        _, [ticket] = self.clientTickets()
        first.transport.loseConnection()
        self.net.settle()
        second, [pooled] = self.pooled(pool=1)
        self.data(CLIENTS, ticket + b"to the second")
        self.assertEqual(pooled.received, b"to the second")


class JoinTests(RelayTestCase):
    """A client's data connection joined to one of the skeleton's, and spliced."""

    def test_joinedToPooled(self) -> None:
        """
        A client data connection with a good ticket is joined to a pooled
        skeleton connection at once, and the relay only splices: what the
        client sends after its ticket arrives at the skeleton's data
        connection byte for byte, and what that sends back arrives at the
        client.  The pool is asked to fill up again.
        """
        control, [skeleton] = self.pooled(pool=1)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket + EVERY_BYTE)
        self.assertEqual(skeleton.received, EVERY_BYTE)
        skeleton.transport.write(EVERY_BYTE * 3)
        self.net.settle()
        self.assertEqual(client.received, EVERY_BYTE * 3)
        client.transport.write(b"more")
        self.net.settle()
        self.assertEqual(skeleton.received, EVERY_BYTE + b"more")
        [tunnel] = self.relay.tunnels
        self.assertEqual((tunnel.user, tunnel.server), ("alice", "web"))
        self.assertEqual(len(control.asked), 2)
        self.assertEqual(
            self.relay.registry.counts(),
            {"servers": 1, "idle": 0, "waiting": 0, "requested": 1},
        )

    def test_closeIsPassedOn(self) -> None:
        """
        When either end of a spliced tunnel closes, the relay closes the
        other (after what it was still owed), and forgets the tunnel.
        """
        _, skeletons = self.pooled(pool=2)
        _, tickets = self.clientTickets(count=2)
        client = self.data(CLIENTS, tickets[0])
        skeletons[0].transport.write(b"last words")
        skeletons[0].transport.loseConnection()
        self.net.settle()
        self.assertEqual(client.received, b"last words")
        self.assertTrue(client.closed)
        client = self.data(CLIENTS, tickets[1] + b"bye")
        client.transport.loseConnection()
        self.net.settle()
        self.assertEqual(skeletons[1].received, b"bye")
        self.assertTrue(skeletons[1].closed)
        self.assertEqual(self.relay.tunnels, set())

    def test_onDemand(self) -> None:
        """
        With the pool empty, the relay sends the skeleton L{OpenConnection}
        with a new skeleton ticket for the server; the data connection that
        brings it is joined to the waiting client, and gets what the client
        sent while it waited.
        """
        control = self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket + b"sent early")
        self.assertEqual(self.relay.registry.counts()["waiting"], 1)
        [request] = control.asked
        self.assertEqual(request.server, "web")
        self.assertEqual(len(request.ticket), TICKET_BYTES)
        self.assertNotEqual(request.ticket, ticket)
        self.assertEqual(client.received, b"")
        skeleton = self.offer(request)
        self.assertEqual(skeleton.received, b"sent early")
        skeleton.transport.write(b"answer")
        self.net.settle()
        self.assertEqual(client.received, b"answer")
        self.assertEqual(
            self.relay.registry.counts(),
            {"servers": 1, "idle": 0, "waiting": 0, "requested": 0},
        )

    def test_offerBeforeAnswer(self) -> None:
        """
        The skeleton's data connection may arrive before its answer to
        L{OpenConnection} (they travel on different connections): it is
        joined all the same, and the late answer changes nothing.
        """
        control = self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        self.data(CLIENTS, ticket)
        [request] = control.asked
        skeleton = self.offer(request, answer=False)
        self.assertEqual(len(self.relay.tunnels), 1)
        request.answer.callback({})
        self.net.settle()
        self.assertEqual(self.relay.registry.counts()["requested"], 0)
        self.assertEqual(len(control.asked), 1)
        self.assertFalse(skeleton.closed)

    def test_joinTimeout(self) -> None:
        """
        A skeleton that never provides a connection makes the relay refuse
        the waiting client with L{JoinTimeout}'s code after the join
        timeout, not before, and close it.
        """
        control = self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket)
        self.assertEqual(len(control.asked), 1)
        self.reactor.advance(self.joinTimeout - 0.1)
        self.net.settle()
        self.assertEqual(client.received, b"")
        self.assertFalse(client.closed)
        self.reactor.advance(0.2)
        self.net.settle()
        self.assertRefused(client, JOIN_TIMEOUT)
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)

    def test_lateConnectionClosed(self) -> None:
        """
        A skeleton connection that comes after its client gave up (pool
        size zero, nobody waiting) is closed, not pooled or joined.
        """
        control = self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        self.data(CLIENTS, ticket)
        self.reactor.advance(self.joinTimeout)
        self.net.settle()
        late = self.offer(control.asked[0])
        self.assertTrue(late.closed)
        self.assertEqual(late.received, b"")
        self.assertEqual(self.relay.registry.counts()["idle"], 0)
        self.assertEqual(self.relay.tunnels, set())

    def test_skeletonCannotOpen(self) -> None:
        """
        A skeleton that answers L{OpenConnection} with an error makes the
        relay refuse the waiting client at once with L{SkeletonGone}'s code.
        """
        control = self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket)
        control.asked[0].answer.errback(SkeletonGone("the skeleton could not reach the relay"))
        self.net.settle()
        self.assertRefused(client, SKELETON_GONE)
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)

    def test_skeletonLeavesWhileWaiting(self) -> None:
        """
        A skeleton that disconnects while a client waits for one of its
        connections makes the relay refuse the client with
        L{SkeletonGone}'s code.
        """
        control = self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket)
        control.transport.loseConnection()
        self.net.settle()
        self.assertRefused(client, SKELETON_GONE)
        self.assertEqual(self.relay.registry.counts()["servers"], 0)

    def test_clientLeavesWhileWaiting(self) -> None:
        """
        A client that disconnects while its join waits is forgotten by the
        registry at once, not at the join timeout; the connection asked for
        it, when it comes, is not joined to anything.
        """
        control = self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket)
        self.assertEqual(self.relay.registry.counts()["waiting"], 1)
        client.transport.loseConnection()
        self.net.settle()
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)
        late = self.offer(control.asked[0])
        self.assertTrue(late.closed)
        self.assertEqual(self.relay.tunnels, set())

    def test_clientSendsTooMuchBeforeJoin(self) -> None:
        """
        A client data connection may send 4096 bytes after its ticket while
        it waits to be joined; one byte more and it is aborted, and no
        longer waits.
        """
        self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket + b"x" * (EARLY_LIMIT - 1))
        client.transport.write(b"x")
        self.net.settle()
        self.assertFalse(client.closed)
        self.assertEqual(self.relay.registry.counts()["waiting"], 1)
        client.transport.write(b"x")
        self.net.settle()
        self.assertTrue(client.closed)
        self.assertTrue(self.net.abortedByRelay(client))
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)

    def test_earlyLimitCountsTheFirstRead(self) -> None:
        """
        The 4096 bytes count from the end of the ticket even when they come
        in the same read as the ticket.
        """
        self.stalledSkeleton(pool=0)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket + b"x" * (EARLY_LIMIT + 1))
        self.assertTrue(client.closed)
        self.assertTrue(self.net.abortedByRelay(client))
        self.assertEqual(self.relay.registry.counts()["waiting"], 0)

    def test_pooledSendsTooMuch(self) -> None:
        """
        A pooled skeleton connection that sends more than 4096 bytes before
        it is joined is aborted, dropped from the pool and replaced.
        """
        control, [skeleton] = self.pooled(pool=1)
        skeleton.transport.write(b"y" * (EARLY_LIMIT + 1))
        self.net.settle()
        self.assertTrue(self.net.abortedByRelay(skeleton))
        self.assertEqual(self.relay.registry.counts()["idle"], 0)
        self.assertEqual(len(control.asked), 2)

    def test_pooledConnectionClosedReplaced(self) -> None:
        """
        A pooled skeleton connection that closes is dropped from the pool,
        and a replacement is asked for at once.
        """
        control, [skeleton] = self.pooled(pool=1)
        skeleton.transport.loseConnection()
        self.net.settle()
        self.assertEqual(
            self.relay.registry.counts(),
            {"servers": 1, "idle": 0, "waiting": 0, "requested": 1},
        )
        self.assertEqual(len(control.asked), 2)
        self.offer(control.asked[1])
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_pooledConnectionsCloseWithSkeleton(self) -> None:
        """Pooled connections are closed when their skeleton's control connection goes."""
        control, raws = self.pooled(pool=2)
        control.transport.loseConnection()
        self.net.settle()
        self.assertTrue(all(raw.closed for raw in raws))
        self.assertEqual(self.relay.registry.counts()["servers"], 0)

    def test_eachServerItsOwnPool(self) -> None:
        """
        A ticket for one server is joined to a connection of that server's
        pool, never another's.
        """
        control = self.stalledSkeleton(["web", "db"], pool=1)
        byServer = {r.server: self.offer(r) for r in control.unanswered()}
        _, [ticket] = self.clientTickets("db")
        self.data(CLIENTS, ticket + b"for db")
        self.assertEqual(byServer["db"].received, b"for db")
        self.assertEqual(byServer["web"].received, b"")

    def test_registerRightRemoved(self) -> None:
        """
        A skeleton whose user may no longer register one of its servers (the
        users file changed and was reloaded) has that server withdrawn, and
        is told so; its other server stays, and so does its connection.
        """
        control = self.stalledSkeleton(["web", "db"], pool=1)
        pooled = {r.server: self.offer(r) for r in control.unanswered()}
        self.changeUsers(alice=Rights(register=frozenset({"db"}), join=None))
        self.net.settle()
        self.assertEqual(control.withdrawn, [("web", "user alice may no longer register it")])
        self.assertTrue(control.connected)
        self.assertEqual([s["id"] for s in self.relay.registry.listing()], ["db"])
        self.assertTrue(pooled["web"].closed)
        self.assertFalse(pooled["db"].closed)
        channel, _ = self.loggedIn(CLIENTS, Peer())
        # Gone from the relay, as if never registered: not "not connected".
        self.failureResultOf(self.askTickets(channel, "web"), UnknownServer)
        self.successResultOf(self.askTickets(channel, "db"))


    def test_requestLostBeforeItsTicket(self) -> None:
        """
        A requested connection that never brings its ticket (the skeleton
        answered, but the connection died on the way) stops counting as on
        its way once its ticket has expired, and another is asked for: the
        pool does not stay one short for good.
        """
        control = self.stalledSkeleton(pool=1)
        control.asked[0].answer.callback({})
        self.net.settle()
        self.reactor.advance(TICKET_LIFETIME + 1)
        # Heard from just now: the heartbeat does not drop it as silent.
        self.successResultOf(self.call(control, Ping))
        self.relay.heartbeat()
        self.net.settle()
        self.assertEqual(len(control.asked), 2)


    def test_requestInFlightAtRenewal(self) -> None:
        """
        A skeleton's login renewed while one of its requested connections is
        on its way does not leave the pool one short: that connection is
        pooled, or another is asked for.
        """
        control = self.stalledSkeleton(pool=1)
        [request] = control.asked
        self.login(control, role="skeleton")
        self.offer(request)
        # Pooled (one idle), or refused and asked for again (one new request).
        self.assertEqual(self.relay.registry.counts()["idle"] + len(control.unanswered()), 1)



class TunnelRecordTests(RelayTestCase):
    """The relay's books and logs of the tunnels it splices."""

    def setUp(self) -> None:
        super().setUp()
        observer = EventList()
        self.events = observer.events
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def tunnelEvents(self) -> list[LogEvent]:
        return [
            e
            for e in self.events
            if e.get("log_namespace") == "relaynat.relay"
            and str(e.get("log_format", "")).startswith("tunnel {tunnel}")
        ]

    def test_joinAndEndLogged(self) -> None:
        """
        A tunnel's join is logged with its id, user and server; its end
        with the same id, the bytes carried up (client to skeleton, the
        ticket not counted) and down, and its duration on the relay's clock.
        """
        _, [skeleton] = self.pooled(pool=1)
        _, [ticket] = self.clientTickets()
        client = self.data(CLIENTS, ticket + b"u" * 10)
        [joined] = self.tunnelEvents()
        self.assertEqual(joined["log_format"], "tunnel {tunnel} of {user} to {server} joined")
        self.assertEqual((joined["user"], joined["server"]), ("alice", "web"))
        self.reactor.advance(7)
        skeleton.transport.write(b"d" * 25)
        client.transport.write(b"u" * 5)
        self.net.settle()
        skeleton.transport.loseConnection()
        self.net.settle()
        [_, ended] = self.tunnelEvents()
        self.assertEqual(ended["tunnel"], joined["tunnel"])
        self.assertEqual((ended["user"], ended["server"]), ("alice", "web"))
        self.assertEqual((ended["up"], ended["down"]), (15, 25))
        self.assertEqual(ended["duration"], 7.0)
        self.assertNotIn("cut", ended["how"])
        self.assertEqual(self.relay.tunnels, set())

    def test_tunnelIdsDiffer(self) -> None:
        """Each tunnel has its own id, in the books and in the logs."""
        self.pooled(pool=2)
        _, tickets = self.clientTickets(count=2)
        for ticket in tickets:
            self.data(CLIENTS, ticket)
        ids = {t.id for t in self.relay.tunnels}
        self.assertEqual(len(ids), 2)
        self.assertEqual({e["tunnel"] for e in self.tunnelEvents()}, ids)

    def test_noTicketInTheLog(self) -> None:
        """No log event of a tunnel's life carries its ticket, in any field."""
        _, [skeleton] = self.pooled(pool=1)
        _, [ticket] = self.clientTickets()
        self.data(CLIENTS, ticket)
        skeleton.transport.loseConnection()
        self.net.settle()
        for event in self.events:
            for value in event.values():
                self.assertNotIn(ticket, repr(value).encode("latin-1", "replace"))
                self.assertNotEqual(value, ticket)


class EndToEndTests(RelayTestCase):
    """The real relay, skeleton and client: local bytes through the relay to an echo."""

    def seenByRelay(self) -> list[bytes]:
        """
        Every byte the relay will read on its data connections from now on,
        as it read them (kept by wrapping L{FirstBytes.dataReceived}).
        """
        seen: list[bytes] = []
        original = FirstBytes.dataReceived

        def spy(protocol: FirstBytes, data: bytes) -> None:
            original(protocol, data)
            if isinstance(protocol.inner, DataConnection):
                seen.append(data)

        self.patch(FirstBytes, "dataReceived", spy)
        return seen

    def test_sealedTunnel(self) -> None:
        """
        A real client's local connection reaches the echo server through a
        pooled skeleton connection (the Noise handshake passing through the
        relay) and its bytes come back; the relay books one tunnel and
        never sees the bytes in the clear; the pool is filled again.
        """
        seen = self.seenByRelay()
        self.startSkeleton(pool=1)
        self.startClient()
        message = b"hello through the relay " * 4
        collector = self.collect(message)
        self.assertEqual(b"".join(collector.received), message)
        self.assertEqual(len(self.echoes), 1)
        self.assertEqual([(t.user, t.server) for t in self.relay.tunnels], [("alice", "web")])
        self.assertEqual(self.relay.registry.counts()["idle"], 1)
        self.assertGreater(sum(map(len, seen)), len(message) * 2)
        self.assertNotIn(b"hello through", b"".join(seen))

    def test_unsealedTunnel(self) -> None:
        """
        A server configured as not sealed carries the tunnel's bytes raw
        after the handshake: they still come back from the echo, and the
        relay splices them as they are (which is what the sealed test proves
        it does not see).
        """
        seen = self.seenByRelay()
        self.startSkeleton(pool=1, sealed=False)
        self.startClient()
        message = b"hello in the clear"
        collector = self.collect(message)
        self.assertEqual(b"".join(collector.received), message)
        self.assertEqual(len(self.echoes), 1)
        self.assertIn(message, b"".join(seen))

    def test_onDemand(self) -> None:
        """
        With a pool of zero, a tunnel still succeeds: the relay asks the
        skeleton for a connection and joins the client to it.
        """
        self.startSkeleton(pool=0)
        self.startClient()
        collector = self.collect(b"on demand")
        self.assertEqual(b"".join(collector.received), b"on demand")
        self.assertEqual(self.relay.registry.counts()["idle"], 0)
        self.assertEqual(len(self.relay.tunnels), 1)

    def test_readyConnectionsTriedAgain(self) -> None:
        """
        A client logged in before its server's skeleton registered cannot
        open its ready connections (the server is offline): it tries again
        1 s later, then 2 s, and has them ready soon after the skeleton
        registers, not only at its first local connection.
        """
        factory = self.startClient(ready=2)
        self.assertEqual(factory.readyNow(), 0)
        self.reactor.advance(1)
        self.net.settle()
        self.assertEqual(factory.readyNow(), 0)
        self.startSkeleton(pool=2)
        self.reactor.advance(2)
        self.net.settle()
        self.assertEqual(factory.readyNow(), 2)

    def test_readyConnections(self) -> None:
        """
        The client keeps its ready connections joined at the relay with
        their handshake done, before any local connection; a local
        connection takes one, and another is made ready in its place.
        """
        skeleton, _ = self.startSkeleton(pool=1)
        factory = self.startClient(ready=2)
        self.assertEqual(factory.readyNow(), 2)
        self.assertEqual(len(self.relay.tunnels), 2)
        self.assertEqual(self.echoes, [])
        ready = factory.readyEnds()
        self.assertTrue(all(end.sealed is not None for end in ready))
        collector = self.collect(b"ready")
        self.assertEqual(b"".join(collector.received), b"ready")
        self.assertEqual(factory.readyNow(), 2)
        self.assertNotIn(ready[0], factory.readyEnds())
        self.assertEqual(len(self.relay.tunnels), 3)
        self.assertEqual(len(self.echoes), 1)
        self.assertEqual(self.relay.registry.counts()["idle"], 1)
        self.assertEqual(sum(isinstance(end, RelayEnd) for end in skeleton.dataConnections), 4)

    def test_wrongSecret(self) -> None:
        """
        A client with the wrong secret for the server is joined by the
        relay (which cannot tell), but the skeleton refuses its handshake:
        the local connection is closed and the target never connected.
        """
        self.startSkeleton(pool=1)
        self.startClient(secret=b"w" * 32)
        collector = self.collect(b"let me in")
        self.assertIsNotNone(collector.reason)
        self.assertEqual(collector.received, [])
        self.assertEqual(self.echoes, [])
        self.assertEqual(self.relay.tunnels, set())

    def test_targetRefused(self) -> None:
        """
        A target that refuses its connection ends the tunnel: the local
        connection is closed with nothing received, and the skeleton's data
        connection is closed too.
        """
        skeleton, _ = self.startSkeleton({"web": NOBODY}, pool=1)
        self.startClient()
        collector = self.collect(b"anyone there?")
        self.assertEqual(self.net.pending(), [NOBODY])
        self.assertIsNone(collector.reason)
        self.net.completer.failOnce()
        self.net.settle()
        self.assertIsNotNone(collector.reason)
        self.assertEqual(collector.received, [])
        self.assertEqual(self.relay.tunnels, set())
        # The pool was filled again after the join took its connection.
        self.assertEqual(self.relay.registry.counts()["idle"], 1)
        self.assertEqual(len(skeleton.dataConnections), 1)


class LoginRenewalTests(RelayTestCase):
    """A skeleton's login renewed on its control connection."""

    sessionLifetime = 100.0

    def test_offersAfterRenewal(self) -> None:
        """
        After the skeleton logs in again on its control connection (at 80%
        of its session's life), the relay files the skeleton under its new
        session, so the connections it brings tickets of that session for
        are pooled.
        """
        skeleton, _ = self.startSkeleton(pool=1)
        first = skeleton.link.session
        for _ in range(9):
            self.reactor.advance(10)
            self.net.settle()
        second = skeleton.link.session
        assert first is not None and second is not None
        self.assertNotEqual(first.id, second.id)
        self.assertEqual(list(self.relay.skeletons), [second.id])
        self.assertIsNone(self.relay.sessions.get(first.id))
        # A join takes the pooled connection; its replacement comes with a
        # ticket of the new session.
        _, [ticket] = self.clientTickets()
        self.data(CLIENTS, ticket)
        self.assertEqual(len(self.relay.tunnels), 1)
        [replacement] = self.relay.registry.idleConnections()
        assert isinstance(replacement, DataConnection) and replacement.grant is not None
        self.assertEqual(replacement.grant.session, second.id)


class SessionExpiryTests(RelayTestCase):
    """A login's session ends with its lifetime, on the clock."""

    sessionLifetime = 100.0

    def test_expiredSessionRefused(self) -> None:
        """
        Past its lifetime a session gets no more tickets (L{SessionRefused})
        and the tickets it got are refused, though its connection is open;
        just before, both still work.
        """
        self.stalledSkeleton(pool=0)
        channel, [early, late] = self.clientTickets(count=2)
        self.reactor.advance(99.9)
        self.net.settle()
        self.successResultOf(self.askTickets(channel))
        self.assertFalse(self.data(CLIENTS, early).closed)
        self.reactor.advance(0.2)
        self.net.settle()
        failure = self.failureResultOf(self.askTickets(channel), SessionRefused)
        self.assertEqual(failure.getErrorMessage(), "this login's session expired: log in again")
        self.assertTrue(channel.connected)
        self.assertRefused(self.data(CLIENTS, late), SESSION_REFUSED)


class HeartbeatTests(RelayTestCase):
    """L{Relay.heartbeat}: silent skeletons and expired tickets."""

    def test_silentSkeletonDropped(self) -> None:
        """
        A skeleton not heard from for longer than the silence limit is
        dropped and its servers go offline; one heard from recently stays.
        """
        silent = self.stalledSkeleton(["quiet"])
        self.reactor.advance(self.relay.silenceLimit - 1)
        chatty = self.stalledSkeleton(["loud"])
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

    def test_pooledConnectionsNotProbed(self) -> None:
        """
        The heartbeat writes nothing on pooled connections (nothing may be
        written there before the join) and keeps them pooled however long
        they are silent: TCP keepalive watches them.
        """
        control, [skeleton] = self.pooled(pool=1)
        for _ in range(5):
            self.reactor.advance(self.relay.silenceLimit / 2)
            # The control connection is heard from; its pooled one is silent.
            self.successResultOf(self.call(control, Ping))
            self.relay.heartbeat()
            self.net.settle()
        self.assertEqual(skeleton.received, b"")
        self.assertFalse(skeleton.closed)
        self.assertEqual(self.relay.registry.counts()["idle"], 1)

    def test_expiredTicketsForgotten(self) -> None:
        """
        The heartbeat forgets the tickets that have expired, so that unused
        ones do not pile up, and keeps the others.
        """
        self.stalledSkeleton()
        self.clientTickets(count=3)
        self.reactor.advance(TICKET_LIFETIME / 2)
        _, [young] = self.clientTickets()
        self.relay.heartbeat()
        self.assertEqual(len(self.relay.tickets), 4)
        self.reactor.advance(TICKET_LIFETIME / 2)
        self.relay.heartbeat()
        self.assertEqual(len(self.relay.tickets), 1)
