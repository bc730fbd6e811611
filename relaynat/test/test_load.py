"""
The one configuration loader (L{relaynat.load}): a role's text from a
string, the flags over it, the files it names read, and every problem a
L{ConfigError}; and the roles' C{makeService}, which calls it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

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
from relaynat.localstack.files import tomlText
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
        """A client's text gives its configuration, credentials and secrets."""
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
        """A C{--secret} for an id no server has is refused, not ignored."""
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

    def test_emptyRequired(self) -> None:
        """A required key given as an empty string is said to be empty."""
        for text, key in [
            (RELAY.replace('"relay.key"', '""'), "relay.key"),
            (SKELETON.replace('"edge.password"', '""'), "skeleton.password_file"),
            (SKELETON.replace('"web.secret"', '""'), "server[0].secret_file"),
            (SKELETON.replace('"tcp:relay.example:7001"', '""'), "skeleton.relay"),
            (SKELETON.replace('"edge"', '""', 1), "skeleton.user"),
        ]:
            error = self.assertRaises(ConfigError, load, text, self.source)
            self.assertEqual(str(error), f"{self.source}: {key}: must not be empty")

    def test_namesAsTheRelayWantsThem(self) -> None:
        """A skeleton's name and a server's description the relay would refuse are refused here."""
        error = self.assertRaises(
            ConfigError, loadSkeleton, SKELETON.replace('name = "edge"', 'name = "a\\tb"'), self.source
        )
        self.assertEqual(
            str(error),
            f"{self.source}: skeleton.name: bad skeleton name 'a\\tb': use at most 200 printable"
            " characters",
        )
        long = SKELETON + f'description = "{"d" * 201}"\n'
        error = self.assertRaises(ConfigError, loadSkeleton, long, self.source)
        self.assertTrue(str(error).startswith(f"{self.source}: server[0].description: bad"), error)

    def test_emptyPassword(self) -> None:
        """A password file whose first line is empty is said so."""
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


#: Any TOML value: scalars, and lists and tables of them.
_values = st.recursive(
    st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text("abcid", min_size=1, max_size=3), inner, max_size=3),
    max_leaves=5,
)


class AnyValueTests(FilesMixin, SynchronousTestCase):
    """
    Whatever value any key of a role's file has (or none, or an unknown
    key), loading it gives the configuration or a L{ConfigError}: nothing
    else escapes to print a traceback.
    """

    def setUp(self) -> None:
        self.dir = self.folder()
        self.relayFiles(self.dir)
        self.secret(self.dir)
        self.password(self.dir, "edge.password")
        self.password(self.dir, "laptop.password")
        self.source = os.path.join(self.dir, "role.toml")

    def loadsOrSays(self, text: str, loader: Callable[[str, str], object], data: Any) -> None:
        document = tomllib.loads(text)
        places = [
            (section, i)
            for section, table in document.items()
            for i in (range(len(table)) if isinstance(table, list) else [None])
        ]
        section, index = data.draw(st.sampled_from(places))
        table = document[section] if index is None else document[section][index]
        key = data.draw(st.sampled_from([*table, "unknown_key"]))
        # Nothing (the key taken out) and an empty string are drawn often.
        change = data.draw(st.none() | st.just("") | _values)
        if change is None:
            table.pop(key, None)
        else:
            table[key] = change
        if data.draw(st.booleans()):
            # The whole section replaced by a value.
            document[section] = data.draw(_values)
        try:
            loader(tomlText(document), self.source)
        except ConfigError:
            pass

    @settings(deadline=None, max_examples=150)
    @given(st.data())
    def test_relay(self, data: Any) -> None:
        """A relay's file."""
        self.loadsOrSays(RELAY, loadRelay, data)

    @settings(deadline=None, max_examples=150)
    @given(st.data())
    def test_skeleton(self, data: Any) -> None:
        """A skeleton's file."""
        self.loadsOrSays(SKELETON, loadSkeleton, data)

    @settings(deadline=None, max_examples=150)
    @given(st.data())
    def test_client(self, data: Any) -> None:
        """A client's file."""
        self.loadsOrSays(CLIENT, loadClient, data)

    @settings(deadline=None, max_examples=100)
    @given(st.data())
    def test_clientWithSecretFlags(self, data: Any) -> None:
        """The same with a C{--secret} over the file's tunnels (matched by their id)."""
        web = os.path.join(self.dir, "web.secret")

        def withFlag(text: str, source: str) -> object:
            return loadClient(text, source, Flags(secrets={"web": web}))

        self.loadsOrSays(CLIENT, withFlag, data)
