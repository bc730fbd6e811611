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

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The ports the example files in conf/ use.
PORTS = (7000, 7001, 7080, 8000, 8080)


def byHandBlocks() -> list[str]:
    """The C{sh} blocks of the README's "Running it by hand", before its "With flags only"."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Running it by hand", 1)[1].split("### With flags only", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def oneMachineScript(blocks: list[str]) -> str:
    """
    The blocks as one script for one machine: the lines the README says to
    skip there (trusting the relay's own certificate again, writing the
    password files again, copying the secret to where it already is)
    left out, the roles in the background.
    """
    relayBlock, serverBlock, userBlock = blocks[1:4]
    lines = relayBlock.splitlines()
    for block in (serverBlock, userBlock):
        for line in block.splitlines():
            if line.startswith(("relaynat trust ", "echo ", "cp ")):
                continue
            lines.append(line)
    script = ["set -eu", "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT"]
    for line in lines:
        command = line.split("  #", 1)[0].rstrip()
        if not command:
            continue
        command = command.replace("relay.example.com", "127.0.0.1")
        if command.startswith("twistd -n "):
            command += " > " + command.split("--pidfile ")[1].split(".pid")[0] + ".log 2>&1 &"
        elif command.startswith("curl "):
            # The roles take a few seconds to start: try until the tunnel is up.
            command = command.replace(
                "curl ", "curl -sf --retry 60 --retry-connrefused --retry-all-errors --retry-delay 1 ", 1
            )
        script.append(command)
    return "\n".join(script) + "\n"


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
        folder's files (the web server runs there).
        """
        folder = os.path.abspath(self.mktemp())
        shutil.copytree(
            os.path.join(REPO, "conf"), os.path.join(folder, "conf"),
            ignore=shutil.ignore_patterns("*.key", "*.pem", "users", "*.password", "*.secret"),
        )
        script = oneMachineScript(byHandBlocks())
        binDir = os.path.dirname(sys.executable)
        env = dict(os.environ, PATH=f"{binDir}:{os.environ.get('PATH', '')}")
        d = getProcessOutputAndValue("/bin/bash", ["-c", script], env=env, path=folder)
        d.addTimeout(100, reactor)
        out, err, code = await d
        logs = ""
        for role in ("relay", "skeleton", "client"):
            path = os.path.join(folder, f"{role}.log")
            if os.path.exists(path):
                with open(path) as f:
                    logs += f"--- {role}\n{f.read()[-3000:]}"
        self.assertEqual(code, 0, f"{err.decode()[-2000:]}\n{logs}")
        self.assertIn(b"Directory listing", out)
        self.assertIn(b"conf/", out)
        for word in ("Traceback", "Unhandled"):
            self.assertNotIn(word, logs)
