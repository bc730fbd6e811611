"""
The seal on its own: handshakes that prove the secret both ways or fail,
records that round-trip over any split of the stream, and every kind of
tampering refused.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from relaynat.noise import HandshakeState
from relaynat.seal import (
    BEGIN,
    DATA,
    END,
    MAX_BODY,
    REFUSED,
    ClientHandshake,
    RecordReader,
    RecordWriter,
    SealBroken,
    Sealed,
    SkeletonHandshake,
    frame,
    preferredCipher,
    prologue,
    protocolName,
    tunnelPsk,
)

SECRET = b"s" * 32


def handshake(
    clientSecret: bytes = SECRET,
    skeletonSecret: bytes = SECRET,
    clientServer: str = "web",
    skeletonServer: str = "web",
    sealed: bool = True,
    cipher: str = "AESGCM",
) -> tuple[Sealed, Sealed]:
    """Both sides of one handshake, each message fed whole."""
    client = ClientHandshake(clientSecret, clientServer, cipher)
    skeleton = SkeletonHandshake(skeletonSecret, skeletonServer, sealed)
    answered = skeleton.receive(client.first())
    assert answered is not None
    reply, skeletonSeal = answered
    clientSeal = client.receive(reply)
    assert clientSeal is not None
    return clientSeal, skeletonSeal


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def readAll(reader: RecordReader, pieces: list[bytes]) -> list[tuple[int, bytes]]:
    return [record for piece in pieces for record in reader.feed(piece)]


class HandshakeTests(TestCase):
    """Who can complete a handshake with whom."""

    def test_bothCiphers(self) -> None:
        """Either cipher gives both sides matching keys, each direction its own."""
        for cipher in ("AESGCM", "ChaChaPoly"):
            client, skeleton = handshake(cipher=cipher)
            up = client.writer.record(DATA, b"up")
            down = skeleton.writer.record(DATA, b"down")
            self.assertEqual(skeleton.reader.feed(up), [(DATA, b"up")])
            self.assertEqual(client.reader.feed(down), [(DATA, b"down")])
            self.assertNotEqual(up[2:], down[2:])

    def test_preferredCipher(self) -> None:
        """The default is one of the two ciphers the skeleton knows."""
        self.assertIn(preferredCipher(), ("AESGCM", "ChaChaPoly"))

    def test_sealedFlag(self) -> None:
        """The skeleton's choice of sealed or not reaches the client."""
        self.assertTrue(handshake(sealed=True)[0].sealed)
        self.assertFalse(handshake(sealed=False)[0].sealed)

    def test_splitMessages(self) -> None:
        """Handshake messages fed a byte at a time complete the same."""
        client = ClientHandshake(SECRET, "web")
        skeleton = SkeletonHandshake(SECRET, "web")
        first = client.first()
        for byte in first[:-1]:
            self.assertIsNone(skeleton.receive(bytes([byte])))
        answered = skeleton.receive(first[-1:])
        assert answered is not None
        reply, _ = answered
        for byte in reply[:-1]:
            self.assertIsNone(client.receive(bytes([byte])))
        self.assertIsNotNone(client.receive(reply[-1:]))

    def test_restAfterHandshake(self) -> None:
        """Bytes after message 2 in the same read are kept for the records."""
        client = ClientHandshake(SECRET, "web")
        answered = SkeletonHandshake(SECRET, "web").receive(client.first())
        assert answered is not None
        reply, skeleton = answered
        record = skeleton.writer.record(BEGIN)
        sealed = client.receive(reply + record)
        assert sealed is not None
        self.assertEqual(sealed.rest, record)

    def test_clientWithoutSecret(self) -> None:
        """A client with another secret gets no answer: the skeleton refuses message 1."""
        client = ClientHandshake(b"x" * 32, "web")
        self.assertRaises(SealBroken, SkeletonHandshake(SECRET, "web").receive, client.first())

    def test_impostorSkeleton(self) -> None:
        """
        A skeleton that does not know the secret cannot answer: whatever it
        sends as message 2 (here, what it could make with a guessed secret)
        fails at the client, which sends nothing.
        """
        client = ClientHandshake(SECRET, "web")
        client.first()
        impostor = ClientHandshake(b"guess" * 8, "web")
        # The impostor answers with a message 2 of the right shape, keyed by
        # its own guess.
        answered = SkeletonHandshake(b"guess" * 8, "web").receive(impostor.first())
        assert answered is not None
        self.assertRaises(SealBroken, client.receive, answered[0])

    def test_otherServer(self) -> None:
        """The prologue binds the server id: a handshake for another server fails."""
        client = ClientHandshake(SECRET, "web")
        self.assertRaises(SealBroken, SkeletonHandshake(SECRET, "mail").receive, client.first())

    def test_replayedFirstMessage(self) -> None:
        """
        A replayed message 1 is answered, but the answer opens nothing: the
        replayer has no ephemeral key, and the real client's keys differ.
        """
        client = ClientHandshake(SECRET, "web")
        first = client.first()
        one = SkeletonHandshake(SECRET, "web").receive(first)
        two = SkeletonHandshake(SECRET, "web").receive(first)
        assert one is not None and two is not None
        sealed = client.receive(one[0])
        assert sealed is not None
        # Records of the real client's tunnel do not open on the replayed one.
        self.assertRaises(SealBroken, two[1].reader.feed, sealed.writer.record(BEGIN))

    def test_unknownCipher(self) -> None:
        """Message 1 naming a cipher the skeleton does not know is refused."""
        first = bytearray(ClientHandshake(SECRET, "web").first())
        first[2] = 9
        self.assertRaises(SealBroken, SkeletonHandshake(SECRET, "web").receive, bytes(first))

    def test_oversizedFrame(self) -> None:
        """A handshake frame longer than any real one is refused at its length."""
        self.assertRaises(SealBroken, SkeletonHandshake(SECRET, "web").receive, b"\xff\xff")

    def test_malformedAnswer(self) -> None:
        """A message 2 with a payload other than the two flags is refused."""
        client = ClientHandshake(SECRET, "web", "AESGCM")
        # The answer built by hand, with a payload of two bytes.
        state = HandshakeState(protocolName("AESGCM"), False, prologue("web"), [tunnelPsk(SECRET)])
        state.readMessage(client.first()[3:])
        self.assertRaises(SealBroken, client.receive, frame(state.writeMessage(b"\x01\x01")))


class RecordTests(TestCase):
    """Records round-trip, and anything else is refused."""

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.binary(min_size=0, max_size=3000), max_size=8),
        st.lists(st.integers(min_value=0), max_size=12),
    )
    def test_roundTrip(self, chunks: list[bytes], cuts: list[int]) -> None:
        """
        Any sequence of writes, sealed and then cut at any points, reads back
        as the same bytes in the same order, then the end.
        """
        client, skeleton = handshake()
        stream = b"".join(b"".join(client.writer.data(c)) for c in chunks)
        stream += client.writer.record(END)
        records = readAll(skeleton.reader, split(stream, cuts))
        self.assertEqual(records[-1], (END, b""))
        self.assertEqual(b"".join(body for kind, body in records[:-1]), b"".join(chunks))
        self.assertTrue(all(kind == DATA for kind, _ in records[:-1]))

    def test_largeWrite(self) -> None:
        """A write larger than one record is cut into records of at most MAX_BODY."""
        client, skeleton = handshake()
        data = bytes(range(256)) * 1000
        pieces = client.writer.data(data)
        self.assertEqual(len(pieces), -(-len(data) // MAX_BODY))
        self.assertTrue(all(len(p) <= 65537 for p in pieces))
        self.assertEqual(b"".join(b for _, b in readAll(skeleton.reader, pieces)), data)

    def test_limit(self) -> None:
        """A reader stops after the records asked for; the rest stays raw."""
        client, skeleton = handshake(sealed=False)
        stream = client.writer.record(BEGIN) + b"raw bytes"
        self.assertEqual(skeleton.reader.feed(stream, limit=1), [(BEGIN, b"")])
        self.assertEqual(skeleton.reader.leftover(), b"raw bytes")

    def test_kinds(self) -> None:
        """Every kind round-trips; an unknown kind is refused."""
        client, skeleton = handshake()
        for kind in (BEGIN, REFUSED, DATA):
            self.assertEqual(skeleton.reader.feed(client.writer.record(kind, b"x")), [(kind, b"x")])
        self.assertRaises(SealBroken, skeleton.reader.feed, client.writer.record(7))

    def records(self, count: int = 4) -> tuple[list[bytes], RecordReader]:
        client, skeleton = handshake()
        return [client.writer.record(DATA, b"record %d" % i) for i in range(count)], skeleton.reader

    def test_flippedBit(self) -> None:
        """
        A bit flipped anywhere in a record is refused; in its length, the
        reader can at most wait for bytes that never come.
        """
        size = len(self.records(1)[0][0])
        for position in range(size):
            fresh, reader = self.records(1)
            changed = bytearray(fresh[0])
            changed[position] ^= 0x10
            try:
                got = reader.feed(bytes(changed))
            except SealBroken:
                continue
            self.assertEqual((got, position < 2), ([], True))

    def test_dropped(self) -> None:
        """A record dropped from the stream makes the next one fail."""
        records, reader = self.records()
        reader.feed(records[0])
        self.assertRaises(SealBroken, reader.feed, records[2])

    def test_repeated(self) -> None:
        """A record sent twice fails the second time."""
        records, reader = self.records()
        reader.feed(records[0])
        self.assertRaises(SealBroken, reader.feed, records[0])

    def test_reordered(self) -> None:
        """Two records swapped fail."""
        records, reader = self.records()
        self.assertRaises(SealBroken, reader.feed, records[1] + records[0])

    def test_truncated(self) -> None:
        """A record cut short is never delivered: the reader waits for the rest."""
        records, reader = self.records(1)
        self.assertEqual(reader.feed(records[0][:-1]), [])
        self.assertEqual(reader.pending(), len(records[0]) - 1)

    def test_injectedEnd(self) -> None:
        """An end record made without the key (here: with another tunnel's) is refused."""
        records, reader = self.records(1)
        other, _ = handshake()
        reader.feed(records[0])
        self.assertRaises(SealBroken, reader.feed, other.writer.record(END))

    def test_afterEnd(self) -> None:
        """Nothing may follow the end, written or read."""
        client, skeleton = handshake()
        end = client.writer.record(END)
        self.assertRaises(SealBroken, client.writer.record, DATA, b"more")
        self.assertRaises(SealBroken, skeleton.reader.feed, end + b"\0\0")

    def test_otherDirection(self) -> None:
        """A record reflected back to its sender fails: each direction has its key."""
        client, _ = handshake()
        self.assertRaises(SealBroken, client.reader.feed, client.writer.record(DATA, b"x"))


class WriterTests(TestCase):
    """The writer's own rules."""

    def test_endOnce(self) -> None:
        """A writer ends once."""
        client, _ = handshake()
        writer: RecordWriter = client.writer
        writer.record(END)
        self.assertTrue(writer.ended)
        self.assertRaises(SealBroken, writer.record, END)
