"""
Unit tests for L{relaynat.registry.Registry}: pools, joins, timeouts and
the errors a client sees, driven by a fake clock and fake skeletons whose
connection requests the tests answer by hand.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaynat.registry import Changes, Registry
from relaynat.wire import (
    BadRequest,
    DuplicateServer,
    JoinTimeout,
    ServerOffline,
    SkeletonGone,
    UnknownServer,
)


class FakeSkeleton:
    """
    A L{relaynat.registry.SkeletonLink} that records every connection the
    registry asks for; the test fires each request's Deferred itself.
    """

    def __init__(self, name: str = "alpha") -> None:
        self.name = name
        self.requests: list[tuple[str, Deferred[None]]] = []

    def requestConnection(self, serverId: str) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.requests.append((serverId, d))
        return d

    def describe(self) -> str:
        return repr(self.name)

    def pending(self, serverId: str | None = None) -> list[Deferred[None]]:
        """The requests not answered yet (for C{serverId}, if given)."""
        return [
            d
            for s, d in self.requests
            if not d.called and serverId in (None, s)
        ]

    def answerOne(self, serverId: str | None = None) -> None:
        """Answer the oldest pending request (for C{serverId}) with success."""
        self.pending(serverId)[0].callback(None)


class FakeConnection:
    """A L{relaynat.registry.PooledConnection} that remembers being closed."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeConnection {self.label}>"


class RegistryTestCase(SynchronousTestCase):
    """Shared set-up: a registry on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry(self.clock, joinTimeout=10.0, maxPool=8)

    def deliver(self, skeleton: FakeSkeleton, serverId: str) -> FakeConnection:
        """
        What a skeleton does for one request: offer a connection, then
        answer the request (in that order, as the relay sees it).
        """
        connection = FakeConnection(serverId)
        self.registry.offer(serverId, connection)
        skeleton.answerOne(serverId)
        return connection

    def assertPoolInvariant(self) -> None:
        counts = self.registry.counts()
        # One server per registry in these tests, so the totals are its own.
        entry = self.registry.listing()
        self.assertEqual(len(entry), 1)
        self.assertGreaterEqual(
            counts["idle"] + counts["requested"], self.pool + counts["waiting"]
        )

    pool = 0


class RegisterTests(RegistryTestCase):
    """Registering and unregistering skeletons and their servers."""

    def test_registerRequestsThePool(self) -> None:
        """
        Registering a server asks its skeleton for C{pool} connections for
        that server at once.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "a web server")], pool=3)
        self.assertEqual([s for s, _ in skeleton.requests], ["web"] * 3)
        self.assertEqual(
            self.registry.counts(),
            {"servers": 1, "idle": 0, "waiting": 0, "requested": 3},
        )

    def test_poolIsCappedAtMaxPool(self) -> None:
        """
        A skeleton cannot make the relay hold more than C{maxPool} idle
        connections per server, and a negative pool counts as none.
        """
        big, negative = FakeSkeleton("big"), FakeSkeleton("negative")
        self.registry.register(big, [("web", "")], pool=1000)
        self.registry.register(negative, [("db", "")], pool=-5)
        self.assertEqual(len(big.requests), 8)
        self.assertEqual(negative.requests, [])

    def test_duplicateFromAnotherSkeleton(self) -> None:
        """
        A server id already registered by one skeleton is refused to another,
        with a message naming the first skeleton, and none of the second
        skeleton's servers is registered: registration is all or none.
        """
        first, second = FakeSkeleton("first"), FakeSkeleton("second")
        self.registry.register(first, [("web", "")], pool=1)
        error = self.assertRaises(
            DuplicateServer,
            self.registry.register,
            second,
            [("fresh", ""), ("web", "")],
            1,
        )
        self.assertEqual(
            str(error),
            "server web is already registered by another skeleton;"
            " give this one another id, or stop the other skeleton",
        )
        self.assertEqual([s["id"] for s in self.registry.listing()], ["web"])
        self.assertEqual(second.requests, [])
        self.assertTrue(self.registry.owns(first, "web"))
        self.assertFalse(self.registry.owns(second, "web"))
        # "fresh" was never registered, so it is unknown rather than offline.
        self.failureResultOf(self.registry.claim("fresh"), UnknownServer)

    def test_sameIdTwiceInOneRegistration(self) -> None:
        """
        A registration that lists one id twice is refused whole.
        """
        skeleton = FakeSkeleton()
        error = self.assertRaises(
            DuplicateServer,
            self.registry.register,
            skeleton,
            [("other", ""), ("web", "one"), ("web", "two")],
            1,
        )
        self.assertEqual(str(error), "the same server id is listed twice")
        self.assertEqual(self.registry.listing(), [])
        self.assertEqual(skeleton.requests, [])

    def test_badServerIdRejected(self) -> None:
        """
        A malformed server id fails the whole registration with
        L{BadRequest}, and the message says what ids look like.
        """
        skeleton = FakeSkeleton()
        error = self.assertRaises(
            BadRequest,
            self.registry.register,
            skeleton,
            [("good", ""), ("bad id", "")],
            1,
        )
        self.assertEqual(
            str(error),
            "bad server id 'bad id': use 1 to 64 letters, digits, '.', '_' or"
            " '-', starting with a letter or digit",
        )
        self.assertEqual(self.registry.listing(), [])
        self.assertEqual(skeleton.requests, [])

    def test_badServerIdShapes(self) -> None:
        """
        Empty ids, ids longer than 64 characters, ids starting with a
        punctuation mark and ids with a trailing newline are all refused;
        64 characters is still fine.
        """
        for bad in ["", "a" * 65, "-web", ".web", "_web", "web\n", "wéb", "a/b"]:
            self.assertRaises(
                BadRequest, self.registry.register, FakeSkeleton(), [(bad, "")], 0
            )
        self.registry.register(FakeSkeleton(), [("a" * 64, "")], 0)
        self.assertEqual(self.registry.counts()["servers"], 1)

    def test_owns(self) -> None:
        """
        C{owns} is true only for the skeleton that registered the id, and
        false for ids nobody registered.
        """
        mine, theirs = FakeSkeleton("mine"), FakeSkeleton("theirs")
        self.registry.register(mine, [("web", "")], 0)
        self.assertTrue(self.registry.owns(mine, "web"))
        self.assertFalse(self.registry.owns(theirs, "web"))
        self.assertFalse(self.registry.owns(mine, "nothere"))

    def test_unregisterClosesIdleAndFailsWaiters(self) -> None:
        """
        When a skeleton goes away mid-join, its waiting clients fail with
        L{SkeletonGone}, its idle connections are closed, and its servers
        are gone; another skeleton's servers are untouched.
        """
        skeleton, other = FakeSkeleton("leaving"), FakeSkeleton("staying")
        self.registry.register(skeleton, [("web", ""), ("db", "")], pool=1)
        self.registry.register(other, [("mail", "")], pool=0)
        idle = self.deliver(skeleton, "web")
        # "db" has no idle connection yet, so these clients wait.
        waiting = self.registry.claim("db")
        waiting2 = self.registry.claim("db")
        self.assertNoResult(waiting)

        self.registry.unregister(skeleton)

        self.assertTrue(idle.closed)
        for d in (waiting, waiting2):
            failure = self.failureResultOf(d, SkeletonGone)
            self.assertEqual(
                failure.getErrorMessage(), "the skeleton of server db went away"
            )
        self.assertEqual([s["id"] for s in self.registry.listing()], ["mail"])
        # The join timeouts of the failed waiters are cancelled.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lateAnswersAfterUnregister(self) -> None:
        """
        Requests that fail because the skeleton's connection is gone, after
        it was unregistered, are ignored: no error escapes and the counts of
        a new registration of the same id are not disturbed.
        """
        old = FakeSkeleton("old")
        self.registry.register(old, [("web", "")], pool=2)
        self.registry.unregister(old)
        new = FakeSkeleton("new")
        self.registry.register(new, [("web", "")], pool=1)
        for d in old.pending():
            d.errback(ConnectionError("connection lost"))
        self.assertEqual(
            self.registry.counts(),
            {"servers": 1, "idle": 0, "waiting": 0, "requested": 1},
        )

    def test_reRegisterAfterUnregister(self) -> None:
        """
        Once a skeleton is gone, another one may register the same id.
        """
        first, second = FakeSkeleton("first"), FakeSkeleton("second")
        self.registry.register(first, [("web", "")], 0)
        self.registry.unregister(first)
        self.registry.register(second, [("web", "")], 0)
        self.assertTrue(self.registry.owns(second, "web"))


class ReplaceTests(RegistryTestCase):
    """A skeleton registering again (a reload): its set of servers replaced."""

    def test_addedRemovedKept(self) -> None:
        """
        Registering a, b after a, c, d: c and d are removed (c's idle
        connection closed, d's waiting client failed), b added now, and a
        kept as it was: its C{since}, its idle connection and its pool
        untouched, and nothing more asked for it.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("a", "A"), ("c", "C"), ("d", "D")], pool=1)
        idleA, idleC = self.deliver(skeleton, "a"), self.deliver(skeleton, "c")
        self.clock.advance(100)
        # d has no idle connection yet: its client waits.
        waiting = self.registry.claim("d")
        asked = len(skeleton.requests)

        changes = self.registry.register(skeleton, [("a", "A"), ("b", "B")], pool=1)

        self.assertEqual(changes, Changes(added=("b",), removed=("c", "d")))
        self.assertTrue(idleC.closed)
        failure = self.failureResultOf(waiting, SkeletonGone)
        self.assertEqual(failure.getErrorMessage(), "server d was withdrawn by its skeleton")
        self.assertFalse(idleA.closed)
        self.assertEqual(
            self.registry.listing(),
            [
                {"id": "a", "description": "A", "since": 0.0, "idle": 1},
                {"id": "b", "description": "B", "since": 100.0, "idle": 0},
            ],
        )
        # Only b's pool was asked for.
        self.assertEqual([s for s, _ in skeleton.requests[asked:]], ["b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # A removed server is unknown, as one never registered.
        self.failureResultOf(self.registry.claim("c"), UnknownServer)

    def test_withdrawnByItsSkeletonIsUnknown(self) -> None:
        """
        A server its skeleton no longer lists is unknown to clients (its
        skeleton is connected: "not connected" would send its users to the
        wrong place), and so is a later join to it, and one the relay
        withdrew (its owner lost the right); one whose skeleton went away is
        offline; registered again, it is online.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("a", "A"), ("b", "B"), ("c", "C")], pool=0)
        self.registry.register(skeleton, [("a", "A"), ("c", "C")], pool=0)
        failure = self.failureResultOf(self.registry.claim("b"), UnknownServer)
        self.assertEqual(
            failure.getErrorMessage(),
            "no server b is registered at this relay; 'relaynat list' shows the ones that are",
        )
        self.assertRaises(UnknownServer, self.registry.checkOnline, "b")
        self.registry.withdraw("c")
        self.assertRaises(UnknownServer, self.registry.checkOnline, "c")
        self.registry.unregister(skeleton)
        self.assertRaises(ServerOffline, self.registry.checkOnline, "a")
        self.assertRaises(UnknownServer, self.registry.checkOnline, "b")
        self.registry.register(FakeSkeleton("beta"), [("b", "B")], pool=0)
        self.registry.checkOnline("b")

    def test_sameSetChangesNothing(self) -> None:
        """The same servers registered again: no change, nothing asked, nothing closed."""
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("a", "A")], pool=1)
        idle = self.deliver(skeleton, "a")
        before = self.registry.listing()
        self.clock.advance(5)
        self.assertEqual(self.registry.register(skeleton, [("a", "A")], pool=1), Changes())
        self.assertEqual(self.registry.listing(), before)
        self.assertFalse(idle.closed)
        self.assertEqual(skeleton.pending(), [])

    def test_describedAnew(self) -> None:
        """A new description reaches the listing; the server keeps its C{since} and pool."""
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("a", "old")], pool=1)
        idle = self.deliver(skeleton, "a")
        self.clock.advance(5)
        changes = self.registry.register(skeleton, [("a", "new")], pool=1)
        self.assertEqual(changes, Changes(described=("a",)))
        self.assertEqual(
            self.registry.listing(), [{"id": "a", "description": "new", "since": 0.0, "idle": 1}]
        )
        self.assertFalse(idle.closed)

    def test_poolResized(self) -> None:
        """
        A smaller pool closes the idle connections past it; a larger one
        asks for more (never past C{maxPool}).
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("a", "")], pool=2)
        first, second = self.deliver(skeleton, "a"), self.deliver(skeleton, "a")
        changes = self.registry.register(skeleton, [("a", "")], pool=1)
        self.assertEqual(changes, Changes(resized=("a",)))
        self.assertEqual([first.closed, second.closed], [True, False])
        self.assertEqual(self.registry.counts()["idle"], 1)
        self.assertEqual(skeleton.pending(), [])
        self.registry.register(skeleton, [("a", "")], pool=1000)
        self.assertEqual(len(skeleton.pending()), 7)

    def test_refusedChangesNothing(self) -> None:
        """
        A replacement listing another skeleton's id, an id twice or a
        malformed id is refused whole: the old set stands, nothing is
        closed or asked for.
        """
        mine, theirs = FakeSkeleton("mine"), FakeSkeleton("theirs")
        self.registry.register(theirs, [("taken", "")], pool=0)
        self.registry.register(mine, [("a", "A"), ("c", "C")], pool=1)
        idle = self.deliver(mine, "c")
        asked = len(mine.requests)
        before = self.registry.listing()
        for servers, error in (
            ([("a", "A"), ("taken", "")], DuplicateServer),
            ([("b", ""), ("b", "")], DuplicateServer),
            ([("a", "A"), ("bad id", "")], BadRequest),
        ):
            self.assertRaises(error, self.registry.register, mine, servers, 1)
        self.assertEqual(self.registry.listing(), before)
        self.assertFalse(idle.closed)
        self.assertEqual(len(mine.requests), asked)
        self.assertTrue(self.registry.owns(theirs, "taken"))


class ClaimTests(RegistryTestCase):
    """Clients claiming connections: pool hits, misses, timeouts, errors."""

    def test_poolHit(self) -> None:
        """
        With an idle connection in the pool, a claim gets it at once and
        the registry asks the skeleton for a replacement.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=1)
        connection = self.deliver(skeleton, "web")
        self.assertEqual(skeleton.pending(), [])

        self.assertIs(self.successResultOf(self.registry.claim("web")), connection)
        self.assertEqual(len(skeleton.pending()), 1)
        self.assertEqual(skeleton.requests[-1][0], "web")
        self.assertFalse(connection.closed)

    def test_poolMissOldestWaiterFirst(self) -> None:
        """
        With the pool empty, claims wait, each asks for one more connection,
        and offered connections go to the waiting clients oldest first.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=0)
        first, second = self.registry.claim("web"), self.registry.claim("web")
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(len(skeleton.pending()), 2)

        a, b = FakeConnection("a"), FakeConnection("b")
        self.assertTrue(self.registry.offer("web", a))
        self.assertIs(self.successResultOf(first), a)
        self.assertNoResult(second)
        self.assertTrue(self.registry.offer("web", b))
        self.assertIs(self.successResultOf(second), b)
        self.assertEqual(self.registry.counts()["waiting"], 0)
        # Satisfied waiters leave no timeout behind.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_joinTimeout(self) -> None:
        """
        A claim that no connection satisfies fails with L{JoinTimeout} once
        C{joinTimeout} seconds have passed, not before, and stops waiting:
        a connection offered later is pooled, not given to it.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=1)
        self.deliver(skeleton, "web")
        self.successResultOf(self.registry.claim("web"))  # empties the pool
        d = self.registry.claim("web")
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        failure = self.failureResultOf(d, JoinTimeout)
        self.assertEqual(
            failure.getErrorMessage(),
            "server web did not provide a connection within 10 s",
        )
        self.assertEqual(self.registry.counts()["waiting"], 0)
        late = FakeConnection("late")
        self.assertTrue(self.registry.offer("web", late))
        self.assertEqual(self.registry.counts()["idle"], 1)

    def test_unknownServer(self) -> None:
        """
        Claiming an id that was never registered fails at once with
        L{UnknownServer}, and the message says how to see the known ids.
        """
        failure = self.failureResultOf(self.registry.claim("nope"), UnknownServer)
        self.assertEqual(
            failure.getErrorMessage(),
            "no server nope is registered at this relay; 'relaynat list'"
            " shows the ones that are",
        )

    def test_offlineServer(self) -> None:
        """
        Claiming an id whose skeleton registered it and then left fails with
        L{ServerOffline}, not L{UnknownServer}.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=0)
        self.registry.unregister(skeleton)
        failure = self.failureResultOf(self.registry.claim("web"), ServerOffline)
        self.assertEqual(
            failure.getErrorMessage(),
            "server web is offline: its skeleton is not connected",
        )

    def test_cancelRemovesWaiter(self) -> None:
        """
        Cancelling a claim (the client went away) removes its waiter and its
        timeout, so the next connection offered is not handed to it.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=0)
        cancelled = self.registry.claim("web")
        kept = self.registry.claim("web")
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(self.registry.counts()["waiting"], 1)
        connection = FakeConnection()
        self.registry.offer("web", connection)
        self.assertIs(self.successResultOf(kept), connection)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failedRequestFailsWaiterEarly(self) -> None:
        """
        When the skeleton cannot open a connection a client is waiting for,
        that client fails now with L{SkeletonGone} and the skeleton's reason
        (quoted: it is the skeleton's words), rather than at its join timeout.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=0)
        d = self.registry.claim("web")
        skeleton.pending()[0].errback(Exception("target host is down"))
        failure = self.failureResultOf(d, SkeletonGone)
        self.assertEqual(
            failure.getErrorMessage(),
            "the skeleton of server web could not open a connection: 'target"
            " host is down'",
        )
        self.assertEqual(
            self.registry.counts(),
            {"servers": 1, "idle": 0, "waiting": 0, "requested": 0},
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failedRequestSparesCoveredWaiters(self) -> None:
        """
        A failed request fails a waiter only if the requests still pending
        cannot cover every waiting client: with a pool of one and one client
        waiting, two requests are out, and the first failure fails nobody.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=1)
        d = self.registry.claim("web")
        self.assertEqual(len(skeleton.pending()), 2)
        skeleton.pending()[0].errback(Exception("one"))
        self.assertNoResult(d)
        skeleton.pending()[0].errback(Exception("two"))
        self.failureResultOf(d, SkeletonGone)

    def test_extraOffersClosed(self) -> None:
        """
        Connections offered beyond the pool with nobody waiting (late answers
        to timed-out joins) are closed and reported as not kept.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=1)
        kept, extra = FakeConnection("kept"), FakeConnection("extra")
        self.assertTrue(self.registry.offer("web", kept))
        self.assertFalse(self.registry.offer("web", extra))
        self.assertTrue(extra.closed)
        self.assertFalse(kept.closed)
        self.assertEqual(self.registry.counts()["idle"], 1)

    def test_offerForUnknownServerClosed(self) -> None:
        """A connection offered for a server that is not registered is closed."""
        connection = FakeConnection()
        self.assertFalse(self.registry.offer("nope", connection))
        self.assertTrue(connection.closed)

    def test_discardIdleRefills(self) -> None:
        """
        When an idle connection is lost, the registry forgets it and asks
        the skeleton for a replacement; it is not handed to a later claim.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=1)
        lost = self.deliver(skeleton, "web")
        self.assertEqual(skeleton.pending(), [])
        self.registry.discard("web", lost)
        self.assertEqual(len(skeleton.pending()), 1)
        self.assertEqual(self.registry.counts()["idle"], 0)
        d = self.registry.claim("web")
        self.assertNoResult(d)

    def test_discardOfClaimedConnectionIgnored(self) -> None:
        """
        Discarding a connection that is not idle (it was claimed, or never
        pooled) changes nothing and asks for nothing.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=1)
        self.deliver(skeleton, "web")
        claimed = self.successResultOf(self.registry.claim("web"))
        requestsBefore = len(skeleton.requests)
        self.registry.discard("web", claimed)
        self.registry.discard("web", FakeConnection("stranger"))
        self.registry.discard("nope", FakeConnection("stranger"))
        self.assertEqual(len(skeleton.requests), requestsBefore)


class RefillTests(RegistryTestCase):
    """The pool invariant: idle plus requested covers pool plus waiting."""

    @settings(max_examples=60, deadline=None)
    @given(
        pool=st.integers(min_value=0, max_value=4),
        steps=st.lists(
            st.sampled_from(["claim", "deliver", "discard", "timeout"]),
            max_size=30,
        ),
    )
    def test_invariantHolds(self, pool: int, steps: list[str]) -> None:
        """
        Whatever mix of claims, deliveries, discards of idle connections and
        join timeouts happens (requests never failing), idle + requested >=
        pool + waiting after every step.
        """
        self.setUp()
        self.pool = pool
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=pool)
        idle: list[FakeConnection] = []

        def forget(connection: FakeConnection) -> None:
            # A claim served from the pool takes that connection out of it.
            if connection in idle:
                idle.remove(connection)

        self.assertPoolInvariant()
        for step in steps:
            if step == "claim":
                d = self.registry.claim("web")
                d.addCallbacks(forget, lambda f: f.trap(JoinTimeout))
            elif step == "deliver" and skeleton.pending():
                connection = FakeConnection()
                before = self.registry.counts()["idle"]
                self.registry.offer("web", connection)
                if self.registry.counts()["idle"] > before:
                    idle.append(connection)
                skeleton.answerOne()
            elif step == "discard" and idle:
                self.registry.discard("web", idle.pop(0))
            elif step == "timeout":
                self.clock.advance(self.registry.joinTimeout)
            self.assertPoolInvariant()

    @settings(max_examples=100, deadline=None)
    @given(
        pool=st.integers(min_value=0, max_value=4),
        steps=st.lists(
            st.sampled_from(["claim", "offer", "answer", "lose", "timeout"]),
            max_size=40,
        ),
    )
    def test_invariantHoldsInAnyOrder(self, pool: int, steps: list[str]) -> None:
        """
        The skeleton's answer to a request and the offer of its connection
        come on different connections, in either order, and an offered
        connection may be lost before it is pooled: after every step, idle +
        requested >= pool + waiting, and no request is counted twice.
        """
        self.setUp()
        self.pool = pool
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=pool)
        offered: set[int] = set()
        for step in steps:
            unoffered = [i for i in range(len(skeleton.requests)) if i not in offered]
            if step == "claim":
                self.registry.claim("web").addErrback(lambda f: f.trap(JoinTimeout))
            elif step == "offer" and unoffered:
                offered.add(unoffered[0])
                self.registry.offer("web", FakeConnection())
            elif step == "lose" and unoffered:
                offered.add(unoffered[0])
                self.registry.lost("web")
            elif step == "answer" and skeleton.pending():
                skeleton.answerOne()
            elif step == "timeout":
                self.clock.advance(self.registry.joinTimeout)
            self.assertPoolInvariant()
            unoffered = [i for i in range(len(skeleton.requests)) if i not in offered]
            self.assertEqual(self.registry.counts()["requested"], len(unoffered))

    def test_claimBetweenOfferAndAnswer(self) -> None:
        """
        A claim that arrives after a connection was offered but before the
        skeleton's answer to that request still gets a request of its own
        (it used to wait for its join timeout: the answered request was
        still counted as on its way).
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=0)
        first = self.registry.claim("web")
        self.registry.offer("web", FakeConnection("first"))
        self.successResultOf(first)
        second = self.registry.claim("web")
        skeleton.answerOne()
        self.assertEqual(len(skeleton.pending()), 1)
        connection = FakeConnection("second")
        self.registry.offer("web", connection)
        self.assertIs(self.successResultOf(second), connection)

    def test_lostOfferIsAskedAgain(self) -> None:
        """
        A requested connection lost before it was pooled is asked for again
        while a client still waits.
        """
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=0)
        waiting = self.registry.claim("web")
        skeleton.answerOne()
        self.registry.lost("web")
        self.assertEqual(len(skeleton.pending()), 1)
        connection = FakeConnection("again")
        self.registry.offer("web", connection)
        self.assertIs(self.successResultOf(waiting), connection)
        self.registry.lost("nope")

    def test_refillAfterClaimsAndDeliveries(self) -> None:
        """
        A concrete run of the invariant: pool two, three claims, deliveries
        trailing behind; the pool ends full with nothing outstanding.
        """
        self.pool = 2
        skeleton = FakeSkeleton()
        self.registry.register(skeleton, [("web", "")], pool=2)
        self.deliver(skeleton, "web")
        self.deliver(skeleton, "web")
        claims = [self.registry.claim("web") for _ in range(3)]
        self.assertPoolInvariant()
        while skeleton.pending():
            self.deliver(skeleton, "web")
            self.assertPoolInvariant()
        for d in claims:
            self.assertIsInstance(self.successResultOf(d), FakeConnection)
        self.assertEqual(
            self.registry.counts(),
            {"servers": 1, "idle": 2, "waiting": 0, "requested": 0},
        )


class ListingTests(RegistryTestCase):
    """What L{Registry.listing} shows."""

    def test_emptyListing(self) -> None:
        """A registry with no servers lists nothing."""
        self.assertEqual(self.registry.listing(), [])

    def test_listingContentAndOrder(self) -> None:
        """
        The listing gives id, description, registration time (from the
        injected clock) and idle count of every server, sorted by id
        whatever the order of registration.
        """
        late, early = FakeSkeleton("late"), FakeSkeleton("early")
        self.clock.advance(100)
        self.registry.register(early, [("zeta", "last"), ("beta", "b")], pool=1)
        self.clock.advance(50)
        self.registry.register(late, [("alpha", "first")], pool=2)
        self.deliver(late, "alpha")
        self.deliver(late, "alpha")
        self.assertEqual(
            self.registry.listing(),
            [
                {"id": "alpha", "description": "first", "since": 150.0, "idle": 2},
                {"id": "beta", "description": "b", "since": 100.0, "idle": 0},
                {"id": "zeta", "description": "last", "since": 100.0, "idle": 0},
            ],
        )

    def test_listingDropsUnregistered(self) -> None:
        """A skeleton's servers leave the listing when it unregisters."""
        one, two = FakeSkeleton("one"), FakeSkeleton("two")
        self.registry.register(one, [("a", "")], 0)
        self.registry.register(two, [("b", "")], 0)
        self.registry.unregister(one)
        self.assertEqual([s["id"] for s in self.registry.listing()], ["b"])
