"""
The wire format shared by relay, skeleton and client: every AMP command of
the control connections, their errors, and the few bytes the relay itself
reads or writes on a data connection.

Control connections (TLS, AMP):
  - skeleton -> relay (port Y): L{Login}, L{LoginFinish}, L{Register}
    (again on the same connection when a reload changed its servers).
  - relay -> skeleton: L{OpenConnection}, with a ticket for the new data
    connection; L{ServerWithdrawn} when its user lost the right to a server.
  - client -> relay (port X): L{Login}, L{LoginFinish}, L{ListServers},
    L{Tickets}.
  - relay -> skeleton or client: L{SessionEnded}, just before the relay
    closes a connection whose login it revoked.
  - either way: L{Ping}.

Data connections (plain TCP to the same ports; the relay tells them from TLS
by their first byte, see L{TICKET_BYTES}) start with a one-time ticket
(L{TICKET_BYTES} random bytes, never starting with a TLS record's first
byte), which is all the relay reads of them.  After it, a client's data
connection carries the tunnel's handshake and records to the skeleton
(L{relaynat.seal}), which the relay splices without reading; if the relay
cannot join it, it writes L{JOIN_REFUSED} and a code of L{JOIN_REFUSALS}
instead, and closes.
"""

from __future__ import annotations

import re

from twisted.protocols import amp

#: Seconds between heartbeats: skeletons and clients ping their control
#: connection this often.  NAT mappings and stateful firewalls forget silent
#: connections; these keep them alive, and find the dead ones.
HEARTBEAT = 30.0

#: Seconds a ping may go unanswered before its connection is dropped.
PING_TIMEOUT = 15.0

#: A skeleton's control connection silent this long is dropped by the relay,
#: so that a skeleton that moved (new address, new route) can register again.
SILENCE_LIMIT = 3 * HEARTBEAT

#: A server id: short, printable, safe in logs, file names and URLs.
SERVER_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

#: The length of a data connection's ticket.
TICKET_BYTES = 32

#: The first byte of every TLS record carrying a handshake: how the relay
#: tells a control connection from a data connection.  No ticket starts so.
TLS_HANDSHAKE = 0x16

#: What the relay writes on a client's data connection it cannot join,
#: before one byte of the code: no handshake frame is empty, so a client
#: cannot mistake it for the skeleton's answer.
JOIN_REFUSED = b"\0\0"

#: The most tickets one L{Tickets} call hands out, and the most unused
#: tickets a session may hold.
TICKET_BATCH = 16
TICKETS_PER_SESSION = 256


class RelaynatError(Exception):
    """
    An error that crosses the wire: its message is meant for the user at the
    far end and must say what went wrong and what to do.
    """


class UnknownServer(RelaynatError):
    """The relay has never seen a server with this id."""


class ServerOffline(RelaynatError):
    """The server was registered, but its skeleton is not connected now."""


class DuplicateServer(RelaynatError):
    """Another skeleton already registered this server id."""


class TargetRefused(RelaynatError):
    """The skeleton could not connect to the server it fronts."""


class JoinTimeout(RelaynatError):
    """The skeleton did not provide a connection in time."""


class SkeletonGone(RelaynatError):
    """The skeleton went away while a tunnel was being set up."""


class BadRequest(RelaynatError):
    """The request is malformed (a bad server id, an empty registration)."""


class LoginFailed(RelaynatError):
    """Unknown user, wrong password, or too many failures: one error for all."""


class SessionRefused(RelaynatError):
    """A connection's session (or its ticket) is not valid: expired, revoked or unknown."""


class PermissionDenied(RelaynatError):
    """The user may not do this (register that server id, say)."""


class LoginRequired(RelaynatError):
    """A command that needs a login came before it."""


class LimitReached(RelaynatError):
    """The user holds as much as the relay lets one user hold (tunnels, joins, servers)."""


_ERRORS: dict[type[Exception], bytes] = {
    UnknownServer: b"UNKNOWN_SERVER",
    ServerOffline: b"SERVER_OFFLINE",
    DuplicateServer: b"DUPLICATE_SERVER",
    TargetRefused: b"TARGET_REFUSED",
    JoinTimeout: b"JOIN_TIMEOUT",
    SkeletonGone: b"SKELETON_GONE",
    BadRequest: b"BAD_REQUEST",
    LoginFailed: b"LOGIN_FAILED",
    SessionRefused: b"SESSION_REFUSED",
    PermissionDenied: b"PERMISSION_DENIED",
    LoginRequired: b"LOGIN_REQUIRED",
    LimitReached: b"LIMIT_REACHED",
}

#: Why the relay did not join a client's data connection, by the code it
#: writes after L{JOIN_REFUSED}.
JOIN_REFUSALS: dict[int, type[RelaynatError]] = {
    1: UnknownServer,
    2: ServerOffline,
    3: JoinTimeout,
    4: SkeletonGone,
    5: SessionRefused,
    6: LimitReached,
}
_REFUSAL_CODES = {kind: code for code, kind in JOIN_REFUSALS.items()}


def refusalCode(error: RelaynatError) -> bytes:
    """The bytes the relay writes to refuse a join for C{error}."""
    return JOIN_REFUSED + bytes([_REFUSAL_CODES.get(type(error), 4)])


def refusal(code: int, serverId: str) -> RelaynatError:
    """The client's error for the relay's refusal C{code} of a join to C{serverId}."""
    kind = JOIN_REFUSALS.get(code, SkeletonGone)
    message = {
        UnknownServer: f"no server {serverId} is registered at this relay;"
        " 'relaynat list' shows the ones that are",
        ServerOffline: f"server {serverId} is offline: its skeleton is not connected",
        JoinTimeout: f"server {serverId} did not provide a connection in time",
        SkeletonGone: f"the skeleton of server {serverId} went away during the join",
        SessionRefused: "the relay refused this connection's ticket (the login ended); retrying",
        LimitReached: f"the relay refused a tunnel to {serverId}: this user holds as many"
        " tunnels (or joins waiting) as the relay allows one user",
    }[kind]
    return kind(message)


# Commands with no arguments or no answer values share this empty list.
_NOTHING: list[tuple[bytes, amp.Argument]] = []


class _Command(amp.Command):
    """
    A command whose malformed arguments (a nested box past AMP's length
    limit, a string that is not UTF-8) are answered with L{BadRequest},
    not an unhandled error with a traceback in the log.
    """

    @classmethod
    def parseArguments(cls, box: amp.AmpBox, protocol: amp.AMP) -> dict[str, object]:
        try:
            return super().parseArguments(box, protocol)  # type: ignore[no-any-return]
        except Exception as e:
            name = cls.commandName.decode("ascii", "replace")
            raise BadRequest(f"malformed arguments to {name}: {e!r}"[:200]) from None


def _errors(*kinds: type[Exception]) -> dict[type[Exception], bytes]:
    return {kind: _ERRORS[kind] for kind in kinds}


class Login(_Command):
    """
    The first step of SCRAM-SHA-256-PLUS (tls-server-end-point binding) on a
    control connection: the role logging in (C{client} or C{skeleton}) and
    the client-first message; answered server-first.  The role is checked
    against the port first, so that a role at the other role's port (the
    commonest mistake in a configuration) is told so before anything else.
    """

    arguments = [(b"role", amp.Unicode()), (b"message", amp.Unicode())]
    response = [(b"message", amp.Unicode())]
    errors = _errors(LoginFailed, BadRequest)


class LoginFinish(_Command):
    """
    The second step: client-final; answered server-final (which the client
    checks: the relay proves it knows the verifier), the session this
    connection now holds, and when it expires.
    """

    arguments = [(b"message", amp.Unicode())]
    response = [
        (b"message", amp.Unicode()),
        (b"session", amp.Unicode()),
        (b"expires", amp.Float()),
    ]
    errors = _errors(LoginFailed, BadRequest)


class Register(_Command):
    """
    Sent by a logged-in skeleton on its control connection: who it is, which
    servers it fronts, and how many idle connections per server it keeps
    ready.  Sent again on the same connection (a reload), it replaces the
    set, all or none: servers no longer listed are withdrawn, new ones
    added, and those listed again keep their registration (their C{since},
    pool and tunnels), with the description and pool given now.  A refused
    one changes nothing, and is checked as the first is (ids, rights, the
    user's cap on servers, counting what this connection holds as replaced).
    """

    arguments = [
        (b"name", amp.Unicode()),
        (
            b"servers",
            amp.AmpList([(b"id", amp.Unicode()), (b"description", amp.Unicode())]),
        ),
        (b"pool", amp.Integer()),
    ]
    response = _NOTHING
    errors = _errors(
        DuplicateServer, BadRequest, PermissionDenied, LoginRequired, SessionRefused, LimitReached
    )


class OpenConnection(_Command):
    """
    Relay to skeleton: open one more data connection for C{server}, starting
    with C{ticket}.  Answered once the connection is made and the ticket
    sent, or with an error.
    """

    arguments = [(b"server", amp.Unicode()), (b"ticket", amp.String())]
    response = _NOTHING
    errors = _errors(UnknownServer, SkeletonGone, BadRequest)


class Tickets(_Command):
    """
    Client to relay, logged in: up to C{count} (at most L{TICKET_BATCH})
    one-time tickets, each good for one data connection joined to
    C{server}, for as long as this login lasts.
    """

    arguments = [(b"server", amp.Unicode()), (b"count", amp.Integer())]
    response = [(b"tickets", amp.ListOf(amp.String()))]
    errors = _errors(
        UnknownServer, ServerOffline, BadRequest, LoginRequired, SessionRefused
    )


class ListServers(_Command):
    """Client to relay, logged in: the servers this user may join now."""

    arguments = _NOTHING
    response = [
        (
            b"servers",
            amp.AmpList(
                [
                    (b"id", amp.Unicode()),
                    (b"description", amp.Unicode()),
                    (b"since", amp.Float()),
                    (b"idle", amp.Integer()),
                ]
            ),
        )
    ]
    errors = _errors(LoginRequired, SessionRefused, BadRequest)


class Ping(_Command):
    """Either way: are you still there?"""

    arguments = _NOTHING
    response = _NOTHING
    errors = _errors(BadRequest)


class SessionEnded(_Command):
    """
    Relay to skeleton or client: this connection's login was revoked (its
    user deleted, its password changed, its rights gone): C{reason} says
    which, for the peer's log.  The relay closes the connection next.
    """

    arguments = [(b"reason", amp.Unicode())]
    response = _NOTHING
    requiresAnswer = False


class ServerWithdrawn(_Command):
    """
    Relay to skeleton: C{server} is no longer registered (its user may no
    longer register it); C{reason} says so, for the skeleton's log.  The
    skeleton's other servers stay.
    """

    arguments = [(b"server", amp.Unicode()), (b"reason", amp.Unicode())]
    response = _NOTHING
    requiresAnswer = False
