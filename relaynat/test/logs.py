"""What a test logged: every event from now to the end of the test."""

from __future__ import annotations

from typing import Any, cast

from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


def logEvents(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """Every log event from now to the end of C{case}, kept in the list returned."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events
