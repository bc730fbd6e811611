"""
The ports a role listens on.  One it cannot listen on (in use, not
allowed, an address this host does not have) stops the start with one line
that says which port and what to change, not a traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


class CannotStart(SystemExit):
    """A role cannot start: its message is the one line twistd prints."""


def _problem(description: str, key: str, error: BaseException) -> str:
    why = error.socketError if isinstance(error, CannotListenError) else error  # type: ignore[attr-defined]
    reason = getattr(why, "strerror", None) or str(why)
    hint = ""
    if getattr(why, "errno", None) == 98:
        hint = "; another program (or another relaynat) listens there: stop it, or choose another port"
    elif getattr(why, "errno", None) == 13:
        hint = "; ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a higher one"
    elif getattr(why, "errno", None) == 99:
        hint = "; this host has no such address: check the interface="
    return f"cannot listen on {description} ({key}): {reason}{hint}"


class Listening(StreamServerEndpointService):
    """C{factory} on the endpoint C{description}, the value of config key C{key}."""

    # Failures of listen() that come at once raise at once: twistd then
    # stops before it runs, with CannotStart's one line.
    _raiseSynchronously = True

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory, key: str) -> None:
        super().__init__(serverFromString(reactor, description), factory)
        self.reactor = reactor
        self.description = description
        self.key = key

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            raise CannotStart(_problem(self.description, self.key, e)) from None
        # One that fails later (an onion service that cannot be set up)
        # is logged as one line, and the role stops: it cannot do its job.
        self._waitingForPort.addErrback(self._failedLater)

    def _failedLater(self, failure: Failure) -> None:
        _log.error("{problem}", problem=_problem(self.description, self.key, failure.value))
        if self.reactor.running:
            self.reactor.stop()
