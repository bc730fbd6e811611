"""
The common mistakes, made with the real C{twistd} roles: each is said in
one line that names what to change, and nothing else is logged at error
level (no traceback).
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from relaynat.localstack import childEnvironment, spawn, twistdArguments, twistdCommand
from relaynat.localstack.children import ChildProcess, runCommand
from relaynat.localstack.files import StackConfigs, writeConfigs, writeKeysAndUsers
from relaynat.localstack.ports import pickFreePort
from relaynat.localstack.waiting import pollUntil

#: Lines of a role's log that twistd writes at error level.
ERROR_MARK = "#error]"


class MistakeTests(TestCase):
    timeout = 90

    def stack(self) -> StackConfigs:
        configs = writeConfigs(os.path.abspath(self.mktemp()), pickFreePort())
        writeKeysAndUsers(configs)
        return configs

    async def runRole(self, configs: StackConfigs, role: str) -> ChildProcess:
        """C{role} run to its end (it must stop at once, being wrong)."""
        argv = [*twistdCommand(), "--pidfile=", *twistdArguments(role, configs.path(role))]
        return await runCommand(reactor, argv, timeout=30, env=childEnvironment(), cwd=configs.dir)

    def errorLines(self, child: ChildProcess) -> list[str]:
        return [line for line in child.text().splitlines() if ERROR_MARK in line]

    def assertOneLine(self, child: ChildProcess, line: str) -> None:
        """C{child} stopped, with C{line} as its only error, and no traceback."""
        text = child.text()
        self.assertNotEqual(child.exitCode, 0, text)
        self.assertNotIn("Traceback", text)
        errors = self.errorLines(child)
        if errors:
            self.assertEqual(len(errors), 1, text)
            self.assertTrue(errors[0].endswith(line), text)
        else:
            # Said before twistd's logging starts: its usage error, after
            # the command line's name.
            self.assertTrue(text.strip().splitlines()[-1].endswith(line), text)

    async def test_portInUse(self) -> None:
        configs = self.stack()
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", configs.clientsPort))
        taken.listen()
        child = await self.runRole(configs, "relay")
        self.assertOneLine(
            child,
            f"cannot listen on tcp:{configs.clientsPort}:interface=127.0.0.1:backlog=1024"
            " ([relay] clients): Address already in use; another program (or another"
            " relaynat) listens there: stop it, or choose another port",
        )

    async def test_missingPasswordFile(self) -> None:
        configs = self.stack()
        password = os.path.join(configs.dir, "client.password")
        os.remove(password)
        child = await self.runRole(configs, "client")
        self.assertOneLine(
            child, f"twistd: {password}: password_file: No such file or directory"
        )

    async def test_endpointWithoutPort(self) -> None:
        configs = self.stack()
        with open(configs.client) as f:
            text = f.read()
        relay = f'"tcp:127.0.0.1:{configs.clientsPort}"'
        self.assertIn(relay, text)
        with open(configs.client, "w") as f:
            f.write(text.replace(relay, '"tcp:127.0.0.1"'))
        child = await self.runRole(configs, "client")
        self.assertOneLine(
            child,
            f": {configs.client}: client.relay: not a valid connecting"
            " endpoint 'tcp:127.0.0.1': tcp: needs its port, e.g. tcp:relay.example.com:7000",
        )

    async def test_skeletonAtTheClientsPort(self) -> None:
        """
        A skeleton pointed at the relay's port for clients is told so by the
        relay, and says it once, however often it retries.
        """
        configs = self.stack()
        with open(configs.skeleton) as f:
            text = f.read()
        with open(configs.skeleton, "w") as f:
            f.write(text.replace(f":{configs.skeletonsPort}\"", f":{configs.clientsPort}\""))
        env = childEnvironment()
        relay = spawn(
            reactor, "relay", [*twistdCommand(), "--pidfile=", *twistdArguments("relay", configs.relay)],
            env, configs.dir,
        )
        self.addCleanup(relay.stop, reactor)
        skeleton = spawn(
            reactor, "skeleton",
            [*twistdCommand(), "--pidfile=", *twistdArguments("skeleton", configs.skeleton)],
            env, configs.dir,
        )
        self.addCleanup(skeleton.stop, reactor)
        said = (
            "the relay refused this skeleton: this is the relay's port for clients (port X);"
            " a skeleton connects to its port for skeletons (port Y): check [skeleton] relay"
        )

        async def saidTwiceTried() -> None:
            if skeleton.text().count("Scheduling retry") < 2 or said not in skeleton.text():
                raise ValueError(skeleton.tail())

        await pollUntil(reactor, saidTwiceTried, timeout=30, what="the skeleton's retries")
        self.assertEqual(skeleton.text().count(said), 1, skeleton.text())
        self.assertEqual(
            [line for line in self.errorLines(skeleton) if said not in line], [], skeleton.text()
        )
        self.assertNotIn("Traceback", skeleton.text() + relay.text())
