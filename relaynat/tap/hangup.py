"""SIGHUP, the signal every role rereads its file on (systemctl reload)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service


class ReloadOnHangup(Service):
    """
    Call C{reload} from the reactor at each SIGHUP while running: the relay
    rereads its users file, a skeleton its servers, a client its tunnels.
    A handler that was there before is called too, so that roles sharing a
    process each reload.
    """

    def __init__(self, reactor: Any, reload: Callable[[], object]) -> None:
        self.reactor, self.reload = reactor, reload
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> Any:
        signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
        return super().stopService()

    def _hangup(self, signum: int, frame: Any) -> None:
        # Not in a signal handler's context: reload from the reactor.
        self.reactor.callFromThread(self.reload)
        if callable(self._previous):
            self._previous(signum, frame)
