"""
The README's examples that test_readme's by-hand run does not reach, each
read from README.md so that the two cannot drift apart: "Running it by
hand" on three machines (three folders, every line as written, the lines a
single machine skips included), twistd as a daemon, the private-file
messages, the C{relaynat list} table and its C{--json} fields, the endpoint
strings (C{systemd:} with a socket passed as systemd passes it), each
role's flags, the metrics' names, and the C{make} targets and benchmark
options the README names.

None of these use the example files' fixed ports (test_readme's by-hand run
holds those): every port is moved to a free one, in the files and in the
lines.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from functools import partial
from io import StringIO
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from relaynat.caps import Limits
from relaynat.cli import parse
from relaynat.client import listServers
from relaynat.config import parseToml
from relaynat.load import loadClient, readConfig
from relaynat.localstack import (
    ChildProcess,
    childEnvironment,
    fetchPage,
    moveEndpoints,
    pickFreePort,
    pollUntil,
    relaynatCommand,
    relaynatTool,
    runCommand,
    spawn,
    tomlText,
    twistdCommand,
    writeConfigs,
    writeKeysAndUsers,
)
from relaynat.scripts.check import CheckOptions, checkCommand
from relaynat.scripts.list import formatJson, formatTable
from relaynat.tap import client as clientTap
from relaynat.tap import relay as relayTap
from relaynat.tap import skeleton as skeletonTap
from relaynat.test.test_readme import PORTS, REPO, byHandBlocks

#: Where the tools the README's lines call are found: beside this Python.
BIN = os.path.dirname(sys.executable)


def readme() -> str:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return f.read()


def between(start: str, end: str | None = None) -> str:
    """The README's text from the line C{start} to the next C{end}."""
    text = readme().split(start, 1)[1]
    return text if end is None else text.split(end, 1)[0]


def plainBlocks(text: str) -> list[list[str]]:
    """The lines of each fenced block with no language (output samples) in C{text}."""
    return [block.splitlines() for block in re.findall(r"^```\n(.*?)^```", text, re.S | re.M)]


def commandOf(line: str) -> str:
    """A README shell line without its comment (two spaces, then C{#})."""
    return line.split("  #", 1)[0].rstrip()


def shellEnvironment() -> dict[str, str]:
    """A child's environment with this Python's C{relaynat}, C{twistd} and C{python3} first."""
    env = childEnvironment()
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def movePorts(line: str, ports: Mapping[int, int]) -> str:
    """A README line with the example files' ports replaced by C{ports}."""
    return re.sub(
        r"\b(" + "|".join(str(p) for p in ports) + r")\b",
        lambda m: str(ports[int(m.group(1))]),
        line,
    )


def copyConf(folder: str, ports: Mapping[int, int]) -> None:
    """
    A copy of C{conf/} in C{folder}, as a checkout would have it, with its
    endpoints moved to C{ports} (and listeners to 127.0.0.1).
    """
    os.makedirs(os.path.join(folder, "conf"))
    for role in ("relay", "skeleton", "client"):
        document = parseToml(*readConfig(os.path.join(REPO, "conf", f"{role}.toml")))
        with open(os.path.join(folder, "conf", f"{role}.toml"), "w", encoding="utf-8") as f:
            f.write(tomlText(moveEndpoints(document, ports)))


async def stopAll(children: list[ChildProcess]) -> None:
    """Stop C{children}, the last started first."""
    for child in reversed(children):
        await child.stop(reactor, timeout=10)


#: The machines of "Running it by hand", in the order of its blocks, each
#: with the heading its block has in the README.
MACHINES = (
    ("relay", "**On the relay's host**"),
    ("server", "**Next to the server**"),
    ("user", "**On the user's machine**"),
)


class ReadmeOnThreeMachinesTests(TestCase):
    """
    "Running it by hand" as the README writes it for three machines: each
    block in a folder of its own holding a copy of C{conf/}, every line of
    it run (the C{trust} lines, the password files and the copied secret
    too, which the one-machine run skips), with C{127.0.0.1} for
    C{relay.example.com}, the fingerprint C{keygen} printed for
    C{sha256:…}, the server's folder for C{/somewhere/safe/}, and free ports
    for the example files' ports.  Then what the README says a user sees:
    the relay's web page, its health and metrics, and C{relaynat list}.
    """

    timeout = 120

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            raise SkipTest("no curl here")
        self.ports = {port: pickFreePort() for port in PORTS}
        self.root = os.path.abspath(self.mktemp())
        self.folders = {machine: os.path.join(self.root, machine) for machine, _ in MACHINES}
        for folder in self.folders.values():
            copyConf(folder, self.ports)
        self.env = shellEnvironment()
        self.children: list[ChildProcess] = []
        self.roles: dict[str, ChildProcess] = {}
        self.fingerprint: str | None = None
        self.started = time.time()

    def asHere(self, line: str) -> str:
        """A README line as it runs here."""
        line = movePorts(commandOf(line), self.ports).replace("relay.example.com", "127.0.0.1")
        if self.fingerprint is not None:
            line = line.replace("sha256:…", self.fingerprint)
        if line.startswith("cp "):
            # The secret "from the skeleton's owner": the one in the server's folder.
            words = shlex.split(line)
            words[1] = os.path.join(self.folders["server"], "conf", os.path.basename(words[1]))
            line = shlex.join(words)
        self.assertNotIn("…", line)
        return line

    def checkAlive(self) -> None:
        for name, child in self.roles.items():
            if not child.running:
                raise AssertionError(f"the {name} {child.describeEnd()}:\n{child.tail()}")

    def background(self, folder: str, line: str) -> None:
        """Start a line that runs until stopped (a role, the web server), as in a terminal."""
        commandLine = line.removesuffix("&").rstrip()
        if commandLine.startswith("twistd "):
            name = commandLine.split("--pidfile ", 1)[1].split(".pid", 1)[0]
        else:
            name = "web-server"
        child = spawn(
            reactor, name, ["/bin/bash", "-c", f"exec {commandLine}"], env=self.env, cwd=folder,
            logPath=os.path.join(folder, f"{name}.log"),
        )
        self.children.append(child)
        self.roles[name] = child

    async def runLine(self, folder: str, line: str) -> ChildProcess:
        """Run a line to its end in C{folder}."""
        return await runCommand(reactor, ["/bin/bash", "-ec", line], env=self.env, cwd=folder)

    async def runOrFail(self, folder: str, line: str) -> ChildProcess:
        ran = await self.runLine(folder, line)
        self.assertEqual(ran.exitCode, 0, f"{line}\n{ran.text()}")
        return ran

    async def test_threeMachines(self) -> None:
        """
        Every line of the three blocks succeeds where it is run; the page of
        the web server next to the skeleton comes through the tunnel to the
        user's machine; the certificate C{trust} saved on the two other
        machines is the relay's own; the password files are private; the
        relay's web page shows the fingerprint, C{/healthz} answers C{ok}
        and C{/metrics} has the metrics the README names, no more and no
        fewer; C{relaynat list} prints the README's table (but for the time)
        and C{--json} the fields the README names; every role stops cleanly.
        """
        self.addCleanup(lambda: ensureDeferred(stopAll(self.children)))
        blocks = byHandBlocks()[1:4]
        section = between("## Running it by hand", "### With flags only")
        page = ""
        for (machine, heading), block in zip(MACHINES, blocks, strict=True):
            # Each block is the first one under its machine's heading.
            under = section.split(heading, 1)[1]
            self.assertEqual(re.findall(r"```sh\n(.*?)```", under, re.S)[0], block, heading)
            folder = self.folders[machine]
            for typed in block.splitlines():
                line = self.asHere(typed)
                if line.startswith("twistd ") or line.endswith("&"):
                    self.background(folder, line)
                elif line.startswith("relaynat trust "):
                    # The relay was started a moment ago: its web port first.
                    await pollUntil(
                        reactor, lambda: fetchPage(reactor, self.ports[7080]), 30,
                        "the relay's web port", guard=self.checkAlive,
                    )
                    await self.runOrFail(folder, line)
                elif line.startswith("curl "):
                    page = await pollUntil(
                        reactor, partial(self.fetched, line), 60,
                        "the page through the tunnel", guard=self.checkAlive,
                    )
                else:
                    ran = await self.runOrFail(folder, line)
                    if line.startswith("relaynat keygen "):
                        [self.fingerprint] = re.findall(r"sha256:[0-9a-f]{64}", ran.text())
        self.assertIn("<title>Directory listing", page)
        self.assertIn("conf/", page)
        self.assertEqual(sorted(self.roles), ["client", "relay", "skeleton", "web-server"])

        relayConf = os.path.join(self.folders["relay"], "conf")
        with open(os.path.join(relayConf, "relay.pem"), "rb") as f:
            certificate = f.read()
        for machine in ("server", "user"):
            conf = os.path.join(self.folders[machine], "conf")
            with open(os.path.join(conf, "relay.pem"), "rb") as f:
                self.assertEqual(f.read(), certificate, machine)
            for name in os.listdir(conf):
                if name.endswith((".password", ".secret")):
                    mode = os.stat(os.path.join(conf, name)).st_mode & 0o777
                    self.assertEqual(mode, 0o600, f"{machine}: {name}")

        await self.checkRelayWeb()
        await self.checkList()

        await stopAll(self.children)
        for name in ("client", "skeleton", "relay"):
            child = self.roles[name]
            self.assertTrue(child.stoppedNormally(), f"{name} {child.describeEnd()}")
            for word in ("Traceback", "Unhandled"):
                self.assertNotIn(word, child.text(), f"{name}:\n{child.text()}")

    async def fetched(self, line: str) -> str:
        """The README's C{curl} line, once: its output, or why not yet."""
        ran = await self.runLine(self.folders["user"], line)
        if ran.exitCode != 0:
            raise ValueError(f"curl {ran.describeEnd()}")
        return ran.stdout.decode("utf-8", "replace")

    async def checkRelayWeb(self) -> None:
        """The relay's web page, health and metrics, as "Metrics and health" has them."""
        assert self.fingerprint is not None
        page = (await fetchPage(reactor, self.ports[7080], "/")).decode()
        self.assertIn(self.fingerprint, page)
        self.assertIn("relaynat trust", page)
        self.assertEqual((await fetchPage(reactor, self.ports[7080], "/healthz")).strip(), b"ok")
        metrics = (await fetchPage(reactor, self.ports[7080], "/metrics")).decode()
        served = set(re.findall(r"^# TYPE (relaynat_\w+) ", metrics, re.M))
        # A histogram's creation time is the client library's, not one of ours.
        served = {name for name in served if not name.endswith("_created")}
        self.assertEqual(served, set(readmeMetrics()))

    async def checkList(self) -> None:
        """
        C{relaynat list} on the user's machine prints the README's table,
        once the skeleton's pool is full again: the same header, the same
        row but for the time, which is when the skeleton registered.
        """
        [sample] = plainBlocks(between("## The `relaynat` command", "## Configuration reference"))
        user = self.folders["user"]
        listLine = "relaynat list --config conf/client.toml"

        async def listed() -> list[str]:
            ran = await self.runOrFail(user, listLine)
            lines = ran.stdout.decode().splitlines()
            if maskTime(lines) != maskTime(sample):
                raise ValueError(f"not the README's table yet: {lines}")
            return lines

        lines = await pollUntil(reactor, listed, 30, "the README's table", guard=self.checkAlive)
        since = calendar.timegm(time.strptime(re.split(r"\s{2,}", lines[1])[2], "%Y-%m-%d %H:%M:%S"))
        # Registered during this test (the table shows whole seconds).
        self.assertGreaterEqual(since, int(self.started))
        self.assertLessEqual(since, time.time())

        ran = await self.runOrFail(user, listLine + " --json")
        [entry] = json.loads(ran.stdout)
        self.assertEqual(sorted(entry), sorted(readmeJsonFields()))


def maskTime(lines: list[str]) -> list[str]:
    return [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "YYYY-MM-DD hh:mm:ss", line) for line in lines]


def readmeMetrics() -> list[str]:
    """The metric names the README's "Metrics and health" lists."""
    text = between("- **Metrics and health.**", "\n- **")
    return re.findall(r"`(relaynat_\w+)(?:\{[\w,]*\})?`", text)


def readmeJsonFields() -> list[str]:
    """The fields the README says C{relaynat list --json} prints."""
    sentence = between("`--json` prints a list", ".")
    return re.findall(r"`(\w+)`", sentence)


class ReadmeDaemonTests(TestCase):
    """
    "Drop C{-n} to daemonize: twistd then also writes a log (C{--logfile},
    C{twistd.log} by default)": the by-hand block's relay line without its
    C{-n}, in a folder whose C{conf/} has its ports moved.
    """

    timeout = 60

    async def test_daemonWritesTwistdLog(self) -> None:
        """
        The line returns once the relay runs in the background; its pid file
        names it, C{twistd.log} shows its ports opening, and after SIGTERM
        the log has C{Server Shut Down.} and the process is gone.
        """
        self.assertIn(
            "Drop `-n` to daemonize: twistd then also writes a log (`--logfile`, `twistd.log` by"
            " default).",
            " ".join(readme().split()),
        )
        [relayLine] = [
            commandOf(line) for line in byHandBlocks()[1].splitlines() if line.startswith("twistd ")
        ]
        self.assertIn(" -n ", relayLine)
        daemonLine = relayLine.replace(" -n ", " ", 1)
        folder = os.path.abspath(self.mktemp())
        configs = writeConfigs(os.path.join(folder, "conf"), pickFreePort())
        writeKeysAndUsers(configs)
        self.assertEqual(configs.relay, os.path.join(folder, "conf", "relay.toml"))
        self.assertIn("--config conf/relay.toml", daemonLine)

        ran = await runCommand(
            reactor, ["/bin/bash", "-ec", daemonLine], env=shellEnvironment(), cwd=folder
        )
        self.assertEqual(ran.exitCode, 0, ran.text())
        pidFile = os.path.join(folder, daemonLine.split("--pidfile ", 1)[1].split()[0])
        with open(pidFile, encoding="ascii") as f:
            pid = int(f.read())
        self.addCleanup(killIfRunning, pid)
        log = os.path.join(folder, "twistd.log")

        async def logged(text: str) -> None:
            with open(log, encoding="utf-8") as f:
                if text not in f.read():
                    raise ValueError(f"{text!r} not in twistd.log yet")

        await pollUntil(
            reactor, lambda: logged(f"starting on {configs.clientsPort}"), 20, "the relay's log"
        )
        self.assertTrue(isRunning(pid))
        os.kill(pid, signal.SIGTERM)

        async def gone() -> None:
            if isRunning(pid):
                raise ValueError(f"process {pid} still running")

        await pollUntil(reactor, gone, 20, "the daemon's end")
        await logged("Server Shut Down.")


def isRunning(pid: int) -> bool:
    """Is process C{pid} there and not a zombie (a daemon's parent is not us)?"""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def killIfRunning(pid: int) -> None:
    if isRunning(pid):
        os.kill(pid, signal.SIGKILL)


def privateFileLines() -> list[str]:
    """The example messages of the README's "Private files"."""
    [lines] = plainBlocks(between("### Private files", "## The `relaynat` command"))
    return lines


class ReadmePrivateFilesTests(TestCase):
    """The README's example of what a file others may read or write stops."""

    timeout = 60

    async def test_examplesAsPrinted(self) -> None:
        """
        A relay's key and users file with the modes of the README's lines:
        the relay (a real twistd) stops with one line for each, ending with
        the README's line; C{relaynat fingerprint} of the key and
        C{relaynat passwd} on the users file print the same; and the
        C{chmod} each line says to run mends it.
        """
        lines = privateFileLines()
        self.assertEqual(len(lines), 2)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        relaynatTool("keygen", folder, "--name", "relay.example.com")
        password = os.path.join(folder, "pw")
        with open(os.open(password, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("the password of demo-client\n")
        relaynatTool("passwd", os.path.join(folder, "users"), "demo-client", "--join", "web",
                     "--password-file", password)
        ports = [pickFreePort() for _ in range(2)]
        with open(os.path.join(folder, "relay.toml"), "w", encoding="utf-8") as f:
            f.write(tomlText({"relay": {
                "clients": f"tcp:{ports[0]}:interface=127.0.0.1",
                "skeletons": f"tcp:{ports[1]}:interface=127.0.0.1",
                "key": "relay.key", "cert": "relay.pem", "users": "users",
            }}))
        for line in lines:
            name, problem = line.split(": ", 1)
            [mode] = re.findall(r"\(mode (0[0-7]{3})\)", problem)
            os.chmod(os.path.join(folder, name), int(mode, 8))

        argv = [*twistdCommand(), "-n", "--pidfile=", "relay", "--config", "relay.toml"]
        relay = await runCommand(reactor, argv, env=childEnvironment(), cwd=folder)
        self.assertEqual(relay.exitCode, 1, relay.text())
        printed = relay.text().splitlines()
        self.assertEqual(len(printed), len(lines), printed)
        for said, line in zip(printed, lines, strict=True):
            self.assertTrue(said.startswith("twistd: relay.toml: "), said)
            self.assertTrue(said.endswith(": " + line), (said, line))

        for words, line in (
            (["fingerprint", "relay.key"], lines[0]),
            (["passwd", "users", "demo-client", "--join", "web", "--password-file", "pw"], lines[1]),
        ):
            ran = await runCommand(reactor, [*relaynatCommand(), *words], cwd=folder)
            self.assertEqual((ran.exitCode, ran.text()), (1, f"relaynat {words[0]}: {line}\n"))

        # What each line says to run mends it.
        for line in lines:
            chmod = line.split("; run ", 1)[1]
            done = await runCommand(reactor, shlex.split(chmod), cwd=folder)
            self.assertEqual(done.exitCode, 0, done.text())
        ran = await runCommand(reactor, [*relaynatCommand(), "fingerprint", "relay.key"], cwd=folder)
        self.assertEqual(ran.exitCode, 0, ran.text())


class ReadmeListTableTests(SynchronousTestCase):
    """The README's sample of C{relaynat list}, as the command formats it."""

    def test_tableAsPrinted(self) -> None:
        """
        The server of the README's sample row, formatted as C{relaynat list}
        prints it, is the README's table to the character.
        """
        [sample] = plainBlocks(between("## The `relaynat` command", "## Configuration reference"))
        header, row = sample
        serverId, description, since, idle = re.split(r"\s{2,}", row)
        server = {
            "id": serverId,
            "description": description,
            "since": float(calendar.timegm(time.strptime(since, "%Y-%m-%d %H:%M:%S"))),
            "idle": int(idle),
        }
        self.assertEqual(formatTable([server]).splitlines(), sample)
        self.assertEqual(sorted(json.loads(formatJson([server]))[0]), sorted(readmeJsonFields()))
        self.assertEqual(len(readmeJsonFields()), 5)


def readmeEndpoints() -> list[str]:
    """The endpoint strings the README's "Addresses are Twisted endpoint strings" gives in full."""
    text = between("**Addresses are Twisted endpoint strings**", "**File names**")
    found = re.findall(r"`((?:tcp6?|unix|systemd|onion|tor):[^`]+)`", text)
    return [e for e in found if "…" not in e]


def connecting(endpoint: str) -> bool:
    """Is C{endpoint} one to connect to (a host in it), as the README has it?"""
    kind, _, rest = endpoint.partition(":")
    return kind == "tor" or (kind in ("tcp", "tcp6") and not rest.split(":")[0].isdigit())


class ReadmeEndpointTests(TestCase):
    """The README's endpoint strings, in the roles' files, as C{relaynat check} reads them."""

    timeout = 60

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        relaynatTool("keygen", self.folder, "--name", "relay.example.com")
        self.password = os.path.join(self.folder, "client.password")
        with open(os.open(self.password, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("the password of demo-client\n")
        relaynatTool("passwd", os.path.join(self.folder, "users"), "demo-client", "--join", "web",
                     "--password-file", self.password)
        relaynatTool("secret", os.path.join(self.folder, "web.secret"))
        self.free = pickFreePort()

    def write(self, name: str, document: Mapping[str, Any]) -> str:
        path = os.path.join(self.folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(tomlText(document))
        return path

    def relayFile(self, clients: str, skeletons: str | None = None) -> str:
        return self.write("relay.toml", {"relay": {
            "clients": clients,
            "skeletons": skeletons or f"tcp:{self.free}:interface=127.0.0.1",
            "key": "relay.key", "cert": "relay.pem", "users": "users",
        }})

    def clientFile(self, relay: str) -> str:
        return self.write("client.toml", {
            "client": {"relay": relay, "relay_key": "relay.pem", "user": "demo-client",
                       "password_file": "client.password"},
            "tunnel": [{"server": "web", "listen": f"tcp:{self.free}:interface=127.0.0.1",
                        "secret_file": "web.secret"}],
        })

    async def check(self, path: str) -> tuple[int, str, str]:
        """C{relaynat check --config PATH}, run in this process: status, stdout, stderr."""
        options = parse(["check", "--config", path]).options
        assert isinstance(options, CheckOptions)
        out, err = StringIO(), StringIO()
        code = await checkCommand(reactor, options, out, err)
        return code, out.getvalue(), err.getvalue()

    async def test_examplesAccepted(self) -> None:
        """
        Every endpoint string the README writes out is taken as it says: a
        listening one as a relay's C{clients}, a connecting one (a host in
        it, or C{tor:}) as a client's C{relay}, C{unix:} as both; C{systemd:}
        is refused outside socket activation, saying so.
        """
        endpoints = readmeEndpoints()
        self.assertEqual(
            {e.split(":", 1)[0] for e in endpoints},
            {"tcp", "tcp6", "unix", "systemd", "onion", "tor"},
        )
        for endpoint in endpoints:
            kind = endpoint.split(":", 1)[0]
            paths = []
            if kind == "unix" or not connecting(endpoint):
                paths.append(self.relayFile(endpoint))
            if kind == "unix" or connecting(endpoint):
                paths.append(self.clientFile(endpoint))
            for path in paths:
                code, out, err = await self.check(path)
                if kind == "systemd":
                    self.assertEqual(code, 1, endpoint)
                    self.assertIn("only under systemd socket activation", err)
                else:
                    self.assertEqual((code, out, err), (0, f"{path}: ok\n", ""), endpoint)

    async def test_systemdSocketActivation(self) -> None:
        """
        The README's C{systemd:domain=INET:index=0} as a relay's C{clients},
        with a listening socket passed as systemd passes one (descriptor 3,
        C{LISTEN_FDS}, C{LISTEN_PID}): a client logs in through it.
        """
        [endpoint] = [e for e in readmeEndpoints() if e.startswith("systemd:")]
        activated = socket.socket()
        self.addCleanup(activated.close)
        activated.bind(("127.0.0.1", 0))
        activated.listen(50)
        port = activated.getsockname()[1]
        relayPath = self.relayFile(endpoint)
        clientPath = self.clientFile(f"tcp:127.0.0.1:{port}")
        # As systemd does: the socket is descriptor 3, LISTEN_FDS counts it,
        # LISTEN_FDNAMES names it (Twisted takes no descriptor without a
        # name), and LISTEN_PID names the process that gets it, so it is set
        # once that process exists.
        execWithListenPid = (
            "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_FDNAMES'] = 'clients'; "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        argv = [sys.executable, "-c", execWithListenPid, *twistdCommand(),
                "-n", "--pidfile=", "relay", "--config", relayPath]
        if not os.path.isabs(argv[3]):
            argv[3] = shutil.which(argv[3]) or argv[3]
        relay = ChildProcess("relay", os.path.join(self.folder, "relay.log"))
        reactor.spawnProcess(
            relay, argv[0], argv, env=childEnvironment(), path=self.folder,
            childFDs={0: "w", 1: "r", 2: "r", 3: activated.fileno()},
        )
        self.addCleanup(relay.stop, reactor)

        def alive() -> None:
            if not relay.running:
                raise AssertionError(f"the relay {relay.describeEnd()}:\n{relay.tail()}")

        access = loadClient(*readConfig(clientPath)).access

        async def listed() -> list[dict[str, Any]]:
            d = ensureDeferred(listServers(access.link(reactor)))
            d.addTimeout(5, reactor)
            return await d

        servers = await pollUntil(reactor, listed, 30, "a login at the activated socket",
                                  guard=alive)
        self.assertEqual(servers, [])
        await relay.stop(reactor)
        self.assertTrue(relay.stoppedNormally(), relay.describeEnd())
        self.assertNotIn("Traceback", relay.text())


#: Each role's heading in the README's configuration reference, and its tap's options.
ROLE_OPTIONS = {
    "relay": relayTap.Options,
    "skeleton": skeletonTap.Options,
    "client": clientTap.Options,
}

#: Flags that name no single key: the file, and the repeatable lists.
LIST_FLAGS = {"config", "server", "tunnel", "secret"}

#: The keys of each role with no flag of their own: those "With flags only"
#: says are set in the file only, and those the lists (C{--server ID=ENDPOINT},
#: C{--tunnel SERVER=ENDPOINT}, C{--secret ID=FILE}) give.
FILE_ONLY = {
    "relay": {"metrics_allow"} | {field.name for field in attrs.fields(Limits)},
    "skeleton": {"metrics", "seal", "description"} | {"id", "target", "secret_file"},
    "client": {"metrics"} | {"server", "listen", "secret_file"},
}


def roleReference(role: str) -> str:
    """The README's configuration reference of one role, its table and its flags."""
    return between(f"### {role} (`conf/{role}.toml`)", "\n### " if role != "client" else "\n## ")


def referenceFlags(role: str) -> set[str]:
    """The flags the README lists for C{role}, without their dashes."""
    text = roleReference(role).split("Flags:", 1)[1]
    return set(re.findall(r"`--([a-z-]+)", text))


def referenceKeys(role: str) -> set[str]:
    """The keys of C{role}'s table in the README's configuration reference."""
    keys: set[str] = set()
    for row in roleReference(role).splitlines():
        if row.startswith("| `["):
            keys.update(re.findall(r"`(?:\[\[?\w+\]?\] )?(\w+)`", row.split("|")[1]))
    return keys


class ReadmeFlagsTests(SynchronousTestCase):
    """Each role's flags, as the README's configuration reference lists them."""

    def test_flagsAsListed(self) -> None:
        """
        The flags the README lists for each role are the flags its twistd
        plugin takes (C{--help} and C{--version} aside), and every one that
        is not C{--config} or a list (C{--server}, C{--tunnel}, C{--secret})
        is a key of the role's table with C{-} for C{_}.
        """
        for role, options in ROLE_OPTIONS.items():
            taken = {name.rstrip("=") for name in options().longOpt} - {"help", "version"}
            listed = referenceFlags(role)
            self.assertEqual(listed, taken, role)
            keys = referenceKeys(role)
            for flag in listed - LIST_FLAGS:
                self.assertIn(flag.replace("-", "_"), keys, f"{role}: --{flag}")
            withoutFlag = {key for key in keys if key.replace("_", "-") not in listed}
            self.assertEqual(withoutFlag, FILE_ONLY[role], role)

    def test_fileOnlyAsSaid(self) -> None:
        """
        "With flags only" names the keys that have no flag: the relay's
        limits (its table from the first key named on, the fields of
        L{Limits}), and the other keys it names; they are L{FILE_ONLY}'s, but
        for those the lists give.
        """
        text = " ".join(between("### With flags only", "### As a service").split())
        sentence = text.split("The keys without one are set in the file only:", 1)[1]
        firstLimit, *others = re.findall(r"`(\w+)`", sentence.split(".", 1)[0])
        relayKeys = re.findall(r"^\| `\[relay\] (\w+)`", roleReference("relay"), re.M)
        limits = set(relayKeys[relayKeys.index(firstLimit):])
        self.assertEqual(limits, {field.name for field in attrs.fields(Limits)})
        listGiven = {"id", "target", "secret_file", "server", "listen"}
        self.assertEqual(limits | set(others), set().union(*FILE_ONLY.values()) - listGiven)

    def test_flagsOnlyExample(self) -> None:
        """The flags "With flags only" gives each role are among the role's."""
        block = between("### With flags only", "### As a service")
        [lines] = [b.replace("\\\n", " ") for b in re.findall(r"```sh\n(.*?)```", block, re.S)]
        for line in lines.splitlines():
            words = shlex.split(line)
            role = words[words.index("--pidfile") + 2]
            given = {w[2:] for w in words[words.index(role) + 1:] if w.startswith("--")}
            self.assertLessEqual(given, referenceFlags(role), role)


def makeDryRun(*targets: str) -> list[str]:
    """The commands C{make -n TARGETS} would run in the checkout."""
    done = subprocess.run(
        ["make", "-n", *targets], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.replace("\\\n", " ").splitlines()


class ReadmeMakeTests(SynchronousTestCase):
    """
    The C{make} targets the README tells a user to run, as the Makefile has
    them (dry runs: C{make -n} prints what a target would run, and runs
    nothing).  C{make demo}'s program is run by test_twistd's
    C{test_demoOnce}, C{make check} is this suite, and C{make deb} is built
    by CI and checked by test_deb and test_service.
    """

    def setUp(self) -> None:
        if shutil.which("make") is None:
            raise SkipTest("no make here")

    def test_install(self) -> None:
        """
        The README's install line is the one C{make venv} runs (with only
        C{--quiet}s added), the one the checks run in and twistd finds
        the plugins with.
        """
        [block] = re.findall(r"```sh\n(.*?)```", between("## Running it by hand", "**On the"), re.S)
        [readmeLine] = block.splitlines()
        readmeWords = shlex.split(readmeLine)
        self.assertEqual(readmeWords[:2], ["pip", "install"])
        [made] = [line for line in makeDryRun("-B", "venv") if "/bin/python -m pip install" in line]
        madeWords = shlex.split(made)
        madeWords = madeWords[madeWords.index("install") + 1:]
        self.assertEqual(
            [w for w in madeWords if w not in ("--quiet", "--disable-pip-version-check")],
            readmeWords[2:],
        )

    def test_targets(self) -> None:
        """
        C{make demo} runs the demo; C{make check} runs the commands the
        README's "Tests" names, in its order; C{make bench} and
        C{make bench-rtt} run C{bench/run.py} and C{bench/rtt.py}.
        """
        self.assertTrue(any(line.endswith(" -m relaynat.demo") for line in makeDryRun("demo")))
        named = re.findall(r"`([^`]+)`", between("`make check` runs every test with", " over "))
        self.assertEqual(named, ["trial -j2 relaynat", "ruff check .", "mypy"])
        check = makeDryRun("check")
        found = [next(i for i, line in enumerate(check) if f"/{name}" in line) for name in named]
        self.assertEqual(found, sorted(found), check)
        self.assertTrue(any("bench/run.py" in line for line in makeDryRun("bench")))
        self.assertTrue(any("bench/rtt.py" in line for line in makeDryRun("bench-rtt")))


class ReadmeBenchOptionsTests(SynchronousTestCase):
    """The C{bench/run.py} command lines the README gives, against its options."""

    def test_options(self) -> None:
        """
        Every option of every C{bench/run.py ...} the README writes is one
        C{bench/run.py --help} lists, with the value it takes when it takes
        one.
        """
        written = re.findall(r"`(bench/run\.py[^`]*)`", readme())
        self.assertGreaterEqual(len(written), 2, written)
        done = subprocess.run(
            [sys.executable, os.path.join(REPO, "bench", "run.py"), "--help"],
            capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
        )
        takesValue = {
            option: bool(value)
            for option, value in re.findall(r"^  (--[\w-]+)(?: ([A-Z_]+))?", done.stdout, re.M)
        }
        for line in written:
            words = shlex.split(line)[1:]
            while words:
                option = words.pop(0)
                self.assertIn(option, takesValue, line)
                if takesValue[option]:
                    self.assertTrue(words and not words[0].startswith("--"), f"{line}: {option}")
                    words.pop(0)
