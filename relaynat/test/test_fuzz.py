"""
Fuzzing the relay: random bytes and random AMP boxes fed to the relay's
skeleton and client channels, random first bytes to its ports (which read
them as a TLS handshake or as a data connection's ticket), in memory and
over real sockets (outside TLS, where the handshake or the ticket check
meets them, and inside it, where AMP does).  Whatever arrives, the relay's
books must not change, nobody is logged in or given a ticket by it, and the
next honest skeleton or client must be served.
"""

from __future__ import annotations

import base64
from functools import partial
import os
import random
import string
from typing import cast, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from relaynat.auth import Users
from relaynat.channel import Channel
from relaynat.client import listServers
from relaynat.identity import PinnedRelay, RelayIdentity
from relaynat.channel import CLOSE_GRACE
from relaynat.caps import Limits
from relaynat.relay import FAILED_LOGIN_DELAY, ClientChannel, Relay, SkeletonChannel
from relaynat.seal import ClientHandshake
from relaynat.test.logs import logEvents
from relaynat.test.loopback import ANYTHING, Stack, relayIdentity, writeUsers
from relaynat.test.net import endpointOf, pollUntil, runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.wire import JOIN_REFUSED, TICKET_BYTES, TLS_HANDSHAKE

#: What stock AMP lets escape from dataReceived on malformed input: an empty
#: box, an answer or error for a question never asked, a command name that is
#: not UTF-8.  The reactor logs these and drops the connection.
ESCAPING = (amp.NoEmptyBoxes, KeyError, UnicodeDecodeError)

#: What AMP logs (and answers with a generic error, dropping the connection)
#: when a command's arguments do not parse, or a command nobody handles
#: arrives without asking for an answer.
LOGGED = (amp.RemoteAmpError, KeyError, UnicodeDecodeError, ValueError)

#: The id of a server registered before the fuzzing: long enough that no
#: random bytes will name it.
TARGET = "fuzz-target-0123456789abcdef"

_keys = st.one_of(
    st.sampled_from(
        [
            b"_command", b"_ask", b"_answer", b"_error", b"_error_code",
            b"_error_description", b"name", b"servers", b"pool", b"session",
            b"server", b"ticket", b"tickets", b"count", b"id", b"description",
            b"message", b"expires", b"since", b"idle",
        ]
    ),
    st.binary(min_size=1, max_size=12),
)
_values = st.one_of(
    st.sampled_from(
        [
            b"Login", b"LoginFinish", b"Register", b"OpenConnection",
            b"Tickets", b"ListServers", b"Ping", b"StartTLS", b"1", b"0",
            b"-1", b"16", b"17", b"99999999999999999999", b"", b"\xff",
            b"n,,n=alice,r=abc", b"p=tls-server-end-point,,n=alice,r=abc",
            TARGET.encode(), b"n" * 16,
        ]
    ),
    st.binary(max_size=24),
)


def _serialize(box: dict[bytes, bytes]) -> bytes:
    # Written out by hand: AmpBox.serialize refuses some of what a hostile
    # peer may send (keys that are too long, for one).
    out = b""
    for key, value in box.items():
        out += len(key).to_bytes(2, "big") + key + len(value).to_bytes(2, "big") + value
    return out + b"\x00\x00"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_gs2 = st.sampled_from(
    [
        "p=tls-server-end-point,,", "n,,", "y,,", "p=tls-unique,,",
        "p=tls-server-end-point,a=alice,", "",
    ]
)

_scramNonce = st.text(string.ascii_letters + string.digits + "+/", min_size=1, max_size=30)

#: SCRAM client-first messages: right ones (so that the final message is
#: checked in earnest), nearly-right ones, and random text.
_clientFirst = st.one_of(
    _scramNonce.map(lambda nonce: f"p=tls-server-end-point,,n=alice,r={nonce}"),
    st.builds(
        lambda gs2, user, nonce: f"{gs2}n={user},r={nonce}",
        _gs2,
        st.one_of(st.sampled_from(["alice", "mallory", "", "a=b", "=2C"]), st.text(max_size=10)),
        st.one_of(_scramNonce, st.text(max_size=30)),
    ),
    st.text(max_size=80),
)

#: Random bytes, and runs of well-framed boxes with random keys and values.
garbage = st.one_of(
    st.binary(max_size=400),
    st.lists(st.dictionaries(_keys, _values, max_size=6).map(_serialize), max_size=5).map(
        b"".join
    ),
)



def _registerBox() -> bytes:
    """A well-formed L{Register} box for a server "evil"."""
    return amp.AmpBox(
        _command=b"Register",
        _ask=b"1",
        name=b"evil",
        servers=amp.AmpList([(b"id", amp.Unicode()), (b"description", amp.Unicode())])
        .toStringProto([{"id": "evil", "description": ""}], None),
        pool=b"1",
    ).serialize()

class FakeSkeleton:
    """A registry's skeleton whose connection requests are never answered."""

    name = "fake"

    def requestConnection(self, serverId: str) -> Deferred[None]:
        return Deferred()

    def describe(self) -> str:
        return "'fake'"


class FreshRelayTestCase(SynchronousTestCase):
    """A relay in memory, on a fake clock, made anew for each example."""

    def setUp(self) -> None:
        # Made once per test method, not per example: only the relay is new
        # for each example.
        directory = self.mktemp()
        os.makedirs(directory)
        self.identity: RelayIdentity = relayIdentity(directory)
        self.users: Users = writeUsers(os.path.join(directory, "users"), {"alice": ANYTHING})

    def newRelay(self) -> Relay:
        """A fresh relay with one server registered, whose pool is never filled."""
        relay = Relay(MemoryReactorClock(), self.identity, self.users, joinTimeout=5)
        relay.registry.register(FakeSkeleton(), [(TARGET, "")], pool=1)  # type: ignore[arg-type]
        return relay

    def assertUntouched(self, relay: Relay) -> None:
        """The relay's books are as they were before the garbage."""
        self.assertEqual(
            relay.registry.counts(),
            {"servers": 1, "idle": 0, "waiting": 0, "requested": 1},
        )
        self.assertEqual(len(relay.sessions), 0)
        self.assertEqual(len(relay.tickets), 0)
        self.assertEqual(relay.skeletons, {})
        self.assertEqual(relay.tunnels, set())


class ChannelFuzzTests(FreshRelayTestCase):
    """
    Random input to one relay channel on a L{StringTransport}: the bytes a
    peer sends inside TLS, fed to the channel TLS would hand them to.
    """

    def start(self, channelClass: type) -> tuple[Relay, Any, StringTransport]:
        """A fresh relay with one server registered, and a channel of C{channelClass}."""
        relay = self.newRelay()
        channel = channelClass(relay)
        transport = StringTransport()
        channel.makeConnection(transport)
        return relay, channel, transport

    def send(self, relay: Relay, channel: Any, data: bytes) -> object:
        """
        Feed C{data} to C{channel}; returns what escaped dataReceived.
        Delayed answers (a failed login's) are given their time.
        """
        escaped: object = None
        try:
            channel.dataReceived(data)
        except Exception as e:
            escaped = e
        relay.reactor.advance(0)  # type: ignore[attr-defined]
        relay.reactor.advance(FAILED_LOGIN_DELAY)  # type: ignore[attr-defined]
        relay.reactor.advance(CLOSE_GRACE)  # type: ignore[attr-defined]
        return escaped

    def feed(self, channelClass: type, data: bytes) -> tuple[Relay, StringTransport, object]:
        """
        A fresh relay with one server registered, and a channel of
        C{channelClass} fed C{data}; returns what escaped dataReceived.
        """
        relay, channel, transport = self.start(channelClass)
        return relay, transport, self.send(relay, channel, data)

    def assertAmpOnly(self, transport: StringTransport) -> None:
        """Whatever the relay wrote back is well-formed AMP boxes."""
        for box in amp.parseString(transport.value()):
            self.assertTrue(
                {b"_answer", b"_error"} & set(box), f"not an answer or error: {box!r}"
            )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=garbage, skeletonSide=st.booleans())
    def test_garbageLeavesRelayIntact(self, data: bytes, skeletonSide: bool) -> None:
        """
        Random bytes or random boxes on the skeleton or client port change
        none of the relay's books, get only AMP answers and errors back,
        and raise nothing but stock AMP's own parse errors.
        """
        channelClass = SkeletonChannel if skeletonSide else ClientChannel
        relay, transport, escaped = self.feed(channelClass, data)
        if escaped is not None:
            self.assertIsInstance(escaped, ESCAPING)
        self.assertUntouched(relay)
        self.assertAmpOnly(transport)
        self.flushLoggedErrors(*LOGGED)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=garbage, skeletonSide=st.booleans())
    def test_garbageNeverEscapes(self, data: bytes, skeletonSide: bool) -> None:
        """
        Nothing raises out of a channel's dataReceived: garbage closes the
        connection instead of reaching the reactor, which would log a
        traceback for every bad peer.
        """
        channelClass = SkeletonChannel if skeletonSide else ClientChannel
        _, transport, escaped = self.feed(channelClass, data)
        self.flushLoggedErrors(*LOGGED)
        if escaped is not None:
            raise AssertionError(f"{escaped!r} escaped dataReceived for {data!r}")


    def test_emptyBoxDropsConnection(self) -> None:
        """
        The smallest garbage, an empty box, which stock AMP lets escape as
        NoEmptyBoxes, drops the connection; the relay's books are untouched.
        """
        relay, transport, escaped = self.feed(ClientChannel, b"\x00\x00")
        self.assertIsNone(escaped)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertUntouched(relay)

    def test_oversizedKeyDropsConnection(self) -> None:
        """A key longer than AMP allows drops the connection at once."""
        relay, transport, escaped = self.feed(SkeletonChannel, b"\x01\x00" + b"k" * 300)
        self.assertIsNone(escaped)
        self.assertTrue(transport.disconnecting)
        self.assertUntouched(relay)

    def test_unknownCommandAnswered(self) -> None:
        """
        An unknown command that asks for an answer gets an AMP error and
        the connection stays up.
        """
        box = _serialize({b"_command": b"Shutdown", b"_ask": b"7"})
        relay, transport, escaped = self.feed(ClientChannel, box)
        self.assertIsNone(escaped)
        [answer] = amp.parseString(transport.value())
        self.assertEqual(answer[b"_error"], b"7")
        self.assertEqual(answer[b"_error_code"], b"UNHANDLED")
        self.assertFalse(transport.disconnecting)

    def test_skeletonRefusedOnClientPort(self) -> None:
        """
        A skeleton's login at the clients' port is answered with where a
        skeleton should connect, before any SCRAM.
        """
        login = _command("Login", role=b"skeleton", message=b"n,,n=alice,r=x")
        relay, transport, escaped = self.feed(ClientChannel, login)
        self.assertIsNone(escaped)
        [answer] = amp.parseString(transport.value())
        self.assertEqual(answer[b"_error_code"], b"BAD_REQUEST")
        self.assertIn(b"port for clients (port X)", answer[b"_error_description"])
        self.assertUntouched(relay)

    def test_brokenArguments(self) -> None:
        """
        A known command with an argument that does not parse is answered
        BAD_REQUEST, with one warning line and no traceback; the connection
        stays, and the relay is untouched.
        """
        events: list[dict[str, object]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        box = _serialize({b"_command": b"Tickets", b"_ask": b"1", b"server": b"\xff"})
        relay, transport, escaped = self.feed(ClientChannel, box)
        self.assertIsNone(escaped)
        [answer] = amp.parseString(transport.value())
        self.assertEqual(answer[b"_error_code"], b"BAD_REQUEST")
        self.assertIn(b"malformed arguments to Tickets", answer[b"_error_description"])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
        lines = [formatEvent(e) for e in events if "malformed command" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertUntouched(relay)

    def test_commandsNeedLogin(self) -> None:
        """
        Well-formed L{Register}, L{ListServers} and L{Tickets} without a
        login get C{LOGIN_REQUIRED}; the connection stays up, and nothing
        changes: no ticket is issued.
        """
        register = _registerBox()
        listing = _serialize({b"_command": b"ListServers", b"_ask": b"1"})
        tickets = _serialize(
            {b"_command": b"Tickets", b"_ask": b"1", b"server": TARGET.encode(), b"count": b"1"}
        )
        for channelClass, box in (
            (SkeletonChannel, register),
            (ClientChannel, listing),
            (ClientChannel, tickets),
        ):
            relay, transport, escaped = self.feed(channelClass, box)
            self.assertIsNone(escaped)
            [answer] = amp.parseString(transport.value())
            self.assertEqual(answer[b"_error_code"], b"LOGIN_REQUIRED")
            self.assertFalse(transport.disconnecting)
            self.assertUntouched(relay)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        first=_clientFirst,
        binding=st.one_of(st.just(None), st.text(max_size=40)),
        serverNonce=st.booleans(),
        nonce=st.text(max_size=40),
        proof=st.one_of(st.binary(max_size=40).map(_b64), st.text(max_size=60)),
        skeletonSide=st.booleans(),
    )
    def test_loginMessagesFuzzed(
        self,
        first: str,
        binding: str | None,
        serverNonce: bool,
        nonce: str,
        proof: str,
        skeletonSide: bool,
    ) -> None:
        """
        Random and nearly-right SCRAM messages in L{Login} and then
        L{LoginFinish} (with the right channel binding and the relay's own
        nonce, or not) are answered (a server-first message at most) or
        refused with C{LOGIN_FAILED} or C{BAD_REQUEST}; none logs in, none
        escapes or is logged as an unhandled error.
        """
        relay, channel, transport = self.start(SkeletonChannel if skeletonSide else ClientChannel)
        role = b"skeleton" if skeletonSide else b"client"
        login = amp.AmpBox(_command=b"Login", _ask=b"1", role=role, message=first.encode())
        self.assertIsNone(self.send(relay, channel, login.serialize()))
        [answer] = amp.parseString(transport.value())
        transport.clear()
        if b"_error" in answer:
            self.assertEqual(answer[b"_error_code"], b"LOGIN_FAILED", answer)
        else:
            self.assertEqual(answer[b"_answer"], b"1", answer)
            if serverNonce:
                fields = dict(f.split("=", 1) for f in answer[b"message"].decode().split(","))
                nonce = fields["r"]
        if binding is None:
            # What a real client of this relay sends: the GS2 header and the
            # tls-server-end-point binding of the relay's certificate.
            binding = _b64(first.split("n=", 1)[0].encode() + self.identity.channelBinding)
        final = f"c={binding},r={nonce},p={proof}"
        finish = amp.AmpBox(_command=b"LoginFinish", _ask=b"2", message=final.encode())
        self.assertIsNone(self.send(relay, channel, finish.serialize()))
        [answer] = amp.parseString(transport.value())
        self.assertIn(answer[b"_error_code"], (b"LOGIN_FAILED", b"BAD_REQUEST"), answer)
        self.assertUntouched(relay)


class TCPStringTransport(StringTransport):
    """A L{StringTransport} with the TCP options a relay connection sets (as no-ops)."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getHandle(self) -> None:
        return None


class PortFuzzTests(FreshRelayTestCase):
    """
    Random bytes as the first a new connection sends to port X or Y, in
    memory: the relay reads them as a TLS handshake (a first byte of 0x16)
    or as a data connection's ticket, and must survive whatever they are.
    """

    def connect(self, relay: Relay, skeletonSide: bool) -> tuple[Any, TCPStringTransport]:
        """A new connection to the relay's port Y (or X), as its factory makes it."""
        factory = relay.skeletonFactory() if skeletonSide else relay.clientFactory()
        factory.doStart()
        transport = TCPStringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        protocol = factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        return protocol, transport

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        chunks=st.lists(
            st.one_of(
                st.binary(min_size=1, max_size=TICKET_BYTES),
                st.binary(min_size=TICKET_BYTES, max_size=300),
            ),
            min_size=1,
            max_size=4,
        ),
        skeletonSide=st.booleans(),
        tls=st.booleans(),
    )
    def test_garbageOnPorts(self, chunks: list[bytes], skeletonSide: bool, tls: bool) -> None:
        """
        Random first bytes, in any split, raise nothing and change none of
        the relay's books.  Behind a TLS record's first byte they get TLS
        (an alert) at most; as a data connection, one that sent a whole
        ticket is refused (a client's with L{JOIN_REFUSED} and code 5, a
        skeleton's with nothing) and closed, one that did not is aborted
        when its time for the ticket is up.
        """
        if tls:
            chunks[0] = bytes([TLS_HANDSHAKE]) + chunks[0]
        isTls = chunks[0][0] == TLS_HANDSHAKE
        relay = self.newRelay()
        protocol, transport = self.connect(relay, skeletonSide)
        for chunk in chunks:
            protocol.dataReceived(chunk)
            relay.reactor.advance(0)  # type: ignore[attr-defined]
        relay.reactor.advance(Limits().first_bytes_timeout)  # type: ignore[attr-defined]
        written = transport.value()
        if isTls:
            # An alert (0x15), or a handshake record if this was one.
            self.assertIn(written[:1], (b"", b"\x15", b"\x16"), written)
        elif len(b"".join(chunks)) >= TICKET_BYTES:
            self.assertEqual(written, b"" if skeletonSide else JOIN_REFUSED + b"\x05")
            self.assertTrue(transport.disconnecting)
        else:
            self.assertEqual(written, b"")
            self.assertTrue(transport.disconnected, "not dropped when its time was up")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertUntouched(relay)


class Blurt(Protocol):
    """Writes its bytes, shuts its write side, and waits for the relay to close."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    def connectionMade(self) -> None:
        self.transport.write(self.data)  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True


@implementer(IHandshakeListener)
class SecureBlurt(Blurt):
    """
    Writes its bytes inside TLS once the handshake is done, then closes
    (TLS cannot shut one direction only): the bytes reach the relay's AMP.
    """

    def connectionMade(self) -> None:
        pass

    def handshakeCompleted(self) -> None:
        self.transport.write(self.data)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


def _samples() -> list[bytes]:
    """Garbage for the socket test: the known troublemakers and random bytes."""
    rng = random.Random(20240607)
    return [
        b"\x00\x00",
        b"\xff\xff" + b"x" * 100,
        _serialize({b"_answer": b"99"}),
        _serialize({b"_error": b"99"}),
        _serialize({b"_command": b"\xff\xfe", b"_ask": b"1"}),
        _serialize({b"_command": b"Nope"}),
        _serialize({b"_command": b"Register", b"_ask": b"1", b"pool": b"x"}),
        _serialize({b"_command": b"Tickets", b"_ask": b"1", b"server": b"echo", b"count": b"16"}),
        _serialize({b"_command": b"Tickets", b"_ask": b"1", b"server": b"\xff"}),
        _serialize({b"_command": b"OpenConnection", b"_ask": b"1", b"server": b"echo"}),
        _serialize(
            {b"_command": b"Login", b"_ask": b"1", b"role": b"client", b"message": b"n,,n=alice,r=x"}
        ),
        _serialize({b"_command": b"LoginFinish", b"_ask": b"1", b"message": b"c=biws"}),
        _serialize({b"_command": b"ListServers", b"_ask": b"1"}) * 3,
        b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS hello
        # Data connections: less than a ticket; a made-up ticket and a real
        # first handshake message; a made-up ticket and far too much after.
        b"\x01" * (TICKET_BYTES - 1),
        b"\x01" * TICKET_BYTES + ClientHandshake(b"s" * 32, "echo").first(),
        bytes(TICKET_BYTES) + b"x" * 5000,
    ] + [rng.randbytes(rng.randrange(1, 2000)) for _ in range(20)]


class SocketFuzzTests(TestCase):
    """Garbage on the relay's real ports does not hurt the next honest peer."""

    @runAsync
    async def test_relayServesAfterGarbage(self) -> None:
        """
        After garbage on both ports, outside TLS (where the handshake or,
        for a first byte that is not a TLS record's, the ticket check
        refuses it) and inside (where AMP reads it), the skeleton is still
        registered, only the two honest logins hold sessions, no ticket was
        issued, the relay lists its server and a tunnel carries bytes as
        before.
        """
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        # Settled: the pool refilled after the client's ready connections
        # took from it, so no ticket is on its way to the skeleton.
        await pollUntil(lambda: stack.relay.registry.counts()["requested"] == 0)
        issued = len(stack.relay.tickets)
        blurts = []
        for port in (stack.clientPort, stack.skeletonPort):
            secure = wrapClientTLS(PinnedRelay(stack.identity.fingerprint), endpointOf(port))
            for data in _samples():
                plain = (Blurt(data), endpointOf(port))
                for blurt, endpoint in (plain, (SecureBlurt(data), secure)):
                    await connectProtocol(endpoint, blurt)
                    blurts.append(blurt)
        await pollUntil(lambda: all(b.closed for b in blurts))

        counts = stack.relay.registry.counts()
        self.assertEqual((counts["servers"], counts["waiting"]), (1, 0))
        self.assertEqual(len(stack.relay.sessions), 2)
        self.assertEqual(len(stack.relay.skeletons), 1)
        self.assertEqual(len(stack.relay.tickets), issued)
        self.assertEqual([s["id"] for s in await listServers(stack.clientLink)], ["echo"])
        collector = Collect(b"still here", halfClose=True)
        await stack.connect("echo", collector)
        self.assertEqual(await collector.finished, b"still here")
        self.flushLoggedErrors(*ESCAPING, *LOGGED)


class StartTLSTests(SynchronousTestCase):
    """AMP's own StartTLS is not answered on relaynat's channels."""

    def test_startTLSRefused(self) -> None:
        """
        A StartTLS box gets AMP's unhandled-command error, and the
        connection is not switched to a second TLS layer.
        """
        channel = Channel()
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(amp.AmpBox(_command=b"StartTLS", _ask=b"1").serialize())
        [answer] = amp.parseString(transport.value())
        self.assertEqual(answer[b"_error_code"], amp.UNHANDLED_ERROR_CODE)


def _command(name: str, **arguments: bytes) -> bytes:
    return _serialize({b"_command": name.encode(), b"_ask": b"7", **{k.encode(): v for k, v in arguments.items()}})


#: Every command of the wire, well formed, with plausible arguments: sent
#: in any order (a LoginFinish before its Login, a Register before any
#: login, a skeleton's command on the clients' port, the relay's own
#: commands sent to it).
_commands = st.one_of(
    st.builds(
        lambda role, m: _command("Login", role=role, message=m.encode()),
        st.sampled_from([b"client", b"skeleton", b"", b"\xff"]),
        _clientFirst,
    ),
    st.text(max_size=60).map(lambda m: _command("LoginFinish", message=m.encode())),
    st.just(_registerBox()),
    st.builds(
        lambda server, count: _command("Tickets", server=server.encode(), count=str(count).encode()),
        st.sampled_from([TARGET, "web", "é", ""]),
        st.integers(-1, 300),
    ),
    st.just(_command("ListServers")),
    st.binary(max_size=40).map(lambda t: _command("OpenConnection", server=TARGET.encode(), ticket=t)),
    st.just(_command("Ping")),
    st.just(_command("StartTLS")),
    st.just(_command("SessionEnded", reason=b"no")),
    st.just(_command("ServerWithdrawn", server=TARGET.encode(), reason=b"no")),
)

#: What one fuzzing connection sends: garbage, or commands out of order.
_connectionBytes = st.one_of(garbage, st.lists(_commands, min_size=1, max_size=8).map(b"".join))


def examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """
    C{count} examples that hypothesis draws from C{strategy} (its edge
    cases first, the same ones every run), for a test on real sockets,
    which hypothesis cannot drive itself.
    """
    drawn: list[Any] = []

    @settings(
        max_examples=count, derandomize=True, database=None, deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        drawn.append(example)

    collect()
    return drawn


def _allClosed(blurts: list[Blurt]) -> bool:
    return all(b.closed for b in blurts)


class HypothesisSocketFuzzTests(TestCase):
    """
    Hypothesis's inputs (random bytes, malformed boxes, valid commands out
    of order) on both real ports, inside TLS and outside it.
    """

    timeout = 120

    @runAsync
    async def test_relayStaysUp(self) -> None:
        """
        After each batch the relay logs no traceback and no error, gives
        no session or ticket to the fuzz, keeps its skeleton, and serves
        the next honest tunnel.
        """
        stack = await Stack().start({TARGET: Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        stack.relay.failedLoginDelay = 0.0
        # Every fuzzing connection comes from 127.0.0.1 like the honest
        # roles: the throttle must not refuse those.
        stack.relay.throttle.allowance = stack.relay.throttle.prefixAllowance = 1e9
        await pollUntil(lambda: stack.relay.registry.counts()["requested"] == 0)
        issued = len(stack.relay.tickets)
        events = logEvents(self)
        inputs = examples(_connectionBytes, 120)
        for batch in range(0, len(inputs), 30):
            blurts = []
            for i, data in enumerate(inputs[batch : batch + 30]):
                port = (stack.clientPort, stack.skeletonPort)[i % 2]
                if i % 4 < 2:
                    secure = wrapClientTLS(PinnedRelay(stack.identity.fingerprint), endpointOf(port))
                    blurt: Blurt = SecureBlurt(data)
                    await connectProtocol(secure, blurt)
                else:
                    blurt = Blurt(data)
                    await connectProtocol(endpointOf(port), blurt)
                blurts.append(blurt)
            await pollUntil(partial(_allClosed, blurts), timeout=30)
            self.assertEqual(len(stack.relay.sessions), 2)
            self.assertEqual(len(stack.relay.skeletons), 1)
            self.assertEqual(len(stack.relay.tickets), issued)
            collector = Collect(b"served after batch %d" % batch, halfClose=True)
            await stack.connect(TARGET, collector)
            self.assertEqual(await collector.finished, b"served after batch %d" % batch)
            issued = len(stack.relay.tickets)
        bad = [
            formatEvent(e) for e in events
            if "log_failure" in e or e.get("log_level", None) is not None
            and e["log_level"].name in ("error", "critical")
        ]
        self.assertEqual(bad, [])
