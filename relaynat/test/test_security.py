"""
The security properties, on real TLS and TCP over loopback: login without
the password on the wire, throttling, replay, pinning, host name checks,
sessions and the one-time tickets of data connections, rights, per-server
secrets proven end to end (an impostor skeleton and a man in the middle at
the relay get nothing and change nothing), data connections that show
nothing in the clear, and logs free of secrets.
"""

from __future__ import annotations

import base64
import datetime
import os
import secrets
from typing import Any, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scramp import ScramClient
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from relaynat.auth import Users
from relaynat.channel import Channel
from relaynat.client import ClientControl, TunnelFactory, controlFactory, listServers
from relaynat.identity import (
    CERT_FILE,
    KEY_FILE,
    PinnedRelay,
    RelayIdentity,
    RelayKeyMismatch,
    fingerprint,
    generate,
    serverEndPoint,
    writePrivate,
)
from relaynat.link import (
    Credentials,
    LoginSession,
    RelayLink,
    RelayUnreachable,
    hostnameVerifier,
    preparing,
)
from relaynat.relay import Relay
from relaynat.seal import ClientHandshake, SealBroken, Sealed
from relaynat.skeleton import FrontedServer, Skeleton, SkeletonControl
from relaynat.splice import OneProtocolFactory
from relaynat.test.logs import logEvents
from relaynat.test.loopback import rewriteUsers, ANYTHING, PASSWORD, Stack, writeUsers
from relaynat.test.net import endpointOf, listen, openConnections, pollUntil, reactor, runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.tickets import TicketBook
from relaynat.users import Rights
from relaynat.wire import (
    JOIN_REFUSED,
    TICKET_BYTES,
    TLS_HANDSHAKE,
    Login,
    LoginFailed,
    LoginFinish,
    OpenConnection,
    PermissionDenied,
    Register,
    SessionRefused,
    Tickets,
    UnknownServer,
)

#: What the relay writes on a client's data connection whose ticket it refuses.
TICKET_REFUSED = JOIN_REFUSED + b"\x05"

#: The line a client logs, once per server, when the far end of its tunnels
#: cannot prove the server's secret.
UNPROVEN = "failed to prove that it knows its secret"


def madeUpTicket() -> bytes:
    """A ticket no relay issued (random, and not starting as TLS does)."""
    return b"\x01" + secrets.token_bytes(TICKET_BYTES - 1)


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """
    An application at one end of a tunnel (the target server, or a local
    client of the tunnel): what it read, whether its stream ended cleanly
    (a FIN), and how its connection was lost.  Echoes if C{echo}.
    """

    transport: Any

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = b""
        self.eof = False
        self.writeClosed = False
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.echo or self.writeClosed:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.writeClosed = True
        if self.eof:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


class PeerFactory(Factory):
    """A server of L{Peer}s that keeps each one it made: none made, never connected to."""

    noisy = False

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.made: list[Peer] = []

    def buildProtocol(self, addr: object) -> Peer:
        peer = Peer(self.echo)
        self.made.append(peer)
        return peer


class TicketUser(Protocol):
    """
    A data connection made by hand: C{ticket}, then (given a secret) the
    client's first handshake message; what came back, and whether it is
    the skeleton's proof of the server's secret (L{sealed}).
    """

    transport: Any

    def __init__(self, ticket: bytes, secret: bytes | None = None, serverId: str = "web") -> None:
        self.ticket = ticket
        self.handshake = ClientHandshake(secret, serverId) if secret is not None else None
        self.received = b""
        self.sealed: Sealed | None = None
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        first = self.handshake.first() if self.handshake is not None else b""
        self.transport.write(self.ticket + first)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.handshake is not None and self.sealed is None:
            try:
                self.sealed = self.handshake.receive(data)
            except SealBroken:
                self.handshake = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


class TicketCatcher(Channel):
    """
    A skeleton's control connection that keeps the tickets of the relay's
    requests for data connections, and opens none.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tickets: list[bytes] = []

    @OpenConnection.responder
    def openConnection(self, server: str, ticket: bytes) -> dict[str, object]:
        self.tickets.append(ticket)
        return {}


@attrs.frozen
class Tamper:
    """
    What the man in the middle does to one frame of each data connection
    it carries: in C{direction} ("up", client to relay, or "down"), the
    frame numbered C{frame} (the handshake message is 0, then the records:
    1 is L{seal.BEGIN}, 2 the first data, 3 the next), it does C{action}:
    "flip" one bit, "drop" it, "fin" (shut the direction there, as a
    forged end), or "repeat" it.
    """

    direction: str
    frame: int
    action: str


@attrs.define
class Captured:
    """What one data connection carried through the man in the middle, each way."""

    up: bytearray = attrs.Factory(bytearray)
    down: bytearray = attrs.Factory(bytearray)

    @property
    def ticket(self) -> bytes:
        return bytes(self.up[:TICKET_BYTES])


@implementer(IHalfCloseableProtocol)
class _Leg(Protocol):
    """One of a L{_Pipe}'s two connections: "near" (the client's) or "far" (the relay's)."""

    transport: Any

    def __init__(self, pipe: _Pipe, side: str) -> None:
        self.pipe = pipe
        self.side = side
        self.readDone = False
        self.writeDone = False
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.pipe.made(self)

    def dataReceived(self, data: bytes) -> None:
        self.pipe.received(self, data)

    def readConnectionLost(self) -> None:
        self.readDone = True
        self.pipe.ended(self)
        self.closeIfDone()

    def writeConnectionLost(self) -> None:
        self.writeDone = True
        self.closeIfDone()

    def closeIfDone(self) -> None:
        if self.readDone and self.writeDone:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason
        self.pipe.lost(self, reason)


class _Pipe:
    """
    One connection through the L{Interceptor}: the client's leg to the
    relay's, each way, with its end or reset passed on as such.  A TLS
    control connection is passed on unchanged; a data connection is
    recorded and, with a L{Tamper}, changed.
    """

    def __init__(self, interceptor: Interceptor) -> None:
        self.interceptor = interceptor
        self.near = _Leg(self, "near")
        self.far: _Leg | None = None
        self.held: list[bytes] = []
        self.heldEnd = False
        self.captured: Captured | None = None
        self.control: bool | None = None
        # Per direction: ticket bytes still to pass, bytes of a frame not
        # yet whole, frames passed, and whether a forged end stopped it.
        self.skip = {"up": TICKET_BYTES, "down": 0}
        self.buffer = {"up": b"", "down": b""}
        self.frames = {"up": 0, "down": 0}
        self.stopped = {"up": False, "down": False}

    def made(self, leg: _Leg) -> None:
        if leg is self.near:
            self.near.transport.pauseProducing()
            far = _Leg(self, "far")
            d = self.interceptor.upstream.connect(OneProtocolFactory(far))
            d.addErrback(lambda _: self.near.transport.abortConnection())
            return
        self.far = leg
        if self.near.lost is not None:
            leg.transport.abortConnection()
            return
        held, self.held = self.held, []
        for data in held:
            self.carry("up", data)
        if self.heldEnd:
            self.end("up")
        self.near.transport.resumeProducing()

    def received(self, leg: _Leg, data: bytes) -> None:
        if leg is self.near and self.far is None:
            self.held.append(data)
        else:
            self.carry("up" if leg is self.near else "down", data)

    def sink(self, direction: str) -> _Leg:
        leg = self.far if direction == "up" else self.near
        assert leg is not None
        return leg

    def carry(self, direction: str, data: bytes) -> None:
        if self.control is None:
            # The client speaks first, on either kind of connection.
            self.control = data[0] == TLS_HANDSHAKE
            if not self.control:
                self.captured = Captured()
                self.interceptor.captured.append(self.captured)
        sink = self.sink(direction).transport
        tamper = self.interceptor.tamper
        if self.control or self.captured is None:
            sink.write(data)
            return
        (self.captured.up if direction == "up" else self.captured.down).extend(data)
        if tamper is None or tamper.direction != direction:
            sink.write(data)
            return
        if self.stopped[direction]:
            return
        buffer = self.buffer[direction] + data
        while buffer:
            if self.skip[direction]:
                n = min(self.skip[direction], len(buffer))
                sink.write(buffer[:n])
                buffer = buffer[n:]
                self.skip[direction] -= n
                continue
            if len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
                break
            size = 2 + int.from_bytes(buffer[:2], "big")
            frame, buffer = buffer[:size], buffer[size:]
            number = self.frames[direction]
            self.frames[direction] += 1
            if number != tamper.frame:
                sink.write(frame)
                continue
            self.interceptor.tampered += 1
            if tamper.action == "flip":
                middle = 2 + (size - 2) // 2
                sink.write(frame[:middle] + bytes([frame[middle] ^ 0x10]) + frame[middle + 1 :])
            elif tamper.action == "repeat":
                sink.write(frame)
                sink.write(frame)
            elif tamper.action == "fin":
                self.stopped[direction] = True
                sink.loseWriteConnection()
                buffer = b""
            else:
                assert tamper.action == "drop", tamper
        self.buffer[direction] = buffer

    def ended(self, leg: _Leg) -> None:
        if leg is self.near and self.far is None:
            self.heldEnd = True
        else:
            self.end("up" if leg is self.near else "down")

    def end(self, direction: str) -> None:
        if not self.stopped[direction]:
            self.stopped[direction] = True
            self.sink(direction).transport.loseWriteConnection()

    def lost(self, leg: _Leg, reason: Failure) -> None:
        other = self.far if leg is self.near else self.near
        if other is None or other.lost is not None:
            return
        if reason.check(ConnectionDone):
            other.transport.loseConnection()
        else:
            # A reset is passed on as a reset.
            other.transport.abortConnection()


class Interceptor(Factory):
    """
    A man in the middle in front of the relay's port X: it passes every
    connection on to C{upstream}, TLS control connections unchanged, data
    connections recorded (L{captured}) and, with a C{tamper}, changed as
    it says (L{tampered} counts the frames changed).  It carries little, so
    it does without flow control.
    """

    noisy = False

    def __init__(self, upstream: IStreamClientEndpoint, tamper: Tamper | None = None) -> None:
        self.upstream = upstream
        self.tamper = tamper
        self.captured: list[Captured] = []
        self.tampered = 0

    def buildProtocol(self, addr: object) -> _Leg:
        return _Pipe(self).near


class SecurityTestCase(TestCase):
    async def startStack(self, targets: dict[str, Factory] | None = None, **kw: Any) -> Stack:
        """A L{Stack} fronting C{targets} (an echo server "web"), stopped after the test."""
        if targets is None:
            targets = {"web": Factory.forProtocol(Echo)}
        stack = await Stack().start(dict(targets), **kw)
        self.addCleanup(stack.stop)
        return stack

    async def channel(self, link: RelayLink) -> Channel:
        channel = await link.connect(Channel())
        self.addCleanup(channel.transport.loseConnection)
        return channel

    async def loggedIn(self, link: RelayLink) -> tuple[Channel, LoginSession]:
        """A control connection of C{link}, logged in: its tickets last as long as it."""
        channel = await self.channel(link)
        return channel, await link.login(channel, "client")

    def logEvents(self) -> list[dict[str, Any]]:
        """Every log event from now to the end of the test."""
        return logEvents(self)

    def unprovenLines(self, events: list[dict[str, Any]], serverId: str) -> list[str]:
        """The error lines a client logged because C{serverId} did not prove its secret."""
        return [
            formatEvent(e)
            for e in events
            if e.get("log_level") == LogLevel.error
            and e.get("server") == serverId
            and UNPROVEN in formatEvent(e)
        ]

    async def useTicket(
        self,
        port: IListeningPort,
        ticket: bytes,
        secret: bytes | None = None,
        serverId: str = "web",
    ) -> TicketUser:
        """A data connection to C{port} with C{ticket} (and a handshake, given C{secret})."""
        user = TicketUser(ticket, secret, serverId)
        await endpointOf(port).connect(OneProtocolFactory(user))
        self.addCleanup(lambda: user.transport.loseConnection() if user.reason is None else None)
        return user

    async def assertJoined(self, user: TicketUser) -> None:
        """C{user}'s ticket was taken: the skeleton answered, proving the server's secret."""
        await pollUntil(lambda: user.sealed is not None or user.reason is not None)
        self.assertIsNotNone(user.sealed, f"not joined: {user.received!r}, {user.reason}")
        user.transport.loseConnection()

    async def assertRefused(self, user: TicketUser, answer: bytes) -> None:
        """C{user}'s ticket was refused: C{answer} written, and the connection closed."""
        await pollUntil(lambda: user.reason is not None)
        self.assertEqual(user.received, answer)
        self.assertIsNone(user.sealed)

    def assertCut(self, peer: Peer) -> None:
        """C{peer}'s connection ended with a reset: no clean end-of-stream, no clean close."""
        assert peer.reason is not None
        self.assertFalse(peer.eof, "a clean end of stream arrived")
        self.assertIsNone(peer.reason.check(ConnectionDone), "closed cleanly")
        self.assertIsNotNone(peer.reason.check(ConnectionLost), peer.reason)

    async def intercept(
        self, stack: Stack, tamper: Tamper | None = None
    ) -> tuple[Interceptor, IListeningPort]:
        """A man in the middle in front of C{stack}'s port X."""
        interceptor = Interceptor(endpointOf(stack.clientPort), tamper)
        port = await listen(interceptor)
        self.addCleanup(port.stopListening)
        return interceptor, port

    async def clientThrough(
        self, stack: Stack, port: IListeningPort, serverId: str, user: str = "alice", ready: int = 1
    ) -> tuple[RelayLink, IListeningPort]:
        """
        A second client of C{stack}, logged in as C{user} through C{port}
        (an L{Interceptor}), with a local listener for C{serverId} and
        C{ready} connections ready.
        """
        link = stack.link(port, user)
        service = ClientService(
            link.endpoint,
            controlFactory(link),
            prepareConnection=lambda p: preparing(
                cast(ClientControl, p), cast(ClientControl, p).start()
            ),
        )
        service.startService()
        self.addCleanup(service.stopService)
        await service.whenConnected(failAfterFailures=1)
        await link.loggedIn()
        factory = TunnelFactory(link, serverId, stack.secrets[serverId], ready=ready)
        local = await listen(factory)
        self.addCleanup(local.stopListening)
        await pollUntil(lambda: factory.readyNow() == ready)
        return link, local

    async def connectLocal(self, port: IListeningPort, peer: Protocol) -> None:
        await endpointOf(port).connect(OneProtocolFactory(peer))


class LoginTests(SecurityTestCase):
    """Login by SCRAM-SHA-256-PLUS and its throttle."""

    @runAsync
    async def test_sameErrorForUnknownUserAndWrongPassword(self) -> None:
        """
        A wrong password and an unknown user get the very same error, and
        both are logged with user and source.
        """
        stack = await self.startStack()
        events = self.logEvents()
        messages = []
        for user, password in (("alice", "wrong"), ("mallory", PASSWORD)):
            link = stack.link(stack.clientPort, user, password)
            channel = await self.channel(link)
            error = await self.assertFailure(
                Deferred.fromCoroutine(link.login(channel, "client")), LoginFailed
            )
            messages.append(str(error))
        self.assertEqual(messages[0], messages[1])
        self.assertEqual(messages[0], "login failed: unknown user or wrong password")
        failed = [formatEvent(e) for e in events if "failed login" in e.get("log_format", "")]
        self.assertEqual(
            failed,
            ["failed login for alice from 127.0.0.1", "failed login for mallory from 127.0.0.1"],
        )

    @runAsync
    async def test_failuresSlowTheirSourceNotTheAccount(self) -> None:
        """
        Wrong passwords for alice from one address get that address
        refused (with when to try again), even with the right password;
        alice from another network logs in at once, and her skeleton keeps
        its server online.  (The throttle itself: test_throttle.)
        """
        stack = await self.startStack()
        stack.relay.failedLoginDelay = 0.01
        burst = stack.relay.limits.login_burst
        for _ in range(burst):
            link = stack.link(stack.clientPort, "alice", "wrong", source="127.0.1.2")
            channel = await self.channel(link)
            error = await self.assertFailure(
                Deferred.fromCoroutine(link.login(channel, "client")), LoginFailed
            )
            self.assertEqual(str(error), "login failed: unknown user or wrong password")
        link = stack.link(stack.clientPort, "alice", PASSWORD, source="127.0.1.2")
        channel = await self.channel(link)
        error = await self.assertFailure(
                Deferred.fromCoroutine(link.login(channel, "client")), LoginFailed
            )
        self.assertRegex(
            str(error),
            r"^too many login attempts from this address or its network; try again in \d+ s$",
        )
        self.assertEqual(len(stack.relay.throttle), 2)
        for source in ("127.0.0.1", "127.0.2.9"):
            link = stack.link(stack.clientPort, "alice", PASSWORD, source=source)
            await self.loggedIn(link)
        self.assertEqual([s["id"] for s in stack.relay.registry.listing()], ["web"])

    @runAsync
    async def test_transcriptReplayFails(self) -> None:
        """
        The client's SCRAM messages captured from one login fail when
        replayed on another connection: the relay's nonce and the TLS
        channel binding differ.
        """
        stack = await self.startStack()
        link = stack.link(stack.clientPort, "alice")
        first = await self.channel(link)
        cert = first.transport.getPeerCertificate().to_cryptography()
        scram = ScramClient(
            ["SCRAM-SHA-256-PLUS"], "alice", PASSWORD,
            channel_binding=("tls-server-end-point", serverEndPoint(cert)),
        )
        clientFirst = scram.get_client_first()
        answer = await first.callRemote(Login, role="client", message=clientFirst)
        scram.set_server_first(answer["message"])
        clientFinal = scram.get_client_final()
        done = await first.callRemote(LoginFinish, message=clientFinal)
        scram.set_server_final(done["message"])

        replay = await self.channel(link)
        await replay.callRemote(Login, role="client", message=clientFirst)
        await self.assertFailure(replay.callRemote(LoginFinish, message=clientFinal), LoginFailed)

    @runAsync
    async def test_relayMustProveItKnowsTheVerifier(self) -> None:
        """
        A relay that answers with a wrong server signature is refused by
        the client (the final SCRAM message is checked).
        """
        stack = await self.startStack()
        link = stack.link(stack.clientPort, "alice")
        channel = await self.channel(link)
        original = stack.relay.users.users["alice"]
        stack.relay.users.users["alice"] = attrs.evolve(original, serverKey=b"\0" * 32)
        error = await self.assertFailure(
                Deferred.fromCoroutine(link.login(channel, "client")), LoginFailed
            )
        self.assertIn("failed to prove", str(error))


class PinningTests(SecurityTestCase):
    """The relay's key is pinned; a CA certificate can be checked by name."""

    @runAsync
    async def test_otherKeyRefused(self) -> None:
        """
        A relay with another key (same names) is refused, with an error
        naming the pinned fingerprint and the one seen; nothing is sent.
        """
        stack = await self.startStack()
        other = x509.load_pem_x509_certificate(generate(["127.0.0.1"])[1])
        link = RelayLink(
            endpointOf(stack.clientPort),
            PinnedRelay(fingerprint(other)),
            Credentials("alice", PASSWORD),
            reactor,
        )
        error = await self.assertFailure(
            Deferred.fromCoroutine(link.connect(Channel())), RelayKeyMismatch
        )
        self.assertIn(fingerprint(other), str(error))
        self.assertIn(stack.identity.fingerprint, str(error))
        self.flushLoggedErrors()

    @runAsync
    async def test_hostnameWithTestCA(self) -> None:
        """
        With relay_verify = "hostname", a certificate from a test CA for
        localhost is accepted under that name and refused under another.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        caPem, key, cert = _caAndCertificate(["localhost"])
        writePrivate(os.path.join(directory, KEY_FILE), key)
        writePrivate(os.path.join(directory, CERT_FILE), cert)
        identity = RelayIdentity.load(
            os.path.join(directory, KEY_FILE), os.path.join(directory, CERT_FILE)
        )
        relay = Relay(reactor, identity, _users(directory))
        port = await listen(relay.clientFactory())
        self.addCleanup(port.stopListening)

        good = RelayLink(
            endpointOf(port), hostnameVerifier("localhost", caPem), Credentials("alice", PASSWORD), reactor
        )
        channel = await good.connect(Channel())
        session = await good.login(channel, "client")
        self.assertIsInstance(session, LoginSession)
        channel.transport.loseConnection()

        wrong = RelayLink(
            endpointOf(port), hostnameVerifier("relay.example", caPem), Credentials("alice", PASSWORD), reactor
        )
        await self.assertFailure(Deferred.fromCoroutine(wrong.connect(Channel())), RelayUnreachable)
        await pollUntil(lambda: not openConnections())
        self.flushLoggedErrors()


class SessionTests(SecurityTestCase):
    """A login's session: it ends with its control connection, or when it expires."""

    @runAsync
    async def test_sessionEndsWithItsLogin(self) -> None:
        """
        When the login's control connection closes, its session is gone
        at the relay (and with it everything it could ask for).
        """
        stack = await self.startStack()
        link = stack.link(stack.clientPort, "alice")
        control = await link.connect(Channel())
        session = await link.login(control, "client")
        self.assertIsNotNone(stack.relay.sessions.get(session.id))
        control.transport.loseConnection()
        await pollUntil(lambda: stack.relay.sessions.get(session.id) is None)

    @runAsync
    async def test_expiredSessionRefused(self) -> None:
        """
        A login past its session's lifetime gets no more tickets, and the
        tickets it got are refused, though its connection is still open.
        """
        stack = await self.startStack()
        stack.relay.sessions.lifetime = 1.0
        link = stack.link(stack.clientPort, "alice")
        channel, session = await self.loggedIn(link)
        [ticket] = (await channel.callRemote(Tickets, server="web", count=1))["tickets"]
        await pollUntil(lambda: reactor.seconds() > session.expires)
        await self.assertFailure(channel.callRemote(Tickets, server="web", count=1), SessionRefused)
        late = await self.useTicket(stack.clientPort, ticket, stack.secrets["web"])
        await self.assertRefused(late, TICKET_REFUSED)


class TicketTests(SecurityTestCase):
    """
    A data connection is admitted only with a one-time ticket of a live
    login at this relay; a client's refused one gets L{JOIN_REFUSED} and
    code 5, a skeleton's is closed without a byte.
    """

    @runAsync
    async def test_clientTicketAdmitsOnce(self) -> None:
        """
        A ticket from a login joins one data connection to the skeleton
        (which answers the handshake); used again, or made up, it is
        refused and the connection closed.
        """
        stack = await self.startStack()
        channel, _ = await self.loggedIn(stack.link(stack.clientPort, "alice"))
        [ticket] = (await channel.callRemote(Tickets, server="web", count=1))["tickets"]
        self.assertEqual(len(ticket), TICKET_BYTES)
        secret = stack.secrets["web"]
        await self.assertJoined(await self.useTicket(stack.clientPort, ticket, secret))
        again = await self.useTicket(stack.clientPort, ticket, secret)
        await self.assertRefused(again, TICKET_REFUSED)
        madeUp = await self.useTicket(stack.clientPort, madeUpTicket(), secret)
        await self.assertRefused(madeUp, TICKET_REFUSED)

    @runAsync
    async def test_ticketEndsWithItsLogin(self) -> None:
        """
        The tickets of a login are good while its control connection is
        open, and refused once it closed.
        """
        stack = await self.startStack()
        link = stack.link(stack.clientPort, "alice")
        control = await link.connect(Channel())
        session = await link.login(control, "client")
        first, second = (await control.callRemote(Tickets, server="web", count=2))["tickets"]
        secret = stack.secrets["web"]
        await self.assertJoined(await self.useTicket(stack.clientPort, first, secret))
        control.transport.loseConnection()
        await pollUntil(lambda: stack.relay.sessions.get(session.id) is None)
        late = await self.useTicket(stack.clientPort, second, secret)
        await self.assertRefused(late, TICKET_REFUSED)

    @runAsync
    async def test_otherRelaysTicketRefused(self) -> None:
        """
        A ticket is good only at the relay that issued it: another relay,
        with the same key and users, refuses it, and it still works at its
        own.
        """
        stack = await self.startStack()
        other = Relay(reactor, stack.identity, stack.users)
        otherPort = await listen(other.clientFactory())
        self.addCleanup(otherPort.stopListening)
        channel, _ = await self.loggedIn(stack.link(stack.clientPort, "alice"))
        [ticket] = (await channel.callRemote(Tickets, server="web", count=1))["tickets"]
        secret = stack.secrets["web"]
        elsewhere = await self.useTicket(otherPort, ticket, secret)
        await self.assertRefused(elsewhere, TICKET_REFUSED)
        await self.assertJoined(await self.useTicket(stack.clientPort, ticket, secret))

    @runAsync
    async def test_skeletonTickets(self) -> None:
        """
        The tickets a skeleton's login is sent with the relay's requests
        pool one data connection each at port Y.  An unknown ticket, a used
        one, a client's ticket, and a ticket whose login's control
        connection closed are closed there without a byte written; a
        skeleton's ticket at port X is refused as a client's would be.
        """
        stack = await self.startStack()
        link = stack.link(stack.skeletonPort, "alice")
        catcher = await link.connect(TicketCatcher())
        self.addCleanup(catcher.transport.loseConnection)
        session = await link.login(catcher, "skeleton")
        await catcher.callRemote(
            Register, name="catcher", servers=[{"id": "spare", "description": ""}], pool=3
        )
        await pollUntil(lambda: len(catcher.tickets) == 3)
        first, second, third = catcher.tickets

        def idle() -> object:
            return [s["idle"] for s in stack.relay.registry.listing() if s["id"] == "spare"]

        pooled = await self.useTicket(stack.skeletonPort, first)
        await pollUntil(lambda: idle() == [1])
        self.assertIsNone(pooled.reason)
        await self.assertRefused(await self.useTicket(stack.skeletonPort, first), b"")
        await self.assertRefused(await self.useTicket(stack.skeletonPort, madeUpTicket()), b"")
        client, _ = await self.loggedIn(stack.link(stack.clientPort, "alice"))
        [clientTicket] = (await client.callRemote(Tickets, server="web", count=1))["tickets"]
        await self.assertRefused(await self.useTicket(stack.skeletonPort, clientTicket), b"")
        atX = await self.useTicket(stack.clientPort, second, stack.secrets["web"])
        await self.assertRefused(atX, TICKET_REFUSED)

        catcher.transport.loseConnection()
        await pollUntil(lambda: stack.relay.sessions.get(session.id) is None)
        await self.assertRefused(await self.useTicket(stack.skeletonPort, third), b"")
        # Its server went with its login, and the pooled connection with it.
        await pollUntil(lambda: pooled.reason is not None)
        self.assertEqual(idle(), [])


class RightsTests(SecurityTestCase):
    """Rights are checked on every request, and on every ticket used."""

    @runAsync
    async def test_cannotRegisterOthersServer(self) -> None:
        """A user without register rights for an id cannot register it."""
        users = {"alice": Rights(register=frozenset({"web"}), join=None), "bob": Rights(join=None)}
        stack = await self.startStack(users=users)
        link = stack.link(stack.skeletonPort, "bob")
        target = endpointOf(stack.targetPorts["web"])
        skeleton = Skeleton(link, "bobs", {"mail": FrontedServer("mail", "", target, b"s" * 32)})
        control = await link.connect(
            cast(SkeletonControl, skeleton.controlFactory().buildProtocol(None))
        )
        self.addCleanup(control.transport.loseConnection)
        error = cast(
            PermissionDenied, await self.assertFailure(skeleton.register(control), PermissionDenied)
        )
        self.assertEqual(str(error), "user bob may not register server mail")

    @runAsync
    async def test_listAndJoinOnlyGranted(self) -> None:
        """
        A user sees only the servers it may join in the list, and asking
        for tickets to another is refused just as for an id that does not
        exist.
        """
        users = {"alice": ANYTHING, "carol": Rights(join=frozenset({"web"}))}
        stack = await self.startStack(
            {"web": Factory.forProtocol(Echo), "db": Factory.forProtocol(Echo)}, users=users
        )
        carol = stack.link(stack.clientPort, "carol")
        self.assertEqual([s["id"] for s in await listServers(carol)], ["web"])
        channel, _ = await self.loggedIn(carol)
        granted = await channel.callRemote(Tickets, server="web", count=1)
        self.assertEqual(len(granted["tickets"]), 1)
        denied = await self.assertFailure(
            channel.callRemote(Tickets, server="db", count=1), UnknownServer
        )
        unknown = await self.assertFailure(
            channel.callRemote(Tickets, server="nosuch", count=1), UnknownServer
        )
        self.assertIn("no server db", str(denied))
        self.assertEqual(str(denied).replace("db", "X"), str(unknown).replace("nosuch", "X"))

    @runAsync
    async def test_rightsReloaded(self) -> None:
        """
        Rights taken away in the users file apply to the next request, and
        to the tickets handed out before: they are refused.
        """
        users = {"alice": ANYTHING, "carol": Rights(join=None)}
        stack = await self.startStack(users=users)
        carol = stack.link(stack.clientPort, "carol")
        self.assertEqual(len(await listServers(carol)), 1)
        channel, _ = await self.loggedIn(carol)
        first, second = (await channel.callRemote(Tickets, server="web", count=2))["tickets"]
        secret = stack.secrets["web"]
        await self.assertJoined(await self.useTicket(stack.clientPort, first, secret))
        self.assertTrue(rewriteUsers(stack.users, {"carol": Rights(join=frozenset())}))
        self.assertEqual(await listServers(carol), [])
        await self.assertFailure(channel.callRemote(Tickets, server="web", count=1), UnknownServer)
        late = await self.useTicket(stack.clientPort, second, secret)
        await self.assertRefused(late, TICKET_REFUSED)


class ServerSecretTests(SecurityTestCase):
    """The per-server secret, proven both ways between client and skeleton."""

    @runAsync
    async def test_wrongSecretNeverReachesTarget(self) -> None:
        """
        A client whose secret for a server is wrong never gets the skeleton
        to connect to the target: the skeleton refuses its handshake.  Its
        local connections are closed, and it says once, for all of them,
        that the server failed to prove its secret.  With the right secret
        the same server is reached.
        """
        target = PeerFactory(echo=True)
        stack = await self.startStack({"web": target})
        events = self.logEvents()
        factory = TunnelFactory(stack.clientLink, "web", b"w" * 32)
        port = await listen(factory)
        self.addCleanup(port.stopListening)
        peers = [Peer() for _ in range(3)]
        for peer in peers:
            await self.connectLocal(port, peer)
            peer.transport.write(b"for the server only")
        await pollUntil(lambda: all(p.reason is not None for p in peers))
        self.assertEqual([p.received for p in peers], [b""] * 3)
        self.assertEqual(target.made, [])
        self.assertEqual(len(self.unprovenLines(events, "web")), 1)
        refused = [
            formatEvent(e)
            for e in events
            if "tunnel to {server} refused" in e.get("log_format", "")
        ]
        self.assertTrue(refused)
        self.assertIn("the client does not know the server's secret", refused[0])

        collector = Collect(b"right secret", halfClose=True)
        await stack.connect("web", collector)
        self.assertEqual(await collector.finished, b"right secret")
        self.assertEqual(len(target.made), 1)

    @runAsync
    async def test_impostorSkeletonGetsNothing(self) -> None:
        """
        While the real skeleton is away, another user with the right to
        register its server ids registers them from a skeleton without the
        secrets.  The client's local connections are closed with not a byte
        delivered: the impostor's target is never even connected to.  The
        client logs one error per server, however many connections failed,
        saying it failed to prove its secret and someone else may hold its
        id.
        """
        users = {"alice": ANYTHING, "mallory": Rights(register=frozenset({"web", "db"}))}
        stack = await self.startStack(
            {"web": Factory.forProtocol(Echo), "db": Factory.forProtocol(Echo)}, users=users
        )
        events = self.logEvents()
        # The real skeleton goes away, data connections and all.
        await stack.stopSkeleton()
        for end in list(stack.skeleton.dataConnections):
            end.transport.loseConnection()
        await pollUntil(lambda: stack.relay.registry.counts()["servers"] == 0)

        impostorTarget = PeerFactory()
        targetPort = await listen(impostorTarget)
        self.addCleanup(targetPort.stopListening)
        link = stack.link(stack.skeletonPort, "mallory")
        fronted = {
            serverId: FrontedServer(
                serverId, "the real one", endpointOf(targetPort), b"wrong secret".ljust(32, b".")
            )
            for serverId in ("web", "db")
        }
        impostor = Skeleton(link, "impostor", fronted, pool=2)
        service = ClientService(
            link.endpoint, impostor.controlFactory(), prepareConnection=impostor.register
        )
        service.startService()
        self.addCleanup(service.stopService)
        await service.whenConnected(failAfterFailures=1)
        await pollUntil(lambda: stack.relay.registry.counts()["idle"] == 4)

        peers: list[Peer] = []
        for serverId in ("web", "db"):
            for _ in range(3):
                peer = Peer()
                await stack.connect(serverId, peer)
                peer.transport.write(b"for the real server only")
                peers.append(peer)
        await pollUntil(lambda: all(p.reason is not None for p in peers))
        self.assertEqual([p.received for p in peers], [b""] * 6)
        self.assertEqual(impostorTarget.made, [])
        for serverId in ("web", "db"):
            lines = self.unprovenLines(events, serverId)
            self.assertEqual(len(lines), 1, lines)
            self.assertIn("someone else may hold its id", lines[0])


class ManInTheMiddleTests(SecurityTestCase):
    """
    A relay that changes a sealed tunnel's bytes (here a proxy in front of
    port X that passes the TLS control connections on unchanged and
    tampers with data connections) is caught: the far application sees a
    reset, never a clean end, and never the changed bytes.
    """

    async def tunnelThrough(
        self, tamper: Tamper | None, echo: bool = False
    ) -> tuple[Interceptor, Peer, Peer]:
        """A tunnel to "web" through an L{Interceptor}: its target's and its local end."""
        target = PeerFactory(echo)
        stack = await self.startStack({"web": target})
        interceptor, port = await self.intercept(stack, tamper)
        _, local = await self.clientThrough(stack, port, "web")
        near = Peer()
        await self.connectLocal(local, near)
        await pollUntil(lambda: target.made)
        return interceptor, target.made[0], near

    @runAsync
    async def test_unchangedBytesCarried(self) -> None:
        """
        The control case: through a proxy that changes nothing, the tunnel
        carries its bytes both ways and ends cleanly at both ends.
        """
        interceptor, far, near = await self.tunnelThrough(None, echo=True)
        message = b"through the middle " * 1000
        near.transport.write(message)
        near.transport.loseWriteConnection()
        await pollUntil(lambda: near.reason is not None and far.reason is not None)
        self.assertEqual((far.received, near.received), (message, message))
        for peer in (far, near):
            self.assertTrue(peer.eof)
            assert peer.reason is not None
            self.assertIsNotNone(peer.reason.check(ConnectionDone), peer.reason)
        self.assertTrue(any(len(c.up) > TICKET_BYTES + len(message) for c in interceptor.captured))

    async def tamperWith(self, direction: str, action: str) -> None:
        """
        Two chunks from one end, the second changed by C{action}
        (L{Tamper}) in C{direction}; a third after it if it was dropped.
        The far end gets the first, the second at most as it was sent, and
        a reset; so does the near end.
        """
        interceptor, target, local = await self.tunnelThrough(Tamper(direction, 3, action))
        sender, receiver = (local, target) if direction == "up" else (target, local)
        sender.transport.write(b"first chunk")
        await pollUntil(lambda: receiver.received == b"first chunk")
        sender.transport.write(b"second chunk")
        await pollUntil(lambda: interceptor.tampered == 1)
        if action == "drop":
            sender.transport.write(b"third chunk")
        await pollUntil(lambda: receiver.reason is not None and sender.reason is not None)
        self.assertEqual(interceptor.tampered, 1)
        # A repeated record may be read in the same read as its original,
        # which then fails with it; it is never delivered twice.
        delivered = [b"first chunk"]
        if action == "repeat":
            delivered.append(b"first chunk" + b"second chunk")
        self.assertIn(receiver.received, delivered)
        self.assertCut(receiver)
        self.assertCut(sender)

    @runAsync
    async def test_flippedBitUp(self) -> None:
        """One bit flipped in a record from the client: the target sees a reset, not the bits."""
        await self.tamperWith("up", "flip")

    @runAsync
    async def test_flippedBitDown(self) -> None:
        """One bit flipped in a record to the client: its local end sees a reset, not the bits."""
        await self.tamperWith("down", "flip")

    @runAsync
    async def test_droppedRecordUp(self) -> None:
        """A record from the client dropped: the next one fails, the target sees a reset."""
        await self.tamperWith("up", "drop")

    @runAsync
    async def test_droppedRecordDown(self) -> None:
        """A record to the client dropped: the next one fails, the local end sees a reset."""
        await self.tamperWith("down", "drop")

    @runAsync
    async def test_forgedEndUp(self) -> None:
        """
        A FIN forged mid-stream towards the skeleton (no end record): the
        target sees a reset, never a clean end.
        """
        await self.tamperWith("up", "fin")

    @runAsync
    async def test_forgedEndDown(self) -> None:
        """
        A FIN forged mid-stream towards the client (no end record): the
        local end sees a reset, never a clean end.
        """
        await self.tamperWith("down", "fin")

    @runAsync
    async def test_repeatedRecordUp(self) -> None:
        """A record from the client repeated: the copy fails, the target sees a reset."""
        await self.tamperWith("up", "repeat")

    @runAsync
    async def test_repeatedRecordDown(self) -> None:
        """A record to the client repeated: the copy fails, the local end sees a reset."""
        await self.tamperWith("down", "repeat")


#: A user name and a server id long enough that no random bytes contain them.
EAVESDROPPED_USER = "eavesdropped-user-5d2a"
EAVESDROPPED_SERVER = "eavesdropped-server-91c7"

#: What the tunnels carry in the data-connection tests.
PLAINTEXT = b"KNOWN PLAINTEXT, 0123456789; " * 200


class InTheClearTests(SecurityTestCase):
    """What a client's data connections show to the relay, or anyone on the way."""

    async def eavesdrop(self, sealed: bool) -> tuple[list[Captured], LoginSession]:
        """
        Two tunnels carrying L{PLAINTEXT} both ways (to an echo server),
        recorded on their way to the relay; the captures of every data
        connection, and the login they belong to.
        """
        stack = await self.startStack(
            {EAVESDROPPED_SERVER: Factory.forProtocol(Echo)}, user=EAVESDROPPED_USER, sealed=sealed
        )
        interceptor, port = await self.intercept(stack)
        link, local = await self.clientThrough(
            stack, port, EAVESDROPPED_SERVER, user=EAVESDROPPED_USER, ready=2
        )
        for _ in range(2):
            collector = Collect(PLAINTEXT, halfClose=True)
            await self.connectLocal(local, collector)
            self.assertEqual(await collector.finished, PLAINTEXT)
        session = await link.loggedIn()
        return interceptor.captured, session

    def assertAnonymous(self, captured: list[Captured], session: LoginSession) -> None:
        """No user, server id, session or password in C{captured}; a new random ticket each."""
        rawSession = base64.urlsafe_b64decode(session.id + "=" * (-len(session.id) % 4))
        needles = [
            EAVESDROPPED_USER.encode(),
            EAVESDROPPED_SERVER.encode(),
            session.id.encode(),
            rawSession,
            PASSWORD.encode(),
        ]
        for capture in captured:
            for needle in needles:
                self.assertNotIn(needle, bytes(capture.up))
                self.assertNotIn(needle, bytes(capture.down))
        tickets = [c.ticket for c in captured]
        # Two ready, two used and replaced.
        self.assertGreaterEqual(len(tickets), 4)
        self.assertEqual(len(set(tickets)), len(tickets))

    @runAsync
    async def test_sealedShowsNothing(self) -> None:
        """
        Sealed, a data connection shows neither the user, the server id,
        the session nor the tunnel's bytes; its ticket is new each time.
        """
        captured, session = await self.eavesdrop(sealed=True)
        self.assertAnonymous(captured, session)
        piece = PLAINTEXT[:29]
        for capture in captured:
            self.assertNotIn(piece, bytes(capture.up))
            self.assertNotIn(piece, bytes(capture.down))

    @runAsync
    async def test_unsealedShowsTheBytes(self) -> None:
        """
        The control, and what an unsealed server means: its tunnels' bytes
        pass in the clear (both ways), though the user, the server id and
        the session still do not.
        """
        captured, session = await self.eavesdrop(sealed=False)
        self.assertAnonymous(captured, session)
        self.assertTrue(any(PLAINTEXT in bytes(c.up) for c in captured))
        self.assertTrue(any(PLAINTEXT in bytes(c.down) for c in captured))


class LogHygieneTests(SecurityTestCase):
    """Nothing secret is ever logged."""

    @runAsync
    async def test_noSecretsInLogs(self) -> None:
        """
        A full run (logins, a failed login, a wrong secret, tunnels, a
        refused and a used ticket) logs no password, per-server secret or
        ticket, in any encoding.
        """
        issued: list[bytes] = []
        issue = TicketBook.issue

        def recording(book: TicketBook, *args: str) -> bytes:
            ticket = issue(book, *args)
            issued.append(ticket)
            return ticket

        self.patch(TicketBook, "issue", recording)
        events = self.logEvents()
        stack = await self.startStack()
        bad = stack.link(stack.clientPort, "alice", "not the password")
        await self.assertFailure(
            Deferred.fromCoroutine(bad.login(await self.channel(bad), "client")), LoginFailed
        )
        wrong = TunnelFactory(stack.clientLink, "web", b"w" * 32)
        port = await listen(wrong)
        self.addCleanup(port.stopListening)
        unproven = Peer()
        await self.connectLocal(port, unproven)
        await pollUntil(lambda: unproven.reason is not None)
        collector = Collect(b"payload", halfClose=True)
        await stack.connect("web", collector)
        await collector.finished
        channel, _ = await self.loggedIn(stack.link(stack.clientPort, "alice"))
        [ticket] = (await channel.callRemote(Tickets, server="web", count=1))["tickets"]
        secret = stack.secrets["web"]
        await self.assertJoined(await self.useTicket(stack.clientPort, ticket, secret))
        used = await self.useTicket(stack.clientPort, ticket, secret)
        await self.assertRefused(used, TICKET_REFUSED)

        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("joined", text)
        self.assertIn("refused", text)
        self.assertGreater(len(issued), 3)
        hidden = [PASSWORD, "not the password"]
        for raw in [secret, b"w" * 32, *issued]:
            hidden += [
                raw.hex(),
                base64.b64encode(raw).decode(),
                base64.urlsafe_b64encode(raw).decode(),
                repr(raw),
            ]
        for form in hidden:
            self.assertNotIn(form, text)


def _users(directory: str) -> Users:
    return writeUsers(os.path.join(directory, "users"), {"alice": ANYTHING})


def _caAndCertificate(names: list[str]) -> tuple[bytes, bytes, bytes]:
    """A test CA (PEM) and a key and certificate it signed for C{names}."""
    now = datetime.datetime.now(datetime.timezone.utc)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relaynat test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(caName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(caKey, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    keyPem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), keyPem, cert.public_bytes(pem)
