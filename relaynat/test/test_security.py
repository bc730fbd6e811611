"""
The security properties, on real TLS over loopback: login without the
password on the wire, throttling, replay, pinning, host name checks,
sessions, rights, per-server secrets, and logs free of secrets.
"""

from __future__ import annotations

import base64
import datetime
import os
from typing import cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scramp import ScramClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from relaynat.auth import Throttle, Users
from relaynat.client import listServers, openTunnel
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
from relaynat.link import Credentials, LoginSession, RelayLink, RelayUnreachable, hostnameVerifier
from relaynat.relay import Relay
from relaynat.skeleton import FrontedServer, Skeleton, SkeletonControl
from relaynat.splice import OneProtocolFactory, splicePair
from relaynat.test.loopback import ANYTHING, PASSWORD, Stack, relayIdentity, writeUsers
from relaynat.test.net import endpointOf, listen, openConnections, pollUntil, reactor, runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.users import Rights
from relaynat.wire import (
    BadRequest,
    Channel,
    Hello,
    Login,
    LoginFailed,
    LoginFinish,
    PermissionDenied,
    Prepare,
    SecretMismatch,
    SessionRefused,
    Tunnel,
    UnknownServer,
)


class CountingEcho(Factory):
    """An echo server that counts the connections made to it."""

    protocol = Echo

    def __init__(self) -> None:
        self.count = 0

    def buildProtocol(self, addr: object) -> Echo:
        self.count += 1
        return Echo()


class SecurityTestCase(TestCase):
    async def startStack(self, targets: dict | None = None, **kw: object) -> Stack:  # type: ignore[type-arg]
        stack = await Stack().start(
            targets if targets is not None else {"web": Factory.forProtocol(Echo)}, **kw  # type: ignore[arg-type]
        )
        self.addCleanup(stack.stop)
        return stack

    async def channel(self, link: RelayLink) -> Channel:
        channel = await link.connect(Channel())
        self.addCleanup(channel.transport.loseConnection)
        return channel


class LoginTests(SecurityTestCase):
    """Login by SCRAM-SHA-256-PLUS and its throttle."""

    @runAsync
    async def test_sameErrorForUnknownUserAndWrongPassword(self) -> None:
        """
        A wrong password and an unknown user get the very same error, and
        both are logged with user and source.
        """
        stack = await self.startStack()
        events: list[dict] = []  # type: ignore[type-arg]
        globalLogPublisher.addObserver(cast(ILogObserver, events.append))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, events.append))
        messages = []
        for user, password in (("alice", "wrong"), ("mallory", PASSWORD)):
            link = stack.link(stack.clientPort, user, password)
            channel = await self.channel(link)
            error = await self.assertFailure(
                Deferred.fromCoroutine(link.login(channel)), LoginFailed
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
    async def test_throttleLocksAfterFailures(self) -> None:
        """
        Repeated failures are answered after growing delays, then the user
        is locked: even the right password is refused until the lock ends.
        """
        stack = await self.startStack()
        stack.relay.throttle = Throttle(reactor, baseDelay=0.01, maxDelay=0.05, lockAfter=3, lockFor=60)
        for _ in range(3):
            link = stack.link(stack.clientPort, "alice", "wrong")
            channel = await self.channel(link)
            await self.assertFailure(Deferred.fromCoroutine(link.login(channel)), LoginFailed)
        link = stack.link(stack.clientPort, "alice", PASSWORD)
        channel = await self.channel(link)
        error = await self.assertFailure(Deferred.fromCoroutine(link.login(channel)), LoginFailed)
        self.assertIn("too many failed logins", str(error))
        self.assertGreater(stack.relay.throttle.lockedFor(["user:alice"]), 0)

    def test_throttleDelaysGrow(self) -> None:
        """Each failure doubles the delay, up to the cap; success forgets the user."""
        clock = Clock()
        throttle = Throttle(clock, baseDelay=0.25, maxDelay=2.0, lockAfter=10)
        delays = [throttle.failed(["user:a"]) for _ in range(6)]
        self.assertEqual(delays, [0.25, 0.5, 1.0, 2.0, 2.0, 2.0])
        throttle.succeeded("user:a")
        self.assertEqual(throttle.failed(["user:a"]), 0.25)

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
        answer = await first.callRemote(Login, message=clientFirst)
        scram.set_server_first(answer["message"])
        clientFinal = scram.get_client_final()
        done = await first.callRemote(LoginFinish, message=clientFinal)
        scram.set_server_final(done["message"])

        replay = await self.channel(link)
        await replay.callRemote(Login, message=clientFirst)
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
        error = await self.assertFailure(Deferred.fromCoroutine(link.login(channel)), LoginFailed)
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
        stack = Stack()
        users = _users(stack.directory)
        relay = Relay(reactor, identity, users)
        port = await listen(relay.clientFactory())
        self.addCleanup(port.stopListening)

        good = RelayLink(
            endpointOf(port), hostnameVerifier("localhost", caPem), Credentials("alice", PASSWORD), reactor
        )
        channel = await good.connect(Channel())
        session = await good.login(channel)
        self.assertIsInstance(session, LoginSession)
        channel.transport.loseConnection()

        wrong = RelayLink(
            endpointOf(port), hostnameVerifier("relay.example", caPem), Credentials("alice", PASSWORD), reactor
        )
        await self.assertFailure(Deferred.fromCoroutine(wrong.connect(Channel())), RelayUnreachable)
        await pollUntil(lambda: not openConnections())
        self.flushLoggedErrors()


class SessionTests(SecurityTestCase):
    """Session keys: proven per connection, expiring, not transferable."""

    async def assertSessionRefused(self, link: RelayLink, session: LoginSession) -> None:
        """A new connection proving C{session} is refused at L{Prepare}."""
        channel = await self.channel(link)
        proof = await link.prove(channel, session)
        await self.assertFailure(
            channel.callRemote(Prepare, session=session.id, proof=proof, server="web", nonce=b"n" * 16),
            SessionRefused,
        )

    @runAsync
    async def test_foreignSessionRefused(self) -> None:
        """A session id and key the relay never issued are refused."""
        stack = await self.startStack()
        link = stack.link(stack.clientPort, "alice")
        forged = LoginSession("made-up", b"k" * 32, reactor.seconds() + 100)
        await self.assertSessionRefused(link, forged)

    @runAsync
    async def test_expiredSessionRefused(self) -> None:
        """A session past its lifetime is refused, though its key is right."""
        stack = await self.startStack()
        stack.relay.sessions.lifetime = 0.05
        link = stack.link(stack.clientPort, "alice")
        control = await self.channel(link)
        session = await link.login(control)
        await pollUntil(lambda: reactor.seconds() > session.expires)
        await self.assertSessionRefused(link, session)

    @runAsync
    async def test_sessionEndsWithItsLogin(self) -> None:
        """When the login's connection closes, its session is refused."""
        stack = await self.startStack()
        link = stack.link(stack.clientPort, "alice")
        control = await link.connect(Channel())
        session = await link.login(control)
        control.transport.loseConnection()
        await pollUntil(lambda: stack.relay.sessions.check(session.id, b"x", session.proof(b"x")) is None)

    @runAsync
    async def test_otherUsersJoinIdRefused(self) -> None:
        """
        A join id set aside for alice's connection cannot be used by bob's
        connection, even after bob prepared a join of his own.
        """
        users = {"alice": ANYTHING, "bob": ANYTHING}
        stack = await self.startStack(users=users, pool=2)
        alice = stack.clientLink
        aliceSession = await alice.loggedIn()
        aliceChannel = await self.channel(alice)
        prepared = await aliceChannel.callRemote(
            Prepare,
            session=aliceSession.id,
            proof=await alice.prove(aliceChannel, aliceSession),
            server="web",
            nonce=b"a" * 16,
        )
        bob = stack.link(stack.clientPort, "bob")
        bobControl = await self.channel(bob)
        bobSession = await bob.login(bobControl)
        bobChannel = await self.channel(bob)
        await bobChannel.callRemote(
            Prepare,
            session=bobSession.id,
            proof=await bob.prove(bobChannel, bobSession),
            server="web",
            nonce=b"b" * 16,
        )
        half, _ = splicePair()
        error = await self.assertFailure(
            bobChannel.callRemote(
                Tunnel, join=prepared["join"], proof=b"p" * 32,
                _protoToSwitchToFactory=OneProtocolFactory(half),
            ),
            BadRequest,
        )
        self.assertIn("unknown join id", str(error))

    @runAsync
    async def test_helloNeededBeforeProof(self) -> None:
        """A proof without a fresh challenge on this connection is refused."""
        stack = await self.startStack()
        link = stack.clientLink
        session = await link.loggedIn()
        channel = await self.channel(link)
        old = await channel.callRemote(Hello)
        proof = session.proof(old["challenge"])
        await channel.callRemote(Prepare, session=session.id, proof=proof, server="web", nonce=b"n" * 16)
        second = await self.channel(link)
        await second.callRemote(Hello)
        # The first connection's challenge, replayed on the second.
        await self.assertFailure(
            second.callRemote(Prepare, session=session.id, proof=proof, server="web", nonce=b"n" * 16),
            SessionRefused,
        )


class RightsTests(SecurityTestCase):
    """Rights are checked on every request."""

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
        A user sees only the servers it may join in the list, and joining
        another is refused as if it did not exist.
        """
        users = {"alice": ANYTHING, "carol": Rights(join=frozenset({"web"}))}
        stack = await self.startStack(
            {"web": Factory.forProtocol(Echo), "db": Factory.forProtocol(Echo)}, users=users
        )
        carol = stack.link(stack.clientPort, "carol")
        self.assertEqual([s["id"] for s in await listServers(carol)], ["web"])
        carol.adopt(await carol.login(await self.channel(carol)))
        error = cast(
            UnknownServer,
            await self.assertFailure(
                Deferred.fromCoroutine(
                    openTunnel(carol, "db", stack.secrets["db"], splicePair()[0])
                ),
                UnknownServer,
            ),
        )
        self.assertIn("no server db", str(error))

    @runAsync
    async def test_rightsReloaded(self) -> None:
        """Rights taken away in the users file apply to the next request."""
        users = {"alice": ANYTHING, "carol": Rights(join=None)}
        stack = await self.startStack(users=users)
        carol = stack.link(stack.clientPort, "carol")
        self.assertEqual(len(await listServers(carol)), 1)
        writeUsers(stack.users.path, {"alice": ANYTHING, "carol": Rights(join=frozenset())})
        self.assertTrue(stack.users.reload())
        self.assertEqual(await listServers(carol), [])


class ServerSecretTests(SecurityTestCase):
    """The per-server secret, checked by the skeleton."""

    @runAsync
    async def test_wrongSecretNeverReachesTarget(self) -> None:
        """
        A client with the wrong secret is refused with a clear error and
        the skeleton never opens a connection to the target.
        """
        target = CountingEcho()
        stack = await self.startStack({"web": target})
        error = cast(
            SecretMismatch,
            await self.assertFailure(
                Deferred.fromCoroutine(
                    openTunnel(stack.clientLink, "web", b"w" * 32, splicePair()[0])
                ),
                SecretMismatch,
            ),
        )
        self.assertIn("wrong secret for server web", str(error))
        self.assertEqual(target.count, 0)
        collector = Collect(b"right secret", halfClose=True)
        await stack.connect("web", collector)
        self.assertEqual(await collector.finished, b"right secret")
        self.assertEqual(target.count, 1)


class LogHygieneTests(SecurityTestCase):
    """Nothing secret is ever logged."""

    @runAsync
    async def test_noSecretsInLogs(self) -> None:
        """
        A full run (logins, a failed login, a wrong secret, a tunnel) logs
        no password, session key or per-server secret, in any encoding.
        """
        events: list[dict] = []  # type: ignore[type-arg]
        globalLogPublisher.addObserver(cast(ILogObserver, events.append))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, events.append))
        stack = await self.startStack()
        bad = stack.link(stack.clientPort, "alice", "not the password")
        await self.assertFailure(
            Deferred.fromCoroutine(bad.login(await self.channel(bad))), LoginFailed
        )
        await self.assertFailure(
            Deferred.fromCoroutine(openTunnel(stack.clientLink, "web", b"w" * 32, splicePair()[0])),
            SecretMismatch,
        )
        collector = Collect(b"payload", halfClose=True)
        await stack.connect("web", collector)
        await collector.finished
        session = await stack.clientLink.loggedIn()
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        secrets = [PASSWORD, "not the password"]
        for raw in (session.key, stack.secrets["web"], b"w" * 32):
            secrets += [raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(), repr(raw)]
        for secret in secrets:
            self.assertNotIn(secret, text)
        self.assertIn("joined", text)


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


class ResumptionTests(SecurityTestCase):
    """TLS session tickets: resumed only with the relay that issued them."""

    @runAsync
    async def test_laterConnectionsResume(self) -> None:
        """
        Once a connection has carried an answer, the next one resumes its
        TLS session: the relay does not show its certificate again, so the
        pin's check is not even asked.
        """
        stack = await self.startStack()
        link = stack.clientLink
        verifier = link._verifier  # noqa: SLF001 - the test's own link
        session = await link.loggedIn()
        first = await self.channel(link)
        await link.prove(first, session)
        verifier.seen = None
        second = await self.channel(link)
        await link.prove(second, session)
        self.assertIsNone(verifier.seen)

    @runAsync
    async def test_ticketUselessAtAnotherRelay(self) -> None:
        """
        A ticket from one relay does not let a relay with another key skip
        the pin: the handshake is a full one, and the pin refuses it.
        """
        stack = await self.startStack()
        link = stack.clientLink
        session = await link.loggedIn()
        await link.prove(await self.channel(link), session)
        directory = self.mktemp()
        os.makedirs(directory)
        other = Relay(reactor, relayIdentity(directory, ("localhost",)), _users(directory))
        port = await listen(other.clientFactory())
        self.addCleanup(port.stopListening)
        elsewhere = RelayLink(
            endpointOf(port), link._verifier, Credentials("alice", PASSWORD), reactor  # noqa: SLF001
        )
        await self.assertFailure(
            Deferred.fromCoroutine(elsewhere.connect(Channel())), RelayKeyMismatch
        )
        self.flushLoggedErrors()
