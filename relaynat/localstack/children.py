"""
Child processes of a local stack: C{twistd} and C{relaynat} as this Python
runs them, started with the reactor, their output kept, and stopped with a
bound (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from relaynat.localstack.errors import LocalStackError
from relaynat.localstack.files import REPO

# Child processes.


def twistdCommand() -> list[str]:
    """The C{twistd} of the Python running this: the script beside it."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistdArguments(role: str, configPath: str) -> list[str]:
    """
    The arguments after C{twistd} that run one role from its file: in the
    foreground, with no pid file (so several stacks can run side by side).
    """
    return ["-n", "--pidfile=", role, "--config", configPath]


def netnsExec(namespace: str) -> list[str]:
    """
    The command prefix that runs a command in network namespace
    C{namespace}: C{ip netns exec}, by its full path (a process group of its
    own is made by exec, which takes no search of C{PATH}).
    """
    ip = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )
    if ip is None:
        raise LocalStackError("no ip(8) to run a role in a network namespace: install iproute2")
    return [ip, "netns", "exec", namespace]


def relaynatCommand() -> list[str]:
    """The C{relaynat} command of the Python running this."""
    script = os.path.join(os.path.dirname(sys.executable), "relaynat")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from relaynat.cli import main; main()"]


def childEnvironment(sourceFirst: bool = True) -> dict[str, str]:
    """
    This process's environment for a child; with C{sourceFirst}, the
    checkout goes first on C{PYTHONPATH}, so a child runs this source (and
    finds its twistd plugins) whatever is installed.
    """
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if sourceFirst:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [REPO, env.get("PYTHONPATH", "")] if p
        )
    else:
        env.pop("PYTHONPATH", None)
    return env


class ChildProcess(ProcessProtocol):
    """
    A child process: its output kept, and copied to C{logPath} if given
    (after what is there: a role started again keeps its predecessor's
    lines); its end reported to whoever waits with L{ended}.
    """

    def __init__(self, name: str, logPath: str | None = None) -> None:
        self.name = name
        self.logPath = logPath
        self.output = bytearray()
        self.stdout = bytearray()
        self.status: Failure | None = None
        self._log = open(logPath, "ab") if logPath else None
        self._waiters: list[Deferred[None]] = []

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None

    @property
    def running(self) -> bool:
        return self.status is None

    def connectionMade(self) -> None:
        # Nothing is ever typed into a role.
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._keep(data)

    def errReceived(self, data: bytes) -> None:
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        self.output += data
        if self._log is not None:
            self._log.write(data)
            self._log.flush()

    def processEnded(self, reason: Failure) -> None:
        self.status = reason
        if self._log is not None:
            self._log.close()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def ended(self) -> Deferred[None]:
        """
        Fires when the process has ended; C{status} then says how.  (Not with
        the status: a L{Failure} would run the errbacks.)
        """
        if self.status is not None:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    @property
    def exitCode(self) -> int | None:
        """The exit code; None while running or if a signal ended it."""
        if self.status is None:
            return None
        code: int | None = getattr(self.status.value, "exitCode", None)
        return code

    @property
    def exitSignal(self) -> int | None:
        """The signal that ended it, if one did."""
        if self.status is None:
            return None
        sig: int | None = getattr(self.status.value, "signal", None)
        return sig

    def stoppedNormally(self) -> bool:
        """
        Did it exit 0, or end by the SIGTERM or SIGINT it was stopped with
        (twistd ends itself with the signal that stopped it)?
        """
        if self.status is None:
            return False
        if self.status.check(ProcessDone):
            return True
        return bool(
            self.status.check(ProcessTerminated)
            and self.exitCode is None
            and self.exitSignal in (signal.SIGTERM, signal.SIGINT)
        )

    def describeEnd(self) -> str:
        if self.status is None:
            return "running"
        if self.exitSignal is not None:
            return f"ended by signal {self.exitSignal}"
        return f"exited with code {self.exitCode}"

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    async def waitEnded(self, reactor: Any, timeout: float) -> bool:
        """Wait at most C{timeout} seconds for the end; True if it came."""
        if self.status is not None:
            return True
        d = self.ended()
        d.addTimeout(timeout, reactor)
        try:
            await d
        except defer.TimeoutError:
            # What addTimeout raises (not twisted.internet.error's).
            return False
        return True

    async def stop(self, reactor: Any, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within C{timeout} seconds."""
        for sig, wait in (("TERM", timeout), ("KILL", 5.0)):
            if self.status is not None or self.transport is None:
                return
            try:
                self.transport.signalProcess(sig)
            except ProcessExitedAlready:
                pass
            if await self.waitEnded(reactor, wait):
                return


#: Runs its arguments as a command in a process group of its own (the same
#: process, by exec): a terminal's Ctrl-C then reaches only the parent (the demo), which
#: stops its children in order, each with one SIGTERM.
_OWN_GROUP = "import os, sys; os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[1:])"


def spawn(
    reactor: Any,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    logPath: str | None = None,
    ownGroup: bool = False,
) -> ChildProcess:
    """Start C{argv} as a L{ChildProcess}, in a process group of its own if asked."""
    child = ChildProcess(name, logPath)
    if ownGroup:
        argv = [sys.executable, "-c", _OWN_GROUP, *argv]
    reactor.spawnProcess(
        child, argv[0], argv, env=childEnvironment() if env is None else env, path=cwd
    )
    return child


async def runCommand(
    reactor: Any,
    argv: list[str],
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> ChildProcess:
    """Run C{argv} to its end (killed after C{timeout} seconds); the ended child."""
    child = spawn(reactor, os.path.basename(argv[0]), argv, env, cwd)
    if not await child.waitEnded(reactor, timeout):
        await child.stop(reactor, timeout=1.0)
        raise LocalStackError(
            f"{' '.join(argv)} did not finish within {timeout:g} s:\n{child.tail()}"
        )
    return child



async def relaynatList(reactor: Any, clientConfigPath: str, *extra: str) -> ChildProcess:
    """Run C{relaynat list --config CLIENT} as a user would."""
    return await runCommand(
        reactor, relaynatCommand() + ["list", "--config", clientConfigPath, *extra]
    )

