"""
Tests for C{relaynat connect}: the command runs as a real process, its
stdin and stdout one tunnel through a relay, a skeleton and a server in the
test's own reactor (L{relaynat.test.loopback.Stack}); and as ssh's
C{ProxyCommand}, between a real C{ssh} and a real C{sshd} on loopback.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from relaynat.identity import writePrivate
from relaynat.test.loopback import PASSWORD, Stack
from relaynat.test.net import pollUntil, runAsync
from relaynat.test.streams import ReplyAtEnd

#: The installed console script, next to the interpreter running the tests.
SCRIPT = os.path.join(os.path.dirname(sys.executable), "relaynat")

SSHD = "/usr/sbin/sshd"


class Tunnelled(ProcessProtocol):
    """A C{relaynat connect} process: what it writes is kept, by stream."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.outClosed = False
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def outConnectionLost(self) -> None:
        self.outClosed = True

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(0 if reason.check(ProcessDone) else reason.value.exitCode)


async def startStack(test: TestCase, targets: dict[str, Factory | int]) -> tuple[Stack, str]:
    """A relay and a skeleton fronting C{targets}, and a client file for them."""
    stack = await Stack().start(targets)
    test.addCleanup(stack.stop)
    directory = stack.directory
    password = os.path.join(directory, "client.password")
    writePrivate(password, (PASSWORD + "\n").encode())
    tunnels = ""
    for serverId, secret in stack.secrets.items():
        path = os.path.join(directory, f"{serverId}.secret")
        writePrivate(path, base64.urlsafe_b64encode(secret) + b"\n")
        tunnels += (
            f'[[tunnel]]\nserver = "{serverId}"\nlisten = "tcp:0:interface=127.0.0.1"\n'
            f'secret_file = "{serverId}.secret"\n'
        )
    config = os.path.join(directory, "client.toml")
    with open(config, "w") as f:
        f.write(
            "[client]\n"
            f'relay = "tcp:127.0.0.1:{stack.clientPort.getHost().port}"\n'  # type: ignore[attr-defined]
            f'relay_key = "{stack.identity.fingerprint}"\n'
            'user = "alice"\npassword_file = "client.password"\n' + tunnels
        )
    return stack, config


def spawnConnect(*args: str) -> Tunnelled:
    process = Tunnelled()
    reactor.spawnProcess(  # type: ignore[attr-defined]
        process, SCRIPT, [SCRIPT, "connect", *args], env=dict(os.environ)
    )
    return process


class ConnectTests(TestCase):
    """C{relaynat connect} as a real process against a relay in this process."""

    def setUp(self) -> None:
        if not os.path.exists(SCRIPT):
            raise self.skipTest(f"the relaynat script is not installed at {SCRIPT}")

    @runAsync
    async def test_halfClose(self) -> None:
        """
        The end of stdin reaches the server as its end of stream, and the
        server's answer after it still comes out on stdout, which then
        closes; the command exits 0 with nothing on stderr.
        """
        stack, config = await startStack(self, {"count": Factory.forProtocol(lambda: ReplyAtEnd(5))})
        process = spawnConnect("--config", config, "count")
        assert process.transport is not None
        process.transport.write(b"x" * 100000)
        process.transport.closeStdin()
        code = await process.ended
        self.assertEqual(b"".join(process.out), b"100000\nrrrrr")
        self.assertTrue(process.outClosed)
        self.assertEqual((code, b"".join(process.err)), (0, b""))

    async def failedConnect(self, *args: str) -> tuple[bytes, bytes, int]:
        out, err, code = await getProcessOutputAndValue(
            SCRIPT, ("connect", *args), env=dict(os.environ), reactor=reactor
        )
        return out, err, code

    @runAsync
    async def test_unknownServer(self) -> None:
        """
        A server the relay does not have: exit status 1, one line on stderr
        naming the server and what the relay said, nothing on stdout.
        """
        stack, config = await startStack(self, {"count": Factory.forProtocol(lambda: ReplyAtEnd(0))})
        secret = os.path.join(stack.directory, "count.secret")
        out, err, code = await self.failedConnect("--config", config, "--secret", secret, "nope")
        self.assertEqual((code, out), (1, b""))
        self.assertTrue(err.startswith(b"relaynat connect: nope: "), err)
        self.assertIn(b"nope", err[len(b"relaynat connect: nope: "):])
        self.assertEqual(err.count(b"\n"), 1, err)

    @runAsync
    async def test_wrongSecret(self) -> None:
        """A secret that is not the server's: the far end is not proven, exit status 1."""
        stack, config = await startStack(self, {"count": Factory.forProtocol(lambda: ReplyAtEnd(0))})
        other = os.path.join(stack.directory, "other.secret")
        writePrivate(other, base64.urlsafe_b64encode(b"w" * 32) + b"\n")
        out, err, code = await self.failedConnect("--config", config, "--secret", other, "count")
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err, b"relaynat connect: count: server count closed the tunnel's handshake\n")

    @runAsync
    async def test_wrongPassword(self) -> None:
        """A refused login: exit status 1 and the refusal on stderr."""
        stack, config = await startStack(self, {"count": Factory.forProtocol(lambda: ReplyAtEnd(0))})
        wrong = os.path.join(stack.directory, "wrong.password")
        writePrivate(wrong, b"not the password\n")
        out, err, code = await self.failedConnect(
            "--config", config, "--password-file", wrong, "count"
        )
        self.assertEqual((code, out), (1, b""))
        self.assertTrue(err.startswith(b"relaynat connect: count: "), err)
        self.assertIn(b"login failed: unknown user or wrong password", err)

    @runAsync
    async def test_noTunnelForServer(self) -> None:
        """A server with no [[tunnel]] and no --secret is a config error: exit 2."""
        stack, config = await startStack(self, {"count": Factory.forProtocol(lambda: ReplyAtEnd(0))})
        out, err, code = await self.failedConnect("--config", config, "other")
        self.assertEqual((code, out), (2, b""))
        self.assertIn(b"no [[tunnel]] for server 'other': give --secret FILE", err)


def freePort() -> int:
    # sshd binds its own port, so one is picked here and handed over; the
    # sshd's log line "Server listening" is waited for before it is used.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SshTests(TestCase):
    """C{relaynat connect} as ssh's ProxyCommand, with a real ssh and sshd."""

    def setUp(self) -> None:
        if not os.path.exists(SCRIPT):
            raise self.skipTest(f"the relaynat script is not installed at {SCRIPT}")
        if shutil.which("ssh") is None or not os.path.exists(SSHD):
            raise self.skipTest("needs ssh and sshd (apt-get install openssh-client openssh-server)")
        if os.geteuid() != 0:
            raise self.skipTest("sshd runs as root in this test")

    async def startSshd(self) -> tuple[int, str]:
        """An sshd on loopback taking one key for root; its port and that key."""
        # sshd needs absolute paths: it re-executes itself for each connection.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for name in ("host", "user"):
            await getProcessOutputAndValue(
                "ssh-keygen",
                ("-q", "-t", "ed25519", "-N", "", "-f", os.path.join(directory, name)),
                reactor=reactor,
            )
        shutil.copy(os.path.join(directory, "user.pub"), os.path.join(directory, "authorized_keys"))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        port = freePort()
        config = os.path.join(directory, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"Port {port}\nListenAddress 127.0.0.1\n"
                f"HostKey {directory}/host\nAuthorizedKeysFile {directory}/authorized_keys\n"
                f"PidFile {directory}/sshd.pid\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                "PermitRootLogin prohibit-password\n"
            )
        sshd = Tunnelled()
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            sshd, SSHD, [SSHD, "-D", "-e", "-f", config], env={"PATH": os.environ["PATH"]}
        )

        async def stop() -> None:
            if sshd.ended.called:
                return
            transport.signalProcess("TERM")
            await sshd.ended

        self.addCleanup(stop)
        await pollUntil(lambda: b"Server listening" in b"".join(sshd.err) or sshd.ended.called)
        self.assertFalse(sshd.ended.called, b"".join(sshd.err))
        self.sshdLog = sshd.err
        return port, os.path.join(directory, "user")

    async def ssh(self, key: str, config: str, *command: str) -> tuple[bytes, bytes, int]:
        proxy = " ".join(shlex.quote(a) for a in (SCRIPT, "connect", "--config", config, "ssh"))
        return await getProcessOutputAndValue(
            "ssh",
            (
                "-F", "/dev/null", "-i", key, "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", f"ProxyCommand={proxy}",
                "root@dummy", *command,
            ),
            env=dict(os.environ),
            reactor=reactor,
        )

    @runAsync
    async def test_sshThroughTheTunnel(self) -> None:
        """
        ssh logs in to the sshd behind the skeleton through C{relaynat
        connect}, runs a command and gets its output and exit status.
        """
        port, key = await self.startSshd()
        stack, config = await startStack(self, {"ssh": port})
        out, err, code = await self.ssh(key, config, "echo", "through the relay")
        self.assertEqual((out, code), (b"through the relay\n", 0), (err, b"".join(self.sshdLog)))
        out, err, code = await self.ssh(key, config, "exit 3")
        self.assertEqual((out, code), (b"", 3), err)
