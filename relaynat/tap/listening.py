"""
The ports a role listens on.  One it cannot listen on (in use, not
allowed, an address this host does not have) stops the start with one line
that says which port and what to change, not a traceback; one that fails
later (an onion service Tor cannot set up) is one line too, and the role
stops.  The C{onion:} ports on one Tor share one connection to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, serverFromString
from twisted.internet.error import CannotListenError, ConnectError, ReactorNotRunning
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python.failure import Failure
from txtorcon import TCPHiddenServiceEndpoint, TorConfig
from txtorcon import connect as connectTor
from zope.interface import implementer

_log = Logger()

#: A field C{controlPort=...} of an endpoint string (fields are split at ':').
_CONTROL_PORT = re.compile(r"(?:^|:)controlPort=")


class CannotStart(SystemExit):
    """A role cannot start: its message is the one line twistd prints."""


def _problem(description: str, key: str, error: BaseException) -> str:
    why = error.socketError if isinstance(error, CannotListenError) else error  # type: ignore[attr-defined]
    reason = (getattr(why, "strerror", None) or str(why)).rstrip(".")
    hint = ""
    if getattr(why, "errno", None) == 98:
        hint = "; another program (or another relaynat) listens there: stop it, or choose another port"
    elif getattr(why, "errno", None) == 13:
        hint = "; ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a higher one"
    elif getattr(why, "errno", None) == 99:
        hint = "; this host has no such address: check the interface="
    elif isinstance(why, ConnectError) and description.startswith("onion:"):
        hint = "; no Tor answers at its controlPort: start Tor with that ControlPort, or correct controlPort="
    return f"cannot listen on {description} ({key}): {reason}{hint}"


class OnionTors:
    """
    One txtorcon connection to each Tor that a role's C{onion:} ports name
    (by C{controlPort}), shared by those ports.

    txtorcon's C{onion:} parser opens a connection of its own per endpoint,
    and its C{TorConfig} writes the Tor's whole list of onion services
    (C{HiddenServiceDir}/C{HiddenServicePort}) as it loaded it when it
    connected, plus its own service: two ports on one Tor each wrote a list
    without the other's, and the last write won.  On one C{TorConfig} each
    service is added to the list that holds the others (and whatever the
    Tor had already), even while another's write is under way: each write
    sends the whole list, in order on the one connection.  Running the
    endpoints one after another would not do: each connects when it is
    parsed, and its listening completes only once a descriptor is
    published, which may be never (a Tor offline).
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._configs: dict[tuple[str, ...], TorConfig | Failure] = {}
        self._connecting = DeferredLock()
        #: Each Tor's onion-service folders, and the port (key) that names each.
        self._folders: dict[tuple[str, ...], dict[str, str]] = {}

    def endpoint(self, description: str, key: str) -> IStreamServerEndpoint:
        """
        The endpoint C{description}: an C{onion:} one with a C{controlPort}
        on this role's connection to that Tor, any other as Twisted parses it.
        """
        if description.split(":", 1)[0] != "onion" or not _CONTROL_PORT.search(description):
            # Without a controlPort txtorcon launches one Tor for the process
            # (which its endpoints share already) as it parses the string: not
            # a string to parse against a reactor that opens nothing.
            return serverFromString(self.reactor, description)
        # txtorcon's own parser reads the string, against a reactor that opens
        # nothing: the connection it starts at once is only recorded there,
        # and says which Tor.
        offline = MemoryReactor()
        parsed = serverFromString(offline, description)
        if offline.tcpClients:
            host, port = offline.tcpClients[0][:2]
            control: tuple[str, ...] = ("tcp", host, str(port))
        elif offline.unixClients:
            control = ("unix", offline.unixClients[0][0])
        else:  # a txtorcon that connects later: its own way, then
            return serverFromString(self.reactor, description)
        if not parsed.ephemeral:
            folders = self._folders.setdefault(control, {})
            other = folders.setdefault(parsed.hidden_service_dir, key)
            if other != key:
                raise CannotStart(
                    f"cannot listen on {description} ({key}): {other} has the same"
                    " hiddenServiceDir on this Tor: give each port a folder of its own"
                )
        return _OnionOnSharedTor(self, control, parsed)

    async def config(self, control: tuple[str, ...]) -> TorConfig:
        """
        The C{TorConfig} of the Tor at C{control}, connected to once: if that
        fails, every port on that Tor fails with the same error.
        """
        async with self._connecting:
            known = self._configs.get(control)
            if known is None:
                if control[0] == "tcp":
                    endpoint: Any = TCP4ClientEndpoint(self.reactor, control[1], int(control[2]))
                else:
                    endpoint = UNIXClientEndpoint(self.reactor, control[1])
                try:
                    tor = await connectTor(self.reactor, endpoint)
                    known = await tor.get_config()
                except Exception:
                    known = Failure()
                self._configs[control] = known
        if isinstance(known, Failure):
            known.raiseException()
        return known


@implementer(IStreamServerEndpoint)
class _OnionOnSharedTor:
    """
    The onion service C{parsed} describes (the endpoint txtorcon's parser
    made, with a connection of its own that never opened), as the same
    endpoint on L{OnionTors}' connection to the Tor at C{control}, made
    when it listens.
    """

    def __init__(self, tors: OnionTors, control: tuple[str, ...], parsed: Any) -> None:
        self.tors = tors
        self.control = control
        self.parsed = parsed

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:
        p = self.parsed
        endpoint = TCPHiddenServiceEndpoint(
            self.tors.reactor,
            Deferred.fromCoroutine(self.tors.config(self.control)),
            p.public_port,
            hidden_service_dir=p.hidden_service_dir,
            local_port=p.local_port,
            ephemeral=p.ephemeral,
            private_key=p.private_key,
            version=p.version,
            single_hop=p.single_hop,
        )
        listening: Deferred[Any] = endpoint.listen(factory)
        return listening


@implementer(IStreamServerEndpoint)
class _Reporting:
    """C{endpoint}, whose listening's failure goes to C{report} first."""

    def __init__(
        self, endpoint: IStreamServerEndpoint, report: Callable[[Failure], Failure | None]
    ) -> None:
        self.endpoint = endpoint
        self.report = report

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:
        d: Deferred[Any] = self.endpoint.listen(factory)
        # Before StreamServerEndpointService's errback, which logs a failure
        # after the start as a traceback and goes on as if nothing happened.
        d.addErrback(self.report)
        return d


class Listening(StreamServerEndpointService):
    """
    C{factory} on the endpoint C{description}, the value of config key
    C{key}; an C{onion:} one on C{tors}' connection to its Tor, if given.
    """

    # Failures of listen() that come at once raise at once: twistd then
    # stops before it runs, with CannotStart's one line.
    _raiseSynchronously = True

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: IProtocolFactory,
        key: str,
        tors: OnionTors | None = None,
    ) -> None:
        endpoint = (
            serverFromString(reactor, description)
            if tors is None
            else tors.endpoint(description, key)
        )
        super().__init__(_Reporting(endpoint, self._failedLater), factory)
        self.reactor = reactor
        self.description = description
        self.key = key
        self._started = False
        self._stopping = False

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            raise CannotStart(_problem(self.description, self.key, e)) from None
        self._started = True

    def stopService(self) -> Any:
        self._stopping = True
        return super().stopService()

    def _failedLater(self, failure: Failure) -> Failure | None:
        if not self._started:
            # At the start: Twisted raises it, privilegedStartService says it.
            return failure
        if not self._stopping:
            # One that fails later (an onion service that cannot be set up)
            # is logged as one line, and the role stops: it cannot do its job.
            _log.error("{problem}", problem=_problem(self.description, self.key, failure.value))
            try:
                self.reactor.stop()
            except ReactorNotRunning:  # another port's failure stopped it
                pass
        # (At the stop, a listening cancelled or failing is no news.)
        return None
