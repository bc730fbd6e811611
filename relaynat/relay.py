"""
The relay's protocols: skeletons on port Y, clients on port X, both over
TLS with a login first, and the joining of one to the other.
"""

from __future__ import annotations

import hmac
import itertools
import math
import secrets

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from relaynat.auth import ScramException, ScramLogin, Session, Sessions, Throttle, Users, newChallenge
from relaynat.identity import RelayIdentity
from relaynat.registry import PooledConnection, Registry
from relaynat.splice import OneProtocolFactory, SpliceHalf, splicePair
from relaynat.users import User
from relaynat.wire import (
    PING_TIMEOUT,
    SILENCE_LIMIT,
    BadRequest,
    Channel,
    Hello,
    Join,
    ListServers,
    Login,
    LoginFailed,
    LoginFinish,
    LoginRequired,
    Offer,
    OpenConnection,
    PermissionDenied,
    Ping,
    Prepare,
    Register,
    SecretMismatch,
    SessionRefused,
    SkeletonGone,
    TargetRefused,
    Tunnel,
    UnknownServer,
    checkServerId,
    checkText,
)

_log = Logger()

#: Bounds on the nonces a skeleton and a client contribute to a join.
_NONCE_SIZES = range(16, 65)


def _checkNonce(nonce: bytes) -> bytes:
    if len(nonce) not in _NONCE_SIZES:
        raise BadRequest("the nonce must be 16 to 64 bytes")
    return nonce

_LOGIN_FAILED = "login failed: unknown user or wrong password"


class Relay:
    """
    One relay: its identity and users, the registry of servers, the
    sessions of logged-in users, and the tunnels in flight.  Builds the
    TLS factories for ports X and Y.
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

    def clientFactory(self) -> TLSMemoryBIOFactory:
        """The TLS factory for port X."""
        return self._tls(Factory.forProtocol(lambda: ClientChannel(self)))

    def skeletonFactory(self) -> TLSMemoryBIOFactory:
        """The TLS factory for port Y."""
        return self._tls(Factory.forProtocol(lambda: SkeletonChannel(self)))

    def _tls(self, factory: Factory) -> TLSMemoryBIOFactory:
        return TLSMemoryBIOFactory(self.identity.options, False, factory)

    def newTunnelId(self) -> str:
        # Unguessable: a join id is only good on the connection that got it,
        # but nothing is lost by not letting anyone predict the next one.
        return f"t{next(self._tunnelIds)}-{secrets.token_hex(4)}"

    def heartbeat(self) -> None:
        """
        Drop skeletons whose control connection has been silent too long,
        and ping every idle pooled connection, dropping those that do not
        answer (the registry then asks for replacements).
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
        for connection in self.registry.idleConnections():
            assert isinstance(connection, SkeletonChannel)
            connection.probe()


class RelayChannel(Channel):
    """
    What both ports share: login by SCRAM-SHA-256-PLUS on a control
    connection, and a fresh challenge for the session proof of a data
    connection.  Every command that needs a user checks for one.
    """

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay
        #: The session this connection's login created, if it logged in.
        self.login: Session | None = None
        self.lastHeard = relay.reactor.seconds()
        self._scram: ScramLogin | None = None
        self._challenge: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.innerProtocol is None:
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
            self.relay.sessions.revoke(previous)
            self.loginRenewed(previous, self.login)
        _log.info("{user} logged in from {source}", user=scram.user, source=self.source())
        return {
            "message": serverFinal,
            "session": self.login.id,
            "key": self.login.key,
            "expires": self.login.expires,
        }

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
        return self._currentUser(self.login)

    def _currentUser(self, session: Session) -> User:
        user = self.relay.users.get(session.user)
        if user is None:
            # Deleted since the login: its sessions are worthless now.
            self.relay.sessions.revoke(session)
            raise SessionRefused(f"user {session.user} no longer exists")
        return user

    @Hello.responder
    def hello(self) -> dict[str, bytes]:
        self._challenge = newChallenge()
        return {"challenge": self._challenge}

    def proven(self, sessionId: str, proof: bytes) -> tuple[Session, User]:
        """The session (and its user) this connection proves, or an error."""
        challenge, self._challenge = self._challenge, None
        if challenge is None:
            raise LoginRequired("send Hello first")
        session = self.relay.sessions.check(sessionId, challenge, proof)
        if session is None:
            _log.warn("session refused from {source}", source=self.source())
            raise SessionRefused("session refused (expired, or not this relay's): log in again")
        return session, self._currentUser(session)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.login is not None:
            self.relay.sessions.revoke(self.login)
        super().connectionLost(reason)


class SkeletonChannel(RelayChannel):
    """
    A connection from a skeleton: its control connection once it logs in
    and sends L{Register}, or one of its data connections once it sends
    L{Offer}.
    """

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.name = ""
        self.role: str | None = None
        self.server: str | None = None
        self.nonce = b""

    # As the control connection: the registry's SkeletonLink.

    def loginRenewed(self, previous: Session, current: Session) -> None:
        # Its data connections prove the new session from now on.
        if self.relay.skeletons.get(previous.id) is self:
            del self.relay.skeletons[previous.id]
            self.relay.skeletons[current.id] = self

    def describe(self) -> str:
        # Only the name the skeleton gave: its address is not for clients
        # or other skeletons to see.
        return repr(self.name)

    def requestConnection(self, serverId: str) -> Deferred[None]:
        d = self.callRemote(OpenConnection, server=serverId)
        return d.addCallback(lambda _: None)

    @Register.responder
    def register(
        self, name: str, servers: list[dict[str, str]], pool: int
    ) -> dict[str, object]:
        user = self.loggedInUser()
        if self.role is not None:
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
        try:
            self.relay.registry.register(self, entries, pool)
        except Exception as e:
            _log.warn(
                "skeleton {skeleton} of {user} from {peer} refused: {why}",
                skeleton=self.describe(),
                user=user.name,
                peer=self.source(),
                why=str(e),
            )
            raise
        assert self.login is not None
        self.role = "control"
        self.relay.skeletons[self.login.id] = self
        _log.info(
            "skeleton {skeleton} of {user} connected from {peer} with {count} servers",
            skeleton=self.describe(),
            user=user.name,
            peer=self.source(),
            count=len(servers),
        )
        return {}

    # As a data connection: the registry's PooledConnection.

    @Offer.responder
    def offer(self, session: str, proof: bytes, server: str, nonce: bytes) -> dict[str, object]:
        if self.role is not None:
            raise BadRequest("this connection is already in use")
        login, _ = self.proven(session, proof)
        owner = self.relay.skeletons.get(login.id)
        if owner is None or not self.relay.registry.owns(owner, server):
            raise UnknownServer(f"server {server} is not registered by this skeleton")
        self.nonce = _checkNonce(nonce)
        self.role = "data"
        self.server = server
        # The answer must leave before a waiting client's Join locks this
        # connection for the switch.
        self.relay.reactor.callLater(0, self._pool)
        return {}

    def _pool(self) -> None:
        if self.server is None:
            return
        if self.connected:
            self.relay.registry.offer(self.server, self)
        else:
            self.relay.registry.lost(self.server)

    def close(self) -> None:
        self.transport.loseConnection()

    def probe(self) -> None:
        """Ping this idle connection; drop it if it does not answer in time."""
        d = self.callRemote(Ping)
        d.addTimeout(self.relay.pingTimeout, self.relay.reactor)
        d.addErrback(lambda _: self.transport.abortConnection())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # Unregister first: AMP's connectionLost fails the pending
        # OpenConnection calls, and waiting clients should hear that the
        # skeleton went away rather than that a request failed.
        if self.role == "control":
            _log.info("skeleton {skeleton} disconnected", skeleton=self.describe())
            if self.login is not None:
                self.relay.skeletons.pop(self.login.id, None)
            self.relay.registry.unregister(self)
        elif self.role == "data" and self.innerProtocol is None and self.server:
            self.relay.registry.discard(self.server, self)
        super().connectionLost(reason)


@attrs.define(eq=False)
class _Prepared:
    """A join set aside by L{Prepare}, waiting for this connection's L{Tunnel}."""

    id: str
    server: str
    user: str
    skeleton: SkeletonChannel
    clientNonce: bytes
    expiry: IDelayedCall


class ClientChannel(RelayChannel):
    """A connection from a client: a control connection or one tunnel."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self._claim: Deferred[PooledConnection] | None = None
        self._prepared: _Prepared | None = None
        self._tunnelAsked = False

    @ListServers.responder
    def listServers(self) -> dict[str, object]:
        user = self.loggedInUser()
        servers = [s for s in self.relay.registry.listing() if user.rights.mayJoin(str(s["id"]))]
        return {"servers": servers}

    @Prepare.responder
    def prepare(
        self, session: str, proof: bytes, server: str, nonce: bytes
    ) -> Deferred[dict[str, object]]:
        if self._tunnelAsked or self._prepared is not None or self._claim is not None:
            raise BadRequest("one tunnel per connection: open another connection")
        _, user = self.proven(session, proof)
        checkServerId(server)
        _checkNonce(nonce)
        if not user.rights.mayJoin(server):
            # Said as for an unknown id: what a user may not join, it does
            # not get to know about either.
            _log.warn("{user} may not join {server}", user=user.name, server=server)
            raise UnknownServer(
                f"no server {server} is registered at this relay;"
                " 'relaynat list' shows the ones that are"
            )
        return ensureDeferred(self._prepare(user, server, nonce))

    async def _prepare(self, user: User, server: str, nonce: bytes) -> dict[str, object]:
        self._claim = claim = self.relay.registry.claim(server)
        try:
            connection = await claim
        except CancelledError:
            raise BadRequest("the client went away") from None
        finally:
            self._claim = None
        assert isinstance(connection, SkeletonChannel)
        joinId = self.relay.newTunnelId()
        # A prepared join that is never used gives its connection back.
        expiry = self.relay.reactor.callLater(
            self.relay.registry.joinTimeout, self._abandonPrepared
        )
        self._prepared = _Prepared(joinId, server, user.name, connection, nonce, expiry)
        return {"join": joinId, "nonce": connection.nonce}

    def _abandonPrepared(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            if prepared.expiry.active():
                prepared.expiry.cancel()
            prepared.skeleton.close()

    @Tunnel.responder
    def tunnel(self, join: str, proof: bytes) -> Deferred[SpliceHalf]:
        if self._tunnelAsked:
            raise BadRequest("one tunnel per connection: open another connection")
        prepared = self._prepared
        if prepared is None or not hmac.compare_digest(prepared.id, join):
            raise BadRequest("unknown join id: send Prepare on this connection first")
        self._tunnelAsked = True
        self._prepared = None
        prepared.expiry.cancel()
        return ensureDeferred(self._tunnel(prepared, proof))

    async def _tunnel(self, prepared: _Prepared, proof: bytes) -> SpliceHalf:
        skeleton = prepared.skeleton
        clientHalf, serverHalf = splicePair("client", "server")
        try:
            await self._join(skeleton, prepared, proof, serverHalf)
        except (TargetRefused, SecretMismatch) as e:
            skeleton.close()
            _log.warn(
                "tunnel {tunnel} of {user} to {server} refused: {why}",
                tunnel=prepared.id,
                user=prepared.user,
                server=prepared.server,
                why=str(e),
            )
            raise
        except Exception as e:
            skeleton.close()
            raise SkeletonGone(
                f"the skeleton of server {prepared.server} went away during the join"
            ) from e
        if not self.connected:
            serverHalf.abandon()
            raise BadRequest("the client went away")
        TunnelRecord(self.relay, prepared, clientHalf, serverHalf)
        return clientHalf

    async def _join(
        self, skeleton: SkeletonChannel, prepared: _Prepared, proof: bytes, half: SpliceHalf
    ) -> None:
        # A switch command cannot be cancelled once sent, so a skeleton that
        # does not answer in time loses its connection, which fails the call.
        timeout = self.relay.reactor.callLater(
            self.relay.registry.joinTimeout, skeleton.transport.abortConnection
        )
        try:
            await skeleton.callRemote(
                Join,
                tunnel=prepared.id,
                nonce=prepared.clientNonce,
                proof=proof,
                _protoToSwitchToFactory=OneProtocolFactory(half),
            )
        finally:
            if timeout.active():
                timeout.cancel()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if self._claim is not None:
            self._claim.cancel()
        self._abandonPrepared()


class TunnelRecord:
    """
    One tunnel in the relay's books, from join to the loss of both halves,
    when it is logged with its server, bytes each way, duration and end.
    """

    def __init__(
        self,
        relay: Relay,
        prepared: _Prepared,
        clientHalf: SpliceHalf,
        serverHalf: SpliceHalf,
    ) -> None:
        self.relay = relay
        self.id = prepared.id
        self.server = prepared.server
        self.user = prepared.user
        self.client = clientHalf
        self.serverHalf = serverHalf
        self.started = relay.reactor.seconds()
        self.firstEnd: str | None = None
        self.errors: list[str] = []
        self._lost = 0
        clientHalf.observer = serverHalf.observer = self
        relay.tunnels.add(self)
        _log.info(
            "tunnel {tunnel} of {user} to {server} joined",
            tunnel=self.id,
            user=self.user,
            server=self.server,
        )

    def ended(self, half: SpliceHalf) -> None:
        if self.firstEnd is None:
            self.firstEnd = half.name

    def lost(self, half: SpliceHalf, reason: Failure) -> None:
        # Only the first loss says how the tunnel ended: once one side is
        # closed, a reset on the other is the two ends' closes crossing.
        if self._lost == 0 and not reason.check(ConnectionDone):
            self.errors.append(f"{half.name} side: {reason.getErrorMessage()}")
        self._lost += 1
        if self._lost < 2:
            return
        self.relay.tunnels.discard(self)
        how = f"closed by {self.firstEnd}"
        if self.errors:
            how += " (" + "; ".join(self.errors) + ")"
        _log.info(
            "tunnel {tunnel} of {user} to {server} ended, {how}: {up} bytes up,"
            " {down} bytes down in {duration:.3f} s",
            tunnel=self.id,
            user=self.user,
            server=self.server,
            how=how,
            up=self.client.received,
            down=self.serverHalf.received,
            duration=self.relay.reactor.seconds() - self.started,
        )
