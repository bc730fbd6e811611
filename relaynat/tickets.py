"""
The relay's one-time tickets: how a data connection proves, in its first
bytes and without TLS, that a live login sent it and what it is for.

A ticket is L{wire.TICKET_BYTES} random bytes handed out on a login's TLS
control connection (to a client by L{wire.Tickets}, to a skeleton in
L{wire.OpenConnection}), good for one data connection to one server, until
its login ends or L{TicketBook.lifetime} passes.  On the wire it tells an
onlooker nothing: no user, session, server or count.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from relaynat.wire import TICKET_BYTES, TLS_HANDSHAKE

#: Seconds an unused ticket stays good.
TICKET_LIFETIME = 300.0


@attrs.frozen
class Ticket:
    """What a ticket admits: a C{kind} of data connection of C{session} to C{server}."""

    kind: str
    session: str
    user: str
    server: str
    expires: float


class TicketBook:
    """Tickets issued and not yet used, by their bytes and by their session."""

    def __init__(
        self,
        clock: IReactorTime,
        lifetime: float = TICKET_LIFETIME,
        forgotten: Callable[[Ticket], None] | None = None,
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        #: Told of every ticket that expires or is revoked unused (not of
        #: those redeemed or discarded): its connection will never come.
        self.forgotten = forgotten
        self._tickets: dict[bytes, Ticket] = {}
        self._bySession: dict[str, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, kind: str, session: str, user: str, server: str) -> bytes:
        """A new ticket for one data connection."""
        while True:
            ticket = secrets.token_bytes(TICKET_BYTES)
            # A first byte that TLS never starts with: see wire.TLS_HANDSHAKE.
            if ticket[0] != TLS_HANDSHAKE and ticket not in self._tickets:
                break
        self._tickets[ticket] = Ticket(kind, session, user, server, self.clock.seconds() + self.lifetime)
        self._bySession.setdefault(session, set()).add(ticket)
        return ticket

    def outstanding(self, session: str) -> int:
        """How many unused tickets C{session} holds."""
        return len(self._bySession.get(session, ()))

    def redeem(self, ticket: bytes, kind: str) -> Ticket | None:
        """
        The ticket's grant, used up now; None for a ticket unknown, used,
        expired, or of another kind of connection (a client's at port Y).
        """
        found = self._tickets.get(ticket)
        if found is None:
            return None
        self._forget(ticket, found)
        if found.kind != kind or found.expires <= self.clock.seconds():
            return None
        return found

    def discard(self, ticket: bytes) -> None:
        """Forget C{ticket} unused (its connection will not come)."""
        found = self._tickets.get(ticket)
        if found is not None:
            self._forget(ticket, found)

    def revokeSession(self, session: str) -> None:
        """Every ticket of C{session} is worthless from now on."""
        for ticket in self._bySession.pop(session, set()):
            found = self._tickets.pop(ticket, None)
            if found is not None and self.forgotten is not None:
                self.forgotten(found)

    def moveSession(self, old: str, new: str) -> None:
        """The login of C{old} was renewed as C{new}: its tickets go with it."""
        for ticket in self._bySession.pop(old, set()):
            self._tickets[ticket] = attrs.evolve(self._tickets[ticket], session=new)
            self._bySession.setdefault(new, set()).add(ticket)

    def prune(self) -> None:
        """Forget the expired tickets."""
        now = self.clock.seconds()
        for ticket, found in list(self._tickets.items()):
            if found.expires <= now:
                self._forget(ticket, found)
                if self.forgotten is not None:
                    self.forgotten(found)

    def _forget(self, ticket: bytes, found: Ticket) -> None:
        del self._tickets[ticket]
        same = self._bySession.get(found.session)
        if same is not None:
            same.discard(ticket)
            if not same:
                del self._bySession[found.session]
