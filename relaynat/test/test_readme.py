"""
The README's "Running it by hand" run as it is written, on one machine,
from a fresh folder holding only a copy of C{conf/}: its shell blocks, with
C{127.0.0.1} for C{relay.example.com} and the fingerprint the relay's key
has for C{sha256:…}, and without the lines the README says to skip on one
machine.  Each C{twistd -n} line runs in the background (as in a terminal
of its own), and the C{curl} at the end is tried until the tunnel is up.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from relaynat.localstack import childEnvironment, twistdCommand
from relaynat.localstack.children import runCommand
from relaynat.secret import generateSecret

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The ports the example files in conf/ use.
PORTS = (7000, 7001, 7080, 8000, 8080)


def _section(start: str, end: str) -> list[str]:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split(start, 1)[1].split(end, 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def byHandBlocks() -> list[str]:
    """The C{sh} blocks of the README's "Running it by hand", before its "With flags only"."""
    return _section("## Running it by hand", "### With flags only")


def flagsOnlyBlock() -> str:
    """The C{sh} block of "With flags only", its continued lines joined."""
    [block] = _section("### With flags only", "### As a service")
    return block.replace("\\\n", " ")


def oneMachineScript(blocks: list[str], flagsOnly: str) -> str:
    """
    The blocks as one script for one machine: the lines the README says to
    skip there (trusting the relay's own certificate again, writing the
    password files again, copying the secret to where it already is)
    left out, the roles in the background; then, once the page came
    through, the roles stopped and started again from C{flagsOnly}, and the
    page fetched once more.
    """
    relayBlock, serverBlock, userBlock = blocks[1:4]
    lines = relayBlock.splitlines()
    for block in (serverBlock, userBlock):
        for line in block.splitlines():
            if line.startswith(("relaynat trust ", "echo ", "cp ")):
                continue
            lines.append(line)
    script = ["set -eu", "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT", "roles="]
    script += [_oneMachine(line) for line in lines if _oneMachine(line)]
    curl = script[-1]
    # The roles of the files stop; the same roles, from flags, take over.
    script += ["kill $roles", "wait $roles || true", "roles="]
    script.append("fingerprint=$(relaynat fingerprint conf/relay.pem)")
    flagLines = [_oneMachine(line, "flags-") for line in flagsOnly.splitlines()]
    script += [line.replace("sha256:…", "$fingerprint") for line in flagLines if line]
    script.append(curl)
    return "\n".join(script) + "\n"


def _oneMachine(line: str, logPrefix: str = "") -> str:
    """A README line as the one-machine script runs it: roles in the background, logged."""
    command = line.split("  #", 1)[0].rstrip()
    if not command:
        return ""
    command = command.replace("relay.example.com", "127.0.0.1")
    if command.startswith("twistd -n "):
        role = command.split("--pidfile ")[1].split(".pid")[0]
        return f"{command} > {logPrefix}{role}.log 2>&1 & roles=\"$roles $!\""
    if command.startswith("curl "):
        # The roles take a few seconds to start: try until the tunnel is up.
        return command.replace(
            "curl ", "curl -sf --retry 60 --retry-connrefused --retry-all-errors --retry-delay 1 ", 1
        )
    return command


class ReadmeByHandTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        for port in PORTS:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    message = f"port {port} of the example files is in use here"
                    if os.environ.get("CI"):
                        raise AssertionError(message)
                    raise SkipTest(message)
        if shutil.which("curl") is None:
            raise SkipTest("no curl here")

    def test_blocksAreThere(self) -> None:
        """The section has its four blocks: install, relay, server, user."""
        blocks = byHandBlocks()
        self.assertEqual(len(blocks), 4)
        self.assertIn("twistd -n --pidfile relay.pid relay", blocks[1])
        self.assertIn("curl http://127.0.0.1:8080/", blocks[3])

    async def test_byHandOnOneMachine(self) -> None:
        """
        The script, run from a fresh folder, fetches the demo web server's
        listing through client, relay and skeleton: the page lists the
        folder's files (the web server runs there); and again through the
        same roles started from flags only.
        """
        folder = os.path.abspath(self.mktemp())
        shutil.copytree(
            os.path.join(REPO, "conf"), os.path.join(folder, "conf"),
            ignore=shutil.ignore_patterns("*.key", "*.pem", "users", "*.password", "*.secret"),
        )
        script = oneMachineScript(byHandBlocks(), flagsOnlyBlock())
        binDir = os.path.dirname(sys.executable)
        env = dict(os.environ, PATH=f"{binDir}:{os.environ.get('PATH', '')}")
        d = getProcessOutputAndValue("/bin/bash", ["-c", script], env=env, path=folder)
        d.addTimeout(100, reactor)
        out, err, code = await d
        logs = ""
        for role in ("relay", "skeleton", "client", "flags-relay", "flags-skeleton", "flags-client"):
            path = os.path.join(folder, f"{role}.log")
            if os.path.exists(path):
                with open(path) as f:
                    logs += f"--- {role}\n{f.read()[-3000:]}"
        self.assertEqual(code, 0, f"{err.decode()[-2000:]}\n{logs}")
        # The page came through twice: from the files, then from the flags.
        self.assertEqual(out.count(b"<title>Directory listing"), 2, out[-2000:])
        self.assertIn(b"conf/", out)
        self.assertIn("--- flags-client", logs)
        for word in ("Traceback", "Unhandled"):
            self.assertNotIn(word, logs)


def configurationErrorLines() -> list[str]:
    """The example lines of the README's "Configuration reference"."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Configuration reference", 1)[1]
    return section.split("```\n", 2)[1].splitlines()


class ReadmeConfigurationErrorTests(TestCase):
    """The README's example of what a wrong configuration prints, printed by twistd."""

    timeout = 60

    async def twistd(self, folder: str, role: str) -> list[str]:
        argv = [*twistdCommand(), "-n", "--pidfile=", role, "--config", f"{role}.toml"]
        child = await runCommand(reactor, argv, env=childEnvironment(), cwd=folder)
        self.assertEqual(child.exitCode, 1, child.text())
        return child.text().splitlines()

    async def test_examplesAsPrinted(self) -> None:
        """
        A relay's join_timeout out of range, then a skeleton whose password
        file is missing and whose secret file everyone may read: the lines
        are the README's, and all there is.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "relay.toml"), "w") as f:
            f.write(
                '[relay]\nclients = "tcp:7000"\nskeletons = "tcp:7001"\nkey = "relay.key"\n'
                'cert = "relay.pem"\nusers = "users"\njoin_timeout = 0\n'
            )
        with open(os.path.join(folder, "skeleton.toml"), "w") as f:
            f.write(
                '[skeleton]\nrelay = "tcp:127.0.0.1:7001"\nrelay_key = "sha256:' + "ab" * 32
                + '"\nuser = "u"\npassword_file = "skeleton.password"\n'
                '[[server]]\nid = "web"\ntarget = "tcp:127.0.0.1:8000"\nsecret_file = "web.secret"\n'
            )
        secret = os.path.join(folder, "web.secret")
        generateSecret(secret)
        os.chmod(secret, 0o644)
        printed = await self.twistd(folder, "relay") + await self.twistd(folder, "skeleton")
        self.assertEqual(printed, configurationErrorLines())
