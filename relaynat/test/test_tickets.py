"""
Unit tests for L{relaynat.tickets.TicketBook}: one-time tickets issued,
redeemed, expired and revoked on a fake clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaynat import tickets
from relaynat.tickets import TICKET_LIFETIME, Ticket, TicketBook
from relaynat.wire import TICKET_BYTES, TLS_HANDSHAKE


class ScriptedRandom:
    """
    Stands in for the C{secrets} module in L{relaynat.tickets}: hands out
    the byte strings it was given, in order, and then fails the test.
    """

    def __init__(self, outputs: list[bytes]) -> None:
        self._outputs: Iterator[bytes] = iter(outputs)
        self.asked = 0

    def token_bytes(self, n: int) -> bytes:
        self.asked += 1
        value = next(self._outputs)
        assert len(value) == n
        return value


class TicketBookTests(SynchronousTestCase):
    """L{TicketBook} on a L{Clock}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.book = TicketBook(self.clock, lifetime=60.0)

    def test_issue(self) -> None:
        """
        A ticket is L{TICKET_BYTES} bytes, counted for its session, and
        redeemed for the grant it was issued with, expiring C{lifetime}
        seconds after it was issued.
        """
        ticket = self.book.issue("client", "s1", "alice", "web")
        self.assertIsInstance(ticket, bytes)
        self.assertEqual(len(ticket), TICKET_BYTES)
        self.assertEqual(len(self.book), 1)
        self.assertEqual(self.book.outstanding("s1"), 1)
        self.assertEqual(
            self.book.redeem(ticket, "client"), Ticket("client", "s1", "alice", "web", 1060.0)
        )

    def test_defaultLifetime(self) -> None:
        """Without a lifetime given, tickets live L{TICKET_LIFETIME} seconds."""
        book = TicketBook(self.clock)
        ticket = book.issue("client", "s1", "alice", "web")
        self.clock.advance(TICKET_LIFETIME - 0.5)
        found = book.redeem(ticket, "client")
        assert found is not None
        self.assertEqual(found.expires, 1000 + TICKET_LIFETIME)

    def test_ticketsDiffer(self) -> None:
        """Every ticket is new: a hundred of one grant are a hundred different tickets."""
        issued = {self.book.issue("client", "s1", "alice", "web") for _ in range(100)}
        self.assertEqual(len(issued), 100)
        self.assertEqual(self.book.outstanding("s1"), 100)

    def test_redeemOnce(self) -> None:
        """A ticket is good once: the second redemption finds nothing."""
        ticket = self.book.issue("client", "s1", "alice", "web")
        self.assertIsNotNone(self.book.redeem(ticket, "client"))
        self.assertIsNone(self.book.redeem(ticket, "client"))
        self.assertEqual(len(self.book), 0)
        self.assertEqual(self.book.outstanding("s1"), 0)

    def test_unknown(self) -> None:
        """Bytes never issued redeem nothing, and change nothing."""
        ticket = self.book.issue("client", "s1", "alice", "web")
        self.assertIsNone(self.book.redeem(b"\0" * TICKET_BYTES, "client"))
        self.assertIsNone(self.book.redeem(ticket[:-1], "client"))
        self.assertEqual(self.book.outstanding("s1"), 1)

    def test_kindMismatch(self) -> None:
        """
        A ticket shown as another kind of connection (a client's at the
        skeleton port) redeems nothing, and is spent: it is not good for its
        own kind afterwards either.
        """
        ticket = self.book.issue("client", "s1", "alice", "web")
        self.assertIsNone(self.book.redeem(ticket, "skeleton"))
        self.assertIsNone(self.book.redeem(ticket, "client"))
        self.assertEqual(self.book.outstanding("s1"), 0)

    def test_expiry(self) -> None:
        """
        A ticket is good until just before C{lifetime} seconds have passed,
        and worthless from then on.
        """
        early = self.book.issue("client", "s1", "alice", "web")
        late = self.book.issue("client", "s1", "alice", "web")
        self.clock.advance(59.9)
        self.assertIsNotNone(self.book.redeem(early, "client"))
        self.clock.advance(0.1)
        self.assertIsNone(self.book.redeem(late, "client"))
        self.assertEqual(len(self.book), 0)

    def test_prune(self) -> None:
        """
        L{TicketBook.prune} forgets the expired tickets, and their sessions'
        counts, and keeps the others.
        """
        old = self.book.issue("client", "s1", "alice", "web")
        self.clock.advance(30)
        young = self.book.issue("client", "s2", "bob", "web")
        self.clock.advance(30)
        self.book.prune()
        self.assertEqual(len(self.book), 1)
        self.assertEqual(self.book.outstanding("s1"), 0)
        self.assertEqual(self.book.outstanding("s2"), 1)
        self.assertIsNone(self.book.redeem(old, "client"))
        self.assertIsNotNone(self.book.redeem(young, "client"))

    def test_pruneKeepsUnexpired(self) -> None:
        """Before any ticket expires, L{TicketBook.prune} changes nothing."""
        ticket = self.book.issue("skeleton", "s1", "alice", "web")
        self.clock.advance(59.9)
        self.book.prune()
        self.assertEqual(len(self.book), 1)
        self.assertIsNotNone(self.book.redeem(ticket, "skeleton"))

    def test_revokeSession(self) -> None:
        """
        L{TicketBook.revokeSession} makes every ticket of that session
        worthless, of either kind, and leaves other sessions' alone.
        """
        mine = [self.book.issue("client", "s1", "alice", "web") for _ in range(3)]
        mine.append(self.book.issue("skeleton", "s1", "alice", "web"))
        theirs = self.book.issue("client", "s2", "alice", "web")
        self.book.revokeSession("s1")
        self.assertEqual(self.book.outstanding("s1"), 0)
        self.assertEqual(len(self.book), 1)
        self.assertEqual([self.book.redeem(t, "client") for t in mine[:3]], [None] * 3)
        self.assertIsNone(self.book.redeem(mine[3], "skeleton"))
        self.assertIsNotNone(self.book.redeem(theirs, "client"))

    def test_revokeUnknownSession(self) -> None:
        """Revoking a session that holds no tickets is harmless."""
        self.book.issue("client", "s1", "alice", "web")
        self.book.revokeSession("nobody")
        self.assertEqual(len(self.book), 1)

    def test_discard(self) -> None:
        """
        L{TicketBook.discard} forgets one unused ticket (its connection will
        not come); discarding it again, or bytes never issued, is harmless.
        """
        gone = self.book.issue("skeleton", "s1", "alice", "web")
        kept = self.book.issue("skeleton", "s1", "alice", "web")
        self.book.discard(gone)
        self.book.discard(gone)
        self.book.discard(b"x" * TICKET_BYTES)
        self.assertEqual(self.book.outstanding("s1"), 1)
        self.assertIsNone(self.book.redeem(gone, "skeleton"))
        self.assertIsNotNone(self.book.redeem(kept, "skeleton"))

    def test_outstanding(self) -> None:
        """
        L{TicketBook.outstanding} counts a session's unused tickets: issued
        ones add, redeemed, discarded and refused ones take away.
        """
        issued = [self.book.issue("client", "s1", "alice", "web") for _ in range(4)]
        self.book.issue("client", "s2", "alice", "web")
        self.assertEqual(self.book.outstanding("s1"), 4)
        self.book.redeem(issued[0], "client")
        self.book.discard(issued[1])
        self.book.redeem(issued[2], "skeleton")
        self.assertEqual(self.book.outstanding("s1"), 1)
        self.assertEqual(self.book.outstanding("s2"), 1)
        self.assertEqual(self.book.outstanding("never"), 0)

    def test_neverStartsLikeTLS(self) -> None:
        """
        A random draw that starts with the TLS handshake byte, or repeats a
        ticket still outstanding, is drawn again: a ticket is never taken
        for a TLS control connection, nor for another ticket.
        """
        first = bytes([TLS_HANDSHAKE]) + b"a" * (TICKET_BYTES - 1)
        good = b"b" * TICKET_BYTES
        other = b"c" * TICKET_BYTES
        source = ScriptedRandom([first, good, good, first, other])
        self.patch(tickets, "secrets", source)
        self.assertEqual(self.book.issue("client", "s1", "alice", "web"), good)
        self.assertEqual(self.book.issue("client", "s1", "alice", "web"), other)
        self.assertEqual(source.asked, 5)

    def test_neverStartsLikeTLSRandom(self) -> None:
        """
        With the real random source, four thousand tickets (which would
        hold some sixteen starting with 0x16 if nothing filtered them) have
        none that starts with the TLS handshake byte.
        """
        self.assertIs(tickets.secrets, secrets)
        first = {self.book.issue("client", "s1", "alice", "web")[0] for _ in range(4096)}
        self.assertNotIn(TLS_HANDSHAKE, first)
        # The draw is otherwise uniform: nearly every other first byte shows up.
        self.assertGreater(len(first), 200)


class ForgottenTests(SynchronousTestCase):
    """What a L{TicketBook} says of tickets whose connection will never come."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.forgotten: list[Ticket] = []
        self.book = TicketBook(self.clock, lifetime=60.0, forgotten=self.forgotten.append)

    def test_expiredAndRevoked(self) -> None:
        """Tickets pruned after their lifetime, or revoked with their session, are told of."""
        self.book.issue("skeleton", "s1", "edge", "web")
        self.book.issue("skeleton", "s2", "edge", "db")
        self.book.revokeSession("s2")
        self.assertEqual([t.server for t in self.forgotten], ["db"])
        self.clock.advance(61)
        self.book.prune()
        self.assertEqual([t.server for t in self.forgotten], ["db", "web"])

    def test_redeemedAndDiscardedNot(self) -> None:
        """A ticket used, or discarded by its issuer, is not told of: nobody waits for it."""
        used = self.book.issue("skeleton", "s1", "edge", "web")
        dropped = self.book.issue("skeleton", "s1", "edge", "web")
        self.book.redeem(used, "skeleton")
        self.book.discard(dropped)
        self.book.revokeSession("s1")
        self.assertEqual(self.forgotten, [])

    def test_moveSession(self) -> None:
        """A renewed login's tickets stay good under the new session, and die with it."""
        ticket = self.book.issue("client", "old", "alice", "web")
        self.book.moveSession("old", "new")
        self.assertEqual((self.book.outstanding("old"), self.book.outstanding("new")), (0, 1))
        self.book.revokeSession("old")
        self.assertEqual(len(self.book), 1)
        grant = self.book.redeem(ticket, "client")
        assert grant is not None
        self.assertEqual(grant.session, "new")
