"""
What the relay lets one user hold, and what each user holds now: joins
waiting for a skeleton's connection (per login and per user), tunnels, and
registered servers.  A user at a cap gets L{LimitReached} with what to do,
and everyone else is served as before.
"""

from __future__ import annotations

from collections import Counter

import attrs
from twisted.internet.interfaces import IReactorTime

from relaynat.throttle import Throttle
from relaynat.wire import LimitReached


@attrs.frozen
class Limits:
    """
    The relay's defences, all configurable in C{[relay]} (see the
    README's configuration reference for what each one protects).
    """

    #: Seconds a new connection may take to send its first byte (and a data
    #: connection its ticket), to finish its TLS handshake, and to log in
    #: (counted from its start).
    first_bytes_timeout: float = 10.0
    handshake_timeout: float = 10.0
    login_timeout: float = 30.0
    #: Login attempts (L{relaynat.throttle}): an address may make
    #: C{login_burst} at once, its /24 (/48) C{login_prefix_burst}, then one
    #: every C{login_interval} seconds; never refused longer than
    #: C{login_longest_refusal} seconds.
    login_burst: int = 10
    login_prefix_burst: int = 40
    login_interval: float = 10.0
    login_longest_refusal: float = 600.0
    #: Connections that have not logged in (or sent a good ticket), in all
    #: and from one address.
    max_unauthenticated: int = 1024
    max_unauthenticated_per_source: int = 256
    #: Joins waiting for a skeleton's connection, per login and per user.
    max_pending_per_session: int = 64
    max_pending_per_user: int = 128
    #: Tunnels (joined, not yet ended) and registered servers per user.
    max_tunnels_per_user: int = 4096
    max_servers_per_user: int = 64


def throttleFor(clock: IReactorTime, limits: Limits) -> Throttle:
    """The login throttle that C{limits} describe."""
    return Throttle(
        clock,
        penalty=limits.login_interval,
        allowance=limits.login_burst * limits.login_interval,
        prefixAllowance=limits.login_prefix_burst * limits.login_interval,
        longest=limits.login_longest_refusal,
    )


class Usage:
    """What every user and login holds now, checked against L{Limits}."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.pending: Counter[str] = Counter()
        self.pendingBySession: Counter[str] = Counter()
        self.tunnels: Counter[str] = Counter()
        self.servers: Counter[str] = Counter()
        #: How often each cap was hit, for the log and the metrics.
        self.hits: Counter[str] = Counter()

    def startJoin(self, user: str, session: str) -> None:
        """A join of C{user}'s starts waiting; raises L{LimitReached} past a cap."""
        limits = self.limits
        if self.tunnels[user] + self.pending[user] >= limits.max_tunnels_per_user:
            self._hit("tunnels", f"user {user} has {limits.max_tunnels_per_user} tunnels open")
        if self.pendingBySession[session] >= limits.max_pending_per_session:
            self._hit(
                "pending", f"this login has {limits.max_pending_per_session} joins waiting"
            )
        if self.pending[user] >= limits.max_pending_per_user:
            self._hit("pending", f"user {user} has {limits.max_pending_per_user} joins waiting")
        self.pending[user] += 1
        self.pendingBySession[session] += 1

    def endJoin(self, user: str, session: str, joined: bool) -> None:
        """A join stopped waiting; if C{joined}, it is a tunnel now."""
        _decrement(self.pending, user)
        _decrement(self.pendingBySession, session)
        if joined:
            self.tunnels[user] += 1

    def tunnelEnded(self, user: str) -> None:
        _decrement(self.tunnels, user)

    def register(self, user: str, count: int) -> None:
        """C{user} registers C{count} more servers; raises L{LimitReached} past the cap."""
        cap = self.limits.max_servers_per_user
        if self.servers[user] + count > cap:
            self._hit(
                "servers",
                f"user {user} may register at most {cap} servers"
                f" ({self.servers[user]} registered now)",
            )
        self.servers[user] += count

    def unregister(self, user: str, count: int) -> None:
        _decrement(self.servers, user, count)

    def _hit(self, cap: str, why: str) -> None:
        self.hits[cap] += 1
        raise LimitReached(why)


def _decrement(counter: Counter[str], key: str, by: int = 1) -> None:
    # Keys at zero go, so that a counter holds only who holds something.
    left = counter[key] - by
    if left > 0:
        counter[key] = left
    else:
        del counter[key]
