"""
Tests for the C{relaynat} command: the table and JSON it prints, its option
parsing, and C{relaynat list} and C{relaynat trust} run for real, as
separate processes (C{trust} on a terminal too), against a relay or its web
endpoint running in the test's own reactor.
"""

from __future__ import annotations

import json
import os
import re
import sys
from io import StringIO

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from relaynat import __version__
from relaynat.config import ConfigError
from relaynat.cli import SUBCOMMANDS, main, parse
from relaynat.identity import CERT_FILE, KEY_FILE, RelayIdentity, generate, writePrivate
from relaynat.test.loopback import PASSWORD, Stack
from relaynat.test.net import listen, runAsync
from relaynat.test.streams import Echo
from relaynat.test.test_web import identityIn
from relaynat.scripts.check import CheckOptions, checkCommand
from relaynat.scripts.command import CommandFailed, UsageError
from relaynat.scripts.list import ListOptions, formatJson, formatTable
from relaynat.scripts.passwd import PasswdOptions
from relaynat.scripts.trust import runTrust, savePublic
from relaynat.secret import generateSecret
from relaynat.users import Rights, User, saveUsers
from relaynat.web import publicationResource

#: The installed console script, next to the interpreter running the tests.
SCRIPT = os.path.join(os.path.dirname(sys.executable), "relaynat")

SERVERS = [
    {"id": "web", "description": "demo web server", "since": 1700000000.0, "idle": 2},
    {"id": "db", "description": "", "since": 1700000061.5, "idle": 0},
]


class FormatTests(SynchronousTestCase):
    """L{formatTable} and L{formatJson}."""

    def test_tableEmpty(self) -> None:
        """With no servers, the table is its header and a note saying so."""
        self.assertEqual(
            formatTable([]),
            "ID  DESCRIPTION  ONLINE SINCE (UTC)  IDLE\n(no servers are available)\n",
        )

    def test_tableSeveral(self) -> None:
        """
        Several servers are aligned in columns as wide as their widest cell,
        in the order given, with UTC times and no trailing spaces.
        """
        self.assertEqual(
            formatTable(SERVERS),
            "ID   DESCRIPTION      ONLINE SINCE (UTC)   IDLE\n"
            "web  demo web server  2023-11-14 22:13:20  2\n"
            "db                    2023-11-14 22:14:21  0\n",
        )

    def test_tableWideId(self) -> None:
        """A long id widens its column; the others follow it."""
        table = formatTable([{"id": "a" * 20, "description": "d", "since": 0, "idle": 1}])
        header, row = table.splitlines()
        self.assertEqual(header.index("DESCRIPTION"), 22)
        self.assertEqual(row, "a" * 20 + "  d            1970-01-01 00:00:00  1")

    def test_tableControlCharacters(self) -> None:
        """
        A description is chosen by whoever runs a skeleton; terminal control
        characters in it (a screen clear, a newline faking another row) are
        not printed raw to the user's terminal.
        """
        table = formatTable(
            [{"id": "web", "description": "\x1b[2Jfake\nrow", "since": 0, "idle": 0}]
        )
        self.assertNotIn("\x1b", table)
        self.assertEqual(len(table.splitlines()), 2)


    def test_jsonEmpty(self) -> None:
        """With no servers, the JSON is an empty list and a newline."""
        self.assertEqual(formatJson([]), "[]\n")

    def test_jsonSeveral(self) -> None:
        """
        The JSON has every field as the relay gave it, plus the time in UTC
        as text, and ends with a newline.
        """
        text = formatJson(SERVERS)
        self.assertTrue(text.endswith("}\n]\n"))
        self.assertEqual(
            json.loads(text),
            [
                {**SERVERS[0], "since_utc": "2023-11-14 22:13:20"},
                {**SERVERS[1], "since_utc": "2023-11-14 22:14:21"},
            ],
        )


FINGERPRINT = "sha256:" + "ab" * 32
ACCESS = [
    "--relay", "tcp:relay.example:7000",
    "--relay-key", FINGERPRINT,
    "--user", "alice",
    "--password-file", "pw",
]


def listOptions(*argv: str) -> ListOptions:
    """C{relaynat list}'s options for C{argv}, parsed as the command parses them."""
    options = parse(["list", *argv]).options
    assert isinstance(options, ListOptions)
    return options


def runMain(case: SynchronousTestCase, *argv: str) -> tuple[object, str, str]:
    """Run L{main} on C{argv} in process: its exit status, stdout and stderr."""
    out, err = StringIO(), StringIO()
    case.patch(sys, "stdout", out)
    case.patch(sys, "stderr", err)
    error = case.assertRaises(SystemExit, main, list(argv))
    return error.code, out.getvalue(), err.getvalue()


class OptionsTests(SynchronousTestCase):
    """The C{relaynat} command line, parsed in process."""

    def setUp(self) -> None:
        # The password file ACCESS names, in the folder the tests run in:
        # the command reads it with the rest of the configuration.
        writePrivate("pw", b"pw\n")

    def test_list(self) -> None:
        """C{relaynat list --relay ENDPOINT ... --json} parses into its parts."""
        invocation = parse(["list", *ACCESS, "--json"])
        self.assertEqual(invocation.name, "list")
        options = invocation.options
        self.assertIsInstance(options, ListOptions)
        self.assertEqual(options.access.config.relay, "tcp:relay.example:7000")
        self.assertEqual(options.access.config.user, "alice")
        self.assertEqual(options.access.config.relay_key, FINGERPRINT)
        self.assertEqual(
            options.access.config.password_file, os.path.join(os.getcwd(), "pw")
        )
        self.assertTrue(options.json)
        self.assertEqual(options.timeout, 10.0)

    def test_tableByDefault(self) -> None:
        """Without C{--json}, the output is a table; the timeout can be set."""
        options = listOptions(*ACCESS, "--timeout", "2.5")
        self.assertFalse(options.json)
        self.assertEqual(options.timeout, 2.5)

    def test_badTimeout(self) -> None:
        """A timeout that is not a positive number of seconds is a usage error."""
        for value, message in [
            ("soon", "--timeout must be a number, not 'soon'"),
            ("0", "--timeout must be a positive number of seconds"),
            ("nan", "--timeout must be a positive number of seconds"),
        ]:
            error = self.assertRaises(UsageError, listOptions, *ACCESS, "--timeout", value)
            self.assertEqual(str(error), message)

    def test_noCommand(self) -> None:
        """Without a subcommand, the usage error names the subcommands."""
        error = self.assertRaises(UsageError, parse, [])
        self.assertEqual(
            str(error),
            "name a subcommand: list, keygen, fingerprint, trust, passwd, secret, check, connect",
        )
        self.assertEqual(error.command, "relaynat")
        self.assertEqual(error.usage, "usage: relaynat SUBCOMMAND [options]\n")

    def test_usageNamesTheCommand(self) -> None:
        """
        A subcommand's usage error names that subcommand, and its usage line
        is the subcommand's own, not the top level's with the subcommand
        pasted after it.
        """
        error = self.assertRaises(UsageError, parse, ["secret"])
        self.assertEqual(error.command, "relaynat secret")
        self.assertEqual(error.usage, "usage: relaynat secret FILE [--force]\n")
        self.assertEqual(str(error), "the following arguments are required: FILE")

    def test_unknownCommand(self) -> None:
        """An unknown subcommand is a usage error of the top level, listing the subcommands."""
        error = self.assertRaises(UsageError, parse, ["lsit"])
        self.assertEqual(error.command, "relaynat")
        self.assertIn("invalid choice: 'lsit'", str(error))
        self.assertIn("'list'", str(error))

    def test_unknownOption(self) -> None:
        """
        An unknown option after a subcommand is that subcommand's usage
        error (argparse would leave it to the top level, whose usage would
        not help), before or after the arguments.
        """
        for argv in (["secret", "--froce", "s"], ["secret", "s", "--froce"]):
            error = self.assertRaises(UsageError, parse, argv)
            self.assertEqual(
                (error.command, error.usage, str(error)),
                (
                    "relaynat secret",
                    "usage: relaynat secret FILE [--force]\n",
                    "unrecognized arguments: --froce",
                ),
                argv,
            )

    def test_unknownTopLevelOption(self) -> None:
        """An unknown option before any subcommand is the top level's usage error."""
        error = self.assertRaises(UsageError, parse, ["--froce"])
        self.assertEqual(
            (error.command, str(error)), ("relaynat", "unrecognized arguments: --froce")
        )

    def test_optionsAfterArguments(self) -> None:
        """
        Options may come before, between or after the arguments, as the
        README writes them: C{keygen DIR --name NAME}, C{passwd FILE USER
        --join IDS}, C{trust URL --out F --expect FP}.
        """
        self.assertEqual(
            parse(["keygen", "conf", "--name", "relay.example.com", "--force"]).options.names,
            ("relay.example.com",),
        )
        for argv in (
            ["passwd", "users", "bob", "--join", "web", "--password-file", "pw"],
            ["passwd", "--join", "web", "users", "--password-file", "pw", "bob"],
            ["passwd", "users", "--join", "web", "bob", "--password-file", "pw"],
        ):
            self.assertEqual(
                parse(argv).options,
                PasswdOptions(
                    file="users", user="bob", rights={"join": frozenset({"web"})}, password_file="pw"
                ),
                argv,
            )
        fingerprint = "sha256:" + "ab" * 32
        options = parse(
            ["trust", "http://relay.example:7080", "--out", "relay.pem", "--expect", fingerprint]
        ).options
        self.assertEqual((options.out, options.expect), ("relay.pem", fingerprint))

    def test_doubleDash(self) -> None:
        """
        After C{--}, everything is an argument, even what looks like an
        option: a file named C{-x} or C{--force}.
        """
        self.assertEqual(parse(["secret", "--", "-x"]).options.file, "-x")
        options = parse(["secret", "--force", "--", "--force"]).options
        self.assertEqual((options.file, options.force), ("--force", True))
        options = parse(["passwd", "--join", "web", "--", "-users", "bob"]).options
        self.assertEqual(
            (options.file, options.user, options.rights),
            ("-users", "bob", {"join": frozenset({"web"})}),
        )
        error = self.assertRaises(UsageError, parse, ["secret", "a", "--", "b"])
        self.assertEqual(str(error), "unrecognized arguments: b")

    def test_everySubcommand(self) -> None:
        """The subcommands are those the README names, in its order."""
        self.assertEqual(
            [subcommand.name for subcommand in SUBCOMMANDS],
            ["list", "keygen", "fingerprint", "trust", "passwd", "secret", "check", "connect"],
        )

    def test_noRelay(self) -> None:
        """C{list} without a relay says what is missing."""
        error = self.assertRaises(ConfigError, listOptions, *ACCESS[2:])
        self.assertEqual(str(error), "command line: client.relay: missing")

    def test_noUser(self) -> None:
        """C{list} logs in, so it needs a user."""
        error = self.assertRaises(ConfigError, listOptions, *ACCESS[:4])
        self.assertEqual(str(error), "command line: client.user: missing")

    def test_badRelay(self) -> None:
        """A relay that is not a connecting endpoint is refused."""
        error = self.assertRaises(ConfigError, listOptions, "--relay", "tcp:7000", *ACCESS[2:])
        self.assertTrue(
            str(error).startswith(
                "command line: client.relay: not a valid connecting endpoint 'tcp:7000'"
            ),
            str(error),
        )

    def test_configFile(self) -> None:
        """
        The relay can come from a client's config file, tunnels and all, and
        C{--relay} overrides it.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        writePrivate(os.path.join(folder, "pw"), b"pw\n")
        generateSecret(os.path.join(folder, "web.secret"))
        path = os.path.join(folder, "client.toml")
        with open(path, "w") as f:
            f.write(
                '[client]\nrelay = "tcp:from-file:7000"\n'
                f'relay_key = "{FINGERPRINT}"\nuser = "alice"\npassword_file = "pw"\n'
                '[[tunnel]]\nserver = "web"\nlisten = "tcp:8080"\nsecret_file = "web.secret"\n'
            )
        options = listOptions("--config", path)
        self.assertEqual(options.access.config.relay, "tcp:from-file:7000")
        self.assertEqual(
            options.access.config.password_file, os.path.join(os.path.dirname(path), "pw")
        )
        options = listOptions("-c", path, "--relay", "tcp:from-flag:7000")
        self.assertEqual(options.access.config.relay, "tcp:from-flag:7000")


class HelpTests(SynchronousTestCase):
    """C{relaynat --help} and each subcommand's C{--help}, printed by L{main}."""

    def test_topLevel(self) -> None:
        """
        C{relaynat --help} (or C{-h}) shows the top level's usage and lists
        every subcommand with its one line, and exits with status 0.
        """
        for flag in ("--help", "-h"):
            code, out, err = runMain(self, flag)
            self.assertEqual((code, err), (0, ""))
            self.assertTrue(out.startswith("usage: relaynat SUBCOMMAND [options]\n"), out)
            for subcommand in SUBCOMMANDS:
                self.assertRegex(out, rf"\n    {subcommand.name}\s+{re.escape(subcommand.summary)}\n")

    def test_subcommand(self) -> None:
        """C{relaynat keygen --help} shows keygen's usage, description and options."""
        code, out, err = runMain(self, "keygen", "--help")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(
            out.startswith("usage: relaynat keygen DIR --name NAME [--name NAME]... [--force]\n"),
            out,
        )
        self.assertIn("Create the relay's private key", out)
        self.assertIn("--name NAME", out)

    def test_accessFlags(self) -> None:
        """C{list} and C{connect} take every access flag C{twistd client} does."""
        for name in ("list", "connect"):
            code, out, err = runMain(self, name, "--help")
            self.assertEqual(code, 0)
            for flag in (
                "-c FILE, --config FILE",
                "--relay ENDPOINT",
                "--relay-key KEY",
                "--relay-verify HOW",
                "--relay-ca FILE",
                "--relay-name NAME",
                "--user NAME",
                "--password-file FILE",
                "--timeout SECONDS",
            ):
                self.assertIn(flag, out, name)
        self.assertIn("--secret FILE", runMain(self, "connect", "--help")[1])
        self.assertIn("-v, --verbose", runMain(self, "connect", "--help")[1])
        self.assertIn("--json", runMain(self, "list", "--help")[1])


class ListCommandTests(TestCase):
    """C{relaynat list} as a real process against a relay in this process."""

    def setUp(self) -> None:
        if not os.path.exists(SCRIPT):
            raise self.skipTest(f"the relaynat script is not installed at {SCRIPT}")

    async def runScript(self, *args: str) -> tuple[str, str, int]:
        # The reactor keeps running while the child runs, so the relay in
        # this process answers it.
        out, err, code = await getProcessOutputAndValue(
            SCRIPT, args, env=dict(os.environ), reactor=reactor
        )
        return out.decode(), err.decode(), code

    async def startStack(self) -> list[str]:
        """
        A relay with one skeleton fronting "echo"; the flags that reach it
        and log in as alice.
        """
        stack = await Stack().start({"echo": Factory.forProtocol(Echo)})
        self.addCleanup(stack.stop)
        password = os.path.join(stack.directory, "password")
        writePrivate(password, (PASSWORD + "\n").encode())
        return [
            "--relay", f"tcp:127.0.0.1:{stack.clientPort.getHost().port}",  # type: ignore[attr-defined]
            "--relay-key", stack.identity.fingerprint,
            "--user", "alice",
            "--password-file", password,
        ]

    @runAsync
    async def test_table(self) -> None:
        """The table lists the registered server with its description."""
        access = await self.startStack()
        out, err, code = await self.runScript("list", *access)
        self.assertEqual((code, err), (0, ""))
        header, row = out.splitlines()
        self.assertEqual(header.split(), ["ID", "DESCRIPTION", "ONLINE", "SINCE", "(UTC)", "IDLE"])
        self.assertEqual(row.split()[:3], ["echo", "test", "echo"])
        self.assertEqual(row.split()[-1], "1")

    @runAsync
    async def test_json(self) -> None:
        """C{--json} prints a JSON list with the registered server."""
        access = await self.startStack()
        out, err, code = await self.runScript("list", *access, "--json")
        self.assertEqual((code, err), (0, ""))
        [server] = json.loads(out)
        self.assertEqual(
            (server["id"], server["description"], server["idle"]), ("echo", "test echo", 1)
        )
        self.assertLess(abs(server["since"] - reactor.seconds()), 60)
        self.assertRegex(server["since_utc"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")

    @runAsync
    async def test_unreachableRelay(self) -> None:
        """
        A relay that refuses the connection makes C{list} fail with exit
        status 1 and one line saying why.
        """
        port = await listen(Factory.forProtocol(Echo))
        number = port.getHost().port  # type: ignore[attr-defined]
        await port.stopListening()  # type: ignore[misc]
        password = self.mktemp()
        writePrivate(password, b"secret\n")
        out, err, code = await self.runScript(
            "list", "--relay", f"tcp:127.0.0.1:{number}", *ACCESS[2:6], "--password-file", password
        )
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(
            err.startswith("relaynat list: cannot list servers: cannot reach the relay: Connection was refused"), err
        )
        self.assertEqual(err.count("\n"), 1)

    @runAsync
    async def test_usageError(self) -> None:
        """A usage error exits with status 2 and ends with the problem."""
        out, err, code = await self.runScript("list")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(err, "relaynat: command line: client.relay: missing\n")

    @runAsync
    async def test_version(self) -> None:
        """C{relaynat --version} prints relaynat's version."""
        out, err, code = await self.runScript("--version")
        self.assertEqual((code, out), (0, f"relaynat {__version__}\n"))

    @runAsync
    async def test_listVersion(self) -> None:
        """C{relaynat list --version} also prints relaynat's version."""
        out, err, code = await self.runScript("list", "--version")
        self.assertEqual((code, out), (0, f"relaynat {__version__}\n"))



class ConfigProblemTests(SynchronousTestCase):
    """A configuration problem is reported without the usage text; a usage problem with it."""

    def test_configProblemAlone(self) -> None:
        """
        C{relaynat list} with a relay flag that does not parse says only
        that, on one line, and exits with status 2.
        """
        code, out, err = runMain(self, "list", "--relay", "tcp:7000", *ACCESS[2:])
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("relaynat: command line: client.relay:"), err)

    def test_usageProblemShowsUsage(self) -> None:
        """
        An unknown option exits with status 2 and prints the subcommand's
        usage, then the problem on one line naming the subcommand.
        """
        code, out, err = runMain(self, "list", "--no-such-option")
        self.assertEqual((code, out), (2, ""))
        self.assertTrue(err.startswith("usage: relaynat list [--config client.toml] "), err)
        self.assertTrue(
            err.endswith("\nrelaynat list: unrecognized arguments: --no-such-option\n"), err
        )

    def test_noSubcommand(self) -> None:
        """C{relaynat} alone exits with status 2, naming the subcommands."""
        code, out, err = runMain(self)
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(
            err,
            "usage: relaynat SUBCOMMAND [options]\n"
            "relaynat: name a subcommand: list, keygen, fingerprint, trust, passwd, secret,"
            " check, connect\n",
        )

    def test_version(self) -> None:
        """C{--version}, alone or after any subcommand, prints relaynat's version."""
        for argv in (["--version"], ["secret", "--version"], ["connect", "--version"]):
            self.assertEqual(runMain(self, *argv), (0, f"relaynat {__version__}\n", ""), argv)


#: The relay's identity for the C{trust} tests: a key pair is not free.
RELAY_KEYS = generate(["127.0.0.1", "relay.example"])


async def servePublication(case: TestCase) -> tuple[RelayIdentity, str, str]:
    """
    The relay's web endpoint (its real resource) on 127.0.0.1 until the end
    of C{case}: the relay's identity, the endpoint's URL, and a folder of
    the test's own.
    """
    directory = case.mktemp()
    identity = identityIn(directory, RELAY_KEYS)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(Site(publicationResource(identity)))
    case.addCleanup(port.stopListening)
    return identity, f"http://127.0.0.1:{port.getHost().port}/", directory  # type: ignore[attr-defined]

#: What C{trust} asks on a terminal.
QUESTION = "Trust this relay? [y/N] "

NO_TERMINAL = (
    "relaynat trust: nothing was saved: with no terminal to ask on, give --expect"
    " sha256:FINGERPRINT, the fingerprint obtained from the relay's operator"
    " (who prints it with 'relaynat fingerprint relay.pem' on the relay's host)\n"
)


class Typist(ProcessProtocol):
    """
    A process run on a terminal: everything it writes is kept, and
    C{answer} is typed once C{QUESTION} has been written.
    """

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.output = b""
        self.answered = False
        #: The process's output (line ends as written) and exit status.
        self.ended: Deferred[tuple[str, int]] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        if not self.answered and QUESTION.encode("ascii") in self.output:
            self.answered = True
            self.transport.write(self.answer)  # type: ignore[union-attr]

    def processEnded(self, reason: Failure) -> None:
        # A terminal ends lines with CR LF.
        text = self.output.replace(b"\r\n", b"\n").decode("utf-8", "replace")
        self.ended.callback((text, reason.value.exitCode))


class TrustCommandTests(TestCase):
    """
    C{relaynat trust} as a real process against the relay's web endpoint
    (its real resource, served in this process): without C{--expect} it
    asks at a terminal, and refuses to guess without one.
    """

    def setUp(self) -> None:
        if not os.path.exists(SCRIPT):
            raise self.skipTest(f"the relaynat script is not installed at {SCRIPT}")

    async def serve(self) -> tuple[RelayIdentity, str]:
        """The relay's web endpoint on 127.0.0.1; its identity and URL."""
        identity, url, _ = await servePublication(self)
        return identity, url

    async def runScript(self, *args: str) -> tuple[str, str, int]:
        """Run C{relaynat} with no terminal: its input is a pipe."""
        out, err, code = await getProcessOutputAndValue(
            SCRIPT, args, env=dict(os.environ), reactor=reactor
        )
        return out.decode(), err.decode(), code

    async def runOnTerminal(self, answer: bytes, *args: str) -> tuple[str, int]:
        """
        Run C{relaynat} on a pseudo-terminal (the C{pty} module's, which
        Twisted opens for C{usePTY}), typing C{answer} when asked.
        """
        typist = Typist(answer)
        reactor.spawnProcess(  # type: ignore[attr-defined]
            typist, SCRIPT, [SCRIPT, *args], env=dict(os.environ), usePTY=True
        )
        return await typist.ended

    def contents(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    @runAsync
    async def test_noTerminal(self) -> None:
        """
        Without C{--expect} and with no terminal to ask on, nothing is
        saved and one line says to give C{--expect}; the fingerprint seen,
        which proves nothing, is not shown.
        """
        identity, url = await self.serve()
        path = self.mktemp()
        out, err, code = await self.runScript("trust", url, "--out", path)
        self.assertEqual((code, out, err), (1, "", NO_TERMINAL))
        self.assertNotIn(identity.fingerprint, err)
        self.assertFalse(os.path.lexists(path))

    @runAsync
    async def test_terminalYes(self) -> None:
        """
        On a terminal, the fingerprint is shown and the question asked; the
        answer y saves the certificate.
        """
        identity, url = await self.serve()
        path = self.mktemp()
        output, code = await self.runOnTerminal(b"y\n", "trust", url, "--out", path)
        self.assertEqual(code, 0, output)
        self.assertEqual(
            output,
            f"fingerprint: {identity.fingerprint}\n"
            "Compare it with the fingerprint the relay's operator gave you.\n"
            f"{QUESTION}y\n"
            f"saved the certificate to {path}\n",
        )
        self.assertEqual(self.contents(path), RELAY_KEYS[1])

    @runAsync
    async def test_terminalNo(self) -> None:
        """On a terminal, the answer n saves nothing and says so; the status is 1."""
        identity, url = await self.serve()
        path = self.mktemp()
        output, code = await self.runOnTerminal(b"n\n", "trust", url, "--out", path)
        self.assertEqual(code, 1, output)
        self.assertTrue(
            output.endswith(
                f"{QUESTION}n\nrelaynat trust: the relay was not trusted; nothing was saved\n"
            ),
            output,
        )
        self.assertIn(f"fingerprint: {identity.fingerprint}\n", output)
        self.assertFalse(os.path.lexists(path))

    @runAsync
    async def test_existingOut(self) -> None:
        """
        C{--out} naming an existing file (here standing for the relay's own
        certificate) is refused, even with the right C{--expect}, and the
        file left as it was; C{--force} replaces it.
        """
        identity, url = await self.serve()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"the relay's own certificate and its chain")
        expect = ["--expect", identity.fingerprint]
        out, err, code = await self.runScript("trust", url, "--out", path, *expect)
        self.assertEqual(
            (code, out, err),
            (
                1,
                "",
                f"relaynat trust: {path} already exists (is it the relay's own certificate?);"
                " nothing was saved: give another --out, or --force to replace it\n",
            ),
        )
        self.assertEqual(self.contents(path), b"the relay's own certificate and its chain")
        out, err, code = await self.runScript("trust", url, "--out", path, *expect, "--force")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.contents(path), RELAY_KEYS[1])


class TrustAnswerTests(TestCase):
    """
    The answers C{trust} accepts, typed into a pipe that stands for the
    terminal, with the command's own function run in this process.
    """

    async def answer(self, typed: bytes, close: bool = False) -> tuple[int, str, bool]:
        """Run C{trust} with C{typed} as the answer; status, stderr, whether it saved."""
        identity, url, directory = await servePublication(self)
        path = os.path.join(directory, "trusted.pem")
        options = parse(["trust", url, "--out", path]).options
        readEnd, writeEnd = os.pipe()
        terminal = os.fdopen(readEnd)
        self.addCleanup(terminal.close)
        os.write(writeEnd, typed)
        if close:
            os.close(writeEnd)
        else:
            self.addCleanup(os.close, writeEnd)
        out, err = StringIO(), StringIO()
        code = await runTrust(reactor, options, out, err, terminal)
        self.assertTrue(out.getvalue().startswith(f"fingerprint: {identity.fingerprint}\n"))
        return code, err.getvalue(), os.path.exists(path)

    @runAsync
    async def test_yes(self) -> None:
        """y or yes, in any case and with spaces around, saves."""
        for typed in [b"y\n", b"Y\n", b"yes\n", b" YES \n", b"Yes\r\n"]:
            self.assertEqual(await self.answer(typed), (0, "", True), typed)

    @runAsync
    async def test_anythingElse(self) -> None:
        """Any other line, an empty one included, saves nothing."""
        refused = "relaynat trust: the relay was not trusted; nothing was saved\n"
        for typed in [b"\n", b"n\n", b"no\n", b"yess\n", b"ja\n", b"y es\n"]:
            self.assertEqual(await self.answer(typed), (1, refused, False), typed)

    @runAsync
    async def test_endOfInput(self) -> None:
        """The end of input (Ctrl-D) with no line saves nothing."""
        refused = "relaynat trust: the relay was not trusted; nothing was saved\n"
        self.assertEqual(await self.answer(b"", close=True), (1, refused, False))

    @runAsync
    async def test_noTerminal(self) -> None:
        """With no terminal given, C{runTrust} refuses as the command does."""
        _, url, directory = await servePublication(self)
        path = os.path.join(directory, "trusted.pem")
        options = parse(["trust", url, "--out", path]).options
        out, err = StringIO(), StringIO()
        self.assertEqual(await runTrust(reactor, options, out, err), 1)
        self.assertEqual((out.getvalue(), err.getvalue()), ("", NO_TERMINAL))
        self.assertFalse(os.path.exists(path))


class SavePublicTests(SynchronousTestCase):
    """L{savePublic}, which writes what C{trust} saves."""

    def test_neverOverwrites(self) -> None:
        """
        Without C{replace}, a file that exists when saving (made after
        C{trust} looked) is refused and left alone.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"mine")
        error = self.assertRaises(CommandFailed, savePublic, path, b"theirs", False)
        self.assertIn("already exists", str(error))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"mine")

    def test_newFileReadableByAll(self) -> None:
        """A new file is readable by all, whatever the umask: a certificate is public."""
        previous = os.umask(0o077)
        self.addCleanup(os.umask, previous)
        path = self.mktemp()
        savePublic(path, b"public", False)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)


class CheckTests(TestCase):
    """C{relaynat check}: a role's file and the files it names, every problem said."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        key, cert = RELAY_KEYS
        writePrivate(self.path(KEY_FILE), key)
        writePrivate(self.path(CERT_FILE), cert)
        saveUsers(self.path("users"), {"alice": User.create("alice", "pw", Rights())})
        writePrivate(self.path("password"), b"pw\n")
        generateSecret(self.path("web.secret"))
        generateSecret(self.path("db.secret"))

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write(self, name: str, text: str) -> str:
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def relay(self, extra: str = "") -> str:
        return self.write(
            "relay.toml",
            '[relay]\nclients = "tcp:0"\nskeletons = "tcp:0"\nkey = "relay.key"\n'
            f'cert = "relay.pem"\nusers = "users"\n{extra}',
        )

    def skeleton(self) -> str:
        return self.write(
            "skeleton.toml",
            f'[skeleton]\nrelay = "tcp:relay.example:7001"\nrelay_key = "{FINGERPRINT}"\n'
            'user = "alice"\npassword_file = "password"\n'
            '[[server]]\nid = "web"\ntarget = "tcp:127.0.0.1:80"\nsecret_file = "web.secret"\n'
            '[[server]]\nid = "db"\ntarget = "tcp:127.0.0.1:5432"\nsecret_file = "db.secret"\n',
        )

    def client(self, listen: str = "tcp:8080:interface=127.0.0.1") -> str:
        return self.write(
            "client.toml",
            '[client]\nrelay = "tcp:relay.example:7000"\nrelay_key = "relay.pem"\n'
            'user = "alice"\npassword_file = "password"\n'
            f'[[tunnel]]\nserver = "web"\nlisten = "{listen}"\nsecret_file = "web.secret"\n',
        )

    async def check(self, *argv: str) -> tuple[int, str, str]:
        options = parse(["check", *argv]).options
        assert isinstance(options, CheckOptions)
        out, err = StringIO(), StringIO()
        code = await checkCommand(reactor, options, out, err)
        return code, out.getvalue(), err.getvalue()

    @runAsync
    async def test_eachRoleOk(self) -> None:
        """A good file of each role, told apart by its table, is ok: status 0."""
        for path in (self.relay(), self.skeleton(), self.client()):
            self.assertEqual(await self.check("--config", path), (0, f"{path}: ok\n", ""))

    @runAsync
    async def test_structure(self) -> None:
        """A syntax error, an unknown key or a bad endpoint is said as the roles say it."""
        path = self.write("relay.toml", "[relay\n")
        code, out, err = await self.check("--config", path)
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith(f"{path}: (syntax): "), err)
        self.assertEqual(err.count("\n"), 1)
        path = self.relay('colour = "blue"\n')
        self.assertEqual(
            await self.check("--config", path), (1, "", f"{path}: relay.colour: unknown key\n")
        )
        path = self.relay('web = "nonsense:1"\n')
        code, out, err = await self.check("--config", path)
        self.assertTrue(err.startswith(f"{path}: relay.web: not a valid listening endpoint"), err)

    @runAsync
    async def test_whichRole(self) -> None:
        """A file with no role's table, or with two, is refused, naming the tables."""
        path = self.write("none.toml", 'x = 1\n')
        code, out, err = await self.check("--config", path)
        self.assertEqual(
            (code, err),
            (1, f"{path}: (file): a role's file has one of [relay], [skeleton], [client]; this one has none\n"),
        )
        path = self.write("two.toml", '[relay]\n[client]\n')
        code, out, err = await self.check("--config", path)
        self.assertIn("this one has [relay] and [client]", err)

    @runAsync
    async def test_missingFile(self) -> None:
        """A config file that cannot be read is one problem."""
        path = self.path("absent.toml")
        self.assertEqual(
            await self.check("--config", path),
            (1, "", f"{path}: (file): No such file or directory\n"),
        )

    @runAsync
    async def test_relayFiles(self) -> None:
        """
        A key that is not the certificate's and a users file others can read
        are both said, each on its line.
        """
        other, _ = generate(["other.example"])
        writePrivate(self.path(KEY_FILE), other)
        os.chmod(self.path("users"), 0o644)
        code, out, err = await self.check("--config", self.relay())
        self.assertEqual(code, 1)
        self.assertEqual(
            err.splitlines(),
            [
                f"{self.path('relay.toml')}: relay.key: {self.path(KEY_FILE)} and {self.path(CERT_FILE)}"
                " do not belong together",
                f"{self.path('relay.toml')}: relay.users: {self.path('users')}: readable by everyone"
                f" (mode 0644); run chmod 640 {self.path('users')}",
            ],
        )

    @runAsync
    async def test_usersFileParses(self) -> None:
        """A users file that does not parse is a problem of its own."""
        writePrivate(self.path("users"), b"alice not-a-verifier\n")
        code, out, err = await self.check("--config", self.relay())
        self.assertEqual(code, 1)
        self.assertTrue(
            err.startswith(
                f"{self.path('relay.toml')}: relay.users: {self.path('users')}, line 1: not a SCRAM-SHA-256"
            ),
            err,
        )
        self.assertEqual(err.count("\n"), 1)

    @runAsync
    async def test_skeletonFiles(self) -> None:
        """
        A missing password file, a secret file writable by its group and a
        secret too short are three problems, all said.
        """
        os.unlink(self.path("password"))
        os.chmod(self.path("web.secret"), 0o660)
        writePrivate(self.path("db.secret"), b"!!\n")
        code, out, err = await self.check("--config", self.skeleton())
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err.splitlines(),
            [
                f"{self.path('skeleton.toml')}: skeleton.password_file: {self.path('password')}:"
                " No such file or directory",
                f"{self.path('skeleton.toml')}: server[0].secret_file: {self.path('web.secret')}: writable"
                f" by its group (mode 0660); run chmod 640 {self.path('web.secret')}",
                f"{self.path('skeleton.toml')}: server[1].secret_file: {self.path('db.secret')}: the secret"
                " is too short (make one with 'relaynat secret')",
            ],
        )

    @runAsync
    async def test_clientRelayCertificate(self) -> None:
        """A client's relay_key file that is missing is said."""
        os.unlink(self.path(CERT_FILE))
        code, out, err = await self.check("--config", self.client())
        self.assertEqual(code, 1)
        self.assertIn(self.path(CERT_FILE), err)
        self.assertEqual(err.count("\n"), 1)

    @runAsync
    async def test_bind(self) -> None:
        """
        With C{--bind}, a listening port already taken is a problem; without
        it the endpoint is only parsed.
        """
        taken = await listen(Factory.forProtocol(Echo))
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port  # type: ignore[attr-defined]
        path = self.client(f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual((await self.check("--config", path))[0], 0)
        code, out, err = await self.check("--config", path, "--bind")
        self.assertEqual(code, 1)
        self.assertTrue(
            err.startswith(f"{path}: tunnel[0].listen: cannot listen on tcp:{port}:interface=127.0.0.1"),
            err,
        )
        await taken.stopListening()  # type: ignore[misc]
        self.assertEqual(await self.check("--config", path, "--bind"), (0, f"{path}: ok\n", ""))

    def test_noConfig(self) -> None:
        """Without C{--config}, C{check} is a usage error: status 2."""
        code, out, err = runMain(self, "check")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(
            err,
            "usage: relaynat check --config FILE [--bind]\n"
            "relaynat check: give --config FILE: the configuration file to check\n",
        )
