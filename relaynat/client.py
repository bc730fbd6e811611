"""
The client: keeps a logged-in control connection to the relay, listens
locally for each tunnel, and carries every local connection through the
relay to the named server, sealed end to end with that server's secret.

For each listener it keeps a few data connections ready: joined at the
relay to one of the skeleton's pooled connections, with the handshake done,
so that the far end has already proven the server's secret and a new local
connection costs one record to start.
"""

from __future__ import annotations

import collections
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaynat.channel import Channel, keepAlive
from relaynat.link import ControlChannel, RelayLink, RelayUnreachable
from relaynat.seal import BEGIN, REFUSED, ClientHandshake, TARGET_REFUSED, SealBroken, Sealed
from relaynat.splice import Outcome, SpliceHalf, splice
from relaynat.wire import HEARTBEAT, JOIN_REFUSED, PING_TIMEOUT, ListServers, RelaynatError, SkeletonGone, TargetRefused, refusal

_log = Logger()

#: Seconds a local connection waits for the client to be logged in.
LOGIN_WAIT = 10.0

#: Seconds a data connection may take from its ticket to the far end's
#: proof: the relay may wait its join_timeout for a skeleton connection.
HANDSHAKE_WAIT = 30.0

#: Seconds a ready connection is kept before it is replaced by a fresh one,
#: well before the skeleton gives up on it (L{relaynat.skeleton.WARM_LIMIT}).
READY_LIFETIME = 240.0

#: Seconds before a connection kept ready that could not be opened is tried
#: again, doubled after each failure up to L{READY_RETRY_MAX}: a client
#: that logged in before its server's skeleton registered gets ready
#: connections soon after, not at its first local connection.
READY_RETRY = 1.0
READY_RETRY_MAX = 60.0

#: Tunnels of one listener being set up at once.  A burst of local
#: connections beyond this waits here, oldest first, instead of starting
#: thousands of joins that share the CPU until all are late: each join then
#: completes well within the relay's join timeout.
SETUP_LIMIT = 64


class Unproven(RelaynatError):
    """The far end of a tunnel did not prove that it knows the server's secret."""


class LocalHalf(SpliceHalf):
    """A local connection: held until its tunnel is ready."""

    factory: TunnelFactory

    def __init__(self) -> None:
        super().__init__("local")

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keep(b"")
        self.factory.open(self)

    def abandon(self) -> None:
        """Close this connection with a reset: its tunnel failed."""
        if self.lost is None:
            self.transport.abortConnection()


class ClientEnd(SpliceHalf):
    """
    One data connection at the client: its ticket and the first handshake
    message out, the far end's proof in (L{proven} fires), then, once a
    local connection is attached, the tunnel.
    """

    def __init__(self, link: RelayLink, serverId: str, secret: bytes) -> None:
        super().__init__("relay")
        self.link = link
        self.serverId = serverId
        self._handshake = ClientHandshake(secret, serverId)
        self._started = False
        self._head = b""
        self.sealed: Sealed | None = None
        self.proven: Deferred[ClientEnd] = Deferred()
        self._deadline: Any = None
        #: When this connection, kept ready, is replaced by a fresh one.
        self.retirement: Any = None
        #: Told when this connection is lost before it carried a tunnel.
        self.lostUnused: Callable[[ClientEnd], None] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        keepAlive(self.transport)

    def start(self, ticket: bytes) -> None:
        """
        Send C{ticket} and the handshake's first message: the connection is
        made while the ticket is still on its way, a round trip saved.
        """
        self._started = True
        self.transport.write(ticket + self._handshake.first())
        self._deadline = self.link.clock.callLater(HANDSHAKE_WAIT, self._tooSlow)

    def _tooSlow(self) -> None:
        self._deadline = None
        self._fail(
            SkeletonGone(f"server {self.serverId} did not answer the tunnel's handshake in time")
        )

    def _fail(self, error: Exception) -> None:
        if not self.proven.called:
            self.proven.errback(error)
        if self.lost is None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            super().dataReceived(data)
        elif self.sealed is None:
            self._shake(data)
        else:
            self.keep(data)

    def _shake(self, data: bytes) -> None:
        if len(self._head) < 3:
            # The relay's refusal, or the skeleton's first frame.
            self._head += data
            if len(self._head) < 3:
                return
            data, self._head = self._head, self._head[:3]
            if data[:2] == JOIN_REFUSED:
                self._fail(refusal(data[2], self.serverId))
                return
        try:
            sealed = self._handshake.receive(data)
        except SealBroken:
            self._fail(Unproven(f"server {self.serverId} did not prove its secret"))
            return
        if sealed is None:
            return
        self.sealed = sealed
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if sealed.rest:
            self.keep(sealed.rest)
        self.proven.callback(self)

    def attach(self, local: LocalHalf, finished: Any) -> None:
        """Carry C{local}'s bytes from now on."""
        assert self.sealed is not None
        self._cancelRetirement()
        reactor = self.link.clock
        if self.sealed.sealed:
            splice(reactor, local, self, finished, seal=self.sealed, expectBegin=True)
            return
        # Not sealed: the records end after each side's BEGIN.  This one
        # goes first, the application's bytes right behind it; the
        # skeleton's says whether its target took the connection.
        local.early.insert(0, self.sealed.writer.record(BEGIN))
        splice(reactor, local, self, finished, first=self._firstRecord)

    def _firstRecord(self, data: bytes) -> bytes | None:
        """The skeleton's first record, from C{data}: None until whole, then what follows it."""
        assert self.sealed is not None
        records = self.sealed.reader.feed(data, limit=1)
        if not records:
            return None
        kind, _ = records[0]
        if kind == REFUSED:
            raise SealBroken(TARGET_REFUSED)
        if kind != BEGIN:
            raise SealBroken("the tunnel did not start with its first record")
        return self.sealed.reader.leftover()

    def readConnectionLost(self) -> None:
        if self.splice is None:
            # The far end or the relay gave up before the tunnel started.
            self.transport.loseConnection()
        else:
            super().readConnectionLost()

    def _cancelRetirement(self) -> None:
        if self.retirement is not None and self.retirement.active():
            self.retirement.cancel()
        self.retirement = None

    def lostBeforeSplice(self, reason: Failure) -> None:
        self._cancelRetirement()
        if self.lostUnused is not None:
            self.lostUnused(self)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self._started and not self.proven.called:
            if self._head:
                error: Exception = Unproven(f"server {self.serverId} did not prove its secret")
            else:
                # Closed with not a byte of answer: the skeleton refused the
                # handshake, or someone without the secret holds the id.
                error = Unproven(f"server {self.serverId} closed the tunnel's handshake")
            self.proven.errback(error)


class TunnelFactory(Factory):
    """
    Accepts local connections for one tunnel: C{serverId} via C{link}.

    It keeps C{ready} data connections open in advance, joined and with the
    far end proven, so that a new local connection waits for nothing.
    """

    noisy = False

    def __init__(self, link: RelayLink, serverId: str, secret: bytes, ready: int = 2) -> None:
        self.link = link
        self.serverId = serverId
        self.secret = secret
        self.readyCount = ready
        link.wanted.add(serverId)
        self._ready: deque[ClientEnd] = deque()
        #: What became of local connections, for the metrics: "set_up",
        #: "ended", "cut", or the name of the error that failed one.
        self.outcomes: collections.Counter[str] = collections.Counter()
        #: Tunnels carrying now.
        self.carrying = 0
        #: Local connections waiting for the next connection to be ready.
        self._waiters: deque[Deferred[ClientEnd]] = deque()
        self._opening = 0
        self._running = False
        self._setups = DeferredSemaphore(SETUP_LIMIT)
        #: Whether the far end's failure to prove the secret was logged
        #: since the last proof: said once, not at every connection.
        self._unprovenSaid = False
        self._retryIn = READY_RETRY
        self._retry: Any = None

    def startFactory(self) -> None:
        self._running = True
        self._refill()

    def stopFactory(self) -> None:
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        while self._ready:
            self._ready.popleft().transport.loseConnection()

    def _refill(self) -> None:
        # Kept ready while the listener runs; opened for whoever waits in any case.
        wanted = (self.readyCount if self._running else 0) + len(self._waiters)
        while len(self._ready) + self._opening < wanted:
            self._opening += 1
            d = Deferred.fromCoroutine(self._openReady())
            d.addErrback(self._readyFailed)

    async def _openReady(self) -> None:
        try:
            end = await self.openEnd()
        except Exception as e:
            self._opening -= 1
            if self._waiters:
                # Said to the local connection that waited longest.
                self._waiters.popleft().errback(e)
                return
            raise
        self._opening -= 1
        self._retryIn = READY_RETRY
        if self._waiters:
            # Whichever connection is ready first goes to the local
            # connection that waited longest, not the one opened for it.
            self._waiters.popleft().callback(end)
            return
        if not self._running:
            end.transport.loseConnection()
            return
        self._keepReady(end)

    def _keepReady(self, end: ClientEnd) -> None:
        self._ready.append(end)
        end.retirement = self.link.clock.callLater(READY_LIFETIME, self._retire, end)
        end.lostUnused = self._readyLost

    def _readyLost(self, end: ClientEnd) -> None:
        # Closed by the far end, the relay or the network while it waited.
        if end in self._ready:
            self._ready.remove(end)
            self._refill()

    def _retire(self, end: ClientEnd) -> None:
        end.retirement = None
        if end in self._ready:
            self._ready.remove(end)
            end.transport.loseConnection()
            self._refill()

    def _readyFailed(self, failure: Failure) -> None:
        self._report(failure.value, "could not open a connection to the relay in advance")
        if self._running and (self._retry is None or not self._retry.active()):
            self._retry = self.link.clock.callLater(self._retryIn, self._refill)
            self._retryIn = min(READY_RETRY_MAX, 2 * self._retryIn)

    def _report(self, error: BaseException, what: str) -> None:
        if isinstance(error, Unproven):
            if not self._unprovenSaid:
                self._unprovenSaid = True
                _log.error(
                    "server {server} failed to prove that it knows its secret: someone"
                    " else may hold its id at the relay (a skeleton without the secret),"
                    " or this tunnel's secret_file is not the server's; its connections"
                    " are closed ({why})",
                    server=self.serverId,
                    why=str(error),
                )
            return
        _log.warn("{what}: {why}", what=what, why=str(error) or repr(error))

    def readyNow(self) -> int:
        """How many connections are ready now."""
        return len(self._ready)

    def readyEnds(self) -> tuple[ClientEnd, ...]:
        """The connections ready now, oldest first."""
        return tuple(self._ready)

    async def openEnd(self) -> ClientEnd:
        """A new data connection, joined and its far end proven."""
        end = ClientEnd(self.link, self.serverId, self.secret)
        # Connecting and logging in (or taking a ticket) at the same time.
        connecting = self.link.connectData(end)
        try:
            waiting = self.link.loggedIn()
            waiting.addTimeout(LOGIN_WAIT, self.link.clock)
            try:
                await waiting
            except defer.TimeoutError:
                # Said as what it means: the reason itself is logged by the
                # control connection, once.
                raise RelayUnreachable(
                    f"not logged in to the relay within {LOGIN_WAIT:g} s"
                    " (is it running and reachable? the log says why not)"
                ) from None
            ticket = await self.link.ticket(self.serverId)
        except BaseException:
            connecting.addCallback(lambda _: end.transport.loseConnection())
            connecting.addErrback(lambda _: None)
            raise
        try:
            await connecting
            usable = end.lost is None
        except Exception:
            usable = False
        if not usable:
            # Made too early (the relay was not up yet), or closed by the
            # relay while the login took long: once more, ticket in hand.
            end = ClientEnd(self.link, self.serverId, self.secret)
            try:
                await self.link.connectData(end)
            except Exception as e:
                raise SkeletonGone(f"cannot reach the relay: {e}") from e
        end.start(ticket)
        await end.proven
        self._unprovenSaid = False
        return end

    async def take(self) -> ClientEnd:
        """A ready connection, or the next one to be ready."""
        while self._ready:
            end = self._ready.popleft()
            end.lostUnused = None
            if end.lost is None:
                self._refill()
                return end
        d: Deferred[ClientEnd] = Deferred()
        self._waiters.append(d)
        self._refill()
        return await d

    def buildProtocol(self, addr: IAddress | None) -> LocalHalf:  # type: ignore[override]
        local = LocalHalf()
        local.factory = self
        return local

    def open(self, local: LocalHalf) -> Deferred[None]:
        return Deferred.fromCoroutine(self._open(local))

    def settingUp(self) -> int:
        """How many tunnels are being set up now (not those queued)."""
        return self._setups.limit - self._setups.tokens

    async def _open(self, local: LocalHalf) -> None:
        async with self._setups:
            for attempt in (1, 2):
                if local.lost is not None:
                    return
                try:
                    end = await self.take()
                except SkeletonGone as e:
                    # A connection that died unnoticed on the way: once more.
                    if attempt == 2:
                        self._failed(local, e)
                        return
                    continue
                except Exception as e:
                    self._failed(local, e)
                    return
                if local.lost is not None:
                    # Gone while it waited: the connection is kept for the next.
                    if end.lost is None and self._running:
                        self._keepReady(end)
                    else:
                        end.transport.loseConnection()
                    return
                end.attach(local, self._finished)
                self.outcomes["set_up"] += 1
                self.carrying += 1
                return

    def _failed(self, local: LocalHalf, error: Exception) -> None:
        self.outcomes[type(error).__name__] += 1
        self._report(error, f"tunnel to {self.serverId} failed")
        local.abandon()

    def _finished(self, joined: Any, outcome: Outcome) -> None:
        self.carrying -= 1
        self.outcomes["ended" if outcome is None else "cut"] += 1
        if outcome is not None and outcome[0] == "relay":
            why = outcome[1]
            if why == TARGET_REFUSED:
                refused = TargetRefused(
                    f"server {self.serverId} is registered but its target refused the connection"
                )
                self._report(refused, f"tunnel to {self.serverId} failed")
            else:
                _log.warn("tunnel to {server} cut: {why}", server=self.serverId, why=why)


class ClientControl(ControlChannel):
    """The client's control connection: holds the login and hands out tickets."""


def controlFactory(
    link: RelayLink, heartbeat: float = HEARTBEAT, pingTimeout: float = PING_TIMEOUT
) -> Factory:
    return Factory.forProtocol(lambda: ClientControl(link, heartbeat, pingTimeout))


async def listServers(link: RelayLink) -> list[dict[str, Any]]:
    """The servers the relay has available for this user now."""
    channel = await link.connect(Channel())
    try:
        await link.login(channel, "client")
        answer = await channel.callRemote(ListServers)
    finally:
        channel.transport.loseConnection()
    return list(answer["servers"])
