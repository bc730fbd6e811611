"""
The client: keeps a logged-in control connection to the relay, listens
locally for each tunnel, and carries every local connection through the
relay to the named server, proving that server's secret on each join.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaynat.link import ControlChannel, RelayLink
from relaynat.secret import joinProof, newNonce
from relaynat.splice import FramedHalf, OneProtocolFactory, SpliceHalf, splicePair
from relaynat.wire import Channel, ListServers, Prepare, SkeletonGone, Tunnel

_log = Logger()

#: Seconds a local connection waits for the client to be logged in.
LOGIN_WAIT = 10.0

#: Tunnels of one listener being set up at once.  A burst of local
#: connections beyond this waits here, oldest first, instead of starting
#: thousands of joins that share the CPU until all are late: each join then
#: completes well within the relay's join timeout.
SETUP_LIMIT = 64


class LocalHalf(SpliceHalf):
    """A local connection: asks for its tunnel as soon as it is made."""

    factory: TunnelFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.open(self)


@attrs.define
class ReadyChannel:
    """A connection to the relay, TLS up and a challenge in hand."""

    channel: Channel
    challenge: bytes


class TunnelFactory(Factory):
    """
    Accepts local connections for one tunnel: C{serverId} via C{link}.

    It keeps C{ready} connections to the relay open in advance, with TLS
    done and a challenge in hand, so that a new local connection waits only
    for its join, not for a connection, a handshake and a challenge too.
    """

    def __init__(self, link: RelayLink, serverId: str, secret: bytes, ready: int = 2) -> None:
        self.link = link
        self.serverId = serverId
        self.secret = secret
        self.readyCount = ready
        self._ready: deque[ReadyChannel] = deque()
        self._opening = 0
        self._running = False
        self._setups = DeferredSemaphore(SETUP_LIMIT)

    def startFactory(self) -> None:
        self._running = True
        self._refill()

    def stopFactory(self) -> None:
        self._running = False
        while self._ready:
            self._ready.popleft().channel.transport.loseConnection()

    def _refill(self) -> None:
        while self._running and len(self._ready) + self._opening < self.readyCount:
            self._opening += 1
            d = Deferred.fromCoroutine(self._openReady())
            d.addErrback(self._readyFailed)

    async def _openReady(self) -> None:
        try:
            ready = await readyChannel(self.link)
        finally:
            self._opening -= 1
        if self._running:
            self._ready.append(ready)
        else:
            ready.channel.transport.loseConnection()

    def _readyFailed(self, failure: Failure) -> None:
        # Not retried here: the next local connection asks again.
        _log.warn(
            "could not open a connection to the relay in advance: {why}",
            why=failure.getErrorMessage(),
        )

    def readyNow(self) -> int:
        """How many connections are ready now."""
        return len(self._ready)

    def readyChannels(self) -> tuple[Channel, ...]:
        """The connections ready now, oldest first."""
        return tuple(r.channel for r in self._ready)

    async def take(self) -> ReadyChannel:
        """A ready connection, or a new one if none is left."""
        while self._ready:
            ready = self._ready.popleft()
            if ready.channel.connected:
                self._refill()
                return ready
        self._refill()
        return await readyChannel(self.link)

    def buildProtocol(self, addr: IAddress | None) -> LocalHalf:  # type: ignore[override]
        local, _ = splicePair("local", "relay", LocalHalf, FramedHalf)
        assert isinstance(local, LocalHalf)
        local.factory = self
        return local

    def open(self, local: LocalHalf) -> Deferred[None]:
        return Deferred.fromCoroutine(self._open(local))

    def settingUp(self) -> int:
        """How many tunnels are being set up now (not those queued)."""
        return self._setups.limit - self._setups.tokens

    async def _open(self, local: LocalHalf) -> None:
        async with self._setups:
            if local.lost is not None:
                return
            try:
                await openTunnel(self.link, self.serverId, self.secret, local.peer, self.take)
            except Exception as e:
                why = str(e) or repr(e)
                _log.error("tunnel to {server} failed: {why}", server=self.serverId, why=why)
                local.abandon()


async def readyChannel(link: RelayLink) -> ReadyChannel:
    """A new connection to the relay with a challenge in hand."""
    channel = await link.connect(Channel())
    try:
        return ReadyChannel(channel, await link.challenge(channel))
    except Exception:
        channel.transport.loseConnection()
        raise


async def openTunnel(
    link: RelayLink,
    serverId: str,
    secret: bytes,
    half: SpliceHalf,
    take: Callable[[], Awaitable[ReadyChannel]] | None = None,
) -> None:
    """
    On a connection to the relay (from C{take}, or a new one), prove the
    session, set a join aside and prove the server's secret for it; on
    success the connection carries raw bytes to and from C{half}.  A join
    whose skeleton connection died unnoticed is tried once more.
    """
    waiting = link.loggedIn()
    waiting.addTimeout(LOGIN_WAIT, link.clock)
    session = await waiting
    for attempt in (1, 2):
        ready = await (take() if take is not None else readyChannel(link))
        channel = ready.channel
        if half.peer.lost is not None:
            channel.transport.loseConnection()
            return
        try:
            proof = session.proof(ready.challenge)
            nonce = newNonce()
            prepared = await channel.callRemote(
                Prepare, session=session.id, proof=proof, server=serverId, nonce=nonce
            )
            await channel.callRemote(
                Tunnel,
                join=prepared["join"],
                proof=joinProof(secret, nonce, prepared["nonce"], prepared["join"]),
                _protoToSwitchToFactory=OneProtocolFactory(half),
            )
            return
        except SkeletonGone:
            channel.transport.loseConnection()
            if attempt == 2:
                raise
        except Exception:
            channel.transport.loseConnection()
            raise


class ClientControl(ControlChannel):
    """The client's control connection: holds the login."""


def controlFactory(link: RelayLink) -> Factory:
    return Factory.forProtocol(lambda: ClientControl(link))


async def listServers(link: RelayLink) -> list[dict[str, Any]]:
    """The servers the relay has available for this user now."""
    channel = await link.connect(Channel())
    try:
        await link.login(channel)
        answer = await channel.callRemote(ListServers)
    finally:
        channel.transport.loseConnection()
    return list(answer["servers"])
