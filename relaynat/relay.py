"""
The relay's protocols: skeletons on port Y, clients on port X.  A connection
to either port is a control connection (TLS, a login, AMP) or a data
connection (a ticket, then spliced in the kernel to its other end), told
apart by its first byte.  The relay never holds a tunnel's plaintext: what
it splices is the seal's ciphertext (L{relaynat.seal}), or what a server
configured as not sealed sends.
"""

from __future__ import annotations

import itertools
from collections import Counter
import math
import secrets
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from relaynat.auth import ScramException, ScramLogin, Session, Sessions, Users, pepperFromKey
from relaynat.caps import Limits, Usage, throttleFor
from relaynat.channel import Channel, keepAlive
from relaynat.identity import RelayIdentity
from relaynat.lobby import Lobby
from relaynat.lograte import LogBudget
from relaynat.metrics import RelayMetrics
from relaynat.names import checkServerId, checkText, printable
from relaynat.registry import PooledConnection, Registry
from relaynat.splice import Outcome, SpliceHalf, splice
from relaynat.throttle import Throttle
from relaynat.tickets import Ticket, TicketBook
from relaynat.users import User
from relaynat.wire import (
    PING_TIMEOUT,
    SILENCE_LIMIT,
    TICKET_BATCH,
    TICKET_BYTES,
    TICKETS_PER_SESSION,
    TLS_HANDSHAKE,
    BadRequest,
    LimitReached,
    ListServers,
    Login,
    LoginFailed,
    LoginFinish,
    LoginRequired,
    OpenConnection,
    PermissionDenied,
    Register,
    RelaynatError,
    ServerWithdrawn,
    SessionEnded,
    SessionRefused,
    Tickets,
    UnknownServer,
    refusalCode,
)

_log = Logger()

_LOGIN_FAILED = "login failed: unknown user or wrong password"

#: Seconds before a failed login is answered: one guess per connection, and
#: a slow one, whatever the throttle (L{relaynat.throttle}) allows.
FAILED_LOGIN_DELAY = 1.0

#: The most bytes of one box from a connection that has not logged in: a
#: login message is a few hundred.
UNAUTHENTICATED_BOX_BYTES = 8 * 1024

#: The most bytes a data connection may send after its ticket before it is
#: joined: the tunnel's first handshake message is 51.
_EARLY_LIMIT = 4096


class Relay:
    """
    One relay: its identity and users, the registry of servers, the
    sessions of logged-in users and their tickets, the tunnels in flight,
    and its defences: the throttle of logins, the lobby of connections not
    logged in yet, and what one user may hold (L{Limits}).  Builds the
    factories for ports X and Y.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        identity: RelayIdentity,
        users: Users,
        joinTimeout: float = 10.0,
        maxPool: int = 64,
        sessionLifetime: float = 86400.0,
        silenceLimit: float = SILENCE_LIMIT,
        pingTimeout: float = PING_TIMEOUT,
        throttle: Throttle | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.reactor = reactor
        self.identity = identity
        self.users = users
        self.limits = limits if limits is not None else Limits()
        self.registry = Registry(reactor, joinTimeout, maxPool)
        self.sessions = Sessions(reactor, sessionLifetime)
        self.tickets = TicketBook(reactor, forgotten=self._ticketForgotten)
        self.throttle = throttle if throttle is not None else throttleFor(reactor, self.limits)
        self.failedLoginDelay = FAILED_LOGIN_DELAY
        self.lobby = Lobby(self.limits.max_unauthenticated, self.limits.max_unauthenticated_per_source)
        self.usage = Usage(self.limits)
        #: Warnings anyone can cause, bounded (L{relaynat.lograte}).
        self.budget = LogBudget(reactor, _log)
        self.silenceLimit = silenceLimit
        self.pingTimeout = pingTimeout
        #: Logged-in control channels, and the registered skeletons' among
        #: them by their login's session id.
        self.channels: set[RelayChannel] = set()
        self.skeletons: dict[str, SkeletonChannel] = {}
        self.tunnels: set[TunnelRecord] = set()
        self._tunnelIds = itertools.count(1)
        self.pepper = pepperFromKey(identity.options.privateKey)
        users.watchers.append(self.usersChanged)
        #: Deadlines that dropped a connection, by limit (for the metrics;
        #: the lobby and L{Usage} count their own caps).
        self.timeouts: Counter[str] = Counter()
        self.metrics = RelayMetrics()
        self.metrics.collecting(self)

    def clientFactory(self) -> PortFactory:
        """The factory for port X."""
        return PortFactory(self, "client", lambda: ClientChannel(self))

    def skeletonFactory(self) -> PortFactory:
        """The factory for port Y."""
        return PortFactory(self, "skeleton", lambda: SkeletonChannel(self))

    def newTunnelId(self) -> str:
        return f"t{next(self._tunnelIds)}-{secrets.token_hex(4)}"

    def heartbeat(self) -> None:
        """
        Drop skeletons whose control connection has been silent too long,
        and forget expired tickets.  (Pooled connections are watched by TCP
        keepalive: nothing may be written on them.)
        """
        now = self.reactor.seconds()
        for channel in list(self.skeletons.values()):
            if now - channel.lastHeard > self.silenceLimit:
                _log.warn(
                    "skeleton {skeleton} silent for {seconds:.0f} s: dropping it",
                    skeleton=channel.describe(),
                    seconds=now - channel.lastHeard,
                )
                channel.transport.abortConnection()
        self.tickets.prune()
        self.budget.flush()

    def endSession(self, session: Session) -> None:
        """A login ended: its session and its unused tickets are worthless."""
        self.sessions.revoke(session)
        self.tickets.revokeSession(session.id)

    def renewSession(self, previous: Session, current: Session) -> None:
        """A login was renewed: C{previous} ends, its unused tickets stay good under C{current}."""
        self.tickets.moveSession(previous.id, current.id)
        self.sessions.revoke(previous)
        for tunnel in self.tunnels:
            tunnel.renewed(previous.id, current.id)

    def _ticketForgotten(self, grant: Ticket) -> None:
        if grant.kind == "skeleton":
            # The connection asked for will never come: ask again if needed.
            self.registry.lost(grant.server)

    # What a reload of the users file takes back.

    def usersChanged(self, previous: dict[str, User], current: dict[str, User]) -> None:
        """
        The users file was reloaded: end the logins of users deleted or
        whose password changed, withdraw the servers whose registration is
        no longer allowed, and cut the tunnels that would not be allowed
        now.  Each is logged once.
        """
        for channel in list(self.channels):
            assert channel.login is not None
            why = _revoked(channel.login.user, previous, current)
            if why is not None:
                channel.revoke(why)
        for channel in list(self.skeletons.values()):
            assert channel.login is not None
            user = current.get(channel.login.user)
            if user is None:
                continue
            for serverId in self.registry.serversOf(channel):
                if not user.rights.mayRegister(serverId):
                    channel.withdraw(serverId, f"user {user.name} may no longer register it")
        for tunnel in list(self.tunnels):
            # Its logins may be older than the connections that made it
            # (a skeleton reconnects): the users decide, not the sessions.
            why = (
                _revoked(tunnel.user, previous, current)
                or _revoked(tunnel.owner, previous, current)
                or tunnel.forbidden(current)
            )
            if why is not None:
                tunnel.cut(why)

    # Data connections.

    def admit(self, connection: DataConnection, ticket: bytes) -> None:
        """A data connection sent its ticket: pool it, or join it, or refuse it."""
        grant = self.tickets.redeem(ticket, connection.kind)
        refusal = self._check(grant)
        if refusal is not None:
            self.budget.warn(
                "refused data connections",
                "data connection from {source} refused: {why}",
                source=connection.source(),
                why=refusal,
            )
            connection.refuse(SessionRefused(refusal))
            owner = self.skeletons.get(grant.session) if grant is not None else None
            if owner is not None:
                # Its user lost the right (or was deleted) since it
                # registered: asking it for more would be refused the same
                # way, for ever.  It registers again, or learns why not.
                _log.warn(
                    "skeleton {skeleton} dropped: {why}", skeleton=owner.describe(), why=refusal
                )
                owner.transport.abortConnection()
            return
        assert grant is not None
        connection.grant = grant
        connection.admitted()
        if connection.kind == "skeleton":
            self._pool(connection, grant)
            return
        try:
            self.usage.startJoin(grant.user, grant.session)
        except LimitReached as e:
            self.budget.warn(
                f"limits of {grant.user}",
                "tunnel of {user} to {server} refused: {why}",
                user=grant.user,
                server=grant.server,
                why=str(e),
            )
            connection.refuse(e)
            return
        ensureDeferred(self._join(connection, grant))

    def _check(self, grant: Ticket | None) -> str | None:
        if grant is None:
            return "unknown, used or expired ticket"
        if self.sessions.get(grant.session) is None:
            return "its login has ended"
        user = self.users.get(grant.user)
        if user is None:
            return f"user {grant.user} no longer exists"
        allowed = user.rights.mayRegister if grant.kind == "skeleton" else user.rights.mayJoin
        if not allowed(grant.server):
            return f"user {grant.user} may no longer use server {grant.server}"
        return None

    def _pool(self, connection: DataConnection, grant: Ticket) -> None:
        owner = self.skeletons.get(grant.session)
        if owner is None or not self.registry.owns(owner, grant.server):
            # Its skeleton went away (or gave the server up) meanwhile.
            self.registry.lost(grant.server)
            connection.close()
            return
        self.registry.offer(grant.server, connection)

    async def _join(self, client: DataConnection, grant: Ticket) -> None:
        client.claim = claim = self.registry.claim(grant.server)
        joined = False
        try:
            pooled = await claim
            joined = client.lost is None
        except CancelledError:
            return
        except RelaynatError as e:
            _log.warn(
                "tunnel of {user} to {server} not joined: {why}",
                user=grant.user,
                server=grant.server,
                why=str(e),
            )
            client.refuse(e)
            return
        finally:
            client.claim = None
            self.usage.endJoin(grant.user, grant.session, joined)
        assert isinstance(pooled, DataConnection)
        if not joined:
            # Gone while it waited: the claimed connection is spent.
            pooled.close()
            return
        TunnelRecord(self, grant, client, pooled)


def peerHost(transport: Any) -> str:
    """The address a connection comes from, as the throttle and the logs name it."""
    peer = transport.getPeer()
    return str(getattr(peer, "host", peer))


def _revoked(name: str, previous: dict[str, User], current: dict[str, User]) -> str | None:
    """Why a login of C{name} must end after a reload, if it must."""
    now = current.get(name)
    if now is None:
        return f"user {name} was deleted"
    before = previous.get(name)
    if before is not None and before.verifier() != now.verifier():
        return f"the password of {name} changed"
    return None


class PortFactory(Factory):
    """
    Port X or Y: each connection is looked at (L{FirstBytes}) before it is
    handed to TLS and a control channel, or to a L{DataConnection}.
    """

    noisy = False

    def __init__(self, relay: Relay, kind: str, control: Any) -> None:
        self.relay = relay
        self.kind = kind
        self.tls = TLSMemoryBIOFactory(
            relay.identity.options, False, Factory.forProtocol(control)
        )

    def startFactory(self) -> None:
        self.tls.doStart()

    def stopFactory(self) -> None:
        self.tls.doStop()

    def buildProtocol(self, addr: IAddress | None) -> FirstBytes:
        return FirstBytes(self, addr)


@implementer(IHalfCloseableProtocol)
class FirstBytes(Protocol):
    """
    A new connection to port X or Y, until its first byte says what it is:
    a TLS handshake (a control connection) or a data connection's ticket.
    From then on every event goes to the protocol chosen.

    Until it proves itself (logs in, or sends a good ticket) it is a guest
    of the relay's L{Lobby}, and has deadlines (L{Limits}): for its first
    byte and a data connection's whole ticket; for its TLS handshake; for
    its login, counted from the start.
    """

    def __init__(self, factory: PortFactory, addr: IAddress | None) -> None:
        self.portFactory = factory
        self.relay = factory.relay
        self.addr = addr
        self.inner: Protocol | None = None
        self._deadline: Any = None
        self._started = 0.0
        self._guest = False

    def source(self) -> str:
        return str(getattr(self.addr, "host", self.addr))

    def connectionMade(self) -> None:
        self._started = self.relay.reactor.seconds()
        self._guest = True
        self.relay.lobby.enter(self, self.source())
        self._until(
            self.relay.limits.first_bytes_timeout,
            "sent no ticket or TLS handshake in time", "first_bytes_timeout",
        )

    def _until(self, seconds: float, why: str, limit: str) -> None:
        self._cancelDeadline()
        self._deadline = self.relay.reactor.callLater(seconds, self._tooSlow, why, limit)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _tooSlow(self, why: str, limit: str) -> None:
        self._deadline = None
        self.relay.timeouts[limit] += 1
        self.relay.budget.warn(
            f"connections that {why}", "dropping connection from {source}: it {why}",
            source=self.source(), why=why,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def evict(self, why: str) -> None:
        self._guest = False
        self._cancelDeadline()
        self.relay.budget.warn(
            "evicted connections", "dropping connection from {source}: {why}",
            source=self.source(), why=why,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def handshaken(self) -> None:
        """Its TLS is up: it has what is left of the login timeout to log in."""
        if self._guest:
            left = self.relay.limits.login_timeout - (self.relay.reactor.seconds() - self._started)
            self._until(max(left, 0.0), "did not log in in time", "login_timeout")

    def admitted(self) -> None:
        """It logged in, or its ticket was good: it is no longer a guest."""
        if self._guest:
            self._guest = False
            self._cancelDeadline()
            self.relay.lobby.leave(self)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is None:
            if data[0] == TLS_HANDSHAKE:
                tls = self.portFactory.tls.buildProtocol(self.addr)
                channel: RelayChannel = tls.wrappedProtocol  # type: ignore[assignment]
                channel.guest = self
                self.inner = tls
                self._until(
                    self.relay.limits.handshake_timeout,
                    "did not finish its TLS handshake in time", "handshake_timeout",
                )
            else:
                self.inner = DataConnection(self.relay, self.portFactory.kind, self)
            self.inner.makeConnection(self.transport)
        self.inner.dataReceived(data)

    def readConnectionLost(self) -> None:
        inner = IHalfCloseableProtocol(self.inner, None)
        if inner is not None:
            inner.readConnectionLost()
        else:
            # TLS has no half-close: a control connection whose peer stopped
            # sending is finished.
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        inner = IHalfCloseableProtocol(self.inner, None)
        if inner is not None:
            inner.writeConnectionLost()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._cancelDeadline()
        if self._guest:
            self._guest = False
            self.relay.lobby.leave(self)
        if self.inner is not None:
            self.inner.connectionLost(reason)


class DataConnection(SpliceHalf):
    """
    A data connection: its ticket, then, from a skeleton, a wait in its
    server's pool; from a client, a wait for a pooled connection to be
    joined to.  Nothing after the ticket is read here once it is spliced.
    """

    def __init__(self, relay: Relay, kind: str, guest: FirstBytes | None = None) -> None:
        super().__init__("server" if kind == "skeleton" else "client")
        self.relay = relay
        self.kind = kind
        self.guest = guest
        self.grant: Ticket | None = None
        self.claim: Deferred[PooledConnection] | None = None
        self.admittedAt = 0.0
        self._preamble: bytes | None = b""

    def connectionMade(self) -> None:
        super().connectionMade()
        keepAlive(self.transport)

    def source(self) -> str:
        return peerHost(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            super().dataReceived(data)
        elif self._preamble is not None:
            self._preamble += data
            if len(self._preamble) >= TICKET_BYTES:
                ticket, rest = self._preamble[:TICKET_BYTES], self._preamble[TICKET_BYTES:]
                self._preamble = None
                self._early(rest)
                self.relay.admit(self, ticket)
        else:
            self._early(data)

    def admitted(self) -> None:
        """Its ticket was good."""
        self.admittedAt = self.relay.reactor.seconds()
        if self.guest is not None:
            self.guest.admitted()

    def _early(self, data: bytes) -> None:
        # Kept for the far end, still reading: a pooled connection that is
        # closed or reset must be noticed, and it says nothing before use.
        if data:
            self.early.append(data)
        if sum(map(len, self.early)) > _EARLY_LIMIT:
            self.relay.budget.warn(
                "data connections too eager",
                "data connection from {source} sent too much before its join",
                source=self.source(),
            )
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        if self.splice is None:
            # Given up before it was joined.
            self.transport.loseConnection()
        else:
            super().readConnectionLost()

    def refuse(self, error: RelaynatError) -> None:
        """Tell a client why it was not joined, and close."""
        if self.kind == "client":
            self.relay.metrics.refusals.labels(type(error).__name__).inc()
        if self.kind == "client" and self.lost is None:
            self.transport.write(refusalCode(error))
        self.transport.loseConnection()

    def close(self) -> None:
        """Drop this pooled connection: it is not needed."""
        self.transport.loseConnection()

    def lostBeforeSplice(self, reason: Failure) -> None:
        if self.claim is not None:
            self.claim.cancel()
        if self.kind == "skeleton" and self.grant is not None:
            self.relay.registry.discard(self.grant.server, self)


class RelayChannel(Channel):
    """
    What both ports' control connections share: login by
    SCRAM-SHA-256-PLUS, one attempt at a time, throttled by source.  Every
    command that needs a user checks for one.
    """

    #: Who logs in at this port, and what one of the other role is told.
    role: str
    atTheOtherPort: str

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay
        #: The session this connection's login created, if it logged in.
        self.login: Session | None = None
        #: The connection's place in the lobby, until it logs in.
        self.guest: FirstBytes | None = None
        self.lastHeard = relay.reactor.seconds()
        self._scram: ScramLogin | None = None
        self._failing = False
        self._failureAnswer: Deferred[dict[str, object]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.lastHeard = self.relay.reactor.seconds()
        super().dataReceived(data)

    def warnPeer(self, kind: str, format: str, **fields: Any) -> None:
        # Anyone can connect and send garbage: bounded, as every warning
        # strangers can cause.
        self.relay.budget.warn(kind, format, **fields)

    def boxLimit(self) -> int:
        if self.login is None:
            return UNAUTHENTICATED_BOX_BYTES
        return super().boxLimit()

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        if self.guest is not None:
            self.guest.handshaken()

    def source(self) -> str:
        return peerHost(self.transport)

    @Login.responder
    def loginStart(self, role: str, message: str) -> dict[str, str]:
        if role != self.role:
            # Before the throttle: a role at the wrong port guesses nothing.
            self.relay.budget.warn(
                "logins at the wrong port",
                "{source} logs in as a {role} at the {port}s' port",
                source=self.source(), role=printable(role, 20), port=self.role,
            )
            self.relay.metrics.loginFailures.labels("wrong_port").inc()
            raise BadRequest(self.atTheOtherPort)
        if self._scram is not None or self._failing:
            raise BadRequest("one login at a time: finish this one first")
        throttle = self.relay.throttle
        refused = throttle.refusedFor(self.source())
        if refused > 0:
            self.relay.budget.warn(
                "throttled logins",
                "login from {source} refused: too many attempts from there",
                source=self.source(),
            )
            self.relay.metrics.loginFailures.labels("throttled").inc()
            raise LoginFailed(
                "too many login attempts from this address or its network;"
                f" try again in {math.ceil(refused)} s"
            )
        # Counted before it is parsed: the first step alone (a probe of
        # which names exist) costs as much as a failure.
        throttle.attempted(self.source())
        scram = ScramLogin(self.relay.users, self.relay.identity.channelBinding, self.relay.pepper)
        try:
            serverFirst = scram.first(message)
        except ScramException as e:
            self.relay.budget.warn(
                "failed logins", "malformed login from {source}: {why}",
                source=self.source(), why=str(e),
            )
            self.relay.metrics.loginFailures.labels("malformed").inc()
            raise LoginFailed(_LOGIN_FAILED) from None
        self._scram = scram
        return {"message": serverFirst}

    @LoginFinish.responder
    def loginFinish(self, message: str) -> dict[str, object] | Deferred[dict[str, object]]:
        scram, self._scram = self._scram, None
        if scram is None:
            raise BadRequest("send Login before LoginFinish")
        try:
            serverFinal = scram.final(message)
        except ScramException:
            return self._loginFailed(scram.user)
        assert scram.user is not None
        self.relay.throttle.succeeded(self.source())
        previous = self.login
        self.login = self.relay.sessions.issue(scram.user)
        self.relay.channels.add(self)
        if previous is not None:
            self.relay.renewSession(previous, self.login)
            self.loginRenewed(previous, self.login)
        if self.guest is not None:
            self.guest.admitted()
        _log.info("{user} logged in from {source}", user=scram.user, source=self.source())
        return {"message": serverFinal, "session": self.login.id, "expires": self.login.expires}

    def _loginFailed(self, user: str | None) -> Deferred[dict[str, object]]:
        self._failing = True
        self.relay.metrics.loginFailures.labels("password").inc()
        self.relay.budget.warn(
            "failed logins", "failed login for {user} from {source}",
            user=user if user and user.isprintable() else printable(user or ""),
            source=self.source(),
        )

        def refuse() -> dict[str, object]:
            # One guess per connection: it goes once the answer is out.
            self.relay.reactor.callLater(0, self.closeSoon, self.relay.reactor)
            raise LoginFailed(_LOGIN_FAILED)

        def gone(failure: Failure) -> Failure:
            # Cancelled: the connection went before the answer; nobody reads it.
            failure.trap(CancelledError)
            return Failure(LoginFailed(_LOGIN_FAILED))

        self._failureAnswer = deferLater(self.relay.reactor, self.relay.failedLoginDelay, refuse)
        return self._failureAnswer.addErrback(gone)

    def loginRenewed(self, previous: Session, current: Session) -> None:
        """This connection logged in again: what was filed under the old session moves."""

    def loggedInUser(self) -> User:
        """The user logged in on this connection, as the users file says now."""
        if self.login is None:
            raise LoginRequired("log in first")
        if self.relay.sessions.get(self.login.id) is None:
            raise SessionRefused("this login's session expired: log in again")
        user = self.relay.users.get(self.login.user)
        if user is None:
            # Deleted since the login: its session is worthless now.
            self.relay.endSession(self.login)
            raise SessionRefused(f"user {self.login.user} no longer exists")
        return user

    def revoke(self, why: str) -> None:
        """
        This login may no longer be used (a reload took it back): say why
        to the peer, end its session and close the connection.
        """
        assert self.login is not None
        _log.warn(
            "login of {user} from {source} ended: {why}",
            user=self.login.user, source=self.source(), why=why,
        )
        self.relay.channels.discard(self)
        self.relay.endSession(self.login)
        for tunnel in list(self.relay.tunnels):
            if tunnel.belongsTo(self.login.id):
                tunnel.cut(f"its login ended: {why}")
        self.callRemote(SessionEnded, reason=why)
        self.closeSoon(self.relay.reactor)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.relay.channels.discard(self)
        if self.login is not None:
            self.relay.endSession(self.login)
        if self._failureAnswer is not None and not self._failureAnswer.called:
            self._failureAnswer.cancel()
        super().connectionLost(reason)


class SkeletonChannel(RelayChannel):
    """
    A skeleton's control connection: registers servers (and again, to change
    them), is asked for connections.
    """

    role = "skeleton"
    atTheOtherPort = (
        "this is the relay's port for skeletons (port Y); a client connects to"
        " its port for clients (port X): check [client] relay"
    )

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.name = ""
        self.registered = False
        #: The user the servers are counted against (L{Usage}), and how many.
        self._owner: str | None = None
        self._counted = 0

    def loginRenewed(self, previous: Session, current: Session) -> None:
        # Its data connections bring tickets of the new session from now on.
        if self.relay.skeletons.get(previous.id) is self:
            del self.relay.skeletons[previous.id]
            self.relay.skeletons[current.id] = self

    def describe(self) -> str:
        # Only the name the skeleton gave: its address is not for clients
        # or other skeletons to see.
        return repr(self.name)

    def requestConnection(self, serverId: str) -> Deferred[None]:
        """Ask for one more data connection for C{serverId}, with its ticket."""
        assert self.login is not None
        ticket = self.relay.tickets.issue("skeleton", self.login.id, self.login.user, serverId)
        d = self.callRemote(OpenConnection, server=serverId, ticket=ticket)

        def failed(failure: Failure) -> Failure:
            self.relay.tickets.discard(ticket)
            return failure

        return d.addCallbacks(lambda _: None, failed)

    @Register.responder
    def register(
        self, name: str, servers: list[dict[str, str]], pool: int
    ) -> dict[str, object]:
        user = self.loggedInUser()
        assert self.login is not None
        if self.registered and user.name != self._owner:
            raise BadRequest("this connection registered its servers as another user")
        if not servers:
            raise BadRequest("a skeleton must register at least one server")
        name = checkText("skeleton name", name)
        # Its refusals name it as the relay knows it, or at its first
        # registration by the name it gives.
        who = self.describe() if self.registered else repr(name)
        entries = [
            (checkServerId(s["id"]), checkText("description", s["description"]))
            for s in servers
        ]
        for serverId, _ in entries:
            if not user.rights.mayRegister(serverId):
                _log.warn(
                    "{user} may not register {server}", user=user.name, server=serverId
                )
                raise PermissionDenied(f"user {user.name} may not register server {serverId}")
        # Counted against the cap as the first registration is: what this
        # connection holds already is replaced, not added to.
        more = len(entries) - self._counted
        try:
            if more > 0:
                self.relay.usage.register(user.name, more)
        except LimitReached as e:
            _log.warn(
                "skeleton {skeleton} of {user} refused: {why}",
                skeleton=who, user=user.name, why=str(e),
            )
            raise
        try:
            self.relay.registry.check(self, entries)
        except RelaynatError as e:
            if more > 0:
                self.relay.usage.unregister(user.name, more)
            _log.warn(
                "skeleton {skeleton} of {user} from {peer} refused: {why}",
                skeleton=who,
                user=user.name,
                peer=self.source(),
                why=str(e),
            )
            raise
        # Taken from here on: the registry logs the servers it adds with
        # this name, and the first registration's pool is asked for at
        # once, whose tickets must find their skeleton.
        first = not self.registered
        previousName, self.name = self.name, name
        if first:
            self.relay.skeletons[self.login.id] = self
        changes = self.relay.registry.register(self, entries, pool)
        if more < 0:
            self.relay.usage.unregister(user.name, -more)
        self._owner, self._counted = user.name, len(entries)
        self.registered = True
        if first:
            _log.info(
                "skeleton {skeleton} of {user} connected from {peer} with {count} servers",
                skeleton=self.describe(),
                user=user.name,
                peer=self.source(),
                count=len(servers),
            )
        elif changes or previousName != name:
            _log.info(
                "skeleton {skeleton} of {user} changed its servers: added {added},"
                " withdrew {removed}, changed {changed}{renamed}",
                skeleton=self.describe(),
                user=user.name,
                added=", ".join(changes.added) or "none",
                removed=", ".join(changes.removed) or "none",
                changed=", ".join(sorted({*changes.described, *changes.resized})) or "none",
                renamed=f"; renamed from {previousName!r}" if previousName != name else "",
            )
        return {}

    def withdraw(self, serverId: str, why: str) -> None:
        """Take C{serverId} off this skeleton: its registration is no longer allowed."""
        _log.warn(
            "server {server} of skeleton {skeleton} withdrawn: {why}",
            server=serverId, skeleton=self.describe(), why=why,
        )
        self.relay.registry.withdraw(serverId)
        if self._owner is not None and self._counted > 0:
            self._counted -= 1
            self.relay.usage.unregister(self._owner, 1)
        self.callRemote(ServerWithdrawn, server=serverId, reason=why)

    def _uncount(self) -> None:
        if self._owner is not None:
            self.relay.usage.unregister(self._owner, self._counted)
        self._owner, self._counted = None, 0

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # Unregister first: AMP's connectionLost fails the pending
        # OpenConnection calls, and waiting clients should hear that the
        # skeleton went away rather than that a request failed.
        if self.registered:
            _log.info("skeleton {skeleton} disconnected", skeleton=self.describe())
            if self.login is not None:
                self.relay.skeletons.pop(self.login.id, None)
            self.relay.registry.unregister(self)
            self._uncount()
        super().connectionLost(reason)


class ClientChannel(RelayChannel):
    """A client's control connection: lists servers and hands out tickets."""

    role = "client"
    atTheOtherPort = (
        "this is the relay's port for clients (port X); a skeleton connects to"
        " its port for skeletons (port Y): check [skeleton] relay"
    )

    @ListServers.responder
    def listServers(self) -> dict[str, object]:
        user = self.loggedInUser()
        servers = [s for s in self.relay.registry.listing() if user.rights.mayJoin(str(s["id"]))]
        return {"servers": servers}

    @Tickets.responder
    def giveTickets(self, server: str, count: int) -> dict[str, object]:
        user = self.loggedInUser()
        assert self.login is not None
        checkServerId(server)
        if not 1 <= count <= TICKET_BATCH:
            raise BadRequest(f"ask for 1 to {TICKET_BATCH} tickets at a time")
        if not user.rights.mayJoin(server):
            # Said as for an unknown id: what a user may not join, it does
            # not get to know about either.
            _log.warn("{user} may not join {server}", user=user.name, server=server)
            raise UnknownServer(
                f"no server {server} is registered at this relay;"
                " 'relaynat list' shows the ones that are"
            )
        self.relay.registry.checkOnline(server)
        held = self.relay.tickets.outstanding(self.login.id)
        if held + count > TICKETS_PER_SESSION:
            raise BadRequest(
                f"this login holds {held} unused tickets; use them before asking for more"
            )
        tickets = [
            self.relay.tickets.issue("client", self.login.id, user.name, server)
            for _ in range(count)
        ]
        return {"tickets": tickets}


class TunnelRecord:
    """
    One tunnel in the relay's books, from join to the end of its splice,
    when it is logged with its server, bytes each way, duration and end.
    It belongs to two logins, the client's and the skeleton's, and to their
    users, who must keep the right to it.
    """

    def __init__(
        self, relay: Relay, grant: Ticket, client: DataConnection, server: DataConnection
    ) -> None:
        assert server.grant is not None
        self.relay = relay
        self.id = relay.newTunnelId()
        self.server = grant.server
        self.user = grant.user
        self.owner = server.grant.user
        self.sessions = {grant.session, server.grant.session}
        self.started = relay.reactor.seconds()
        self.firstEnd: str | None = None
        self._client = client
        self._cutFor: str | None = None
        relay.tunnels.add(self)
        _log.info(
            "tunnel {tunnel} of {user} to {server} joined",
            tunnel=self.id,
            user=self.user,
            server=self.server,
        )
        metrics = relay.metrics
        metrics.tunnelsSetUp.labels(self.server).inc()
        metrics.setupSeconds.observe(self.started - client.admittedAt)
        self.splice = splice(relay.reactor, client, server, self.finished, ended=self.ended)

    def carried(self) -> tuple[int, int]:
        """Bytes so far, up (client to server) and down."""
        return self.splice.carried("client"), self.splice.carried("server")

    def belongsTo(self, sessionId: str) -> bool:
        return sessionId in self.sessions

    def renewed(self, previous: str, current: str) -> None:
        if previous in self.sessions:
            self.sessions.discard(previous)
            self.sessions.add(current)

    def forbidden(self, users: dict[str, User]) -> str | None:
        """Why C{users} (a reloaded users file) no longer allow this tunnel, if they do not."""
        user, owner = users.get(self.user), users.get(self.owner)
        if user is None:
            return f"user {self.user} was deleted"
        if owner is None:
            return f"user {self.owner}, whose skeleton fronts {self.server}, was deleted"
        if not user.rights.mayJoin(self.server):
            return f"user {self.user} may no longer join {self.server}"
        if not owner.rights.mayRegister(self.server):
            return f"user {self.owner} may no longer register {self.server}"
        return None

    def cut(self, why: str) -> None:
        """End this tunnel with a reset both ways, for C{why}."""
        if self._cutFor is None and self in self.relay.tunnels:
            self._cutFor = why
            _log.warn(
                "tunnel {tunnel} of {user} to {server} cut: {why}",
                tunnel=self.id, user=self.user, server=self.server, why=why,
            )
            self.splice.cut(self._client, why)

    def ended(self, name: str) -> None:
        if self.firstEnd is None:
            self.firstEnd = name

    def finished(self, joined: Any, outcome: Outcome) -> None:
        self.relay.tunnels.discard(self)
        self.relay.usage.tunnelEnded(self.user)
        done = self.relay.metrics.bytesDone
        done[(self.server, "up")] += joined.carried("client")
        done[(self.server, "down")] += joined.carried("server")
        if outcome is None:
            how = f"closed by {self.firstEnd or 'both'}"
        else:
            side, why = outcome
            how = f"cut on the {side} side ({why})"
        _log.info(
            "tunnel {tunnel} of {user} to {server} ended, {how}: {up} bytes up,"
            " {down} bytes down in {duration:.3f} s",
            tunnel=self.id,
            user=self.user,
            server=self.server,
            how=how,
            up=joined.carried("client"),
            down=joined.carried("server"),
            duration=self.relay.reactor.seconds() - self.started,
        )
