"""
The skeleton: it lives next to the hidden servers, keeps a control
connection to the relay, and opens data connections on the relay's demand.
On each, once joined, it answers the client's handshake (proving the
server's secret), waits for the client's first record (which proves the
same of the client), and only then connects to the server and carries the
tunnel's bytes.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaynat.channel import keepAlive
from relaynat.link import ControlChannel, RelayLink, preparing
from relaynat.seal import BEGIN, REFUSED, SealBroken, Sealed, SkeletonHandshake
from relaynat.splice import OneProtocolFactory, Outcome, SpliceHalf, splice
from relaynat.wire import (
    HEARTBEAT,
    PING_TIMEOUT,
    TICKET_BYTES,
    BadRequest,
    DuplicateServer,
    LimitReached,
    OpenConnection,
    PermissionDenied,
    RelaynatError,
    Register,
    ServerWithdrawn,
    SkeletonGone,
    UnknownServer,
)

_log = Logger()

#: Data connections opened at once (see L{Skeleton.opening}).
OPEN_LIMIT = 64

#: Seconds a data connection whose handshake is done may wait for the
#: client's first record: clients keep a few ready and replace them well
#: before this (see L{relaynat.client.READY_LIFETIME}); anything older is a
#: client gone quiet, or a replayed handshake that will never go on.
WARM_LIMIT = 600.0


@attrs.frozen
class FrontedServer:
    """A server this skeleton fronts: its id, description, target, secret and seal."""

    id: str
    description: str
    target: IStreamClientEndpoint
    secret: bytes = attrs.field(repr=False)
    sealed: bool = True


class Skeleton:
    """
    The skeleton's state: its way to the relay, the servers it fronts, and
    its open data connections.
    """

    def __init__(
        self,
        link: RelayLink,
        name: str,
        servers: Mapping[str, FrontedServer],
        pool: int = 1,
        heartbeat: float = HEARTBEAT,
        pingTimeout: float = PING_TIMEOUT,
    ) -> None:
        self.link = link
        self.clock = link.clock
        self.heartbeat = heartbeat
        self.pingTimeout = pingTimeout
        self.name = name
        self.servers = dict(servers)
        self.pool = pool
        #: Servers the relay withdrew: left out of every registration,
        #: reloads included, since the relay refuses a registration whole
        #: for one server it will not take.
        self.withdrawn: set[str] = set()
        #: Servers a reload added that no registration has carried yet.
        self.untried: set[str] = set()
        #: The control connection logged in and registering (or registered):
        #: a reload's changes go on it.
        self.control: SkeletonControl | None = None
        #: Open data connections, pooled or joined.
        self.dataConnections: set[RelayEnd] = set()
        #: Tunnels by server and what became of them ("opened",
        #: "target_refused"), for the metrics.
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        #: The relay's requests for connections being worked on; the rest
        #: wait, oldest first, so that under a burst each is done quickly
        #: rather than all of them late.
        self.opening = DeferredSemaphore(OPEN_LIMIT)

    def controlFactory(self) -> Factory:
        return Factory.forProtocol(lambda: SkeletonControl(self))

    def register(self, control: IProtocol) -> Deferred[None]:
        """
        Log in and register every server on a new control connection; if
        that fails, the connection is dropped.
        """
        # A ClientService hands over a proxy of the SkeletonControl it built.
        channel = cast(SkeletonControl, control)
        return preparing(channel, channel.prepare())

    def registration(self, leaveOut: frozenset[str] = frozenset()) -> Registration:
        """
        What a registration says now, of every server but C{leaveOut}: the
        name, the pool, each server's id and description.
        """
        fronted = sorted(
            (s for s in self.servers.values() if s.id not in leaveOut), key=lambda s: s.id
        )
        return Registration(
            self.name,
            self.pool,
            tuple((s.id, s.description) for s in fronted),
            tuple(fronted),
        )

    async def registerOn(
        self, control: SkeletonControl, registration: Registration | None = None
    ) -> Registration:
        """
        Register C{registration} (by default, every server still offered)
        on C{control}, logged in; what it registered.
        """
        if registration is None:
            registration = self.registration()
        servers = [{"id": i, "description": d} for i, d in registration.servers]
        if not servers:
            raise NothingToRegister(
                "every server of it was withdrawn; restart it once its user may"
                " register them again"
            )
        await control.callRemote(
            Register, name=registration.name, servers=servers, pool=registration.pool
        )
        _log.info(
            "registered {servers} with the relay",
            servers=", ".join(i for i, _ in registration.servers),
        )
        return registration

    def reconfigure(self, servers: Mapping[str, FrontedServer], name: str, pool: int) -> None:
        """
        Take a reloaded configuration: C{servers} to front from now on, the
        unchanged ones the same objects as before.  If the registration
        (ids, descriptions, name, pool) changed, the relay is told on the
        live control connection, which stays (L{SkeletonControl.changed});
        with none, the next connection registers the new set.  A server
        whose object changed (its target, secret or seal; or removed and
        added again by reloads in a row) loses its connections that carry
        nothing yet (pooled at the relay, or joined and waiting for a
        client's first record), so that the relay's pool is refilled with
        the new settings, and so does a removed one once the relay has
        taken the new set; open tunnels finish as they began.
        """
        # Forgotten once gone from the file: added again later, it is tried again.
        self.withdrawn &= set(servers)
        for serverId in sorted(self.withdrawn):
            _log.warn(
                "server {server} stays withdrawn by the relay until the skeleton"
                " restarts",
                server=serverId,
            )
        offered = {i: s for i, s in servers.items() if i not in self.withdrawn}
        added = sorted(set(offered) - set(self.servers))
        removed = sorted(set(self.servers) - set(offered))
        changed = {i for i, s in self.servers.items() if i in offered and offered[i] is not s}
        self.untried = (self.untried | set(added)) & set(offered)
        self.servers, self.name, self.pool = offered, name, pool
        if added or removed or changed:
            _log.info(
                "configuration reloaded: servers added {added}, removed {removed},"
                " changed {changed}",
                added=", ".join(added) or "none",
                removed=", ".join(removed) or "none",
                changed=", ".join(sorted(changed)) or "none",
            )
        if self.control is not None:
            self.control.changed()
            # A removed server's connections close once the relay has taken
            # the new set (L{registered}): closed before, they would have the
            # relay ask for replacements that this skeleton refuses.
            self._closeStale(keep=lambda serverId: True)
        else:
            self._closeStale(keep=lambda serverId: False)

    def registered(self, registration: Registration) -> None:
        """
        The relay took C{registration}: its servers are tried, and the
        connections that carry nothing yet close if their server is no
        longer fronted (the relay has closed those it pooled) or is fronted
        anew (they carry the old settings).
        """
        held = {i for i, _ in registration.servers}
        self.untried -= held
        self._closeStale(keep=held.__contains__)

    def _closeStale(self, keep: Callable[[str], bool]) -> None:
        """
        Close the connections that carry nothing yet and were opened for a
        server object no longer fronted: another one fronts its id now, or
        none does and C{keep} (the relay may still hold that id) says no.
        """
        for end in list(self.dataConnections):
            current = self.servers.get(end.server.id)
            if current is end.server or not end.unused():
                continue
            if current is None and keep(end.server.id):
                continue
            end.transport.loseConnection()

    def restore(self, registration: Registration, why: str) -> None:
        """
        The relay refused a reload's registration whole, for a reason no
        server the reload added explains (a name or description it does not
        take), so it still holds C{registration}: front what that
        registration fronted, as before the reload, and say so once.
        """
        _log.error(
            "the relay refused the reloaded configuration: {why}; nothing changed"
            " there, and this skeleton goes on with what it ran before the reload"
            " ({servers} registered); fix the file and reload again",
            why=why,
            servers=", ".join(i for i, _ in registration.servers),
        )
        self.servers = {s.id: s for s in registration.fronted}
        self.name, self.pool = registration.name, registration.pool
        # What the reload added was never registered, and is not offered now.
        self.untried = set()
        self.registered(registration)

    def refuse(self, refused: list[str], why: str) -> None:
        """
        The relay refused a registration for C{refused}, servers a reload
        added: leave them out (as if withdrawn), the others registered.
        """
        _log.error(
            "server {servers}, added by a reload, not registered: the relay refused"
            " it ({why}); the others are registered",
            servers=", ".join(refused),
            why=why,
        )
        for serverId in refused:
            self.untried.discard(serverId)
            if self.servers.pop(serverId, None) is not None:
                self.withdrawn.add(serverId)

    def withdraw(self, serverId: str, reason: str) -> None:
        """
        The relay no longer registers C{serverId}: stop offering it (and
        leave it out of the next registration, which the relay would refuse
        whole), and close its connections that carry no tunnel yet.  The
        other servers stay.
        """
        _log.warn("relay withdrew server {server}: {reason}", server=serverId, reason=reason)
        if self.servers.pop(serverId, None) is None:
            return
        self.withdrawn.add(serverId)
        for end in list(self.dataConnections):
            if end.server.id == serverId and end.splice is None:
                end.transport.loseConnection()

    async def offerConnection(self, serverId: str, ticket: bytes) -> None:
        """Open a data connection for C{serverId} with C{ticket}, for the relay's pool."""
        server = self.servers.get(serverId)
        if server is None:
            # Withdrawn while the request waited its turn.
            raise UnknownServer(f"this skeleton no longer offers {serverId}")
        try:
            await self.link.connectData(RelayEnd(self, server, ticket))
        except Exception as e:
            raise SkeletonGone(f"cannot reach the relay: {e}") from e


@attrs.frozen
class Registration:
    """What one L{Register} call told the relay, and what fronted its servers then."""

    name: str
    pool: int
    servers: tuple[tuple[str, str], ...]
    #: What fronted those servers when it was sent: not told to the relay,
    #: and no part of what it holds, but what a refused reload goes back to.
    fronted: tuple[FrontedServer, ...] = attrs.field(default=(), eq=False, repr=False)

    def without(self, serverId: str) -> Registration:
        """This registration once the relay withdrew C{serverId}."""
        return attrs.evolve(
            self,
            servers=tuple(s for s in self.servers if s[0] != serverId),
            fronted=tuple(s for s in self.fronted if s.id != serverId),
        )


class NothingToRegister(RelaynatError):
    """Every server of this skeleton was withdrawn: there is nothing left to register."""


class SkeletonControl(ControlChannel):
    """
    The skeleton's control connection: logs in and registers, registers
    again when a reload changes the servers, answers the relay's requests
    for connections, and hears of servers withdrawn.
    """

    role = "skeleton"

    def __init__(self, skeleton: Skeleton) -> None:
        super().__init__(skeleton.link, skeleton.heartbeat, skeleton.pingTimeout)
        self.skeleton = skeleton
        #: What the relay holds of this connection's registration, once it
        #: took one.
        self.held: Registration | None = None
        self._syncing = False

    async def prepare(self) -> None:
        """Log in, then register the skeleton's servers."""
        await self.start()
        self.skeleton.control = self
        await self._sync()

    def changed(self) -> None:
        """
        A reload changed what the skeleton registers: send it on this
        connection (the relay replaces the set), unless a registration is
        on its way, which sends it after its answer.  A refusal changes
        nothing at the relay, and this connection stays: a server the
        reload added that the relay refuses is left out; a refusal that no
        added server explains has the skeleton go back to what the relay
        holds (L{Skeleton.restore}).
        """
        if self._syncing or self.held is None or not self.connected:
            return
        Deferred.fromCoroutine(self._sync()).addErrback(self._syncFailed)

    async def _sync(self) -> None:
        """
        Register until the relay holds what the skeleton offers now.  A
        refusal that crossed a change here (a server the relay withdrew
        meanwhile, a reload) is about what was sent, not what is offered
        now: that is sent before anyone is blamed.
        """
        self._syncing = True
        try:
            while self.held != (wanted := self.skeleton.registration()):
                try:
                    await self.skeleton.registerOn(self, wanted)
                except _REFUSED as e:
                    if self.skeleton.registration() == wanted:
                        await self._refused(wanted, e)
                else:
                    self._took(wanted)
        finally:
            self._syncing = False

    def _took(self, registration: Registration) -> None:
        self.held = registration
        self.skeleton.registered(registration)

    def _syncFailed(self, failure: Failure) -> None:
        if not self.connected:
            # Lost meanwhile: the next connection registers what is current.
            return
        _log.error(
            "the relay refused the reloaded servers ({why}); registering them on a new"
            " connection",
            why=failure.getErrorMessage(),
        )
        self.transport.abortConnection()

    async def _refused(self, sent: Registration, error: Exception) -> None:
        """
        The relay refused C{sent} whole, and the skeleton offers the same
        still.  A refused Register leaves the connection free for another,
        so that one server a reload added does not take the others offline:
        each added one is left out in turn, then all of them.  A refusal no
        added server explains is the first registration's failure (the
        connection is dropped and the next one tried, each said once); on a
        registered connection, the relay still holds what it held, and the
        skeleton goes back to it.
        """
        untried = sorted(self.skeleton.untried & {i for i, _ in sent.servers})
        if isinstance(error, _REFUSALS) and untried:
            for candidate in untried:
                attempt = self.skeleton.registration(frozenset({candidate}))
                try:
                    await self.skeleton.registerOn(self, attempt)
                except _REFUSED:
                    if self.skeleton.registration() != sent:
                        # Changed meanwhile: what is offered now is sent next.
                        return
                    continue
                self.skeleton.refuse([candidate], str(error))
                self._took(attempt)
                return
            self.skeleton.refuse(untried, str(error))
            return
        if self.held is None:
            raise error
        self.skeleton.restore(self.held, str(error))

    @ServerWithdrawn.responder
    def serverWithdrawn(self, server: str, reason: str) -> dict[str, object]:
        self.skeleton.withdraw(server, reason)
        if self.held is not None:
            self.held = self.held.without(server)
        return {}

    @OpenConnection.responder
    def openConnection(self, server: str, ticket: bytes) -> Deferred[dict[str, object]]:
        if server not in self.skeleton.servers:
            raise UnknownServer(f"this skeleton does not front {server}")
        if len(ticket) != TICKET_BYTES:
            raise BadRequest("a ticket is 32 bytes")
        return Deferred.fromCoroutine(self._open(server, ticket))

    async def _open(self, server: str, ticket: bytes) -> dict[str, object]:
        async with self.skeleton.opening:
            if not self.connected:
                # The relay forgot this request with the connection it came
                # on, while it waited its turn here.
                return {}
            try:
                await self.skeleton.offerConnection(server, ticket)
            except Exception as e:
                _log.warn(
                    "could not open a connection to the relay for {server}: {why}",
                    server=server,
                    why=str(e),
                )
                raise
        return {}

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.skeleton.control is self:
            self.skeleton.control = None
        super().connectionLost(reason)


#: How the relay refuses a registration whole for some of its servers.
_REFUSALS = (PermissionDenied, DuplicateServer, LimitReached)

#: How the relay refuses a registration whole, changing nothing: for some of
#: its servers, or for a name or description it does not take.
_REFUSED = (*_REFUSALS, BadRequest)


class RelayEnd(SpliceHalf):
    """
    One data connection at the skeleton: pooled at the relay until joined,
    then the handshake, the client's first record, the target, the splice.
    """

    def __init__(self, skeleton: Skeleton, server: FrontedServer, ticket: bytes) -> None:
        super().__init__("relay")
        self.skeleton = skeleton
        self.server = server
        self._ticket = ticket
        self._handshake: SkeletonHandshake | None = SkeletonHandshake(
            server.secret, server.id, server.sealed
        )
        self.sealed: Sealed | None = None
        self._begun = False
        self._warm: Any = None

    def unused(self) -> bool:
        """Whether this connection carries nothing yet: no client's first record came."""
        return self.splice is None and not self._begun

    def connectionMade(self) -> None:
        super().connectionMade()
        keepAlive(self.transport)
        self.skeleton.dataConnections.add(self)
        self.transport.write(self._ticket)

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            super().dataReceived(data)
            return
        try:
            if self._handshake is not None:
                self._shake(data)
            elif not self._begun:
                self._awaitBegin(data)
            else:
                self.keep(data)
        except SealBroken as e:
            _log.warn(
                "tunnel to {server} refused: {why}", server=self.server.id, why=str(e)
            )
            self.transport.abortConnection()

    def _shake(self, data: bytes) -> None:
        assert self._handshake is not None
        answered = self._handshake.receive(data)
        if answered is None:
            return
        self._handshake = None
        reply, self.sealed = answered
        self.transport.write(reply)
        self._warm = self.skeleton.clock.callLater(WARM_LIMIT, self.transport.loseConnection)
        if self.sealed.rest:
            self._awaitBegin(self.sealed.rest)

    def _awaitBegin(self, data: bytes) -> None:
        assert self.sealed is not None
        records = self.sealed.reader.feed(data, limit=1)
        if not records:
            return
        kind, _ = records[0]
        if kind != BEGIN:
            raise SealBroken("the tunnel did not start with its first record")
        self._begun = True
        if self._warm is not None and self._warm.active():
            self._warm.cancel()
        # What came after it is the tunnel's: records, or raw bytes if not sealed.
        self.keep(self.sealed.reader.leftover())
        Deferred.fromCoroutine(self._connectTarget())

    async def _connectTarget(self) -> None:
        assert self.sealed is not None
        target = SpliceHalf("target")
        try:
            await self.server.target.connect(OneProtocolFactory(target))
        except Exception as e:
            # The details stay in this log: they name the target's address.
            _log.warn(
                "tunnel to {server}: target refused: {why}", server=self.server.id, why=str(e)
            )
            self.skeleton.outcomes[(self.server.id, "target_refused")] += 1
            if self.lost is None:
                self.transport.write(self.sealed.writer.record(REFUSED))
                self.transport.loseConnection()
            return
        if self.lost is not None:
            target.transport.abortConnection()
            return
        _log.info("tunnel to {server} opened", server=self.server.id)
        self.skeleton.outcomes[(self.server.id, "opened")] += 1
        if self.sealed.sealed:
            splice(self.skeleton.clock, target, self, self._finished, seal=self.sealed)
        else:
            # This side's first record goes to the client before the target's bytes.
            target.early.insert(0, self.sealed.writer.record(BEGIN))
            splice(self.skeleton.clock, target, self, self._finished)

    def readConnectionLost(self) -> None:
        if self.splice is None:
            # The client or the relay gave up before the tunnel started.
            self.transport.loseConnection()
        else:
            super().readConnectionLost()

    def _finished(self, joined: Any, outcome: Outcome) -> None:
        if outcome is not None and outcome[0] == "relay":
            _log.warn(
                "tunnel to {server} cut: {why}", server=self.server.id, why=outcome[1]
            )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.skeleton.dataConnections.discard(self)
        if self._warm is not None and self._warm.active():
            self._warm.cancel()
        super().connectionLost(reason)
