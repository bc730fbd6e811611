"""
The login throttle (L{relaynat.throttle}) on a L{Clock}: sources pay for
their attempts, accounts are never locked, and the memory is bounded.
"""

from __future__ import annotations

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaynat.throttle import Throttle, sourceKeys


def throttle(clock: Clock, **kw: float) -> Throttle:
    """Ten attempts at once, then one every 10 s; a /24 gets forty."""
    return Throttle(
        clock,
        penalty=kw.get("penalty", 10.0),
        allowance=kw.get("allowance", 100.0),
        prefixAllowance=kw.get("prefixAllowance", 400.0),
        longest=kw.get("longest", 600.0),
        size=int(kw.get("size", 16_384)),
    )


class SourceKeysTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        """An IPv4 address is its own key, and its /24 its neighbourhood."""
        self.assertEqual(sourceKeys("192.0.2.77"), ("192.0.2.77", "192.0.2.0/24"))

    def test_ipv6(self) -> None:
        """An IPv6 host is its /64 (it has all of it), its neighbourhood the /48."""
        self.assertEqual(
            sourceKeys("2001:db8:1:2:3:4:5:6"), ("2001:db8:1:2::/64", "2001:db8:1::/48")
        )

    def test_mappedIpv4(self) -> None:
        """An IPv4 address seen on an IPv6 socket counts as itself."""
        self.assertEqual(sourceKeys("::ffff:192.0.2.77"), sourceKeys("192.0.2.77"))

    def test_notAnAddress(self) -> None:
        """A UNIX socket's peer (no address) is one source of its own."""
        self.assertEqual(sourceKeys("/run/x.sock"), ("host /run/x.sock", "host /run/x.sock"))


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = throttle(self.clock)

    def attempts(self, host: str) -> int:
        """How many attempts C{host} may start now, one after the other."""
        count = 0
        while self.throttle.refusedFor(host) == 0 and count < 1000:
            self.throttle.attempted(host)
            count += 1
        return count

    def test_burstThenRefused(self) -> None:
        """
        An address may make ten attempts at once; the eleventh is refused
        for as long as it takes the debt to run down by one attempt.
        """
        self.assertEqual(self.attempts("192.0.2.1"), 10)
        self.assertEqual(self.throttle.refusedFor("192.0.2.1"), 10.0)
        self.clock.advance(9.9)
        self.assertGreater(self.throttle.refusedFor("192.0.2.1"), 0)
        self.clock.advance(0.1)
        self.assertEqual(self.attempts("192.0.2.1"), 1)

    def test_oneEveryIntervalSustained(self) -> None:
        """Past the burst, an address gets one attempt every 10 s, no more."""
        self.attempts("192.0.2.1")
        allowed = 0
        for _ in range(60):
            self.clock.advance(1.0)
            allowed += self.attempts("192.0.2.1")
        self.assertEqual(allowed, 6)

    def test_noLockout(self) -> None:
        """
        Whatever one address sends, another address (even in the same /24,
        while the /24 has room) may try at once: nothing is counted against
        a user name.
        """
        self.attempts("192.0.2.1")
        self.assertEqual(self.throttle.refusedFor("192.0.2.2"), 0)
        self.assertEqual(self.throttle.refusedFor("198.51.100.1"), 0)

    def test_prefixCounted(self) -> None:
        """
        Addresses of one /24 share forty attempts at once: a network with
        many addresses does not multiply its guesses; another /24 is not
        touched.
        """
        total = sum(self.attempts(f"192.0.2.{i}") for i in range(1, 11))
        self.assertEqual(total, 40)
        self.assertGreater(self.throttle.refusedFor("192.0.2.200"), 0)
        self.assertEqual(self.throttle.refusedFor("192.0.3.1"), 0)

    def test_successGivesTheAttemptBack(self) -> None:
        """
        A login that succeeds costs nothing: a user may log in again and
        again from one address.  Failures stay counted.
        """
        for _ in range(100):
            self.throttle.attempted("192.0.2.1")
            self.throttle.succeeded("192.0.2.1")
        self.assertEqual(self.attempts("192.0.2.1"), 10)

    def test_successDoesNotForgiveFailures(self) -> None:
        """A success gives back its own attempt only, not the failures before it."""
        for _ in range(9):
            self.throttle.attempted("192.0.2.1")
        self.throttle.attempted("192.0.2.1")
        self.throttle.succeeded("192.0.2.1")
        self.assertEqual(self.attempts("192.0.2.1"), 1)

    def test_refusedNeverLongerThanLongest(self) -> None:
        """
        However many attempts a source makes, it is refused for at most
        the longest refusal (600 s) after its last.
        """
        for _ in range(10_000):
            self.throttle.attempted("192.0.2.1")
        self.assertLessEqual(self.throttle.refusedFor("192.0.2.1"), 600.0)
        self.clock.advance(600.0)
        self.assertEqual(self.throttle.refusedFor("192.0.2.1"), 0)

    @given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 30), st.booleans()), max_size=80))
    def test_refusalBounded(self, steps: list[tuple[int, float, bool]]) -> None:
        """
        Under any sequence of attempts, successes and waits, a refusal is
        never longer than the longest refusal, and an address that has made
        no attempt for that long is let in.
        """
        clock = Clock()
        t = throttle(clock)
        for host, wait, success in steps:
            address = f"192.0.2.{host}"
            if t.refusedFor(address) == 0:
                t.attempted(address)
                if success:
                    t.succeeded(address)
            self.assertLessEqual(t.refusedFor(address), 600.0)
            clock.advance(wait)
        clock.advance(600.0)
        self.assertEqual(t.refusedFor("192.0.2.0"), 0)


class BoundedMemoryTests(SynchronousTestCase):
    def test_tableSizeBounded(self) -> None:
        """
        A million sources (each in its own /24) leave at most C{size}
        entries in each table; the least recently charged go first.
        """
        clock = Clock()
        t = throttle(clock, size=1000)
        for i in range(20_000):
            t.attempted(f"10.{i >> 8 & 255}.{i & 255}.1")
        self.assertEqual(len(t), 2000)
        # The newest are remembered, the oldest forgotten.
        for _ in range(9):
            t.attempted("10.78.31.1")
        self.assertGreater(t.refusedFor("10.78.31.1"), 0)
        self.assertEqual(t.refusedFor("10.0.0.1"), 0)

    def test_memoryOfAFullTable(self) -> None:
        """
        The stated bound: a full table of the default size (16,384 entries
        each) holds under 8 MB, measured with tracemalloc.
        """
        clock = Clock()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        t = Throttle(clock)
        for i in range(20_000):
            t.attempted(f"10.{i >> 8 & 255}.{i & 255}.1")
        used = tracemalloc.get_traced_memory()[0] - before
        self.assertEqual(len(t), 2 * 16_384)
        self.assertLess(used, 8_000_000, f"{used} bytes")
