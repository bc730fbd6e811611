"""
The one configuration loader (L{relaynat.load}): a role's text from a
string, the flags over it, the files it names read, and every problem a
L{ConfigError}; and the roles' C{makeService}, which calls it.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaynat.config import ConfigError, ConfigErrors
from relaynat.identity import fingerprint, loadCertificates
from relaynat.load import (
    Flags,
    LoadedClient,
    LoadedRelay,
    LoadedSkeleton,
    load,
    loadClient,
    loadRelay,
    loadSkeleton,
    readConfig,
)
from relaynat.secret import loadSecret
from relaynat.tap import client as clientTap
from relaynat.tap import relay as relayTap
from relaynat.tap import skeleton as skeletonTap
from relaynat.tap.listening import CannotStart
from relaynat.test.test_config import CLIENT, FINGERPRINT, RELAY, SKELETON, FilesMixin


class LoadTests(FilesMixin, SynchronousTestCase):
    """Each role's text loaded from a string, with the files it names."""

    def setUp(self) -> None:
        self.dir = self.folder()
        # The files the example texts name, beside a config file that is
        # never written: its folder is where names are taken from.
        self.key, self.cert, self.users = self.relayFiles(self.dir)
        self.web = self.secret(self.dir)
        self.password(self.dir, "edge.password")
        self.password(self.dir, "laptop.password")
        self.source = os.path.join(self.dir, "role.toml")

    def test_relay(self) -> None:
        """A relay's text gives its configuration, its identity and its users."""
        loaded = loadRelay(RELAY, self.source)
        self.assertIsInstance(loaded, LoadedRelay)
        self.assertEqual(loaded.config.key, self.key)
        with open(self.cert, "rb") as f:
            self.assertEqual(
                loaded.identity.fingerprint, fingerprint(loadCertificates(f.read(), self.cert)[0])
            )
        self.assertEqual(list(loaded.users.users), ["alice"])

    def test_skeleton(self) -> None:
        """A skeleton's text gives its configuration, credentials and secrets."""
        loaded = loadSkeleton(SKELETON, self.source)
        self.assertIsInstance(loaded, LoadedSkeleton)
        self.assertEqual(loaded.access.credentials.user, "edge")
        self.assertEqual(loaded.access.credentials.password, "correct horse")
        self.assertEqual(loaded.access.verifier.expected, FINGERPRINT)
        self.assertEqual(loaded.secrets, {"web": loadSecret(self.web)})

    def test_client(self) -> None:
        loaded = loadClient(CLIENT, self.source)
        self.assertIsInstance(loaded, LoadedClient)
        self.assertEqual(loaded.access.credentials.user, "laptop")
        self.assertEqual(loaded.secrets, {"web": loadSecret(self.web)})

    def test_clientWithoutTunnels(self) -> None:
        """C{relaynat list} and C{connect} load a client that has no tunnel."""
        text = CLIENT.split("[[tunnel]]")[0]
        self.assertRaises(ConfigError, loadClient, text, self.source)
        self.assertEqual(loadClient(text, self.source, needTunnels=False).secrets, {})

    def test_eachRole(self) -> None:
        """L{load} tells the role by its table."""
        self.assertIsInstance(load(RELAY, self.source), LoadedRelay)
        self.assertIsInstance(load(SKELETON, self.source), LoadedSkeleton)
        self.assertIsInstance(load(CLIENT, self.source), LoadedClient)
        error = self.assertRaises(ConfigError, load, RELAY + CLIENT, self.source)
        self.assertEqual(
            str(error),
            f"{self.source}: (file): a role's file has one of [relay], [skeleton], [client];"
            " this one has [relay] and [client]",
        )

    def test_flagsOverText(self) -> None:
        """Flags replace the text's keys, add entries and name secrets by id."""
        other = self.secret(self.dir, "other.secret")
        loaded = loadSkeleton(
            SKELETON,
            self.source,
            Flags(
                {"pool": 4, "name": None},
                [{"id": "db", "target": "tcp:127.0.0.1:5432", "description": "db"}],
                {"db": other},
            ),
        )
        self.assertEqual(loaded.config.pool, 4)
        self.assertEqual(loaded.config.name, "edge")
        self.assertEqual([s.id for s in loaded.config.servers], ["web", "db"])
        self.assertEqual(loaded.secrets["db"], loadSecret(other))

    def test_flagsOverNoTable(self) -> None:
        """A section that is not a table is left for the check to say, not hidden by flags."""
        error = self.assertRaises(
            ConfigError, loadRelay, "relay = 5\n", self.source, Flags({"clients": "tcp:1"})
        )
        self.assertEqual(str(error), f"{self.source}: relay: must be a table")

    def test_secretForNoServer(self) -> None:
        error = self.assertRaises(
            ConfigError, loadSkeleton, SKELETON, self.source, Flags(secrets={"wbe": self.web})
        )
        self.assertEqual(str(error), "--secret: wbe: no server of that id is configured")

    def test_textFirst(self) -> None:
        """A wrong text stops at its problem; no named file is read."""
        os.remove(self.web)
        error = self.assertRaises(
            ConfigError, loadSkeleton, SKELETON + "colour = 1\n", self.source
        )
        self.assertEqual(str(error), f"{self.source}: server[0].colour: unknown key")

    def test_everyFileSaid(self) -> None:
        """
        Once the text is right, every named file that cannot be read is
        said, one line each, naming the key that names it and the file.
        """
        os.remove(os.path.join(self.dir, "edge.password"))
        with open(self.web, "w") as f:
            f.write("not base64 at all!\n")
        os.chmod(self.web, 0o600)
        error = self.assertRaises(ConfigErrors, loadSkeleton, SKELETON, self.source)
        password = os.path.join(self.dir, "edge.password")
        self.assertEqual(
            error.lines,
            [
                f"{self.source}: skeleton.password_file: {password}: No such file or directory",
                f"{self.source}: server[0].secret_file: {self.web}: not a secret file"
                " (make one with 'relaynat secret')",
            ],
        )
        self.assertEqual(str(error), "\n".join(error.lines))

    def test_emptyPassword(self) -> None:
        path = os.path.join(self.dir, "laptop.password")
        with open(path, "w") as f:
            f.write("\n")
        error = self.assertRaises(ConfigError, loadClient, CLIENT, self.source)
        self.assertEqual(
            str(error),
            f"{self.source}: client.password_file: {path}: the first line must hold the password",
        )

    def test_relayFiles(self) -> None:
        """The relay's key and users file are each said."""
        os.chmod(self.key, 0o644)
        with open(self.users, "w") as f:
            f.write("alice\n")
        error = self.assertRaises(ConfigErrors, loadRelay, RELAY, self.source)
        self.assertEqual(
            error.lines,
            [
                f"{self.source}: relay.key: {self.key}: readable by everyone (mode 0644);"
                f" run chmod 640 {self.key}",
                f"{self.source}: relay.users: {self.users}, line 1: expected NAME VERIFIER"
                " [RIGHTS]",
            ],
        )

    def test_pinnedCertificateFile(self) -> None:
        """A C{relay_key} that names a certificate pins that certificate's key."""
        text = SKELETON.replace(f'"{FINGERPRINT}"', '"relay.pem"')
        loaded = loadSkeleton(text, self.source)
        with open(self.cert, "rb") as f:
            expected = fingerprint(loadCertificates(f.read(), self.cert)[0])
        self.assertEqual(loaded.access.verifier.expected, expected)
        os.remove(self.cert)
        error = self.assertRaises(ConfigError, loadSkeleton, text, self.source)
        self.assertEqual(
            str(error), f"{self.source}: skeleton.relay_key: {self.cert}: No such file or directory"
        )

    def test_readConfig(self) -> None:
        """No file is an empty text from the command line; a missing one an error."""
        self.assertEqual(readConfig(None), ("", "command line"))
        with open(self.source, "w") as f:
            f.write(RELAY)
        self.assertEqual(readConfig(self.source), (RELAY, self.source))
        missing = os.path.join(self.dir, "nope.toml")
        error = self.assertRaises(ConfigError, readConfig, missing)
        self.assertEqual(str(error), f"{missing}: (file): No such file or directory")
        with open(self.source, "wb") as f:
            f.write(b"[relay]\nclients = '\xff'\n")
        error = self.assertRaises(ConfigError, readConfig, self.source)
        self.assertIn("not UTF-8 text", str(error))


class MakeServiceTests(FilesMixin, SynchronousTestCase):
    """
    The roles load their configuration when twistd makes their service,
    not while it parses their command line; a problem stops them, one line
    each.
    """

    def setUp(self) -> None:
        self.dir = self.folder()
        self.relayFiles(self.dir)
        self.secret(self.dir)
        self.path = os.path.join(self.dir, "role.toml")

    def options(self, tap: Any, text: str) -> Any:
        with open(self.path, "w") as f:
            f.write(text)
        options = tap.Options()  # type: ignore[attr-defined]
        options.parseOptions(["--config", self.path])
        return options

    def test_parsingReadsNothing(self) -> None:
        """Parsing the command line reads no file: a missing one is found later."""
        options = clientTap.Options()
        options.parseOptions(["--config", self.path])
        error = self.assertRaises(CannotStart, clientTap.makeService, options, MemoryReactorClock())
        self.assertEqual(str(error), f"twistd: {self.path}: (file): No such file or directory")

    def test_everyProblemOneLine(self) -> None:
        """Each problem of the named files is one line of twistd's message."""
        options = self.options(skeletonTap, SKELETON)
        error = self.assertRaises(
            CannotStart, skeletonTap.makeService, options, MemoryReactorClock()
        )
        self.assertEqual(
            str(error),
            f"twistd: {self.path}: skeleton.password_file:"
            f" {os.path.join(self.dir, 'edge.password')}: No such file or directory",
        )
        os.chmod(os.path.join(self.dir, "web.secret"), 0o666)
        error = self.assertRaises(
            CannotStart, skeletonTap.makeService, options, MemoryReactorClock()
        )
        self.assertEqual(len(str(error).splitlines()), 2, str(error))
        self.assertTrue(all(line.startswith("twistd: ") for line in str(error).splitlines()))

    def test_relayStarts(self) -> None:
        """A right file makes the relay's service, listening on nothing yet."""
        options = self.options(relayTap, RELAY)
        service = relayTap.makeService(options, MemoryReactorClock())
        self.assertEqual(len(list(service)), 4)
