"""
The relay's users file is reloaded on SIGHUP without dropping tunnels; a
bad file keeps the old users.
"""

from __future__ import annotations

import os
import signal
from typing import cast

from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from relaynat.tap.hangup import ReloadOnHangup
from relaynat.test.loopback import PASSWORD, Stack
from relaynat.test.net import pollUntil, reactor, runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.users import Rights, User


class ReloadOnHangupTests(TestCase):
    """SIGHUP rereads the users file."""

    @runAsync
    async def test_hangupReloads(self) -> None:
        """
        After SIGHUP the relay knows the users the file now lists, and a
        tunnel open across the reload keeps working.
        """
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        service = ReloadOnHangup(reactor, stack.users.reload)
        service.startService()
        self.addCleanup(service.stopService)

        collector = Collect(b"before")
        await stack.connect("echo", collector)
        await pollUntil(lambda: b"".join(collector.received) == b"before")

        with open(stack.users.path, "a") as f:
            f.write(User.create("dave", PASSWORD, Rights(join=None)).line() + "\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await pollUntil(lambda: stack.users.get("dave") is not None)

        assert collector.transport is not None
        collector.transport.write(b" and after")
        await pollUntil(lambda: b"".join(collector.received) == b"before and after")
        collector.transport.loseConnection()
        await collector.finished

    @runAsync
    async def test_badFileKeepsOldUsers(self) -> None:
        """A users file that does not parse is not taken; the reason is logged."""
        events: list[dict] = []  # type: ignore[type-arg]
        globalLogPublisher.addObserver(cast(ILogObserver, events.append))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, events.append))
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        service = ReloadOnHangup(reactor, stack.users.reload)
        service.startService()
        self.addCleanup(service.stopService)
        with open(stack.users.path, "a") as f:
            f.write("broken-line-without-verifier\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await pollUntil(lambda: any("not reloaded" in e.get("log_format", "") for e in events))
        self.assertIsNotNone(stack.users.get("alice"))
        [event] = [e for e in events if "not reloaded" in e.get("log_format", "")]
        self.assertIn("line 3", formatEvent(event))
