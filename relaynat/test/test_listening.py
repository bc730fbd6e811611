"""L{relaynat.tap.listening}: a port that cannot be listened on is one line."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from relaynat.tap.listening import CannotStart, Listening


class ListeningTests(TestCase):
    def test_portInUse(self) -> None:
        """
        A port another socket holds stops the start with one line naming
        the endpoint, the key, the reason and what to do.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = Listening(
            reactor, f"tcp:{port}:interface=127.0.0.1", Factory.forProtocol(Protocol),
            "[relay] clients",
        )
        error = self.assertRaises(CannotStart, service.privilegedStartService)
        self.assertEqual(
            str(error),
            f"cannot listen on tcp:{port}:interface=127.0.0.1 ([relay] clients): Address"
            " already in use; another program (or another relaynat) listens there: stop it,"
            " or choose another port",
        )

    def test_listens(self) -> None:
        """A free port is listened on, and let go at stop."""
        service = Listening(
            reactor, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Protocol), "[relay] web"
        )
        service.privilegedStartService()
        self.assertTrue(service._waitingForPort.called)  # type: ignore[union-attr]
        return service.stopService()  # type: ignore[no-any-return]


class StartingTests(TestCase):
    def test_missingPasswordFile(self) -> None:
        """
        A client (or skeleton) whose password file is missing stops at its
        start with one line naming the file and the key.
        """
        import os

        from relaynat.secret import generateSecret
        from relaynat.tap import client as clientTap

        folder = self.mktemp()
        os.makedirs(folder)
        generateSecret(os.path.join(folder, "web.secret"))
        path = os.path.join(folder, "client.toml")
        with open(path, "w") as f:
            f.write(
                '[client]\nrelay = "tcp:127.0.0.1:7000"\nrelay_key = "sha256:' + "ab" * 32 + '"\n'
                'user = "u"\npassword_file = "nope.password"\n'
                '[[tunnel]]\nserver = "web"\nlisten = "tcp:0:interface=127.0.0.1"\n'
                'secret_file = "web.secret"\n'
            )
        options = clientTap.Options()
        options.parseOptions(["--config", path])
        error = self.assertRaises(CannotStart, clientTap.makeService, options, reactor)
        self.assertEqual(
            str(error),
            f"twistd: {path}: client.password_file: {os.path.join(folder, 'nope.password')}:"
            " No such file or directory",
        )
