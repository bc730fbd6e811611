"""
Tests for C{relaynat secret}, which writes a per-server secret file, and for
L{relaynat.secret.loadSecret}, which reads one.
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from relaynat.cli import parse
from relaynat.scripts.command import UsageError
from relaynat.test.runcommand import command
from relaynat.secret import SECRET_BYTES, SecretFileError, loadSecret


class SecretCommandTests(SynchronousTestCase):
    """C{relaynat secret FILE}."""

    def test_writes(self) -> None:
        """
        The file is readable by its owner only and holds a fresh random
        secret that L{loadSecret} reads back; the output names the file
        and does not show the secret.
        """
        path = self.mktemp()
        code, out, err = command("secret", path)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out,
            f"wrote a new secret to {path}; copy it privately to the server's skeleton"
            " and to each client allowed to reach the server\n",
        )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        secret = loadSecret(path)
        self.assertEqual(len(secret), SECRET_BYTES)
        with open(path) as f:
            self.assertNotIn(f.read().strip(), out)
        other = self.mktemp()
        command("secret", other)
        self.assertNotEqual(loadSecret(other), secret)

    def test_refusesToOverwrite(self) -> None:
        """Without C{--force} an existing file is left as it was, and the failure says why."""
        path = self.mktemp()
        command("secret", path)
        before = loadSecret(path)
        code, out, err = command("secret", path)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"relaynat secret: {path} already exists; use --force to replace it (the skeleton"
            " and every client sharing the old secret then need the new one)\n",
        )
        self.assertEqual(loadSecret(path), before)

    def test_refusesDanglingLink(self) -> None:
        """A symbolic link to nowhere counts as existing: nothing is written through it."""
        target = self.mktemp()
        path = self.mktemp()
        os.symlink(target, path)
        self.assertEqual(command("secret", path)[0], 1)
        self.assertFalse(os.path.exists(target))

    def test_force(self) -> None:
        """
        With C{--force} the secret is replaced, and a file others could
        read is made private.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("old\n")
        os.chmod(path, 0o644)
        code, out, err = command("secret", "--force", path)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(len(loadSecret(path)), SECRET_BYTES)

    def test_unwritable(self) -> None:
        """A file that cannot be written is a failure naming it."""
        path = os.path.join(self.mktemp(), "missing", "secret")
        self.assertEqual(
            command("secret", path),
            (1, "", f"relaynat secret: cannot write {path}: No such file or directory\n"),
        )

    def test_usage(self) -> None:
        """It takes exactly one file."""
        for argv in [[], ["a", "b"], ["a", "--froce"]]:
            self.assertRaises(UsageError, parse, ["secret", *argv])


class LoadSecretTests(SynchronousTestCase):
    """L{loadSecret}'s refusals, each naming the file and what to do."""

    def test_groupReadable(self) -> None:
        """
        A secret file its group may read (0640) is read: a service's group
        must be able to, as the README says to set it up.
        """
        path = self.mktemp()
        command("secret", path)
        before = loadSecret(path)
        os.chmod(path, 0o640)
        self.assertEqual(loadSecret(path), before)

    def write(self, text: str, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_refusals(self) -> None:
        """
        A missing, malformed, short or world-readable secret file is refused
        (the rule on modes, the same for every private file, is tested in
        L{relaynat.test.test_files}).
        """
        missing = self.mktemp()
        malformed = self.write("not base64 at all!\n")
        short = self.write("c2hvcnQ=\n")
        path = self.mktemp()
        command("secret", path)
        os.chmod(path, 0o644)
        for where, problem in [
            (missing, "No such file or directory"),
            (malformed, "not a secret file (make one with 'relaynat secret')"),
            (short, "the secret is too short (make one with 'relaynat secret')"),
            (path, f"readable by everyone (mode 0644); run chmod 640 {path}"),
        ]:
            error = self.assertRaises(SecretFileError, loadSecret, where)
            self.assertEqual(str(error), f"{where}: {problem}")
