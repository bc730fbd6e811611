"""
Stopping is bounded: a skeleton or a client whose relay cannot be reached
any more (its process stopped, its sockets still open, so nothing answers
and nothing is refused) still ends within seconds of SIGTERM, as
C{systemctl stop} needs; in this process, its control service's stop ends
within L{STOP_GRACE} seconds.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.protocol import Factory
from twisted.internet.tcp import Server
from twisted.trial.unittest import TestCase

from relaynat.client import ClientControl
from relaynat.demo import pageSite
from relaynat.localstack import ChildProcess
from relaynat.link import STOP_GRACE
from relaynat.tap.access import controlService
from relaynat.test.loopback import Stack
from relaynat.test.net import openConnections, pollUntil, runAsync
from relaynat.test.streams import Echo
from relaynat.test.test_twistd import TwistdStack

#: Seconds from SIGTERM to the end of a process whose relay is gone: the
#: grace, and time to spare for a slow machine's Python to exit.
STOP_BOUND = 6.0


class StopTwistdTests(TwistdStack):
    """The real twistd processes, their relay stopped under them."""

    @runAsync
    async def test_stopWithRelayGone(self) -> None:
        """
        With the relay's process stopped (SIGSTOP: its connections stay
        open and unanswered), SIGTERM ends the skeleton and the client
        within a few seconds each, as twistd ends at SIGTERM, with no
        traceback in their logs.
        """
        stack = await self.startStack(pageSite())
        # A tunnel used: the client's ready connections and the skeleton's
        # pool are open too, as in service.
        await stack.waitTunnel(timeout=30)
        relay = stack.children["relay"]
        assert relay.pid is not None
        os.kill(relay.pid, signal.SIGSTOP)
        # Before the stack's own stop, which needs a relay that runs.
        self.addCleanup(_continue, relay)

        ends = [stack.children[role] for role in ("skeleton", "client")]
        started = reactor.seconds()
        for child in ends:
            assert child.transport is not None
            child.transport.signalProcess("TERM")
        took = await gatherResults([ensureDeferred(_ended(child, STOP_BOUND)) for child in ends])
        for child, seconds in zip(ends, took, strict=True):
            self.assertIsNotNone(
                seconds,
                f"{child.name} still running {STOP_BOUND:g} s after SIGTERM:\n{child.tail()}",
            )
            self.assertTrue(child.stoppedNormally(), f"{child.name} {child.describeEnd()}")
            for word in ("Traceback", "Unhandled"):
                self.assertNotIn(word, child.text(), f"{child.name} log:\n{child.text()}")
        self.assertLess(reactor.seconds() - started, STOP_BOUND + 1)


def _continue(child: ChildProcess) -> None:
    if child.running and child.pid is not None:
        os.kill(child.pid, signal.SIGCONT)


async def _ended(child: ChildProcess, timeout: float) -> float | None:
    """Seconds until C{child} ended, or None if it still runs after C{timeout}: then it is killed."""
    started = reactor.seconds()
    ended = child.ended()
    timer = reactor.callLater(timeout, ended.cancel)
    try:
        await ended
    except Exception:
        if child.transport is not None and child.running:
            child.transport.signalProcess("KILL")
            await child.ended()
        return None
    timer.cancel()
    return reactor.seconds() - started


class StopServiceTests(TestCase):
    """A control service stopped in this process, its relay frozen."""

    @runAsync
    async def test_stopWithRelayFrozen(self) -> None:
        """
        A logged-in client's control service, its relay no longer reading
        (so TLS's goodbye is never answered), stops within L{STOP_GRACE}
        seconds and a little, and its connection is closed.
        """
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        link = stack.link(stack.clientPort, "alice")
        made: list[ClientControl] = []

        def channel() -> ClientControl:
            made.append(ClientControl(link))
            return made[-1]

        service = controlService(link, channel, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        # Polled, not awaited: stopping the service from inside its own
        # transition to connected would be reentrant.
        await pollUntil(lambda: service.ready.current is not None)
        [control] = made
        # The relay's end of this one connection stops reading; the stack's
        # own skeleton and client go on as before.
        local = control.transport.getHost().port
        [relaySide] = [
            c for c in openConnections() if isinstance(c, Server) and c.getPeer().port == local
        ]
        relaySide.pauseProducing()
        self.addCleanup(_resume, relaySide)

        started = reactor.seconds()
        stopped: Deferred[Any] = service.stopService()
        stopped.addTimeout(STOP_GRACE + 3, reactor)
        await stopped
        self.assertLess(reactor.seconds() - started, STOP_GRACE + 1)
        self.assertGreaterEqual(reactor.seconds() - started, STOP_GRACE * 0.9)
        self.assertFalse(control.connected)
        self.assertIsNone(link.session)


def _resume(connection: Server) -> None:
    if connection.connected:
        connection.resumeProducing()
