"""
The connections that have proved nothing yet: accepted, but not logged in
(a control connection) or without a good ticket (a data connection).
Anyone on the Internet can make them, so they are capped, per source and in
all, and at a cap the oldest goes first (OpenSSH's MaxStartups, without its
random drops): a skeleton's refills and a user's logins take milliseconds
to leave, an idle attacker's connections sit, so they are the ones that are
oldest.  Their deadlines are kept by L{relaynat.relay.FirstBytes}.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol as TypingProtocol

from twisted.logger import Logger

from relaynat.throttle import addressKey

_log = Logger()


class Guest(TypingProtocol):
    """What the lobby needs of a connection."""

    def evict(self, why: str) -> None:
        """Drop this connection: the lobby needs its place."""


class Lobby:
    """
    Unauthenticated connections, in the order they came, by source (an
    address, an IPv6 host's /64): at most C{total} in all and
    C{perSource} from one source.
    """

    def __init__(self, total: int = 1024, perSource: int = 256) -> None:
        self.total = total
        self.perSource = perSource
        self._guests: OrderedDict[Guest, str] = OrderedDict()
        self._bySource: dict[str, OrderedDict[Guest, None]] = {}
        #: How many were dropped at each cap, for the log and the metrics.
        self.evicted = {"total": 0, "source": 0}

    def __len__(self) -> int:
        return len(self._guests)

    def fromSource(self, host: str) -> int:
        return len(self._bySource.get(addressKey(host), ()))

    def enter(self, guest: Guest, host: str) -> None:
        """C{guest} was accepted from C{host}: make room for it, then let it in."""
        source = addressKey(host)
        mates = self._bySource.setdefault(source, OrderedDict())
        if len(mates) >= self.perSource:
            self.evicted["source"] += 1
            self._evict(next(iter(mates)), f"more than {self.perSource} from one source")
        if len(self._guests) >= self.total:
            self.evicted["total"] += 1
            self._evict(next(iter(self._guests)), f"more than {self.total} in all")
        self._guests[guest] = source
        mates[guest] = None

    def leave(self, guest: Guest) -> None:
        """C{guest} proved itself, or went away."""
        source = self._guests.pop(guest, None)
        if source is None:
            return
        mates = self._bySource[source]
        del mates[guest]
        if not mates:
            del self._bySource[source]

    def _evict(self, guest: Guest, why: str) -> None:
        self.leave(guest)
        guest.evict(f"the oldest of the unauthenticated connections, {why}")
