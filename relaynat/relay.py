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

from relaynat.auth import ScramException, ScramLogin, Session, Sessions, Throttle, Users
from relaynat.channel import Channel, keepAlive
from relaynat.identity import RelayIdentity
from relaynat.names import checkServerId, checkText
from relaynat.registry import PooledConnection, Registry
from relaynat.splice import Outcome, SpliceHalf, splice
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
    ListServers,
    Login,
    LoginFailed,
    LoginFinish,
    LoginRequired,
    OpenConnection,
    PermissionDenied,
    Register,
    RelaynatError,
    SessionRefused,
    Tickets,
    UnknownServer,
    refusalCode,
)

_log = Logger()

_LOGIN_FAILED = "login failed: unknown user or wrong password"

#: Seconds a new connection may take to send its first byte, and a data
#: connection its whole ticket.
FIRST_BYTES_WAIT = 10.0

#: The most bytes a data connection may send after its ticket before it is
#: joined: the tunnel's first handshake message is 51.
_EARLY_LIMIT = 4096


class Relay:
    """
    One relay: its identity and users, the registry of servers, the
    sessions of logged-in users and their tickets, and the tunnels in
    flight.  Builds the factories for ports X and Y.
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
    ) -> None:
        self.reactor = reactor
        self.identity = identity
        self.users = users
        self.registry = Registry(reactor, joinTimeout, maxPool)
        self.sessions = Sessions(reactor, sessionLifetime)
        self.tickets = TicketBook(reactor, forgotten=self._ticketForgotten)
        self.throttle = throttle if throttle is not None else Throttle(reactor)
        self.silenceLimit = silenceLimit
        self.pingTimeout = pingTimeout
        #: Registered skeletons' control channels, by their login's session id.
        self.skeletons: dict[str, SkeletonChannel] = {}
        self.tunnels: set[TunnelRecord] = set()
        self._tunnelIds = itertools.count(1)
        # Unknown users get verifiers made from this, so that they fail as a
        # wrong password does; it lives as long as the process.
        self.pepper = secrets.token_bytes(32)

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

    def endSession(self, session: Session) -> None:
        """A login ended: its session and its unused tickets are worthless."""
        self.sessions.revoke(session)
        self.tickets.revokeSession(session.id)

    def renewSession(self, previous: Session, current: Session) -> None:
        """A login was renewed: C{previous} ends, its unused tickets stay good under C{current}."""
        self.tickets.moveSession(previous.id, current.id)
        self.sessions.revoke(previous)

    def _ticketForgotten(self, grant: Ticket) -> None:
        if grant.kind == "skeleton":
            # The connection asked for will never come: ask again if needed.
            self.registry.lost(grant.server)

    # Data connections.

    def admit(self, connection: DataConnection, ticket: bytes) -> None:
        """A data connection sent its ticket: pool it, or join it, or refuse it."""
        grant = self.tickets.redeem(ticket, connection.kind)
        refusal = self._check(grant)
        if refusal is not None:
            _log.warn(
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
        if connection.kind == "skeleton":
            self._pool(connection, grant)
        else:
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
        try:
            pooled = await claim
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
        assert isinstance(pooled, DataConnection)
        if client.lost is not None:
            # Gone while it waited: the claimed connection is spent.
            pooled.close()
            return
        TunnelRecord(self, grant, client, pooled)


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
    """

    def __init__(self, factory: PortFactory, addr: IAddress | None) -> None:
        self.portFactory = factory
        self.addr = addr
        self.inner: Protocol | None = None
        self._deadline: Any = None

    def connectionMade(self) -> None:
        self._deadline = self.portFactory.relay.reactor.callLater(
            FIRST_BYTES_WAIT, self._tooSlow
        )

    def _tooSlow(self) -> None:
        self._deadline = None
        if self.inner is None:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.inner is None:
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
            if data[0] == TLS_HANDSHAKE:
                self.inner = self.portFactory.tls.buildProtocol(self.addr)
            else:
                self.inner = DataConnection(self.portFactory.relay, self.portFactory.kind)
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
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self.inner is not None:
            self.inner.connectionLost(reason)


class DataConnection(SpliceHalf):
    """
    A data connection: its ticket, then, from a skeleton, a wait in its
    server's pool; from a client, a wait for a pooled connection to be
    joined to.  Nothing after the ticket is read here once it is spliced.
    """

    def __init__(self, relay: Relay, kind: str) -> None:
        super().__init__("server" if kind == "skeleton" else "client")
        self.relay = relay
        self.kind = kind
        self.grant: Ticket | None = None
        self.claim: Deferred[PooledConnection] | None = None
        self._preamble = b""
        self._deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        keepAlive(self.transport)
        self._deadline = self.relay.reactor.callLater(FIRST_BYTES_WAIT, self._tooSlow)

    def _tooSlow(self) -> None:
        self._deadline = None
        _log.warn("data connection from {source} sent no ticket in time", source=self.source())
        self.transport.abortConnection()

    def source(self) -> str:
        peer = self.transport.getPeer()
        return str(getattr(peer, "host", peer))

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            super().dataReceived(data)
        elif self._deadline is not None:
            self._preamble += data
            if len(self._preamble) >= TICKET_BYTES:
                ticket, rest = self._preamble[:TICKET_BYTES], self._preamble[TICKET_BYTES:]
                self._preamble = b""
                self._deadline.cancel()
                self._deadline = None
                self._early(rest)
                self.relay.admit(self, ticket)
        else:
            self._early(data)

    def _early(self, data: bytes) -> None:
        # Kept for the far end, still reading: a pooled connection that is
        # closed or reset must be noticed, and it says nothing before use.
        if data:
            self.early.append(data)
        if sum(map(len, self.early)) > _EARLY_LIMIT:
            _log.warn(
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
        if self.kind == "client" and self.lost is None:
            self.transport.write(refusalCode(error))
        self.transport.loseConnection()

    def close(self) -> None:
        """Drop this pooled connection: it is not needed."""
        self.transport.loseConnection()

    def lostBeforeSplice(self, reason: Failure) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self.claim is not None:
            self.claim.cancel()
        if self.kind == "skeleton" and self.grant is not None:
            self.relay.registry.discard(self.grant.server, self)


class RelayChannel(Channel):
    """
    What both ports' control connections share: login by
    SCRAM-SHA-256-PLUS.  Every command that needs a user checks for one.
    """

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay
        #: The session this connection's login created, if it logged in.
        self.login: Session | None = None
        self.lastHeard = relay.reactor.seconds()
        self._scram: ScramLogin | None = None

    def dataReceived(self, data: bytes) -> None:
        self.lastHeard = self.relay.reactor.seconds()
        super().dataReceived(data)

    def source(self) -> str:
        peer = self.transport.getPeer()
        return str(getattr(peer, "host", peer))

    def _keys(self, user: str | None) -> list[str]:
        keys = [f"source:{self.source()}"]
        if user is not None:
            keys.append(f"user:{user}")
        return keys

    @Login.responder
    def loginStart(self, message: str) -> dict[str, str]:
        scram = ScramLogin(self.relay.users, self.relay.identity.channelBinding, self.relay.pepper)
        try:
            serverFirst = scram.first(message)
        except ScramException as e:
            _log.warn(
                "malformed login from {source}: {why}", source=self.source(), why=str(e)
            )
            raise LoginFailed(_LOGIN_FAILED) from None
        locked = self.relay.throttle.lockedFor(self._keys(scram.user))
        if locked > 0:
            _log.warn(
                "login for {user} from {source} refused: locked for {seconds:.0f} s",
                user=scram.user,
                source=self.source(),
                seconds=locked,
            )
            raise LoginFailed(
                "too many failed logins from this address or for this user;"
                f" try again in {math.ceil(locked / 60)} min"
            )
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
        self.relay.throttle.succeeded(f"user:{scram.user}")
        previous = self.login
        self.login = self.relay.sessions.issue(scram.user)
        if previous is not None:
            self.relay.renewSession(previous, self.login)
            self.loginRenewed(previous, self.login)
        _log.info("{user} logged in from {source}", user=scram.user, source=self.source())
        return {"message": serverFinal, "session": self.login.id, "expires": self.login.expires}

    def _loginFailed(self, user: str | None) -> Deferred[dict[str, object]]:
        delay = self.relay.throttle.failed(self._keys(user))
        _log.warn("failed login for {user} from {source}", user=user, source=self.source())

        def refuse() -> dict[str, object]:
            raise LoginFailed(_LOGIN_FAILED)

        return deferLater(self.relay.reactor, delay, refuse)

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

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.login is not None:
            self.relay.endSession(self.login)
        super().connectionLost(reason)


class SkeletonChannel(RelayChannel):
    """A skeleton's control connection: registers servers, is asked for connections."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.name = ""
        self.registered = False

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
        if self.registered:
            raise BadRequest("this connection is already in use")
        if not servers:
            raise BadRequest("a skeleton must register at least one server")
        self.name = checkText("skeleton name", name)
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
        assert self.login is not None
        # Filed first: the registry asks for connections at once, and their
        # tickets must find their skeleton.
        self.relay.skeletons[self.login.id] = self
        try:
            self.relay.registry.register(self, entries, pool)
        except Exception as e:
            del self.relay.skeletons[self.login.id]
            _log.warn(
                "skeleton {skeleton} of {user} from {peer} refused: {why}",
                skeleton=self.describe(),
                user=user.name,
                peer=self.source(),
                why=str(e),
            )
            raise
        self.registered = True
        _log.info(
            "skeleton {skeleton} of {user} connected from {peer} with {count} servers",
            skeleton=self.describe(),
            user=user.name,
            peer=self.source(),
            count=len(servers),
        )
        return {}

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # Unregister first: AMP's connectionLost fails the pending
        # OpenConnection calls, and waiting clients should hear that the
        # skeleton went away rather than that a request failed.
        if self.registered:
            _log.info("skeleton {skeleton} disconnected", skeleton=self.describe())
            if self.login is not None:
                self.relay.skeletons.pop(self.login.id, None)
            self.relay.registry.unregister(self)
        super().connectionLost(reason)


class ClientChannel(RelayChannel):
    """A client's control connection: lists servers and hands out tickets."""

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
    """

    def __init__(
        self, relay: Relay, grant: Ticket, client: DataConnection, server: DataConnection
    ) -> None:
        self.relay = relay
        self.id = relay.newTunnelId()
        self.server = grant.server
        self.user = grant.user
        self.started = relay.reactor.seconds()
        self.firstEnd: str | None = None
        relay.tunnels.add(self)
        _log.info(
            "tunnel {tunnel} of {user} to {server} joined",
            tunnel=self.id,
            user=self.user,
            server=self.server,
        )
        self.splice = splice(relay.reactor, client, server, self.finished, ended=self.ended)

    def ended(self, name: str) -> None:
        if self.firstEnd is None:
            self.firstEnd = name

    def finished(self, joined: Any, outcome: Outcome) -> None:
        self.relay.tunnels.discard(self)
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

