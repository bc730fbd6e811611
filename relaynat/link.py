"""
How skeletons and clients reach the relay: control connections over TLS
with the relay verified (its key pinned, or a CA certificate checked for its
host name), login by SCRAM-SHA-256-PLUS without sending the password, and
data connections, plain TCP to the same ports, that start with a one-time
ticket from the login.
"""

from __future__ import annotations

import hmac
import re
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import attrs
from cryptography import x509
from scramp import ScramClient, ScramException
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, ssl
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import ConnectingCancelledError, ConnectionLost
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from relaynat.channel import CLOSE_GRACE, Channel
from relaynat.identity import (
    PinnedRelay,
    RelayKeyMismatch,
    serverEndPoint,
    trustRootFromPem,
)
from relaynat.splice import OneProtocolFactory
from relaynat.wire import (
    HEARTBEAT,
    PING_TIMEOUT,
    TICKET_BATCH,
    Login,
    LoginFailed,
    LoginFinish,
    Ping,
    RelaynatError,
    SessionEnded,
    SkeletonGone,
    Tickets,
)

_log = Logger()

#: Seconds a stopping skeleton or client waits for the relay to answer the
#: close of its control connection (TLS's close_notify) before it drops the
#: connection: a relay that cannot be reached never answers, and would hold
#: the stop (and `systemctl stop`) until TCP gives up, a minute or more.
STOP_GRACE = CLOSE_GRACE

#: Seconds a new control connection may take from its TCP connect to ready
#: (TLS, the login, a skeleton's registration): a relay that accepts TCP but
#: never answers (stopped, or not a relay) is given up and tried again,
#: rather than holding the attempt, and the service, forever.
LOGIN_TIMEOUT = 30.0

C = TypeVar("C", bound=Channel)
T = TypeVar("T")


class RelayUnreachable(Exception):
    """The relay could not be reached, or the TLS handshake failed."""


class RelayUnproven(LoginFailed):
    """The relay's last login step did not prove that it knows this user's verifier."""


class LoginRefused(LoginFailed):
    """
    The relay checked this user's proof and refused it: the password is
    wrong, or the relay has no such user (it does not say which).  Its
    other refusals (too many attempts) come at the first step.
    """


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
        passwordFile: str | None = None,
    ) -> None:
        self._verifier = verifier
        #: Where the password came from: a refused login names it.
        self.passwordFile = passwordFile
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

    async def login(self, channel: Channel, role: str, prefetch: Any = ()) -> LoginSession:
        """
        Log in on C{channel} as a C{role} (C{"client"} or C{"skeleton"}, as
        the relay's port expects): SCRAM-SHA-256-PLUS bound to this TLS channel.
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
            first = await channel.callRemote(
                Login, role=role, message=scram.get_client_first()
            )
            scram.set_server_first(first["message"])
            finishing = channel.callRemote(LoginFinish, message=scram.get_client_final())
            for serverId in prefetch:
                self._startFetch(
                    serverId,
                    channel,
                    channel.callRemote(Tickets, server=serverId, count=TICKET_BATCH),
                    finishing,
                )
            try:
                final = await finishing
            except LoginFailed as e:
                raise LoginRefused(*e.args) from e
            scram.set_server_final(final["message"])
        except ScramException as e:
            channel.transport.abortConnection()
            raise RelayUnproven(f"the relay failed to prove it knows this user: {e}") from e
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
    Run C{work} (a login, a registration) on C{channel}; if it fails, the
    connection is dropped, so that no refused connection stays open.
    Cancelling it drops the connection too: an AMP call cannot be cancelled
    (its answer would come to a finished Deferred), and the loss fails the
    calls and ends C{work}.

    L{ControlService} runs it for each new connection.  (As a
    L{ClientService}'s own C{prepareConnection} it cannot fail cleanly:
    ClientService's state machine has no transition for the loss of a
    connection it has not taken yet.)
    """
    inner = Deferred.fromCoroutine(work)

    def cancel(outer: Deferred[T]) -> None:
        _drop(channel)

    outer: Deferred[T] = Deferred(cancel)

    def settle(result: Any) -> None:
        if isinstance(result, Failure):
            _drop(channel)
        if not outer.called:
            outer.callback(result)

    inner.addBoth(settle)
    return outer


def _drop(channel: Channel) -> None:
    """Abort C{channel}'s connection, if it has one that is still open."""
    if channel.connected:
        channel.transport.abortConnection()


class ControlChannel(Channel):
    """
    A control connection that logs in when made ready (L{prepare}, run by a
    L{ControlService}), logs in again before its session expires, and pings
    the relay every C{heartbeat} seconds, for as long as it is open: a relay
    that does not answer within C{pingTimeout} is dropped, and the service
    connects again.  A relay that revokes the login says so (L{SessionEnded})
    before it closes.
    """

    #: Log in again when this share of the session's life has passed.
    RENEW_AT = 0.8

    #: What this end is, in the relay's refusals of it.
    role = "client"

    def __init__(
        self, link: RelayLink, heartbeat: float = HEARTBEAT, pingTimeout: float = PING_TIMEOUT
    ) -> None:
        super().__init__()
        self.link = link
        self.heartbeat = heartbeat
        self.pingTimeout = pingTimeout
        self._renewal: Any = None
        #: The session this connection's login holds, once logged in.
        self.session: LoginSession | None = None
        self._pings = LoopingCall(self._sendPing)
        self._pings.clock = link.clock
        self._onLoss: list[Callable[[Failure], object]] = []
        self._endSaid = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._pings.start(self.heartbeat, now=False)

    async def prepare(self) -> object:
        """Make this new connection ready for use: log in."""
        return await self.start()

    def onLoss(self, callback: Callable[[Failure], object]) -> None:
        """Call C{callback} with the reason when this connection is lost."""
        self._onLoss.append(callback)

    async def start(self) -> LoginSession:
        self.session = session = await self.link.login(self, self.role, sorted(self.link.wanted))
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

    @SessionEnded.responder
    def sessionEnded(self, reason: str) -> dict[str, object]:
        if not self._endSaid:
            self._endSaid = True
            _log.warn("the relay ended this login: {reason}", reason=reason)
        if self.session is not None:
            # Revoked: no data connection may start with it from now on.
            self.link.loggedOut(self.session)
        # The relay closes next; closing from this end as well lets the
        # service connect (and log in, or say why not) again without
        # waiting on it.
        self.transport.loseConnection()
        return {}

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._pings.running:
            self._pings.stop()
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        if self.session is not None:
            # The relay revokes a session when its login's connection closes.
            self.link.loggedOut(self.session)
        super().connectionLost(reason)
        told, self._onLoss = self._onLoss, []
        for callback in told:
            callback(reason)


class FailureNotes:
    """
    What failed attempts to make a control connection ready have said: an
    attempt that fails as the last one did stays quiet (a wrong password
    would otherwise fill the log at every retry), one that fails otherwise
    is said, and after a success the next failure is said again.
    """

    def __init__(self) -> None:
        self._last: str | None = None
        #: Why the last attempt failed, in a few words; None after a success.
        self.reason: str | None = None

    def succeeded(self) -> None:
        self._last = None
        self.reason = None

    def failed(self, error: BaseException, channel: ControlChannel, timeout: float) -> None:
        """Log why C{channel}'s attempt failed with C{error}, unless it was said last."""
        level, text, fields, self.reason = _describe(error, channel, timeout)
        # Numbers do not make a failure a new one: the minutes of the
        # relay's lock-out count down from one retry to the next.
        said = re.sub(r"\d+", "#", text.format(**fields))
        if said == self._last:
            return
        self._last = said
        _log.emit(level, text, **fields)


def _describe(
    error: BaseException, channel: ControlChannel, timeout: float
) -> tuple[LogLevel, str, dict[str, object], str]:
    """
    How to log the failure C{error} of an attempt: its level, format and
    fields; and the reason in a few words, for the line of each retry.
    """
    link = channel.link
    why = str(error) or repr(error)
    if isinstance(error, LoginRefused):
        why = "wrong password or unknown user"
        where = f" {link.passwordFile}" if link.passwordFile else ""
        return (
            LogLevel.error,
            "login as {user} refused: {why}; check password_file{where} and user in [{role}]",
            {"user": link.credentials.user, "why": why, "where": where, "role": channel.role},
            f"login refused: {why}",
        )
    if isinstance(error, LoginFailed) and not isinstance(error, RelayUnproven):
        # Refused before any password was checked (too many attempts from
        # here): the password is not what to look at.
        return (
            LogLevel.error,
            "login as {user} refused: {why}",
            {"user": link.credentials.user, "why": why},
            f"login refused: {why}",
        )
    if isinstance(error, RelayKeyMismatch):
        short = f"its key {error.seen} is not the pinned one"
        return LogLevel.error, "no control connection to the relay: {why}", {"why": why}, short
    if isinstance(error, RelayUnproven):
        short = "it did not prove that it knows this user"
        return LogLevel.error, "no control connection to the relay: {why}", {"why": why}, short
    if isinstance(error, RelaynatError):
        return (
            LogLevel.error,
            "the relay refused this {role}: {why}",
            {"role": channel.role, "why": why},
            f"refused: {why}",
        )
    short = why
    if isinstance(error, defer.TimeoutError):
        short = f"not ready within {timeout:g} s"
        why = f"it was not ready within {timeout:g} s (TLS, login); trying again"
    elif isinstance(error, RelayUnreachable) and error.__cause__ is not None:
        # What the network said (connection refused, no route), without
        # "cannot reach the relay", which the retry's line says already.
        short = str(error.__cause__) or repr(error.__cause__)
    return (
        LogLevel.warn,
        "no control connection to the relay: {why}",
        {"why": why},
        short.rstrip("."),
    )


@implementer(IStreamClientEndpoint)
class LoginEndpoint:
    """
    Control connections that are ready when made: each is a new
    C{channels()} connected through C{endpoint} (TLS), and C{connect} fires
    once its C{prepare} (the login, and a skeleton's registration) has
    succeeded, within C{timeout} seconds.  A connection whose TLS, login or
    registration fails is dropped and the attempt fails, so that a
    L{ClientService} counts it as a failed attempt and backs off; why is
    logged once (L{FailureNotes}).

    The service is given, for each ready connection, a plain protocol that
    is made with the connection's transport and lost with it: it never
    holds a connection that is not ready, so none is lost under it while it
    does not expect one.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        channels: Callable[[], ControlChannel],
        clock: IReactorTime,
        timeout: float = LOGIN_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.channels = channels
        self.clock = clock
        self.timeout = timeout
        #: The ready connection now in use, if any.
        self.current: ControlChannel | None = None
        self.notes = FailureNotes()

    def __repr__(self) -> str:
        # As ClientService's "Scheduling retry N to connect ... in D
        # seconds." names it: with why the last attempt failed, so that
        # each retry's line says why as well as when.
        if self.notes.reason is None:
            return "the relay"
        return f"the relay (last try: {self.notes.reason})"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        channel = self.channels()
        attempt = Deferred.fromCoroutine(self._attempt(channel, protocolFactory))
        attempt.addTimeout(self.timeout, self.clock)
        attempt.addErrback(self._failed, channel)
        return attempt

    async def _attempt(self, channel: ControlChannel, factory: IProtocolFactory) -> IProtocol:
        try:
            # Not connectProtocol: its factory logs two lines per connection.
            await self.endpoint.connect(OneProtocolFactory(channel))
        except CancelledError:
            raise
        except ConnectingCancelledError:
            # Stopped, or timed out, while connecting: as at any later step.
            raise CancelledError() from None
        except Exception as e:
            raise RelayUnreachable(f"cannot reach the relay: {e}") from e
        # TLS, the login, a registration: their failure drops the connection.
        await preparing(channel, channel.prepare())
        if not channel.connected:
            raise ConnectionLost("the connection closed as it became ready")
        held = factory.buildProtocol(channel.transport.getPeer())
        assert held is not None
        held.makeConnection(channel.transport)
        self.current = channel
        channel.onLoss(lambda reason: self._lost(channel, held, reason))
        self.notes.succeeded()
        return held

    def _lost(self, channel: ControlChannel, held: IProtocol, reason: Failure) -> None:
        if self.current is channel:
            self.current = None
        held.connectionLost(reason)

    def _failed(self, failure: Failure, channel: ControlChannel) -> Failure:
        # Cancelled: the service is stopping, which is no failure to report.
        if not failure.check(CancelledError):
            self.notes.failed(failure.value, channel, self.timeout)
        return failure


class ControlService(ClientService):
    """
    A skeleton's or a client's control connection, kept up: each one made
    ready by a L{LoginEndpoint}, made again after a loss or a failed attempt
    with C{retryPolicy}'s backoff.  Stopping takes at most L{STOP_GRACE}
    seconds, whatever the network does.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        channels: Callable[[], ControlChannel],
        clock: IReactorTime,
        retryPolicy: Callable[[int], float] | None = None,
        timeout: float = LOGIN_TIMEOUT,
    ) -> None:
        self.ready = LoginEndpoint(endpoint, channels, clock, timeout)
        self._clock = clock
        if retryPolicy is None:
            retryPolicy = backoffPolicy()
        self._retryPolicy = retryPolicy
        super().__init__(
            self.ready, Factory.forProtocol(Protocol), retryPolicy=self._delay, clock=clock
        )

    def _delay(self, attempt: int) -> float:
        # To the hundredth of a second: ClientService's retry line shows the
        # delay as it is, and a jitter's sixteen digits say nothing more.
        return round(self._retryPolicy(attempt), 2)

    def stopService(self) -> Deferred[None]:
        # ClientService closes a ready connection with TLS's goodbye and
        # waits for the relay's answer, which one that cannot be reached
        # never sends: past the grace the connection is dropped.  (An
        # attempt under way is cancelled, which drops its connection now.)
        channel = self.ready.current
        stopping = super().stopService()
        timer = None
        if channel is not None and not stopping.called:
            timer = self._clock.callLater(STOP_GRACE, _drop, channel)
        stopped: Deferred[None] = Deferred()

        def done(result: object) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            # Told a turn later: ClientService fires its Deferred inside a
            # transition of its state machine, where whoever waits could
            # not start or stop it again (automat refuses reentry).
            self._clock.callLater(0, stopped.callback, None)

        stopping.addBoth(done)
        return stopped
