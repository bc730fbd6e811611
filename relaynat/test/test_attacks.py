"""
Attacks on the real relay over loopback sockets, by people with no account
and by users with one: each is refused or bounded (with the figure that
shows it), and a legitimate skeleton and client keep working during it.

Attackers come from other loopback addresses (127.0.x.y, all local), so
that the relay tells them from the honest roles on 127.0.0.1 as it would
tell hosts apart.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from typing import Any, cast

import scramp.core
from scramp import ScramClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from relaynat.auth import ScramLogin, Users, pepperFromKey
from relaynat.caps import Limits
from relaynat.channel import Channel
from relaynat.identity import PinnedRelay, serverEndPoint
from relaynat.relay import RelayChannel
from relaynat.test.logs import logEvents
from relaynat.test.loopback import ANYTHING, PASSWORD, Stack
from relaynat.test.net import pollUntil, reactor, runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.test.test_metrics import scrape
from relaynat.users import Rights
from relaynat.wire import JOIN_REFUSED, Login, LoginFailed, Tickets

MB = 1024 * 1024

# The figures each attack leaves, in the test log ("figure: ..."): what the
# closing note of the work quotes.
_log = Logger()


def _serialize(box: dict[bytes, bytes]) -> bytes:
    return b"".join(
        len(k).to_bytes(2, "big") + k + len(v).to_bytes(2, "big") + v for k, v in box.items()
    )


PING = _serialize({b"_command": b"Ping", b"_ask": b"1"}) + b"\0\0"


def rss() -> int:
    """This process's resident memory, in bytes (the relay runs in it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def connectionsTo(port: int) -> int:
    """Established TCP connections whose far end is C{port} (the near ends' count)."""
    count = 0
    with open("/proc/self/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def portOf(port: IListeningPort) -> int:
    return cast(Any, port.getHost()).port


def fromSource(port: IListeningPort, source: str) -> TCP4ClientEndpoint:
    """An endpoint to C{port} whose connections come from loopback address C{source}."""
    return TCP4ClientEndpoint(reactor, "127.0.0.1", portOf(port), bindAddress=(source, 0))


class Held(Protocol):
    """A connection that writes C{data} (if any) and then holds on."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.received = b""
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        if self.data:
            self.transport.write(self.data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


@implementer(IHandshakeListener)
class Flood(Held):
    """
    Once TLS is up, writes C{chunk} again and again, as fast as the relay
    takes it (a producer, so nothing piles up here), up to C{limit} bytes.
    """

    def __init__(self, chunk: bytes, limit: int, prefix: bytes = b"") -> None:
        super().__init__()
        self.chunk, self.limit, self.prefix = chunk, limit, prefix
        self.sent = 0
        self.paused = False

    def handshakeCompleted(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.transport.write(self.prefix)  # type: ignore[union-attr]
        self.pump()

    def pump(self) -> None:
        while not self.paused and self.reason is None and self.sent < self.limit:
            self.transport.write(self.chunk)  # type: ignore[union-attr]
            self.sent += len(self.chunk)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        reactor.callLater(0, self.pump)

    def stopProducing(self) -> None:
        self.paused = True


class Deaf(Channel):
    """
    A control channel that, once told to, never reads again and writes
    C{chunk} while its TCP connection takes it: a peer that does not read
    the answers to what it sends.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writable = True
        self.sent = 0
        self.chunk = b""
        self.limit = 0

    def flood(self, chunk: bytes, limit: int) -> None:
        self.chunk, self.limit = chunk, limit
        self.transport.transport.pauseProducing()
        self.pump()

    def pump(self) -> None:
        while self.writable and self.connected and self.sent < self.limit:
            self.transport.write(self.chunk)
            self.sent += len(self.chunk)

    def pauseProducing(self) -> None:
        self.writable = False

    def resumeProducing(self) -> None:
        # Deaf: reading stays stopped; only writing goes on.
        self.writable = True
        reactor.callLater(0, self.pump)


class AttackTestCase(TestCase):
    timeout = 60
    stack: Stack

    async def startStack(self, limits: Limits | None = None, **kw: Any) -> Stack:
        stack = await Stack().start({"web": Factory.forProtocol(Echo)}, limits=limits, **kw)
        self.addCleanup(stack.stop)
        return stack

    def logEvents(self) -> list[dict[str, Any]]:
        return logEvents(self)

    def lines(self, events: list[dict[str, Any]], level: LogLevel = LogLevel.warn) -> list[str]:
        return [formatEvent(e) for e in events if e.get("log_level") == level]

    def assertNoErrorsLogged(self, events: list[dict[str, Any]]) -> None:
        bad = [formatEvent(e) for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical) or "log_failure" in e]
        self.assertEqual(bad, [])

    async def assertServes(self, stack: Stack, message: bytes = b"still served") -> None:
        """A tunnel through the honest client and skeleton carries bytes both ways."""
        collector = Collect(message, halfClose=True)
        await stack.connect("web", collector)
        self.assertEqual(await collector.finished, message)

    def hold(self, protocol: Any) -> Any:
        """C{protocol}, whose connection is aborted at the end of the test if still open."""

        def abort() -> None:
            transport = getattr(protocol, "transport", None)
            if transport is not None and not getattr(transport, "disconnected", True):
                transport.abortConnection()

        self.addCleanup(abort)
        return protocol

    async def plain(self, port: IListeningPort, source: str, protocol: Protocol) -> Any:
        """C{protocol} connected to C{port} from C{source}, without TLS."""
        return await connectProtocol(fromSource(port, source), self.hold(protocol))

    async def secure(self, port: IListeningPort, source: str, protocol: Protocol) -> Any:
        """C{protocol} connected over TLS to C{port} from C{source} (a channel: handshake done)."""
        endpoint = wrapClientTLS(PinnedRelay(self.identity), fromSource(port, source))
        await connectProtocol(endpoint, self.hold(protocol))
        if isinstance(protocol, Channel):
            await protocol.whenSecure()
        return protocol

    async def loggedIn(
        self, stack: Stack, user: str, source: str, channel: Channel | None = None
    ) -> Any:
        link = stack.link(stack.clientPort, user, PASSWORD, source=source)
        channel = await link.connect(channel if channel is not None else Channel())
        self.addCleanup(lambda: channel.transport.abortConnection() if channel.connected else None)
        await link.login(channel, "client")
        return channel

    def relayChannelOf(self, stack: Stack, user: str) -> RelayChannel:
        [channel] = [c for c in stack.relay.channels if c.login and c.login.user == user]
        return channel

    @property
    def identity(self) -> str:
        return self.stack.identity.fingerprint


class LoginAttackTests(AttackTestCase):
    @runAsync
    async def test_lockoutAttemptKeepsSkeletonOnline(self) -> None:
        """
        Someone sends wrong passwords for the skeleton's user until their
        address is refused; the skeleton, dropped and logging in again from
        its own address meanwhile, registers at once and serves.
        """
        self.stack = stack = await self.startStack()
        stack.relay.failedLoginDelay = 0.01
        for _ in range(stack.relay.limits.login_burst + 5):
            link = stack.link(stack.skeletonPort, "alice", "guess", source="127.0.1.2")
            channel = await link.connect(Channel())
            await self.assertFailure(
                Deferred.fromCoroutine(link.login(channel, "skeleton")), LoginFailed
            )
            channel.transport.abortConnection()
        self.assertGreater(stack.relay.throttle.refusedFor("127.0.1.2"), 0)
        [skeleton] = stack.relay.skeletons.values()
        skeleton.transport.abortConnection()
        await pollUntil(lambda: stack.relay.skeletons and skeleton not in stack.relay.skeletons.values())
        await pollUntil(lambda: stack.relay.registry.counts()["idle"] >= 1)
        await self.assertServes(stack)

    @runAsync
    async def test_manyNames(self) -> None:
        """
        First login steps for thousands of names from a few addresses cost
        the throttle one entry per address and one per network, not one per
        name; past its burst each address is refused without a new entry.
        """
        self.stack = stack = await self.startStack()
        sources = [f"127.0.4.{i}" for i in range(1, 5)]
        refused = 0
        for source in sources:
            channel = await self.secure(stack.clientPort, source, Channel())
            for _ in range(30):
                name = secrets.token_hex(8)
                message = f"p=tls-server-end-point,,n={name},r={secrets.token_hex(12)}"
                try:
                    await channel.callRemote(Login, role="client", message=message)
                except LoginFailed as e:
                    if "too many login attempts" in str(e):
                        refused += 1
                        continue
                    raise
                # One login at a time: a new connection for the next.
                channel.transport.abortConnection()
                channel = await self.secure(stack.clientPort, source, Channel())
            channel.transport.abortConnection()
        _log.info(
            "figure: 120 first steps with 120 names from 4 addresses: {entries} throttle"
            " entries, {refused} refused", entries=len(stack.relay.throttle), refused=refused,
        )
        # Four addresses, one /24 (127.0.4.0/24), and the honest roles' two.
        self.assertLessEqual(len(stack.relay.throttle), 4 + 1 + 2)
        self.assertEqual(refused, 4 * 30 - stack.relay.limits.login_prefix_burst)
        await self.assertServes(stack)

    @runAsync
    async def test_longName(self) -> None:
        """
        A 60,000-character user name is dropped with the box that carries
        it (over the 8 KiB a box may have before login); a 500-character
        one (in a message of normal size) is refused before SASLprep looks
        at it.  Both are logged, and
        logins and tunnels go on.
        """
        self.stack = stack = await self.startStack()
        events = self.logEvents()
        prepared: list[str] = []
        original = scramp.core.saslprep
        def counted(name: str) -> str:
            prepared.append(name)
            return cast(str, original(name))

        self.patch(scramp.core, "saslprep", counted)
        huge = await self.secure(stack.clientPort, "127.0.5.1", Channel())
        message = "p=tls-server-end-point,,n=" + "a" * 60_000 + ",r=abc"
        d = huge.callRemote(Login, role="client", message=message)
        await self.assertFailure(d, Exception)
        await pollUntil(lambda: not huge.connected)
        long = await self.secure(stack.clientPort, "127.0.5.2", Channel())
        message = "p=tls-server-end-point,,n=" + "a" * 500 + ",r=abc"
        started = time.process_time()
        error = await self.assertFailure(long.callRemote(Login, role="client", message=message), LoginFailed)
        _log.info(
            "figure: a 500-character name refused in {ms:.2f} ms of CPU (test and relay)",
            ms=(time.process_time() - started) * 1000,
        )
        self.assertEqual(str(error), "login failed: unknown user or wrong password")
        self.assertFalse([s for s in prepared if len(s) > 100])
        warned = self.lines(events)
        self.assertTrue(any("an AMP box of more than 8192 bytes" in line for line in warned), warned)
        self.assertIn("malformed login from 127.0.5.2: the user name is too long", warned)
        await self.assertServes(stack)
        self.assertNoErrorsLogged(events)

    @runAsync
    async def test_saltsOfUnknownUsers(self) -> None:
        """
        The first login step gives an unknown name a salt as long as a real
        one's, and the same salt each time, also from another relay process
        with the same key; another unknown name gets another salt.  The
        step alone is counted by the throttle.
        """
        self.stack = stack = await self.startStack()

        async def salt(name: str) -> bytes:
            channel = await self.secure(stack.clientPort, "127.0.6.1", Channel())
            cert = channel.transport.getPeerCertificate().to_cryptography()
            client = ScramClient(
                ["SCRAM-SHA-256-PLUS"], name, "x",
                channel_binding=("tls-server-end-point", serverEndPoint(cert)),
            )
            answer = await channel.callRemote(Login, role="client", message=client.get_client_first())
            channel.transport.abortConnection()
            fields = dict(f.split("=", 1) for f in answer["message"].split(","))
            self.assertEqual(fields["i"], "4096")
            return base64.b64decode(fields["s"])

        known, ghost, again, other = [await salt(n) for n in ("alice", "ghost", "ghost", "other")]
        self.assertEqual((len(known), len(ghost)), (32, 32))
        self.assertEqual(ghost, again)
        self.assertNotEqual(ghost, other)
        self.assertEqual(stack.relay.throttle.refusedFor("127.0.6.1"), 0)
        for _ in range(stack.relay.limits.login_burst - 4):
            await salt("ghost")
        self.assertGreater(stack.relay.throttle.refusedFor("127.0.6.1"), 0)
        restarted = pepperFromKey(stack.identity.options.privateKey)
        self.assertEqual(restarted, stack.relay.pepper)
        fresh = ScramLogin(Users(stack.users.path), stack.identity.channelBinding, restarted)
        self.assertEqual(fresh._verifier("ghost")[0], ghost)


class PreLoginBoundsTests(AttackTestCase):
    @runAsync
    async def test_endlessBox(self) -> None:
        """
        An AMP box that never ends, sent before login: the relay drops the
        connection within its first 8 KiB, and its memory does not grow with
        what is sent.  Logged in, the bound is 256 KiB.
        """
        self.stack = stack = await self.startStack()
        events = self.logEvents()
        before = rss()
        pair = _serialize({b"k" * 200: b"v" * 60_000})
        flood = Flood(pair, 200 * MB)
        await self.secure(stack.clientPort, "127.0.7.1", flood)
        await pollUntil(lambda: flood.reason is not None)
        grown = rss() - before
        _log.info(
            "figure: endless box before login: {sent} bytes written before the drop,"
            " RSS {grown:+.1f} MB", sent=flood.sent, grown=grown / MB,
        )
        self.assertLess(flood.sent, 16 * MB, f"the relay took {flood.sent} bytes")
        self.assertLess(grown, 20 * MB, f"RSS grew by {grown / MB:.1f} MB")

        deaf = await self.loggedIn(stack, "alice", "127.0.7.2", Deaf())
        deaf.flood(pair, 200 * MB)
        await pollUntil(lambda: not deaf.connected)
        self.assertLess(deaf.sent, 16 * MB)
        warned = self.lines(events)
        self.assertTrue(any("an AMP box of more than 8192 bytes" in line for line in warned))
        self.assertTrue(any(f"an AMP box of more than {256 * 1024} bytes" in line for line in warned))
        await self.assertServes(stack)
        self.assertNoErrorsLogged(events)

    @runAsync
    async def test_unreadAnswers(self) -> None:
        """
        A logged-in peer pipelines pings and never reads the answers: the
        relay stops reading it once its answers fill the connection, and
        what it holds for that peer stays under a megabyte, however much the
        peer tries to send; everyone else is served meanwhile.
        """
        self.stack = stack = await self.startStack()
        deaf = await self.loggedIn(stack, "alice", "127.0.8.1", Deaf())
        [relayed] = [
            c for c in stack.relay.channels
            if c.login and c.source() == "127.0.8.1"
        ]
        deaf.flood(PING * 2000, 500 * MB)
        last = [-1]

        def stalled() -> bool:
            # The peer paused and making no progress, the relay not reading it.
            stuck = not deaf.writable and deaf.sent == last[0] and relayed.paused
            last[0] = deaf.sent
            return stuck

        await pollUntil(stalled, timeout=30, step=0.25)
        tcp = relayed.transport.transport
        held = len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
        _log.info(
            "figure: unread answers: the peer got {sent} bytes of pings in before it"
            " stalled; the relay holds {held} bytes of answers for it",
            sent=deaf.sent, held=held,
        )
        self.assertLess(held, MB, f"the relay holds {held} bytes of answers")
        self.assertLess(deaf.sent, 500 * MB)
        await self.assertServes(stack)


class ConnectionCapTests(AttackTestCase):
    @runAsync
    async def test_idleAndHalfOpenPastTheCaps(self) -> None:
        """
        Idle TCP connections, half TLS hellos and TLS handshakes that never
        log in, far past the caps: the relay keeps at most its cap of them
        (per source and in all), the honest skeleton and client keep
        working, and every one is gone after its deadline, the relay's
        descriptors back where they were.
        """
        limits = Limits(
            first_bytes_timeout=2.0, handshake_timeout=2.0, login_timeout=3.0,
            max_unauthenticated=60, max_unauthenticated_per_source=20,
        )
        self.stack = stack = await self.startStack(limits)
        events = self.logEvents()
        baseline = descriptors()
        attackers: list[Held] = []
        for source, port, data in [
            ("127.0.9.1", stack.clientPort, b""),
            ("127.0.9.2", stack.skeletonPort, b""),
            ("127.0.9.3", stack.clientPort, b"\x16\x03\x01\x02\x00\x01"),
            ("127.0.9.4", stack.skeletonPort, b"\x16\x03\x01"),
        ]:
            for _ in range(40):
                attackers.append(await self.plain(port, source, Held(data)))
        for source in ("127.0.9.5", "127.0.9.6"):
            for _ in range(30):
                held = Held()
                await self.secure(stack.clientPort, source, held)
                attackers.append(held)
        await pollUntil(lambda: sum(a.reason is None for a in attackers) <= 60)
        lobby = stack.relay.lobby
        _log.info(
            "figure: {made} unauthenticated connections made, {open} left open,"
            " lobby {size}, evicted {evicted}, descriptors {fds} (baseline {baseline})",
            made=len(attackers), open=sum(a.reason is None for a in attackers),
            size=len(lobby), evicted=lobby.evicted, fds=descriptors(), baseline=baseline,
        )
        self.assertLessEqual(len(lobby), 60)
        for i in range(1, 7):
            self.assertLessEqual(lobby.fromSource(f"127.0.9.{i}"), 20)
        self.assertGreater(lobby.evicted["source"] + lobby.evicted["total"], 0)
        # The honest roles during the attack: a tunnel (a refill of the
        # pool comes in among the attackers), and a new login.
        await self.assertServes(stack)
        await self.loggedIn(stack, "alice", "127.0.0.1")
        await pollUntil(lambda: all(a.reason is not None for a in attackers), timeout=15)
        await pollUntil(lambda: len(lobby) == 0 and descriptors() <= baseline + 2, timeout=15)
        warned = self.lines(events)
        self.assertTrue(any("did not log in in time" in line for line in warned), warned[-5:])
        self.assertTrue(any("left out of the log" in line for line in warned) or len(warned) < 100)
        await self.assertServes(stack)
        self.assertNoErrorsLogged(events)


class UserCapTests(AttackTestCase):
    @runAsync
    async def test_setAsideJoinsPastTheCap(self) -> None:
        """
        A user with the right to join but without the server's secret holds
        data connections that are joined and then say nothing: past the
        user's cap they are refused (with the limit's code), the skeleton's
        connections stay bounded, and the honest client is served.
        """
        limits = Limits(max_tunnels_per_user=5, max_pending_per_user=3, max_pending_per_session=3)
        users = {"alice": ANYTHING, "mallory": Rights(join=None)}
        self.stack = stack = await self.startStack(limits, users=users)
        skeletonSide = portOf(stack.skeletonPort)
        before = connectionsTo(skeletonSide)
        channel = await self.loggedIn(stack, "mallory", "127.0.10.1")
        tickets = (await channel.callRemote(Tickets, server="web", count=16))["tickets"]
        held = []
        for ticket in tickets:
            held.append(await self.plain(stack.clientPort, "127.0.10.1", Held(ticket)))
        await pollUntil(lambda: sum(h.reason is not None for h in held) >= 11)
        refused = [h for h in held if h.reason is not None]
        self.assertEqual({h.received for h in refused}, {JOIN_REFUSED + b"\x06"})
        self.assertLessEqual(stack.relay.usage.tunnels["mallory"], 5)
        samples = scrape(stack)
        self.assertEqual(
            samples[("relaynat_join_refusals_total", (("reason", "LimitReached"),))], len(refused)
        )
        hit = samples[("relaynat_limits_hit_total", (("limit", "max_tunnels_per_user"),))]
        hit += samples.get(("relaynat_limits_hit_total", (("limit", "max_pending"),)), 0)
        self.assertEqual(hit, len(refused))
        await self.assertServes(stack)
        grown = connectionsTo(skeletonSide) - before
        _log.info(
            "figure: set-aside joins: {made} held, {refused} refused, {tunnels} tunnels"
            " of mallory, skeleton connections +{grown}",
            made=len(held), refused=len(refused), tunnels=stack.relay.usage.tunnels["mallory"],
            grown=grown,
        )
        self.assertLessEqual(grown, 5 + 2, f"the skeleton holds {grown} more connections")

