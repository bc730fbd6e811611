"""
The lobby of unauthenticated connections, the caps per user (L{Usage}) and
the log budget, as plain objects.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from relaynat.caps import Limits, Usage
from relaynat.lobby import Lobby
from relaynat.lograte import LogBudget
from relaynat.tap.relay import lowerToFit
from relaynat.wire import LimitReached


class Guest:
    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted: str | None = None

    def evict(self, why: str) -> None:
        self.evicted = why


class LobbyTests(SynchronousTestCase):
    def test_perSourceCapEvictsThatSourcesOldest(self) -> None:
        """
        At the cap per source, a new connection from that source pushes
        out the oldest from the same source, no other source's.
        """
        lobby = Lobby(total=100, perSource=3)
        other = Guest("other")
        lobby.enter(other, "192.0.2.9")
        guests = [Guest(str(i)) for i in range(5)]
        for guest in guests:
            lobby.enter(guest, "192.0.2.1")
        self.assertEqual([g.evicted is not None for g in guests], [True, True, False, False, False])
        self.assertIn("more than 3 from one source", guests[0].evicted or "")
        self.assertIsNone(other.evicted)
        self.assertEqual((len(lobby), lobby.fromSource("192.0.2.1")), (4, 3))
        self.assertEqual(lobby.evicted, {"total": 0, "source": 2})

    def test_totalCapEvictsTheOldest(self) -> None:
        """At the total cap, the oldest connection of all goes, whatever its source."""
        lobby = Lobby(total=3, perSource=10)
        guests = [Guest(str(i)) for i in range(4)]
        for i, guest in enumerate(guests):
            lobby.enter(guest, f"192.0.2.{i}")
        self.assertIn("more than 3 in all", guests[0].evicted or "")
        self.assertEqual([g.evicted is None for g in guests[1:]], [True] * 3)
        self.assertEqual(len(lobby), 3)

    def test_leaving(self) -> None:
        """
        A connection that proves itself (or goes) leaves its place, and
        leaving twice is harmless; a source with none left is forgotten.
        """
        lobby = Lobby(total=2, perSource=2)
        a, b, c = Guest("a"), Guest("b"), Guest("c")
        lobby.enter(a, "192.0.2.1")
        lobby.enter(b, "192.0.2.1")
        lobby.leave(a)
        lobby.leave(a)
        lobby.enter(c, "192.0.2.1")
        self.assertEqual([a.evicted, b.evicted, c.evicted], [None, None, None])
        lobby.leave(b)
        lobby.leave(c)
        self.assertEqual((len(lobby), lobby.fromSource("192.0.2.1")), (0, 0))
        self.assertEqual(lobby._bySource, {})

    def test_ipv6HostIsItsSlash64(self) -> None:
        """Addresses of one IPv6 /64 count as one source."""
        lobby = Lobby(total=10, perSource=2)
        guests = [Guest(str(i)) for i in range(3)]
        for i, guest in enumerate(guests):
            lobby.enter(guest, f"2001:db8::{i + 1}")
        self.assertIsNotNone(guests[0].evicted)


class UsageTests(SynchronousTestCase):
    def test_pendingPerSession(self) -> None:
        usage = Usage(Limits(max_pending_per_session=2, max_pending_per_user=10))
        usage.startJoin("alice", "s1")
        usage.startJoin("alice", "s1")
        error = self.assertRaises(LimitReached, usage.startJoin, "alice", "s1")
        self.assertEqual(str(error), "this login has 2 joins waiting")
        usage.startJoin("alice", "s2")
        usage.endJoin("alice", "s1", joined=False)
        usage.startJoin("alice", "s1")
        self.assertEqual(usage.hits["pending"], 1)

    def test_pendingPerUser(self) -> None:
        usage = Usage(Limits(max_pending_per_session=10, max_pending_per_user=3))
        for session in ("s1", "s2", "s3"):
            usage.startJoin("alice", session)
        error = self.assertRaises(LimitReached, usage.startJoin, "alice", "s4")
        self.assertEqual(str(error), "user alice has 3 joins waiting")
        usage.startJoin("bob", "s5")

    def test_tunnelsPerUser(self) -> None:
        """Tunnels and joins waiting together stay within the tunnel cap."""
        usage = Usage(Limits(max_tunnels_per_user=3))
        for _ in range(2):
            usage.startJoin("alice", "s")
            usage.endJoin("alice", "s", joined=True)
        usage.startJoin("alice", "s")
        error = self.assertRaises(LimitReached, usage.startJoin, "alice", "s")
        self.assertEqual(str(error), "user alice has 3 tunnels open")
        usage.tunnelEnded("alice")
        usage.endJoin("alice", "s", joined=False)
        usage.startJoin("alice", "s")
        usage.endJoin("alice", "s", joined=True)
        usage.tunnelEnded("alice")
        usage.tunnelEnded("alice")
        self.assertEqual((usage.tunnels, usage.pending, usage.pendingBySession), ({}, {}, {}))

    def test_serversPerUser(self) -> None:
        usage = Usage(Limits(max_servers_per_user=3))
        usage.register("alice", 2)
        error = self.assertRaises(LimitReached, usage.register, "alice", 2)
        self.assertEqual(str(error), "user alice may register at most 3 servers (2 registered now)")
        usage.register("alice", 1)
        usage.unregister("alice", 3)
        self.assertEqual(usage.servers, {})


class LogBudgetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.budget = LogBudget(
            self.clock, Logger(observer=cast(ILogObserver, self.events.append)), burst=3, window=60
        )

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def test_burstThenSummed(self) -> None:
        """
        The first three of a kind are logged; the rest are counted and
        summed up in one line by the first warning after the window.
        """
        for i in range(10):
            self.budget.warn("slow", "slow {i}", i=i)
        self.budget.warn("other", "other")
        self.assertEqual(self.lines(), ["slow 0", "slow 1", "slow 2", "other"])
        self.clock.advance(60)
        self.budget.warn("slow", "slow again")
        self.assertEqual(
            self.lines()[4:],
            ["7 more warnings of slow left out of the log in 60 s", "slow again"],
        )

    def test_flushSums(self) -> None:
        """L{LogBudget.flush} sums up the windows that are over, and only those."""
        for _ in range(5):
            self.budget.warn("slow", "slow")
        self.budget.flush()
        self.assertEqual(len(self.lines()), 3)
        self.clock.advance(61)
        self.budget.flush()
        self.assertEqual(self.lines()[3:], ["2 more warnings of slow left out of the log in 60 s"])
        self.budget.flush()
        self.assertEqual(len(self.lines()), 4)


class FitTests(SynchronousTestCase):
    def test_quarterOfTheOpenFiles(self) -> None:
        """
        Strangers may hold at most a quarter of the relay's descriptors:
        a cap above that is lowered (and logged), one below it is kept.
        """
        self.assertEqual(lowerToFit(Limits(), 1024).max_unauthenticated, 256)
        self.assertEqual(lowerToFit(Limits(), 1_048_576).max_unauthenticated, 1024)
        self.assertEqual(lowerToFit(Limits(max_unauthenticated=10), 1024).max_unauthenticated, 10)
