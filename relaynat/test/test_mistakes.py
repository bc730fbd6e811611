"""
The common mistakes, made with the real C{twistd} roles: each is said in
one line that names what to change, and nothing else is logged at error
level (no traceback).  A role that cannot start says it and ends; an end
whose relay refuses it, or cannot be reached, says it once (once per
change) however often it retries, and stops cleanly at SIGTERM.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from relaynat.identity import CERT_FILE, fingerprintOfFile
from relaynat.localstack import childEnvironment, spawn, twistdArguments, twistdCommand
from relaynat.localstack.children import ChildProcess, runCommand
from relaynat.localstack.files import (
    StackConfigs,
    relaynatTool,
    writeConfigs,
    writeKeysAndUsers,
)
from relaynat.localstack.ports import pickFreePort
from relaynat.localstack.waiting import pollUntil

#: Lines of a role's log that twistd writes at error level.
ERROR_MARK = "#error]"

#: twistd's option that makes a role log JSON lines, each with its level:
#: the text log shows no level for an event of Twisted's legacy log API.
JSON_LOGGER = ("--logger", "relaynat.jsonlog.logger")

#: Seconds from SIGTERM to the end of an end that retries (test_stop's bound).
STOP_BOUND = 6.0

#: Failed attempts an end makes before it is stopped.
ATTEMPTS = 3

#: Twisted's words for a connection refused, as the ends pass them on.
REFUSED = (
    f"Connection was refused by other side: {errno.ECONNREFUSED}:"
    f" {os.strerror(errno.ECONNREFUSED)}"
)

#: The line of each retry of an end's control connection: its number, the
#: last attempt's failure in a few words, and the delay to the next.
RETRY = re.compile(
    r"Scheduling retry (?P<attempt>\d+) to connect the relay"
    r" \(last try: (?P<reason>.*)\) in (?P<delay>\d+(\.\d+)?) seconds\."
)


def writeStack(directory: str) -> StackConfigs:
    """A local stack's files in C{directory}: configurations, keys, users, secrets."""
    configs = writeConfigs(os.path.abspath(directory), pickFreePort())
    writeKeysAndUsers(configs)
    return configs


class MistakeTests(TestCase):
    """
    A role that cannot start, run as the real C{twistd} process: it ends at
    once, with one line that names what to change and no traceback.
    """

    timeout = 90

    def stack(self) -> StackConfigs:
        return writeStack(self.mktemp())

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
            # Said before twistd's logging starts: the one line CannotStart
            # prints from makeService (the loader raises a configuration's
            # error when twistd makes the service).
            self.assertTrue(text.strip().splitlines()[-1].endswith(line), text)

    async def test_portInUse(self) -> None:
        """
        A relay whose port for clients another program holds says which
        port, which key, and to stop the other or choose another port.
        """
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
        """A client whose password file is missing names its key and the file."""
        configs = self.stack()
        password = os.path.join(configs.dir, "client.password")
        os.remove(password)
        child = await self.runRole(configs, "client")
        self.assertOneLine(
            child,
            f"twistd: {configs.client}: client.password_file: {password}: No such file or directory",
        )

    async def test_endpointWithoutPort(self) -> None:
        """
        A client whose relay endpoint has no port names its key and says the
        port is needed, with an example.
        """
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


class RetriedMistakeTests(TestCase):
    """
    An end (a client or a skeleton) whose control connection fails, run as
    the real C{twistd} process against the real relay (or none) until it has
    tried L{ATTEMPTS} times: it says why once per reason, each retry's line
    says why and when it tries next, nothing else is at error level, and
    SIGTERM ends it within L{STOP_BOUND} seconds as twistd ends at SIGTERM,
    with no traceback (none of ClientService's C{NoTransition} either).
    """

    timeout = 90

    def stack(self) -> StackConfigs:
        return writeStack(self.mktemp())

    def edit(self, path: str, old: str, new: str) -> None:
        with open(path) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(path, "w") as f:
            f.write(text.replace(old, new))

    def start(self, configs: StackConfigs, role: str) -> ChildProcess:
        """C{role} as a twistd process, logging JSON lines to its stdout."""
        argv = [*twistdCommand(), *JSON_LOGGER, *twistdArguments(role, configs.path(role))]
        child = spawn(reactor, role, argv, childEnvironment(), configs.dir)
        self.addCleanup(child.stop, reactor)
        return child

    def events(self, child: ChildProcess) -> list[dict[str, Any]]:
        """What C{child} has logged, its complete lines each one event."""
        text = child.stdout.decode("utf-8", "replace")
        complete = text[: text.rfind("\n") + 1]
        found = []
        for line in complete.splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                self.fail(f"not a JSON line from the {child.name}: {line!r}\n{child.text()}")
        return found

    def retries(self, child: ChildProcess) -> list[re.Match[str]]:
        """The lines of C{child}'s control service that schedule a retry."""
        lines = []
        for event in self.events(child):
            if event["text"].startswith("Scheduling retry"):
                match = RETRY.fullmatch(event["text"])
                self.assertIsNotNone(match, event["text"])
                assert match is not None
                lines.append(match)
        return lines

    def texts(self, child: ChildProcess, *levels: str, namespace: str | None = None) -> list[str]:
        """The lines C{child} logged at C{levels}, from C{namespace} if given."""
        return [
            e["text"]
            for e in self.events(child)
            if e["level"] in levels and namespace in (None, e["namespace"])
        ]

    async def listening(self, relay: ChildProcess, configs: StackConfigs) -> None:
        """Wait until C{relay} listens on both its ports."""
        wanted = {f"starting on {configs.clientsPort}", f"starting on {configs.skeletonsPort}"}

        def alive() -> None:
            if not relay.running:
                self.fail(f"the relay {relay.describeEnd()}:\n{relay.tail()}")

        async def ready() -> None:
            missing = {w for w in wanted if not any(t.endswith(w) for t in self.texts(relay, "info"))}
            if missing:
                raise ValueError(f"not yet: {sorted(missing)}")

        await pollUntil(reactor, ready, timeout=30, what="the relay listening", guard=alive)

    async def retried(self, child: ChildProcess, reason: str, attempts: int = ATTEMPTS) -> None:
        """Wait until C{child}'s last C{attempts} retries (at least) failed for C{reason}."""

        def alive() -> None:
            if not child.running:
                self.fail(f"the {child.name} {child.describeEnd()}:\n{child.tail()}")

        async def enough() -> None:
            reasons = [m["reason"] for m in self.retries(child)]
            if reasons[-attempts:] != [reason] * attempts:
                raise ValueError(f"retries so far: {reasons}")

        await pollUntil(
            reactor, enough, timeout=45, what=f"{attempts} retries of the {child.name}",
            guard=alive,
        )

    async def stopAndCheck(self, child: ChildProcess, errors: list[str]) -> None:
        """
        SIGTERM C{child}: it ends within L{STOP_BOUND} seconds as twistd ends
        at SIGTERM, C{errors} were its lines at error level (or above), each
        retry's line named its reason and delay, and nothing shows a traceback.
        """
        assert child.transport is not None
        child.transport.signalProcess("TERM")
        self.assertTrue(
            await child.waitEnded(reactor, STOP_BOUND),
            f"the {child.name} still runs {STOP_BOUND:g} s after SIGTERM:\n{child.tail()}",
        )
        self.assertTrue(child.stoppedNormally(), f"{child.describeEnd()}:\n{child.text()}")
        self.assertEqual(self.texts(child, "error", "critical"), errors, child.text())
        for word in ("Traceback", "NoTransition", "Unhandled"):
            self.assertNotIn(word, child.text())
        self.assertEqual([e for e in self.events(child) if "traceback" in e], [])
        attempts = [int(m["attempt"]) for m in self.retries(child)]
        self.assertEqual(attempts, list(range(1, len(attempts) + 1)), child.text())
        for match in self.retries(child):
            self.assertLessEqual(float(match["delay"]), 31.0, match.group(0))

    async def stopRelay(self, relay: ChildProcess) -> None:
        await relay.stop(reactor)
        self.assertTrue(relay.stoppedNormally(), f"{relay.describeEnd()}:\n{relay.text()}")
        self.assertNotIn("Traceback", relay.text())

    async def test_wrongPassword(self) -> None:
        """
        A client with a wrong password says so once, naming its password
        file, however often it tries again.
        """
        configs = self.stack()
        password = os.path.join(configs.dir, "client.password")
        with open(password, "w") as f:
            f.write("not the password\n")
        relay = self.start(configs, "relay")
        await self.listening(relay, configs)
        client = self.start(configs, "client")
        await self.retried(client, "login refused: wrong password or unknown user")
        await self.stopAndCheck(
            client,
            [
                "login as demo-client refused: wrong password or unknown user;"
                f" check password_file {password} and user in [client]"
            ],
        )
        await self.stopRelay(relay)

    async def test_relayDown(self) -> None:
        """
        A client whose relay is not running says why at warning level, once,
        and each retry's line says it again with the delay to the next
        try; nothing is at error level.
        """
        configs = self.stack()
        client = self.start(configs, "client")
        await self.retried(client, REFUSED)
        await self.stopAndCheck(client, [])
        self.assertEqual(
            self.texts(client, "warn", namespace="relaynat.link"),
            [f"no control connection to the relay: cannot reach the relay: {REFUSED}."],
        )
        self.assertEqual({m["reason"] for m in self.retries(client)}, {REFUSED})

    async def test_wrongRelayKey(self) -> None:
        """
        A client that pins the relay's old key, the relay's key having been
        replaced, says which key it saw once; when the relay starts again
        (on the same ports) with yet another key, that one is said once.
        """
        configs = self.stack()
        cert = os.path.join(configs.dir, CERT_FILE)
        pinned = fingerprintOfFile(cert)
        self.edit(configs.client, 'relay_key = "relay.pem"', f'relay_key = "{pinned}"')
        newKey = ("keygen", configs.dir, "--force", "--name", "127.0.0.1", "--name", "localhost")
        advice = (
            " If the relay's key was changed on purpose, fetch and check the new one"
            " with 'relaynat trust'; otherwise someone may be intercepting."
        )

        def said(seen: str) -> str:
            return (
                "no control connection to the relay: the relay's key is not the pinned one:"
                f" expected {pinned}, seen {seen}.{advice}"
            )

        relaynatTool(*newKey)
        first = fingerprintOfFile(cert)
        relay = self.start(configs, "relay")
        await self.listening(relay, configs)
        client = self.start(configs, "client")
        await self.retried(client, f"its key {first} is not the pinned one")
        self.assertEqual(self.texts(client, "error"), [said(first)])

        await self.stopRelay(relay)
        relaynatTool(*newKey)
        second = fingerprintOfFile(cert)
        relay = self.start(configs, "relay")
        await self.listening(relay, configs)
        await self.retried(client, f"its key {second} is not the pinned one")
        await self.stopAndCheck(client, [said(first), said(second)])
        await self.stopRelay(relay)

    async def atTheOtherPort(self, role: str, told: str) -> None:
        """
        C{role} pointed at the relay's port for the other role is told so
        by the relay at its first login step (C{told}), and says it once,
        at error level, however often it tries again; the relay says each
        try (rate-bounded) as a warning.
        """
        configs = self.stack()
        ports = {"client": configs.clientsPort, "skeleton": configs.skeletonsPort}
        other = ports["skeleton" if role == "client" else "client"]
        self.edit(configs.path(role), f":{ports[role]}\"", f":{other}\"")
        relay = self.start(configs, "relay")
        await self.listening(relay, configs)
        child = self.start(configs, role)
        await self.retried(child, f"refused: {told}")
        await self.stopAndCheck(child, [f"the relay refused this {role}: {told}"])
        self.assertEqual(sum(told in t for t in self.texts(child, "warn", "error")), 1)
        port = "skeletons" if role == "client" else "clients"

        async def relaySaidIt() -> None:
            if not any(f"at the {port}' port" in t for t in self.texts(relay, "warn")):
                raise ValueError(relay.tail())

        await pollUntil(reactor, relaySaidIt, timeout=10, what="the relay's warning")
        await self.stopRelay(relay)

    async def test_clientAtTheSkeletonsPort(self) -> None:
        """A client pointed at the relay's port for skeletons is told where it is, once."""
        await self.atTheOtherPort(
            "client",
            "this is the relay's port for skeletons (port Y); a client connects to"
            " its port for clients (port X): check [client] relay",
        )

    async def test_skeletonAtTheClientsPort(self) -> None:
        """A skeleton pointed at the relay's port for clients is told where it is, once."""
        await self.atTheOtherPort(
            "skeleton",
            "this is the relay's port for clients (port X); a skeleton connects to"
            " its port for skeletons (port Y): check [skeleton] relay",
        )
