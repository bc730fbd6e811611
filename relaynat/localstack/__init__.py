"""
One local stack, shared by the demo, the tests and C{bench/}: the relay, a
skeleton and a client as C{twistd} processes on 127.0.0.1, from the example
configurations in C{conf/} with their ports moved.

Each concern has a module of its own: L{files} makes the configurations,
keys, users and secrets; L{ports} picks free ports; L{children} starts and
stops processes; L{waiting} waits with a bound.  L{LocalStack} puts them
together; L{serve} runs one as a process of its own, for a program with no
reactor (C{bench/}): C{python -m relaynat.localstack serve DIR}.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from relaynat.client import listServers
from relaynat.load import loadClient, readConfig
from relaynat.localstack.children import (
    ChildProcess,
    childEnvironment,
    netnsExec,
    relaynatCommand,
    relaynatList,
    runCommand,
    spawn,
    twistdArguments,
    twistdCommand,
)
from relaynat.localstack.errors import LocalStackError
from relaynat.localstack.files import (
    CONF,
    REPO,
    ROLES,
    StackConfigs,
    endpointPort,
    moveEndpoint,
    moveEndpoints,
    readConfigs,
    relaynatTool,
    tomlText,
    writeConfigs,
    writeKeysAndUsers,
)
from relaynat.localstack.ports import pickFreePort
from relaynat.localstack.waiting import HttpGet, fetchPage, pollUntil, pollUntilBlocking

__all__ = [
    "CONF",
    "REPO",
    "ROLES",
    "ChildProcess",
    "HttpGet",
    "LocalStack",
    "LocalStackError",
    "StackConfigs",
    "childEnvironment",
    "endpointPort",
    "fetchPage",
    "moveEndpoint",
    "moveEndpoints",
    "netnsExec",
    "pickFreePort",
    "pollUntil",
    "pollUntilBlocking",
    "readConfigs",
    "relaynatCommand",
    "relaynatList",
    "relaynatTool",
    "runCommand",
    "spawn",
    "tomlText",
    "twistdArguments",
    "twistdCommand",
    "writeConfigs",
    "writeKeysAndUsers",
]

# The three roles as processes.


class LocalStack:
    """
    The relay, a skeleton and a client as C{twistd -n} processes on
    127.0.0.1, from the example configurations with their ports moved, and
    every server of the skeleton pointed at C{targetPort}; with no
    C{targetPort}, from the files L{writeConfigs} and L{writeKeysAndUsers}
    left in C{workDir} before (with whatever hosts and overrides).  A role
    named in C{namespaces} runs in that network namespace (C{ip netns exec}).
    L{stop} ends them all, with SIGKILL for any that does not go with SIGTERM.
    """

    def __init__(
        self,
        reactor: Any,
        workDir: str,
        targetPort: int | None = None,
        confDir: str = CONF,
        namespaces: Mapping[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.workDir = os.path.abspath(workDir)
        if targetPort is None:
            self.configs = readConfigs(self.workDir)
            #: The tool commands that made the keys, users and secrets.
            self.setup: list[str] = []
        else:
            self.configs = writeConfigs(self.workDir, targetPort, confDir)
            self.setup = writeKeysAndUsers(self.configs)
        self.namespaces = dict(namespaces or {})
        self.children: dict[str, ChildProcess] = {}
        self.stopping = False

    def start(self) -> None:
        """Start the three processes (each logs to C{ROLE.log})."""
        for role in ROLES:
            self.startRole(role)

    def startRole(self, role: str) -> ChildProcess:
        """Start one role's process; it logs to C{ROLE.log}, after what it logged before."""
        if self.stopping:
            raise LocalStackError(f"not starting the {role}: the stack is stopping")
        argv = twistdCommand() + twistdArguments(role, self.configs.path(role))
        namespace = self.namespaces.get(role)
        if namespace is not None:
            argv = [*netnsExec(namespace), *argv]
        child = self.children[role] = spawn(
            self.reactor,
            role,
            argv,
            cwd=self.workDir,
            logPath=os.path.join(self.workDir, f"{role}.log"),
            ownGroup=True,
        )
        return child

    async def restart(self, role: str, timeout: float = 10.0) -> ChildProcess:
        """
        Stop one role (as L{stop} does) and start it again; the new process.
        The old one leaves L{children} first, so whoever watches for a role
        that ends on its own can tell this end from one.
        """
        old = self.children.pop(role, None)
        if old is not None:
            await old.stop(self.reactor, timeout)
        return self.startRole(role)

    def checkAlive(self) -> None:
        """Raise L{LocalStackError} with its log if a process has ended."""
        for child in self.children.values():
            if not child.running:
                raise LocalStackError(
                    f"the {child.name} process {child.describeEnd()}:\n{child.tail()}"
                )

    async def listing(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """What the relay lists now for the client's user, asked in this process."""
        access = loadClient(*readConfig(self.configs.client)).access
        d = ensureDeferred(listServers(access.link(self.reactor)))
        d.addTimeout(timeout, self.reactor)
        return await d

    async def waitRegistered(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the relay lists every server of the skeleton."""
        expected = {serverId for serverId, _ in self.configs.servers}

        async def registered() -> list[dict[str, Any]]:
            servers = await self.listing()
            missing = expected - {s["id"] for s in servers}
            if missing:
                raise ValueError(f"not listed yet: {', '.join(sorted(missing))}")
            return servers

        return await pollUntil(
            self.reactor, registered, timeout, "the relay listing the skeleton's servers",
            guard=self.checkAlive,
        )

    async def waitTunnel(self, timeout: float = 30.0) -> bytes:
        """Wait until C{GET /} through the first tunnel answers; the page."""
        return await pollUntil(
            self.reactor,
            lambda: fetchPage(self.reactor, self.configs.tunnelPorts[0]),
            timeout,
            "a page through the tunnel",
            guard=self.checkAlive,
        )

    async def connectTunnel(self, protocol: Any, timeout: float = 30.0) -> None:
        """Connect C{protocol} to the client's first tunnel, once it listens."""
        tunnel = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.configs.tunnelPorts[0])
        await pollUntil(
            self.reactor,
            lambda: connectProtocol(tunnel, protocol),
            timeout,
            "a connection to the tunnel",
            guard=self.checkAlive,
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the client, the skeleton, then the relay: SIGTERM, then SIGKILL."""
        self.stopping = True
        for role in reversed(ROLES):
            child = self.children.get(role)
            if child is not None:
                await child.stop(self.reactor, timeout)

    def problems(self) -> list[str]:
        """What went wrong in the ended processes: bad ends, tracebacks."""
        found = []
        for child in self.children.values():
            if not child.stoppedNormally():
                found.append(f"the {child.name} process {child.describeEnd()}")
            for word in ("Traceback", "Unhandled"):
                if word in child.text():
                    found.append(f"the {child.name} log has {word!r}")
        return found


