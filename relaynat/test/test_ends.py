"""
The skeleton's and the client's control connections when things go wrong:
a refused login or a wrong relay key is said once however often it is
retried, and leaves no connection open; a stalled attempt is given up; a
login the relay revokes, and a server it withdraws, are heard and acted on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from relaynat.client import ClientControl
from relaynat.identity import PinnedRelay, fingerprint, generate
from relaynat.link import (
    LOGIN_TIMEOUT,
    STOP_GRACE,
    ControlService,
    Credentials,
    FailureNotes,
    LoginRefused,
    LoginSession,
    RelayLink,
    RelayUnreachable,
)
from relaynat.skeleton import FrontedServer, NothingToRegister, Skeleton, SkeletonControl
from relaynat.tap.access import controlService
from relaynat.users import Rights, saveUsers
from relaynat.test.loopback import ANYTHING, Stack, relayIdentity
from relaynat.test.net import endpointOf, listen, openConnections, pollUntil, reactor, runAsync
from relaynat.test.streams import Echo
from relaynat.wire import (
    Login,
    LoginFailed,
    OpenConnection,
    Register,
    ServerWithdrawn,
    SessionEnded,
    UnknownServer,
)

#: The modules that speak for the skeleton and the client.
ENDS = ("relaynat.link", "relaynat.client", "relaynat.skeleton")

#: Retried at once: a test sees several attempts in well under a second
#: each (the relay still delays its answer to each failed login).
QUICKLY = lambda attempt: 0.05  # noqa: E731

SOMEWHERE = TCP4ClientEndpoint(MemoryReactor(), "127.0.0.1", 1)
NOWHERE = IPv4Address("TCP", "127.0.0.1", 1)


def said(test: TestCase | SynchronousTestCase) -> list[dict[str, Any]]:
    """The warnings and errors the ends log from now to the end of C{test}."""
    events: list[dict[str, Any]] = []

    def keep(event: dict[str, Any]) -> None:
        namespace = event.get("log_namespace", "")
        if event.get("log_level", LogLevel.info) >= LogLevel.warn and namespace in ENDS:
            events.append(event)

    globalLogPublisher.addObserver(cast(ILogObserver, keep))
    test.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, keep))
    return events


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


def offline(clock: Any = None, password: str = "pw") -> RelayLink:
    """A link that never connects: for channels driven by hand."""
    return RelayLink(
        SOMEWHERE,
        PinnedRelay("sha256:" + "00" * 32),
        Credentials("alice", password),
        clock if clock is not None else Clock(),
        passwordFile="/etc/relaynat/alice.password",
    )


class Counted:
    """Builds the channels of a service and keeps them, to count the attempts."""

    def __init__(self, build: Any) -> None:
        self.build = build
        self.made: list[Any] = []

    def __call__(self) -> Any:
        channel = self.build()
        self.made.append(channel)
        return channel


class RefusedLoginTests(TestCase):
    """A skeleton or client whose login the relay refuses, on real sockets."""

    async def startStack(self) -> Stack:
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        return stack

    def startService(self, link: RelayLink, channels: Counted) -> ControlService:
        service = controlService(link, channels, reactor, retryPolicy=QUICKLY)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def assertRefusedQuietly(
        self,
        link: RelayLink,
        channels: Counted,
        role: str = "client",
        why: str = "wrong password or unknown user",
        check: bool = True,
    ) -> None:
        """
        Over four retries, one line says C{why} (and, with C{check}: the
        relay checked the password, what to check), and no refused
        connection stays open: once the fifth is refused, the connections
        are those there were before.
        """
        events = said(self)
        baseline = len(openConnections())
        service = self.startService(link, channels)
        # Stopped between two attempts: the relay holds back its answer to a
        # failed login for a while, and an attempt stopped before that
        # would leave the relay's timer behind.
        await pollUntil(
            lambda: len(channels.made) >= 5 and not channels.made[-1].connected, timeout=60
        )
        await service.stopService()
        self.assertEqual([c.connected for c in channels.made], [False] * len(channels.made))
        await pollUntil(lambda: len(openConnections()) == baseline)
        advice = f"; check password_file /etc/relaynat/alice.password and user in [{role}]"
        self.assertEqual(lines(events), [f"login as alice refused: {why}{advice if check else ''}"])

    @runAsync
    async def test_clientWrongPassword(self) -> None:
        """
        A client with a wrong password says so once, with the relay's reason
        and its password file, and no refused connection stays open.
        """
        stack = await self.startStack()
        link = stack.link(stack.clientPort, "alice", password="not the password")
        link.passwordFile = "/etc/relaynat/alice.password"
        await self.assertRefusedQuietly(link, Counted(lambda: ClientControl(link)))
        self.assertIsNone(link.session)

    @runAsync
    async def test_skeletonWrongPassword(self) -> None:
        """The same for a skeleton: said once, nothing left open, nothing registered."""
        stack = await self.startStack()
        link = stack.link(stack.skeletonPort, "alice", password="not the password")
        link.passwordFile = "/etc/relaynat/alice.password"
        skeleton = Skeleton(
            link, "second", {"other": FrontedServer("other", "", SOMEWHERE, b"s" * 32)}
        )
        await self.assertRefusedQuietly(
            link, Counted(lambda: SkeletonControl(skeleton)), role="skeleton"
        )
        self.assertEqual([s["id"] for s in stack.relay.registry.listing()], ["echo"])

    @runAsync
    async def test_refusedConnectionDropped(self) -> None:
        """
        A refused login's connection is dropped by the end that was refused,
        not left to the relay: against one that keeps it open (as the relay
        did until it learnt to close it), four retries leave nothing open.
        (It refuses at the first step, as the relay refuses too many
        attempts: its reason is passed on.)
        """
        directory = self.mktemp()
        os.makedirs(directory)
        identity = relayIdentity(directory)
        port = await listen(
            TLSMemoryBIOFactory(identity.options, False, Factory.forProtocol(KeepsRefused))
        )
        self.addCleanup(port.stopListening)
        link = RelayLink(
            endpointOf(port),
            PinnedRelay(identity.fingerprint),
            Credentials("alice", "not the password"),
            reactor,
            passwordFile="/etc/relaynat/alice.password",
        )
        await self.assertRefusedQuietly(
            link,
            Counted(lambda: ClientControl(link)),
            why="too many login attempts from this address or its network; try again in 9 s",
            check=False,
        )

    @runAsync
    async def test_wrongRelayKey(self) -> None:
        """
        A relay whose key is not the pinned one is said once, with the key it
        showed, and said again when another key shows up; no traceback, no
        connection left open.
        """
        stack = await self.startStack()
        events = said(self)
        key, cert = generate(["127.0.0.1"])
        other = PrivateCertificate.loadPEM(key + cert)
        otherPort = await listen(
            TLSMemoryBIOFactory(other.options(), False, Factory.forProtocol(Protocol))
        )
        self.addCleanup(otherPort.stopListening)
        switch = Switch(stack.clientPort.getHost())
        link = RelayLink(
            switch, PinnedRelay("sha256:" + "ab" * 32), Credentials("alice", "x"), reactor
        )
        channels = Counted(lambda: ClientControl(link))
        baseline = len(openConnections())
        self.startService(link, channels)
        await pollUntil(lambda: len(channels.made) >= 4, timeout=30)
        [first] = lines(events)
        self.assertIn("the relay's key is not the pinned one", first)
        self.assertIn(f"seen {stack.identity.fingerprint}", first)

        switch.to(otherPort.getHost())
        await pollUntil(lambda: len(channels.made) >= 8, timeout=30)
        self.assertEqual(lines(events)[0], first)
        [second] = lines(events)[1:]
        self.assertIn(f"seen {fingerprint(other.original.to_cryptography())}", second)
        self.assertLessEqual(len(openConnections()) - baseline, 2)


class RevokedTests(TestCase):
    """A relay that takes a login or a server back on a reload, on real sockets."""

    async def startStack(self) -> Stack:
        # The stack's own ends log in as alice; bob is for the ends here.
        stack = await Stack().start(
            {"echo": Factory.forProtocol(Echo)}, users={"alice": ANYTHING, "bob": ANYTHING}
        )
        self.addCleanup(stack.stop)
        return stack

    def startService(self, link: RelayLink, channels: Counted) -> ControlService:
        service = controlService(link, channels, reactor, retryPolicy=QUICKLY)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def reload(self, stack: Stack, bob: Rights | None) -> None:
        """
        The relay's users file rewritten with bob's C{rights} (None: bob
        deleted), the other users as they were, and reloaded.
        """
        users = dict(stack.users.users)
        if bob is None:
            del users["bob"]
        else:
            users["bob"] = attrs.evolve(users["bob"], rights=bob)
        saveUsers(stack.users.path, users)
        self.assertTrue(stack.users.reload())

    @runAsync
    async def test_withdrawnStaysWithdrawn(self) -> None:
        """
        A server the relay withdraws is said once at the skeleton and left
        out when it registers again (after a lost connection): its other
        server is registered again, not refused with it.
        """
        stack = await self.startStack()
        events = said(self)
        link = stack.link(stack.skeletonPort, "bob")
        fronted = {
            s: FrontedServer(s, f"bob's {s}", SOMEWHERE, s.encode().ljust(32, b"."))
            for s in ("web", "db")
        }
        skeleton = Skeleton(link, "bobs", fronted, pool=0)
        channels = Counted(lambda: SkeletonControl(skeleton))
        service = self.startService(link, channels)
        listed = lambda: sorted(str(e["id"]) for e in stack.relay.registry.listing())  # noqa: E731
        await pollUntil(lambda: listed() == ["db", "echo", "web"])

        self.reload(stack, Rights(register=frozenset({"db"}), join=None))
        await pollUntil(lambda: listed() == ["db", "echo"])
        await pollUntil(lambda: bool(events))
        self.assertEqual(
            lines(events), ["relay withdrew server web: user bob may no longer register it"]
        )

        [first] = channels.made
        first.transport.abortConnection()
        await pollUntil(lambda: len(channels.made) >= 2 and service.ready.current is not None)
        self.assertEqual(listed(), ["db", "echo"])
        # Nothing refused for web.  (A retry that beats the relay's notice
        # of the old connection's loss may be refused once for db, which is
        # still registered then; that is not what this test is about.)
        self.assertEqual([line for line in lines(events)[1:] if "web" in line], [])

    @runAsync
    async def test_deletedUser(self) -> None:
        """
        A client whose user is deleted hears why from the relay, once, then
        its next logins are refused, which is said once more, however often
        it tries; no refused connection stays open.
        """
        stack = await self.startStack()
        events = said(self)
        link = stack.link(stack.clientPort, "bob")
        channels = Counted(lambda: ClientControl(link))
        service = self.startService(link, channels)
        await pollUntil(lambda: link.session is not None)
        baseline = len(openConnections())

        self.reload(stack, None)
        # Stopped between attempts: the relay holds back its answer to a
        # failed login, and an attempt stopped before that leaves its timer.
        await pollUntil(
            lambda: len(channels.made) >= 5 and not channels.made[-1].connected, timeout=60
        )
        await service.stopService()
        self.assertIsNone(link.session)
        [ended, refused] = lines(events)
        self.assertEqual(ended, "the relay ended this login: user bob was deleted")
        self.assertIn("login as bob refused: ", refused)
        await pollUntil(lambda: len(openConnections()) == baseline - 2)


class KeepsRefused(amp.AMP):
    """A relay's control channel that refuses every login and keeps the connection open."""

    @Login.responder
    def login(self, role: str, message: str) -> dict[str, object]:
        raise LoginFailed(
            "too many login attempts from this address or its network; try again in 9 s"
        )


@implementer(IStreamClientEndpoint)
class Switch:
    """A TCP endpoint on 127.0.0.1 whose port the test can change."""

    def __init__(self, address: Any) -> None:
        self.to(address)

    def to(self, address: Any) -> None:
        self.port = cast(IPv4Address, address).port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(protocolFactory)


class Unanswered(StringTransport):
    """A connection whose peer never answers its close: it ends only when aborted."""

    aborted = False
    protocol: Any = None

    def abortConnection(self) -> None:
        if not self.aborted:
            self.aborted = self.disconnecting = True
            self.protocol.connectionLost(Failure(ConnectionAborted()))


@implementer(IStreamClientEndpoint)
class ConnectsAtOnce:
    """
    Connects each protocol at once, on a new C{transport()} (an
    L{Unanswered} one, say); keeps the protocols and their transports.
    """

    def __init__(self, transport: Callable[[], StringTransport] = StringTransport) -> None:
        self.transport = transport
        self.made: list[Any] = []
        self.transports: list[Any] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = protocolFactory.buildProtocol(NOWHERE)
        assert protocol is not None
        transport: Any = self.transport()
        transport.protocol = protocol
        self.made.append(protocol)
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return succeed(protocol)


class LoggedInAtOnce(ClientControl):
    """A client's control connection whose login needs no relay."""

    async def prepare(self) -> None:
        return None


class NeverLoggedIn(ClientControl):
    """A client's control connection whose login is never answered."""

    async def prepare(self) -> None:
        await Deferred()


class Scripted(ClientControl):
    """A client's control connection whose logins end as the test has scripted."""

    outcomes: list[Exception | None] = []

    async def prepare(self) -> None:
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


class ControlServiceTests(SynchronousTestCase):
    """L{ControlService} on a clock: bounded stops, bounded attempts."""

    def start(self, channel: type[ClientControl]) -> tuple[ControlService, ConnectsAtOnce, Clock]:
        clock = Clock()
        link = offline(clock)
        endpoint = ConnectsAtOnce(Unanswered)
        service = ControlService(endpoint, lambda: channel(link), clock, retryPolicy=QUICKLY)
        service.startService()
        return service, endpoint, clock

    def test_stopBounded(self) -> None:
        """
        Stopping with a ready connection whose relay never answers the close
        ends within L{STOP_GRACE} seconds: the connection is aborted, and no
        timer is left.
        """
        service, endpoint, clock = self.start(LoggedInAtOnce)
        self.successResultOf(service.whenConnected())
        [transport] = endpoint.transports
        stopped = service.stopService()
        self.assertTrue(transport.disconnecting)
        clock.advance(STOP_GRACE * 0.99)
        self.assertNoResult(stopped)
        self.assertFalse(transport.aborted)
        clock.advance(STOP_GRACE * 0.02)
        self.successResultOf(stopped)
        self.assertTrue(transport.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopAnsweredAtOnce(self) -> None:
        """A close the relay answers ends the stop then, and cancels the grace's timer."""
        service, endpoint, clock = self.start(LoggedInAtOnce)
        [transport] = endpoint.transports
        stopped = service.stopService()
        transport.protocol.connectionLost(Failure(ConnectionAborted()))
        clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopWhileLoggingIn(self) -> None:
        """
        Stopping while the login waits for the relay ends at once, and drops
        the connection; nothing is logged as a failure.
        """
        events = said(self)
        service, endpoint, clock = self.start(NeverLoggedIn)
        [transport] = endpoint.transports
        stopped = service.stopService()
        self.assertTrue(transport.aborted)
        clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(lines(events), [])

    def test_loginTimeout(self) -> None:
        """
        A login the relay never answers is given up after L{LOGIN_TIMEOUT}
        seconds, its connection dropped and said once, and tried again.
        """
        events = said(self)
        service, endpoint, clock = self.start(NeverLoggedIn)
        clock.advance(LOGIN_TIMEOUT * 0.99)
        [transport] = endpoint.transports
        self.assertFalse(transport.aborted)
        clock.advance(LOGIN_TIMEOUT * 0.02)
        self.assertTrue(transport.aborted)
        [line] = lines(events)
        self.assertIn(f"not ready within {LOGIN_TIMEOUT:g} s", line)
        clock.advance(1)
        self.assertEqual(len(endpoint.transports), 2)
        clock.advance(LOGIN_TIMEOUT)
        self.assertEqual(len(lines(events)), 1)
        stopped = service.stopService()
        clock.advance(0)
        self.successResultOf(stopped)


    def test_saidAgainAfterSuccess(self) -> None:
        """
        A refusal repeated is said once; after a login that worked, the
        same refusal is said again.
        """
        events = said(self)
        refused = LoginFailed("login failed: unknown user or wrong password")
        self.patch(Scripted, "outcomes", [refused, refused, None, refused, refused])
        service, endpoint, clock = self.start(Scripted)
        clock.pump([0.05, 0.05])
        self.assertEqual(len(endpoint.transports), 3)
        self.assertEqual(len(lines(events)), 1)
        self.successResultOf(service.whenConnected())
        endpoint.transports[-1].abortConnection()
        clock.pump([0.05, 0.05])
        self.assertEqual(len(endpoint.transports), 5)
        self.assertEqual(Scripted.outcomes, [])
        self.assertEqual(lines(events)[1:], lines(events)[:1])
        stopped = service.stopService()
        clock.advance(0)
        self.successResultOf(stopped)


class FailureNotesTests(SynchronousTestCase):
    """What a run of failed attempts says."""

    def test_saidOncePerChange(self) -> None:
        """
        The same failure is said once; one that differs only in its numbers
        is the same; another is said, and after a success the same again.
        """
        events = said(self)
        notes = FailureNotes()
        channel = ClientControl(offline())
        locked = "too many failed logins from this address; try again in {} min"
        for error in (
            LoginRefused("login failed: unknown user or wrong password"),
            LoginRefused("login failed: unknown user or wrong password"),
            LoginFailed(locked.format(15)),
            LoginFailed(locked.format(14)),
            RelayUnreachable("cannot reach the relay: connection refused"),
        ):
            notes.failed(error, channel, LOGIN_TIMEOUT)
        notes.succeeded()
        notes.failed(RelayUnreachable("cannot reach the relay: connection refused"), channel, 1)
        self.assertEqual(
            lines(events),
            [
                "login as alice refused: wrong password or unknown user;"
                " check password_file /etc/relaynat/alice.password and user in [client]",
                "login as alice refused: too many failed logins from this address;"
                " try again in 15 min",
                "no control connection to the relay: cannot reach the relay: connection refused",
                "no control connection to the relay: cannot reach the relay: connection refused",
            ],
        )
        self.assertEqual(
            [e["log_level"] for e in events],
            [LogLevel.error, LogLevel.error, LogLevel.warn, LogLevel.warn],
        )


class FakeRelay(amp.AMP):
    """The relay's end of a control connection, driven by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.registered: list[list[str]] = []

    @Register.responder
    def register(self, name: str, servers: list[dict[str, str]], pool: int) -> dict[str, object]:
        self.registered.append([s["id"] for s in servers])
        return {}


def asked(relay: amp.AMP, command: type[amp.Command], **kw: object) -> Deferred[Any]:
    """
    C{command} sent, its answer taken at once: AMP hands an error nobody
    has taken when it arrives to its unhandled-error handler.
    """
    answer: Deferred[Any] = Deferred()
    relay.callRemote(command, **kw).chainDeferred(answer)
    return answer


class ToldTests(SynchronousTestCase):
    """The relay's word on a control connection: a login ended, a server withdrawn."""

    def test_sessionEnded(self) -> None:
        """
        L{SessionEnded} is logged once as a warning with the relay's reason;
        the login's session is forgotten at once (no data connection starts
        with it) and the connection closed, for the service to log in again.
        """
        events = said(self)
        clock = Clock()
        link = offline(clock)
        control, relay, pump = connectedServerAndClient(
            FakeRelay, lambda: ClientControl(link), clock=clock
        )
        session = LoginSession("s1", clock.seconds() + 3600)
        control.session = session
        link.adopt(control, session)
        self.assertIs(self.successResultOf(link.loggedIn()), session)
        lost: list[Failure] = []
        control.onLoss(lost.append)
        for _ in range(2):
            relay.callRemote(SessionEnded, reason="user alice was deleted")
        # The commands arrive; the close they cause comes at a later pump.
        pump.pump()
        self.assertEqual(lines(events), ["the relay ended this login: user alice was deleted"])
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertIsNone(link.session)
        self.assertNoResult(link.loggedIn())
        self.assertTrue(control.connected)
        self.assertTrue(control.transport.disconnecting)
        pump.flush()
        self.assertFalse(control.connected)
        self.assertEqual(len(lost), 1)
        self.assertEqual(len(lines(events)), 1)

    def fronting(self, clock: Clock) -> tuple[Skeleton, ConnectsAtOnce]:
        raw = ConnectsAtOnce()
        link = offline(clock)
        link.raw = raw
        servers = {
            s: FrontedServer(s, f"{s} server", SOMEWHERE, s.encode().ljust(32, b"."))
            for s in ("web", "db")
        }
        return Skeleton(link, "test", servers, pool=1), raw

    def test_serverWithdrawn(self) -> None:
        """
        L{ServerWithdrawn} is logged with the server and the reason; the
        skeleton closes that server's pooled connections, refuses the
        relay's requests for new ones, and leaves it out of its next
        registration, while its other server stays as it was.
        """
        events = said(self)
        clock = Clock()
        skeleton, raw = self.fronting(clock)
        control, relay, pump = connectedServerAndClient(
            FakeRelay, lambda: SkeletonControl(skeleton), clock=clock
        )
        for serverId in ("web", "db"):
            answer = relay.callRemote(OpenConnection, server=serverId, ticket=b"t" * 32)
            pump.flush()
            self.successResultOf(answer)
        pooled = {end.server.id: end for end in raw.made}
        self.assertEqual(sorted(pooled), ["db", "web"])
        self.assertEqual(skeleton.dataConnections, set(raw.made))

        relay.callRemote(ServerWithdrawn, server="web", reason="alice may no longer register web")
        pump.flush()
        self.assertEqual(
            lines(events), ["relay withdrew server web: alice may no longer register web"]
        )
        self.assertTrue(pooled["web"].transport.disconnecting)
        self.assertFalse(pooled["db"].transport.disconnecting)

        refused = asked(relay, OpenConnection, server="web", ticket=b"t" * 32)
        granted = asked(relay, OpenConnection, server="db", ticket=b"t" * 32)
        pump.flush()
        self.failureResultOf(refused, UnknownServer)
        self.successResultOf(granted)
        self.assertEqual([e.server.id for e in raw.made[2:]], ["db"])

        registering = Deferred.fromCoroutine(skeleton.registerOn(control))
        pump.flush()
        self.successResultOf(registering)
        self.assertEqual(relay.registered, [["db"]])
        self.assertTrue(control.connected)

    def test_everyServerWithdrawn(self) -> None:
        """
        With every server withdrawn there is nothing to register: the next
        registration fails at the skeleton, saying so, without asking the
        relay.
        """
        clock = Clock()
        skeleton, _ = self.fronting(clock)
        control, relay, pump = connectedServerAndClient(
            FakeRelay, lambda: SkeletonControl(skeleton), clock=clock
        )
        for serverId in ("web", "db"):
            relay.callRemote(ServerWithdrawn, server=serverId, reason="rights gone")
        pump.flush()
        registering = Deferred.fromCoroutine(skeleton.registerOn(control))
        pump.flush()
        failure = self.failureResultOf(registering, NothingToRegister)
        self.assertIn("every server of it was withdrawn", failure.getErrorMessage())
        self.assertEqual(relay.registered, [])


class LoginWaitTests(SynchronousTestCase):
    def test_notLoggedInInTime(self) -> None:
        """
        A local connection that waits longer than LOGIN_WAIT for the login
        fails with what that means, not a bare timeout.
        """
        from twisted.internet.defer import Deferred
        from twisted.internet.task import Clock

        from relaynat import client
        from relaynat.link import RelayUnreachable

        class NeverLink:
            clock = Clock()
            wanted: set[str] = set()

            def connectData(self, end: object) -> Deferred[None]:
                return Deferred()

            def loggedIn(self) -> Deferred[None]:
                return Deferred()

        link = NeverLink()
        factory = client.TunnelFactory(link, "web", b"s" * 32)  # type: ignore[arg-type]
        d = Deferred.fromCoroutine(factory.openEnd())
        link.clock.advance(client.LOGIN_WAIT)
        failure = self.failureResultOf(d, RelayUnreachable)
        self.assertEqual(
            failure.getErrorMessage(),
            "not logged in to the relay within 10 s (is it running and reachable? the log"
            " says why not)",
        )
