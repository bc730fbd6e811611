"""
How skeletons and clients reach the relay: control connections over TLS
with the relay verified (its key pinned, or a CA certificate checked for its
host name), login by SCRAM-SHA-256-PLUS without sending the password, and
data connections, plain TCP to the same ports, that start with a one-time
ticket from the login.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

import attrs
from cryptography import x509
from scramp import ScramClient, ScramException
from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaynat.channel import Channel
from relaynat.config import ConfigError, RelayAccess
from relaynat.identity import IdentityError, PinnedRelay, fingerprintOfFile, serverEndPoint
from relaynat.splice import OneProtocolFactory
from relaynat.wire import (
    HEARTBEAT,
    PING_TIMEOUT,
    TICKET_BATCH,
    Login,
    LoginFailed,
    LoginFinish,
    Ping,
    SkeletonGone,
    Tickets,
)

_log = Logger()

C = TypeVar("C", bound=Channel)
T = TypeVar("T")


class RelayUnreachable(Exception):
    """The relay could not be reached, or the TLS handshake failed."""


@attrs.frozen
class Credentials:
    """A user's name and password; the password never leaves this process."""

    user: str
    password: str = attrs.field(repr=False)


@attrs.define
class LoginSession:
    """A session the relay issued: its id and expiry."""

    id: str
    expires: float


def hostnameVerifier(hostname: str, caPem: bytes | None) -> Any:
    """
    TLS options that check the relay's certificate chain (against every CA
    certificate in C{caPem}, or the system's CAs) and its host name, with
    service-identity.
    """
    from relaynat.identity import trustRootFromPem

    trustRoot = trustRootFromPem(caPem, "relay_ca") if caPem is not None else ssl.platformTrust()
    return ssl.optionsForClientTLS(
        hostname,
        trustRoot=trustRoot,
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )


class RelayLink:
    """
    One user's way to one relay: control connections over verified TLS,
    one login at a time, and data connections with that login's tickets.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        verifier: Any,
        credentials: Credentials,
        clock: IReactorTime,
    ) -> None:
        self._verifier = verifier
        #: Data connections: plain TCP, their bytes sealed end to end.
        self.raw = endpoint
        self.endpoint = wrapClientTLS(verifier, endpoint)
        self.credentials = credentials
        self.clock = clock
        self.session: LoginSession | None = None
        self.control: ControlChannel | None = None
        self._waiting: list[Deferred[LoginSession]] = []
        self._tickets: dict[str, deque[bytes]] = {}
        #: Servers whose tickets are fetched along with every login.
        self.wanted: set[str] = set()
        self._fetching: dict[str, list[Deferred[None]]] = {}

    async def connect(self, channel: C) -> C:
        """Connect C{channel} to the relay and wait for verified TLS."""
        try:
            # Not connectProtocol: its factory logs two lines per connection.
            await self.endpoint.connect(OneProtocolFactory(channel))
        except Exception as e:
            raise RelayUnreachable(f"cannot reach the relay: {e}") from e
        await self.secured(channel)
        return channel

    async def secured(self, channel: Channel) -> None:
        """Wait until C{channel}'s TLS is up, turning failures into clear errors."""
        try:
            await channel.whenSecure()
        except Exception as e:
            raise self._failure(e) from e

    def _failure(self, error: Exception) -> Exception:
        if isinstance(self._verifier, PinnedRelay):
            mismatch = self._verifier.mismatch()
            if mismatch is not None:
                return mismatch
        return RelayUnreachable(f"TLS with the relay failed: {error}")

    async def login(self, channel: Channel, prefetch: Any = ()) -> LoginSession:
        """
        Log in on C{channel}: SCRAM-SHA-256-PLUS bound to this TLS channel.
        The relay's final message proves it knows this user's verifier; a
        relay that cannot prove it is refused.  Tickets for the servers in
        C{prefetch} are asked for right behind the last step, so that a
        fresh client's first tunnel does not wait a round trip more for them.
        """
        await self.secured(channel)
        certificate: x509.Certificate = channel.transport.getPeerCertificate().to_cryptography()
        binding = serverEndPoint(certificate)
        scram = ScramClient(
            ["SCRAM-SHA-256-PLUS"],
            self.credentials.user,
            self.credentials.password,
            channel_binding=("tls-server-end-point", binding),
        )
        try:
            first = await channel.callRemote(Login, message=scram.get_client_first())
            scram.set_server_first(first["message"])
            finishing = channel.callRemote(LoginFinish, message=scram.get_client_final())
            for serverId in prefetch:
                self._startFetch(
                    serverId,
                    channel,
                    channel.callRemote(Tickets, server=serverId, count=TICKET_BATCH),
                    finishing,
                )
            final = await finishing
            scram.set_server_final(final["message"])
        except ScramException as e:
            channel.transport.abortConnection()
            raise LoginFailed(f"the relay failed to prove it knows this user: {e}") from e
        _log.info("logged in to the relay as {user}", user=self.credentials.user)
        return LoginSession(final["session"], final["expires"])

    def adopt(self, control: ControlChannel, session: LoginSession) -> None:
        """Use C{session}, held by C{control}, for the data connections from now on."""
        self.session = session
        self.control = control
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(session)

    def loggedIn(self) -> Deferred[LoginSession]:
        """The current session, or the next one if there is none yet."""
        if self.session is not None and self.session.expires > self.clock.seconds():
            return succeed(self.session)
        d: Deferred[LoginSession] = Deferred()
        self._waiting.append(d)
        return d

    def loggedOut(self, session: LoginSession) -> None:
        """C{session} is gone (its control connection closed): forget it."""
        if self.session is not None and hmac.compare_digest(self.session.id, session.id):
            self.session = None
            self.control = None
            self._tickets.clear()

    async def ticket(self, serverId: str) -> bytes:
        """
        A one-time ticket for a data connection to C{serverId}, from a
        stock fetched a batch at a time on the control connection.
        """
        while True:
            stock = self._tickets.get(serverId)
            if stock:
                return stock.popleft()
            waiters = self._fetching.get(serverId)
            if waiters is None:
                session, control = self.session, self.control
                if session is None or control is None:
                    raise SkeletonGone("not logged in to the relay")
                answer = control.callRemote(Tickets, server=serverId, count=TICKET_BATCH)
                waiters = self._startFetch(serverId, control, answer, succeed(None))
            d: Deferred[None] = Deferred()
            waiters.append(d)
            await d

    def _startFetch(
        self, serverId: str, channel: Channel, answer: Deferred[Any], loggedIn: Deferred[Any]
    ) -> list[Deferred[None]]:
        """
        Stock the tickets C{answer} brings on C{channel}, once C{loggedIn}
        has fired (the relay proved itself) and if C{channel} still holds
        the login; wake those that wait for them.
        """
        waiters: list[Deferred[None]] = self._fetching.setdefault(serverId, [])

        async def stock() -> None:
            tickets = (await answer)["tickets"]
            await loggedIn
            if self.control is channel:
                self._tickets.setdefault(serverId, deque()).extend(tickets)

        def done(result: object) -> None:
            for d in self._fetching.pop(serverId, []):
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)

        Deferred.fromCoroutine(stock()).addBoth(done)
        return waiters

    def connectData(self, protocol: Protocol) -> Deferred[Any]:
        """Open a data connection (plain TCP to the relay's port) for C{protocol}."""
        return self.raw.connect(OneProtocolFactory(protocol))


def preparing(channel: Channel, work: Coroutine[Any, Any, T]) -> Deferred[T]:
    """
    Run C{work} (a login, a registration) on C{channel} as a
    L{ClientService}'s C{prepareConnection}.  The service cancels it when it
    stops; an AMP call cannot be cancelled (its answer would come to a
    finished Deferred), so cancelling drops the connection instead, which
    fails the calls and ends C{work}.
    """
    inner = Deferred.fromCoroutine(work)

    def cancel(outer: Deferred[T]) -> None:
        channel.transport.abortConnection()

    outer: Deferred[T] = Deferred(cancel)

    def settle(result: Any) -> None:
        if not outer.called:
            outer.callback(result)

    inner.addBoth(settle)
    return outer


class ControlChannel(Channel):
    """
    A control connection that logs in when made ready (the
    C{prepareConnection} of a L{ClientService}), logs in again before its
    session expires, and pings the relay every C{heartbeat} seconds, for as
    long as it is open: a relay that does not answer within
    C{pingTimeout} is dropped, and the service connects again.
    """

    #: Log in again when this share of the session's life has passed.
    RENEW_AT = 0.8

    def __init__(
        self, link: RelayLink, heartbeat: float = HEARTBEAT, pingTimeout: float = PING_TIMEOUT
    ) -> None:
        super().__init__()
        self.link = link
        self.heartbeat = heartbeat
        self.pingTimeout = pingTimeout
        self._renewal: Any = None
        self._session: LoginSession | None = None
        self._pings = LoopingCall(self._sendPing)
        self._pings.clock = link.clock

    def connectionMade(self) -> None:
        super().connectionMade()
        self._pings.start(self.heartbeat, now=False)

    async def start(self) -> LoginSession:
        self._session = session = await self.link.login(self, sorted(self.link.wanted))
        self.link.adopt(self, session)
        now = self.link.clock.seconds()
        if self.connected:
            self._renewal = self.link.clock.callLater(
                max(1.0, (session.expires - now) * self.RENEW_AT), self._renew
            )
        return session

    def _renew(self) -> None:
        self._renewal = None
        d = Deferred.fromCoroutine(self.start())
        d.addErrback(self._renewFailed)

    def _renewFailed(self, failure: Failure) -> None:
        _log.warn("renewing the login failed: {why}", why=failure.getErrorMessage())
        if self.connected:
            self.transport.abortConnection()

    def _sendPing(self) -> None:
        d = self.callRemote(Ping)
        d.addTimeout(self.pingTimeout, self.link.clock)
        d.addErrback(self._noAnswer)

    def _noAnswer(self, failure: Failure) -> None:
        if self.connected:
            _log.warn(
                "the relay did not answer a ping: reconnecting ({why})",
                why=failure.getErrorMessage(),
            )
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._pings.running:
            self._pings.stop()
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        if self._session is not None:
            # The relay revokes a session when its login's connection closes.
            self.link.loggedOut(self._session)
        super().connectionLost(reason)


def linkFromConfig(access: RelayAccess, reactor: Any) -> RelayLink:
    """
    The L{RelayLink} a skeleton's or client's configuration describes,
    with its files read now: a missing or bad file is a L{ConfigError}.
    """
    password = _readPassword(access.password_file)
    if access.relay_verify == "hostname":
        assert access.relay_name is not None
        caPem = None
        if access.relay_ca is not None:
            caPem = _readFile(access.relay_ca, "relay_ca")
        verifier = hostnameVerifier(access.relay_name, caPem)
    else:
        assert access.relay_key is not None
        expected = access.relay_key
        if not expected.startswith("sha256:"):
            try:
                expected = fingerprintOfFile(expected)
            except IdentityError as e:
                raise ConfigError(access.relay_key, "relay_key", str(e)) from None
        verifier = PinnedRelay(expected)
    endpoint = clientFromString(reactor, access.relay)
    return RelayLink(endpoint, verifier, Credentials(access.user, password), reactor)


def _readFile(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(path, key, e.strerror or str(e)) from None


def _readPassword(path: str) -> str:
    lines = _readFile(path, "password_file").decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise ConfigError(path, "password_file", "the first line must hold the password")
    return lines[0]
