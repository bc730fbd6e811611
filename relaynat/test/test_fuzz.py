"""
Fuzzing the relay's control channels: random bytes and random AMP boxes
fed to the relay's skeleton and client channels, in memory and over real
sockets.  Whatever arrives, the relay's books must not change and the next
honest skeleton or client must be served.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaynat.client import listServers
from relaynat.relay import ClientChannel, Relay, SkeletonChannel
from relaynat.test.loopback import Stack, endpointOf, pollUntil, runAsync
from relaynat.test.streams import Collect, Echo

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
            b"server", b"tunnel", b"id", b"description",
        ]
    ),
    st.binary(min_size=1, max_size=12),
)
_values = st.one_of(
    st.sampled_from(
        [
            b"Register", b"Offer", b"OpenConnection", b"Join", b"ListServers",
            b"Tunnel", b"Ping", b"StartTLS", b"1", b"0", b"-1", b"", b"\xff",
            TARGET.encode(),
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


#: Random bytes, and runs of well-framed boxes with random keys and values.
garbage = st.one_of(
    st.binary(max_size=400),
    st.lists(st.dictionaries(_keys, _values, max_size=6).map(_serialize), max_size=5).map(
        b"".join
    ),
)


class FakeSkeleton:
    """A registry's skeleton whose connection requests are never answered."""

    name = "fake"

    def requestConnection(self, serverId: str) -> Deferred[None]:
        return Deferred()

    def describe(self) -> str:
        return "'fake'"


class ChannelFuzzTests(SynchronousTestCase):
    """Random input to one relay channel on a L{StringTransport}."""

    def feed(self, channelClass: type, data: bytes) -> tuple[Relay, StringTransport, object]:
        """
        A fresh relay with one server registered, and a channel of
        C{channelClass} fed C{data}; returns what escaped dataReceived.
        """
        reactor = MemoryReactorClock()
        relay = Relay(reactor, joinTimeout=5)
        relay.registry.register(FakeSkeleton(), [(TARGET, "")], pool=1)  # type: ignore[arg-type]
        channel = channelClass(relay)
        transport = StringTransport()
        channel.makeConnection(transport)
        escaped: object = None
        try:
            channel.dataReceived(data)
        except Exception as e:
            escaped = e
        reactor.advance(0)
        return relay, transport, escaped

    def assertUntouched(self, relay: Relay) -> None:
        """The relay's books are as they were before the garbage."""
        self.assertEqual(
            relay.registry.counts(),
            {"servers": 1, "idle": 0, "waiting": 0, "requested": 1},
        )
        self.assertEqual(relay.sessions, {})
        self.assertEqual(relay.tunnels, set())

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

    def test_skeletonCommandsRefusedOnClientPort(self) -> None:
        """
        A client cannot register servers: the client port does not know
        L{Register}, even when it is well-formed.
        """
        register = amp.AmpBox(
            _command=b"Register",
            _ask=b"1",
            name=b"evil",
            servers=amp.AmpList([(b"id", amp.Unicode()), (b"description", amp.Unicode())])
            .toStringProto([{"id": "evil", "description": ""}], None),
            pool=b"1",
        ).serialize()
        relay, transport, escaped = self.feed(ClientChannel, register)
        self.assertIsNone(escaped)
        [answer] = amp.parseString(transport.value())
        self.assertEqual(answer[b"_error_code"], b"UNHANDLED")
        self.assertUntouched(relay)

    def test_brokenArgumentsLogged(self) -> None:
        """
        A known command with an argument that does not parse gets a generic
        error, the connection is dropped, and AMP logs the parse error (the
        only logged errors these tests flush).
        """
        box = _serialize({b"_command": b"Tunnel", b"_ask": b"1", b"server": b"\xff"})
        relay, transport, escaped = self.feed(ClientChannel, box)
        self.assertIsNone(escaped)
        [answer] = amp.parseString(transport.value())
        self.assertEqual(answer[b"_error_code"], b"UNKNOWN")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(UnicodeDecodeError)), 1)
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
        _serialize({b"_command": b"Offer", b"_ask": b"1", b"session": b"s", b"server": b"w"}),
        _serialize({b"_command": b"Tunnel", b"_ask": b"1", b"server": b"\xff"}),
        b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS hello
    ] + [rng.randbytes(rng.randrange(1, 2000)) for _ in range(20)]


class SocketFuzzTests(TestCase):
    """Garbage on the relay's real ports does not hurt the next honest peer."""

    @runAsync
    async def test_relayServesAfterGarbage(self) -> None:
        """
        After garbage on both ports, the skeleton is still registered, the
        relay lists its server and a tunnel carries bytes as before.
        """
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        blurts = []
        for port in (stack.clientPort, stack.skeletonPort):
            for data in _samples():
                blurt = Blurt(data)
                await connectProtocol(endpointOf(port), blurt)
                blurts.append(blurt)
        await pollUntil(lambda: all(b.closed for b in blurts))

        counts = stack.relay.registry.counts()
        self.assertEqual((counts["servers"], counts["waiting"]), (1, 0))
        self.assertEqual(len(stack.relay.sessions), 1)
        self.assertEqual(
            [s["id"] for s in await listServers(endpointOf(stack.clientPort))], ["echo"]
        )
        collector = Collect(b"still here", halfClose=True)
        await stack.connect("echo", collector)
        self.assertEqual(await collector.finished, b"still here")
        self.flushLoggedErrors(*ESCAPING, *LOGGED)
