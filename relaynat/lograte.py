"""
Log lines that anyone on the Internet can cause (a connection that sends
nothing, a failed login), bounded: the first few of each kind in a window
are logged, the rest counted and summed up in one line when the window
ends, so an attack cannot fill the disk or bury the lines that matter.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


@attrs.define
class _Window:
    started: float
    logged: int = 0
    leftOut: int = 0


class LogBudget:
    """
    At most C{burst} warnings of one kind every C{window} seconds.  What
    was left out is summed up by the next warning of its kind after the
    window, or by L{flush} (the relay's heartbeat calls it), so no timer is
    held per kind.
    """

    def __init__(
        self, clock: IReactorTime, log: Logger, burst: int = 10, window: float = 60.0
    ) -> None:
        self._clock = clock
        self._log = log
        self.burst = burst
        self.window = window
        self._windows: dict[str, _Window] = {}

    def warn(self, kind: str, format: str, **fields: Any) -> None:
        """Log C{format} as a warning, unless C{kind} used up its budget."""
        now = self._clock.seconds()
        window = self._windows.get(kind)
        if window is None or now - window.started >= self.window:
            if window is not None:
                self._sum(kind, window)
            window = self._windows[kind] = _Window(now)
        if window.logged < self.burst:
            window.logged += 1
            self._log.warn(format, **fields)
        else:
            window.leftOut += 1

    def flush(self) -> None:
        """Sum up and forget the windows that are over."""
        now = self._clock.seconds()
        for kind, window in list(self._windows.items()):
            if now - window.started >= self.window:
                self._sum(kind, window)
                del self._windows[kind]

    def _sum(self, kind: str, window: _Window) -> None:
        if window.leftOut:
            self._log.warn(
                "{count} more warnings of {kind} left out of the log in {window:g} s",
                count=window.leftOut,
                kind=kind,
                window=self.window,
            )
            window.leftOut = 0
