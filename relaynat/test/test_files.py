"""
Tests for the one rule on private files (L{relaynat.private}), as each of
their loaders applies it: the relay's key (L{RelayIdentity.load}), the
users file (L{loadUsers}), a password file (C{relaynat passwd
--password-file}) and a secret file (L{loadSecret}); and for the modes of
the private files relaynat writes itself.
"""

from __future__ import annotations

import builtins
import grp
import os
import stat
from collections.abc import Callable
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from relaynat.identity import (
    CERT_FILE,
    KEY_FILE,
    IdentityError,
    RelayIdentity,
    fingerprintOfFile,
    generate,
    writePrivate,
)
from relaynat.private import PrivateFileError, modeProblem, readPrivate
from relaynat.secret import SecretFileError, generateSecret, loadSecret
from relaynat.test.runcommand import command
from relaynat.users import ITERATIONS, Rights, User, UsersFileError, loadUsers, saveUsers

KEYS = generate(["relay.example"])
USER = User("alice", b"salt" * 4, b"s" * 32, b"k" * 32, ITERATIONS, Rights(join=None))

#: Modes the rule allows: the owner's, and reading by the group.
ALLOWED = [0o600, 0o400, 0o640, 0o440, 0o700, 0o750]

#: Modes the rule refuses, with what it says and the mode it suggests.
REFUSED = [
    (0o644, "readable by everyone (mode 0644); run chmod 640"),
    (0o604, "readable by everyone (mode 0604); run chmod 600"),
    (0o660, "writable by its group (mode 0660); run chmod 640"),
    (0o620, "writable by its group (mode 0620); run chmod 600"),
    (0o602, "writable by everyone (mode 0602); run chmod 600"),
    (0o666, "writable by everyone (mode 0666); run chmod 640"),
    (0o601, "executable by everyone (mode 0601); run chmod 600"),
    (0o755, "readable by everyone (mode 0755); run chmod 750"),
]


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class ModeProblemTests(SynchronousTestCase):
    """L{modeProblem}, the rule itself."""

    def test_allowed(self) -> None:
        """The owner's modes and group reading pass."""
        for bits in ALLOWED:
            self.assertIsNone(modeProblem("f", stat.S_IFREG | bits), oct(bits))

    def test_refused(self) -> None:
        """
        Any bit for everyone, or writing for the group, is refused, saying
        what is wrong, the mode, and a chmod that takes only the wrong bits
        away.
        """
        for bits, problem in [
            *REFUSED,
            # Not one its owner may read, but the file is exposed all the same.
            (0o044, "readable by everyone (mode 0044); run chmod 040"),
        ]:
            self.assertEqual(modeProblem("f", stat.S_IFREG | bits), f"{problem} f", oct(bits))

    def test_quotedPath(self) -> None:
        """A path the shell would split is quoted in the command to run."""
        self.assertEqual(
            modeProblem("my keys/relay.key", 0o644),
            "readable by everyone (mode 0644); run chmod 640 'my keys/relay.key'",
        )


@attrs.frozen
class Kind:
    """
    One kind of private file: C{make} writes a good one in a folder and
    returns its path, C{load} reads it as relaynat does, raising C{error}
    with the text C{message} gives for a path and a problem.
    """

    name: str
    make: Callable[[str], str]
    load: Callable[[str], object]
    error: type[Exception]
    message: Callable[[str, str], str]


def _key(directory: str) -> str:
    writePrivate(os.path.join(directory, KEY_FILE), KEYS[0])
    writePrivate(os.path.join(directory, CERT_FILE), KEYS[1])
    return os.path.join(directory, KEY_FILE)


def _loadKey(path: str) -> object:
    return RelayIdentity.load(path, os.path.join(os.path.dirname(path), CERT_FILE))


def _users(directory: str) -> str:
    path = os.path.join(directory, "users")
    saveUsers(path, {"alice": USER})
    return path


def _password(directory: str) -> str:
    path = os.path.join(directory, "password")
    writePrivate(path, b"correct horse\n")
    return path


class _PasswdFailed(Exception):
    pass


def _passwd(path: str) -> object:
    """C{relaynat passwd --password-file PATH}, a command that reads a password file."""
    users = os.path.join(os.path.dirname(path), "users-made")
    code, out, err = command("passwd", users, "bob", "--join", "web", "--password-file", path)
    if code:
        raise _PasswdFailed(err)
    return loadUsers(users)["bob"]


def _secret(directory: str) -> str:
    path = os.path.join(directory, "web.secret")
    generateSecret(path)
    return path


KINDS = [
    Kind("the relay's key", _key, _loadKey, IdentityError, lambda p, m: f"{p}: {m}"),
    Kind("the users file", _users, loadUsers, UsersFileError, lambda p, m: f"{p}: {m}"),
    Kind(
        "a password file",
        _password,
        _passwd,
        _PasswdFailed,
        lambda p, m: f"relaynat passwd: cannot read the password: {p}: {m}\n",
    ),
    Kind("a secret file", _secret, loadSecret, SecretFileError, lambda p, m: f"{p}: {m}"),
    Kind("any private file", _password, readPrivate, PrivateFileError, lambda p, m: f"{p}: {m}"),
]


class PrivateFileRuleTests(SynchronousTestCase):
    """Every loader of a private file applies the same rule, in the same words."""

    def fresh(self, kind: Kind) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return kind.make(directory)

    def test_allowed(self) -> None:
        """
        Each kind of file loads when only its owner may read it (0600) and
        when its group may read it too (0640, the README's mode for a
        service's group), and for the other allowed modes.
        """
        for kind in KINDS:
            for bits in ALLOWED:
                path = self.fresh(kind)
                os.chmod(path, bits)
                kind.load(path)

    def test_refused(self) -> None:
        """
        Each kind of file is refused when everyone may read it (0644), its
        group may write it (0660, 0620) or everyone may write it (0602);
        each refusal names the file, the problem and the command that mends
        it, in the same words for every kind.
        """
        for kind in KINDS:
            for bits, problem in REFUSED:
                path = self.fresh(kind)
                os.chmod(path, bits)
                error = self.assertRaises(kind.error, kind.load, path)
                self.assertEqual(
                    str(error), kind.message(path, f"{problem} {path}"), (kind.name, oct(bits))
                )

    def test_mendedLoads(self) -> None:
        """The command a refusal suggests makes the file load."""
        for kind in KINDS:
            path = self.fresh(kind)
            os.chmod(path, 0o664)
            error = self.assertRaises(kind.error, kind.load, path)
            suggested = str(error).rstrip("\n").rsplit("; run chmod ", 1)[1]
            self.assertEqual(suggested, f"640 {path}", kind.name)
            os.chmod(path, 0o640)
            kind.load(path)

    def test_missing(self) -> None:
        """A missing file is named, with the system's reason, by every loader."""
        for kind in KINDS:
            path = os.path.join(self.mktemp(), "missing")
            error = self.assertRaises(kind.error, kind.load, path)
            self.assertEqual(str(error), kind.message(path, "No such file or directory"))

    def test_checkedOnTheOpenFile(self) -> None:
        """
        The mode checked is that of the file that is read, taken from its
        open descriptor: a file swapped in for a private one just before it
        is opened, or a private one swapped in just after, does not get an
        exposed file read as if it were private.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "secret")

        def prepare(name: str, bits: int) -> str:
            other = os.path.join(directory, name)
            with open(other, "wb") as f:
                f.write(name.encode("ascii"))
            os.chmod(other, bits)
            return other

        realOpen = builtins.open

        def swapping(before: bool) -> Callable[..., Any]:
            def opening(file: Any, *args: Any, **kwargs: Any) -> Any:
                if file != path:
                    return realOpen(file, *args, **kwargs)
                if before:
                    os.replace(prepare("exposed", 0o644), path)
                    return realOpen(file, *args, **kwargs)
                opened = realOpen(file, *args, **kwargs)
                os.replace(prepare("private", 0o600), path)
                return opened

            return opening

        for before in (True, False):
            os.replace(prepare("private" if before else "exposed", 0o600 if before else 0o644), path)
            self.patch(builtins, "open", swapping(before))
            error = self.assertRaises(PrivateFileError, readPrivate, path)
            self.assertEqual(
                error.problem, f"readable by everyone (mode 0644); run chmod 640 {path}", before
            )
            self.patch(builtins, "open", realOpen)

    def test_throughLinks(self) -> None:
        """
        A link's own mode means nothing: what counts is the file it leads
        to, refused when exposed and read when private.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        exposed = os.path.join(directory, "exposed")
        with open(exposed, "wb") as f:
            f.write(b"x")
        os.chmod(exposed, 0o644)
        link = os.path.join(directory, "link")
        os.symlink(os.path.basename(exposed), link)
        error = self.assertRaises(PrivateFileError, readPrivate, link)
        self.assertEqual(error.problem, f"readable by everyone (mode 0644); run chmod 640 {link}")
        os.chmod(exposed, 0o600)
        self.assertEqual(readPrivate(link), b"x")

    def test_fingerprintOfKey(self) -> None:
        """
        C{relaynat fingerprint} of a private key applies the rule too; of
        a certificate, which is public, it does not.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        keyPath = _key(directory)
        certPath = os.path.join(directory, CERT_FILE)
        os.chmod(keyPath, 0o644)
        os.chmod(certPath, 0o644)
        self.assertEqual(
            command("fingerprint", keyPath),
            (
                1,
                "",
                f"relaynat fingerprint: {keyPath}: readable by everyone (mode 0644);"
                f" run chmod 640 {keyPath}\n",
            ),
        )
        self.assertEqual(command("fingerprint", certPath)[0], 0)
        os.chmod(keyPath, 0o640)
        self.assertEqual(fingerprintOfFile(keyPath), fingerprintOfFile(certPath))


class WrittenFilesTests(SynchronousTestCase):
    """The private files relaynat writes are private, whatever the umask."""

    def setUp(self) -> None:
        # A umask of 0 would leave 0666 to whatever does not set its mode.
        previous = os.umask(0)
        self.addCleanup(os.umask, previous)
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def test_writePrivate(self) -> None:
        """L{writePrivate} makes a file 0600, and makes an existing one 0600."""
        path = self.path("f")
        writePrivate(path, b"new")
        self.assertEqual(mode(path), 0o600)
        os.chmod(path, 0o666)
        writePrivate(path, b"again")
        self.assertEqual(mode(path), 0o600)

    def test_commands(self) -> None:
        """
        C{keygen}, C{secret} and C{passwd} write the key, the secret and
        a new users file as 0600; the certificate of C{keygen} too (it is
        public, but beside the key).
        """
        keys = self.path("keys")
        self.assertEqual(command("keygen", keys, "--name", "relay.example")[0], 0)
        self.assertEqual(mode(os.path.join(keys, KEY_FILE)), 0o600)
        self.assertEqual(mode(os.path.join(keys, CERT_FILE)), 0o600)
        self.assertEqual(command("secret", self.path("web.secret"))[0], 0)
        self.assertEqual(mode(self.path("web.secret")), 0o600)
        password = self.path("password")
        writePrivate(password, b"pw\n")
        users = self.path("users")
        self.assertEqual(command("passwd", users, "alice", "--password-file", password)[0], 0)
        self.assertEqual(mode(users), 0o600)

    def test_saveUsersNew(self) -> None:
        """L{saveUsers} makes a new users file 0600."""
        path = self.path("users")
        saveUsers(path, {"alice": USER})
        self.assertEqual(mode(path), 0o600)

    def test_saveUsersReplacesPrivate(self) -> None:
        """A users file that was 0600 stays 0600 when replaced."""
        path = self.path("users")
        saveUsers(path, {"alice": USER})
        saveUsers(path, {})
        self.assertEqual(mode(path), 0o600)
        self.assertEqual(loadUsers(path), {})

    def test_saveUsersKeepsGroup(self) -> None:
        """
        Replacing a users file its group may read (0640, for the relay's
        service group) keeps that group and its reading: C{relaynat passwd}
        must not lock the running relay out of its own users file.
        """
        path = self.path("users")
        saveUsers(path, {"alice": USER})
        group = otherGroup()
        os.chown(path, -1, group)
        os.chmod(path, 0o640)
        saveUsers(path, {})
        self.assertEqual(mode(path), 0o640)
        self.assertEqual(os.stat(path).st_gid, group)
        self.assertEqual(loadUsers(path), {})

    def test_saveUsersKeepsOwner(self) -> None:
        """Root replacing a users file another user owns leaves it theirs."""
        if os.getuid() != 0:
            raise self.skipTest("only root may give a file to another user")
        path = self.path("users")
        saveUsers(path, {"alice": USER})
        os.chown(path, 65534, -1)
        saveUsers(path, {})
        self.assertEqual(os.stat(path).st_uid, 65534)
        self.assertEqual(mode(path), 0o600)

    def test_saveUsersKeepsOnlyGroupReading(self) -> None:
        """
        Of the old mode only the group's reading is kept: a users file
        others could read or the group could write is replaced by one
        neither may.
        """
        path = self.path("users")
        saveUsers(path, {"alice": USER})
        os.chmod(path, 0o666)
        saveUsers(path, {})
        self.assertEqual(mode(path), 0o640)
        self.assertEqual(loadUsers(path), {})

    def test_passwdKeepsGroup(self) -> None:
        """C{relaynat passwd} on a 0640 users file leaves it 0640, in its group."""
        path = self.path("users")
        password = self.path("password")
        writePrivate(password, b"pw\n")
        self.assertEqual(command("passwd", path, "alice", "--password-file", password)[0], 0)
        group = otherGroup()
        os.chown(path, -1, group)
        os.chmod(path, 0o640)
        self.assertEqual(command("passwd", path, "bob", "--password-file", password)[0], 0)
        self.assertEqual((mode(path), os.stat(path).st_gid), (0o640, group))
        self.assertEqual(sorted(loadUsers(path)), ["alice", "bob"])


def otherGroup() -> int:
    """
    A group other than this process's own if it may give files to one (as
    root may), so that keeping the group proves something; else its own.
    """
    mine = os.getegid()
    candidates = grp.getgrall() if os.getuid() == 0 else [grp.getgrgid(g) for g in os.getgroups()]
    for entry in candidates:
        if entry.gr_gid != mine:
            return entry.gr_gid
    return mine
