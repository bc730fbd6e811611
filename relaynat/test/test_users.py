"""
Tests for L{relaynat.users}, the relay's users file, and for C{relaynat
passwd}, which edits it, run in process with the password prompt replaced.
"""

from __future__ import annotations

import os
import stat

from hypothesis import given, settings
from hypothesis import strategies as st
from scramp import ScramClient, ScramException, ScramMechanism
from twisted.trial.unittest import SynchronousTestCase

from relaynat.scripts import passwd as passwdCommand
from relaynat.cli import parse
from relaynat.scripts.command import UsageError
from relaynat.test.runcommand import command
from relaynat.users import (
    ITERATIONS,
    Rights,
    User,
    UsersFileError,
    formatRights,
    loadUsers,
    parseIds,
    parseRights,
    parseUsers,
    saveUsers,
)

#: Valid server ids and user names.
IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
RIGHTS = st.builds(
    Rights,
    register=st.none() | st.frozensets(IDS, max_size=4),
    join=st.none() | st.frozensets(IDS, max_size=4),
)


def verifies(user: User, password: str) -> bool:
    """Does a SCRAM exchange with C{user}'s verifier accept C{password}?"""
    server = ScramMechanism("SCRAM-SHA-256").make_server(
        lambda name: (user.salt, user.storedKey, user.serverKey, user.iterations)
    )
    client = ScramClient(["SCRAM-SHA-256"], user.name, password)
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    try:
        server.set_client_final(client.get_client_final())
    except ScramException:
        return False
    client.set_server_final(server.get_server_final())
    return True


def fakeUser(name: str, rights: Rights) -> User:
    """A user with a made-up verifier: SCRAM's key stretching is slow."""
    return User(name, b"salt" * 4, b"s" * 32, b"k" * 32, ITERATIONS, rights)


class UsersFileTests(SynchronousTestCase):
    """L{saveUsers}, L{loadUsers} and L{parseUsers}."""

    def test_roundTrip(self) -> None:
        """
        Users saved are loaded back the same, verifiers and rights, from a
        file readable by its owner only that holds no password.
        """
        path = self.mktemp()
        users = {
            "alice": User.create(
                "alice", "correct horse", Rights(register=None, join=frozenset({"web"}))
            ),
            "bob": User.create("bob", "battery staple", Rights()),
        }
        saveUsers(path, users)
        self.assertEqual(loadUsers(path), users)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            text = f.read()
        self.assertNotIn("correct horse", text)
        self.assertEqual(text.splitlines()[1].split()[2:], ["register=*", "join=web"])
        self.assertEqual(len(text.splitlines()[2].split()), 2)
        self.assertEqual(
            os.listdir(os.path.dirname(os.path.abspath(path))), [os.path.basename(path)]
        )

    def test_verifier(self) -> None:
        """The stored verifier accepts the user's password in SCRAM, and no other."""
        user = User.create("alice", "correct horse", Rights())
        self.assertEqual(user.iterations, ITERATIONS)
        self.assertTrue(verifies(user, "correct horse"))
        self.assertFalse(verifies(user, "correct horsf"))

    def test_freshSalt(self) -> None:
        """The same password twice gives two different verifiers."""
        self.assertNotEqual(
            User.create("a", "pw", Rights()).verifier(), User.create("a", "pw", Rights()).verifier()
        )

    def test_commentsAndBlanks(self) -> None:
        """Comments, blank lines and surrounding space are ignored."""
        line = fakeUser("alice", Rights(join=None)).line()
        users = parseUsers(f"# users\n\n   {line}   # the admin\n\t\n", "users")
        self.assertEqual(list(users), ["alice"])
        self.assertEqual(users["alice"].rights, Rights(register=frozenset(), join=None))

    def test_errors(self) -> None:
        """Each malformed line is an error naming the file, the line and the problem."""
        good = fakeUser("alice", Rights()).line()
        verifier = good.split()[1]
        weak = verifier.replace(f"${ITERATIONS}:", "$1000:")
        for text, problem in [
            ("alice", "expected NAME VERIFIER [RIGHTS]"),
            (f"al/ice {verifier}", "bad user name 'al/ice'"),
            (f"{good}\n{good}", "user alice appears twice"),
            ("alice plaintext-password", "not a SCRAM-SHA-256 verifier (use 'relaynat passwd'"),
            (f"alice {verifier.replace('SHA-256', 'SHA-1')}", "not a SCRAM-SHA-256 verifier"),
            (f"alice {weak}", "verifier too weak or malformed"),
            (f"{good} admin", "'admin': expected register=IDS or join=IDS"),
            (f"{good} join=a join=b", "join= given twice"),
            (f"{good} register=a,b/c", "bad server id 'b/c'"),
        ]:
            error = self.assertRaises(
                UsersFileError, parseUsers, f"# header\n{text}\n", "users.txt"
            )
            number = 3 if text.startswith(good + "\n") else 2
            self.assertTrue(
                str(error).startswith(f"users.txt, line {number}: "), (text, str(error))
            )
            self.assertIn(problem, str(error), text)

    def test_missing(self) -> None:
        """A missing file is an error naming it."""
        path = self.mktemp()
        error = self.assertRaises(UsersFileError, loadUsers, path)
        self.assertEqual(str(error), f"{path}: No such file or directory")

    @settings(max_examples=50, deadline=None)
    @given(st.dictionaries(IDS, RIGHTS, max_size=5))
    def test_roundTripAny(self, rights: dict[str, Rights]) -> None:
        """Any users with any rights survive being written and read back."""
        users = {name: fakeUser(name, r) for name, r in rights.items()}
        text = "".join(user.line() + "\n" for user in users.values())
        self.assertEqual(parseUsers(text, "users"), users)


class RightsTests(SynchronousTestCase):
    """L{parseIds}, L{parseRights} and L{formatRights}."""

    def test_ids(self) -> None:
        """A comma list is a set of ids (empty items dropped); C{*} is any."""
        self.assertEqual(parseIds("web,db,web", "x"), frozenset({"web", "db"}))
        self.assertEqual(parseIds("web,,", "x"), frozenset({"web"}))
        self.assertEqual(parseIds("", "x"), frozenset())
        self.assertIsNone(parseIds("*", "x"))

    def test_badIds(self) -> None:
        """A bad id, C{*} among others included, is an error saying where."""
        for value in ["web,*", "-web", "w b", "a" * 65]:
            error = self.assertRaises(UsersFileError, parseIds, value, "--join")
            self.assertTrue(str(error).startswith("--join: bad server id"), str(error))

    def test_rights(self) -> None:
        """A right not given is not granted; C{*} grants every id."""
        rights = parseRights(["register=web"], "x")
        self.assertEqual(rights, Rights(register=frozenset({"web"}), join=frozenset()))
        self.assertTrue(rights.mayRegister("web"))
        self.assertFalse(rights.mayRegister("db"))
        self.assertFalse(rights.mayJoin("web"))
        anything = parseRights(["join=*", "register=*"], "x")
        self.assertTrue(anything.mayJoin("db") and anything.mayRegister("anything.at-all"))
        self.assertEqual(parseRights([], "x"), Rights())

    def test_format(self) -> None:
        """Rights are written sorted, C{*} for any, and nothing for none."""
        self.assertEqual(
            formatRights(Rights(register=frozenset({"web", "db"}), join=None)),
            ["register=db,web", "join=*"],
        )
        self.assertEqual(formatRights(Rights()), [])

    @given(RIGHTS)
    def test_roundTripAny(self, rights: Rights) -> None:
        """Any rights are read back as written."""
        self.assertEqual(parseRights(formatRights(rights), "x"), rights)

    @given(st.lists(IDS, max_size=6))
    def test_idsRoundTrip(self, ids: list[str]) -> None:
        """Any list of valid ids, joined with commas, parses to its set."""
        self.assertEqual(parseIds(",".join(ids), "x"), frozenset(ids))


class PasswdTests(SynchronousTestCase):
    """C{relaynat passwd}, with the password prompt answered by the test."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.answers: list[str] = []
        self.prompts: list[str] = []

        def getpass(prompt: str) -> str:
            self.prompts.append(prompt)
            if not self.answers:
                raise EOFError()
            return self.answers.pop(0)

        self.patch(passwdCommand, "getpass", getpass)

    def passwd(self, *argv: str, answers: tuple[str, ...] = ()) -> tuple[int, str, str]:
        self.answers = list(answers)
        return command("passwd", self.path, *argv)

    def user(self, name: str) -> User:
        return loadUsers(self.path)[name]

    def contents(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def test_add(self) -> None:
        """
        A new user is added to a new file (private to its owner) with the
        password typed twice and the rights given; the output says so, and
        never shows the password.
        """
        code, out, err = self.passwd(
            "alice", "--register", "web,db", "--join", "*", answers=("s3cret pw", "s3cret pw")
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"added user alice to {self.path}: register=db,web join=*\n")
        self.assertEqual(self.prompts, ["New password for alice: ", "The same password again: "])
        alice = self.user("alice")
        self.assertTrue(verifies(alice, "s3cret pw"))
        self.assertEqual(alice.rights, Rights(register=frozenset({"web", "db"}), join=None))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertNotIn(b"s3cret", self.contents())

    def test_addWithoutRights(self) -> None:
        """A user added without rights gets none, and a note saying how to give some."""
        code, out, err = self.passwd("bob", answers=("pw", "pw"))
        self.assertEqual(code, 0)
        self.assertEqual(out, f"added user bob to {self.path}: no rights\n")
        self.assertEqual(
            err, "note: bob may neither register nor join a server; give --register or --join\n"
        )
        self.assertEqual(self.user("bob").rights, Rights())

    def test_mismatch(self) -> None:
        """Two different passwords change nothing, and say so."""
        self.passwd("alice", "--join", "web", answers=("first", "first"))
        before = self.contents()
        code, out, err = self.passwd("alice", "--join", "*", answers=("one", "two"))
        self.assertEqual(
            (code, out, err),
            (1, "", "relaynat passwd: the two passwords differ; nothing was changed\n"),
        )
        self.assertEqual(self.contents(), before)

    def test_mismatchNewFile(self) -> None:
        """A failed first C{passwd} does not create the file."""
        code, out, err = self.passwd("alice", answers=("one", "two"))
        self.assertEqual(code, 1)
        self.assertFalse(os.path.exists(self.path))

    def test_emptyPassword(self) -> None:
        """An empty password is refused."""
        code, out, err = self.passwd("alice", answers=("", ""))
        self.assertEqual(
            (code, err), (1, "relaynat passwd: the password is empty; nothing was changed\n")
        )
        self.assertFalse(os.path.exists(self.path))

    def test_noInput(self) -> None:
        """With no terminal input, the failure points to C{--password-file}."""
        code, out, err = self.passwd("alice")
        self.assertEqual(
            (code, err),
            (1, "relaynat passwd: no password was typed; use --password-file F to give one\n"),
        )

    def test_changeKeepsRights(self) -> None:
        """
        A new password for an existing user keeps the rights not given on
        the command line and replaces those given; other users are left as
        they were.
        """
        self.passwd("alice", "--register", "web", "--join", "db", answers=("old", "old"))
        self.passwd("bob", "--join", "*", answers=("bobs", "bobs"))
        bob = self.user("bob")
        code, out, err = self.passwd("alice", answers=("new", "new"))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"changed user alice in {self.path}: register=web join=db\n")
        alice = self.user("alice")
        self.assertTrue(verifies(alice, "new"))
        self.assertFalse(verifies(alice, "old"))
        self.assertEqual(alice.rights, Rights(register=frozenset({"web"}), join=frozenset({"db"})))
        self.assertEqual(self.user("bob"), bob)
        self.passwd("alice", "--join", "", answers=("newer", "newer"))
        self.assertEqual(self.user("alice").rights, Rights(register=frozenset({"web"})))

    def test_keepPassword(self) -> None:
        """
        C{--keep-password} changes an existing user's rights without asking
        for a password; a user not yet in the file needs one.
        """
        self.passwd("alice", "--join", "web", answers=("pw", "pw"))
        verifier = self.user("alice").verifier()
        self.prompts.clear()
        code, out, err = self.passwd("alice", "--keep-password", "--register", "*")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.prompts, [])
        self.assertEqual(self.user("alice").verifier(), verifier)
        self.assertEqual(self.user("alice").rights, Rights(register=None, join=frozenset({"web"})))
        code, out, err = self.passwd("carol", "--keep-password", "--join", "web")
        self.assertEqual(
            (code, err),
            (
                1,
                f"relaynat passwd: {self.path} has no user carol yet;"
                " a new user needs a password\n",
            ),
        )

    def test_passwordFile(self) -> None:
        """
        C{--password-file} gives the password as the file's first line,
        spaces kept, line end and later lines not; nothing is asked.
        """
        source = self.mktemp()
        with open(source, "w") as f:
            f.write(" two words \r\nsecond line\n")
        os.chmod(source, 0o600)
        code, out, err = self.passwd("alice", "--password-file", source, "--join", "web")
        self.assertEqual(code, 0)
        self.assertEqual(self.prompts, [])
        self.assertTrue(verifies(self.user("alice"), " two words "))

    def test_passwordFileErrors(self) -> None:
        """A missing or empty password file is a failure and changes nothing."""
        missing = self.mktemp()
        self.assertEqual(
            self.passwd("alice", "--password-file", missing),
            (
                1,
                "",
                "relaynat passwd: cannot read the password:"
                f" {missing}: No such file or directory\n",
            ),
        )
        empty = self.mktemp()
        open(empty, "w").close()
        os.chmod(empty, 0o600)
        self.assertEqual(
            self.passwd("alice", "--password-file", empty),
            (1, "", "relaynat passwd: the password is empty; nothing was changed\n"),
        )
        self.assertFalse(os.path.exists(self.path))

    def test_delete(self) -> None:
        """C{--delete} removes one user and leaves the others."""
        self.passwd("alice", answers=("a", "a"))
        self.passwd("bob", answers=("b", "b"))
        code, out, err = self.passwd("alice", "--delete")
        self.assertEqual((code, out, err), (0, f"deleted user alice from {self.path}\n", ""))
        self.assertEqual(list(loadUsers(self.path)), ["bob"])

    def test_deleteUnknown(self) -> None:
        """Deleting a user not in the file (or from no file) fails, saying so."""
        for _ in range(2):
            code, out, err = self.passwd("carol", "--delete")
            self.assertEqual((code, err), (1, f"relaynat passwd: {self.path} has no user carol\n"))
            self.passwd("alice", answers=("a", "a"))

    def test_brokenFile(self) -> None:
        """A users file that does not parse is reported, file and line, and left alone."""
        with open(self.path, "w") as f:
            f.write("# users\nalice\n")
        os.chmod(self.path, 0o600)
        code, out, err = self.passwd("bob", answers=("b", "b"))
        self.assertEqual(
            (code, err),
            (1, f"relaynat passwd: {self.path}, line 2: expected NAME VERIFIER [RIGHTS]\n"),
        )
        with open(self.path) as f:
            self.assertEqual(f.read(), "# users\nalice\n")

    def test_usage(self) -> None:
        """Each bad command line is a usage error saying what is wrong."""
        for argv, message in [
            ([], "the following arguments are required: FILE, USER"),
            (["users"], "the following arguments are required: USER"),
            (["users", "al ice"], "bad user name 'al ice'"),
            (["users", "alice", "--join", "web,*"], "--join: bad server id '*'"),
            (["users", "alice", "--register", "we/b"], "--register: bad server id 'we/b'"),
            (["users", "alice", "--delete", "--join", "web"], "--delete cannot go with --join"),
            (
                ["users", "alice", "--delete", "--keep-password"],
                "--delete cannot go with --keep-password",
            ),
            (
                ["users", "alice", "--keep-password", "--password-file", "f"],
                "--keep-password cannot go with --password-file",
            ),
        ]:
            error = self.assertRaises(UsageError, parse, ["passwd", *argv])
            self.assertIn(message, str(error), argv)
