"""
The C{relaynat} commands that look after the relay's identity, its users
and the per-server secrets:

  relaynat keygen DIR --name NAME [--name NAME]... [--force]
  relaynat fingerprint FILE
  relaynat trust URL --out FILE [--expect FINGERPRINT] [--force] [--timeout SECONDS]
  relaynat passwd FILE USER [--register IDS] [--join IDS]
                            [--password-file F | --keep-password]
  relaynat passwd FILE USER --delete
  relaynat secret FILE [--force]

Each command is an C{Options} class that checks the command line (a
L{usage.UsageError} for anything wrong there) and a function that does the
work and raises one of L{FAILURES} when it cannot; L{relaynat.cli} turns
those into exit statuses 2 and 1.
"""

from __future__ import annotations

import getopt
import hmac
import ipaddress
import math
import os
import re
import sys
import tempfile
import termios
from collections.abc import Callable
from getpass import getpass
from typing import IO, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import attrs
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from relaynat import __version__
from relaynat.identity import (
    CERT_FILE,
    KEY_FILE,
    IdentityError,
    checkFingerprint,
    fingerprint,
    fingerprintOfFile,
    generate,
    loadCertificate,
    writePrivate,
)
from relaynat.private import PrivateFileError, readPrivate
from relaynat.secret import SecretFileError, generateSecret
from relaynat.tap.options import number
from relaynat.users import (
    Rights,
    User,
    UsersFileError,
    checkUserName,
    formatRights,
    loadUsers,
    parseIds,
    saveUsers,
)
from relaynat.web import CERTIFICATE_PATH

#: The most C{trust} reads: a certificate is a few hundred bytes.
MAX_DOWNLOAD = 64 * 1024


class ToolError(Exception):
    """A command could not do its work; the message says why and what to do."""


#: What the commands raise for a failure the user can act on (exit status 1).
FAILURES = (ToolError, IdentityError, UsersFileError, SecretFileError)


class ToolOptions(usage.Options):
    """
    Options that may come after the arguments too, as in C{relaynat keygen
    DIR --name NAME}: stock L{usage.Options} stops at the first argument.
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        argv = sys.argv[1:] if options is None else options
        if len(argv) > 1 and argv[-2] == "--_shell-completion":
            # The stock parser answers shell completion itself.
            return super().parseOptions(argv)
        try:
            pairs, args = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from e
        # Put the options first, each value after its option and the
        # arguments after "--", for the stock parser to read as it always has.
        taking = {"--" + name[:-1] for name in self.longOpt if name.endswith("=")}
        taking |= {
            "-" + letter
            for letter in self.shortOpt.replace(":", "")
            if f"{letter}:" in self.shortOpt
        }
        ordered: list[str] = []
        for name, value in pairs:
            ordered += [name, value] if name in taking else [name]
        super().parseOptions([*ordered, "--", *args])

    def opt_version(self) -> None:
        """Print relaynat's version and exit."""
        print(f"relaynat {__version__}")
        raise SystemExit(0)


def _arguments(args: tuple[str, ...], *names: str) -> tuple[str, ...]:
    if len(args) != len(names):
        raise usage.UsageError(f"expected {' '.join(names)}, got {len(args)} argument(s)")
    return args


def _describe(error: OSError) -> str:
    return f"{error.filename}: {error.strerror}" if error.filename else str(error)


# keygen and fingerprint

_LABEL = re.compile(r"\A(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def checkName(name: str) -> str:
    """Return C{name} if it is an IP address or an ASCII host name."""
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise usage.UsageError(
            f"--name {name!r}: not a host name or IP address"
            " (give a non-ASCII name in its xn-- form)"
        )
    return name


class KeygenOptions(ToolOptions):
    synopsis = "DIR --name NAME [--name NAME]... [--force]"
    longdesc = (
        f"Create the relay's private key (DIR/{KEY_FILE}) and a self-signed certificate"
        f" (DIR/{CERT_FILE}) for the names clients and skeletons reach it by, both"
        " readable by their owner only, and print the key's fingerprint."
    )
    optFlags = [["force", None, "replace an existing key and certificate"]]

    def __init__(self) -> None:
        super().__init__()
        self["names"] = []

    def opt_name(self, name: str) -> None:
        """a host name or IP address of the relay (repeat for several)"""
        self["names"].append(checkName(name))

    def parseArgs(self, *args: str) -> None:
        (self["directory"],) = _arguments(args, "DIR")

    def postOptions(self) -> None:
        if not self["names"]:
            raise usage.UsageError(
                "give at least one --name: a host name or IP address of the relay"
            )


def keygen(options: KeygenOptions, out: TextIO, err: TextIO) -> None:
    directory = options["directory"]
    keyPath = os.path.join(directory, KEY_FILE)
    certPath = os.path.join(directory, CERT_FILE)
    if not options["force"]:
        existing = [path for path in (keyPath, certPath) if os.path.lexists(path)]
        if existing:
            raise ToolError(
                f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''};"
                " use --force to replace the relay's key (every user must then trust it again)"
            )
    keyPem, certPem = generate(options["names"])
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        writePrivate(keyPath, keyPem)
        writePrivate(certPath, certPem)
    except OSError as e:
        raise ToolError(f"cannot write the key and certificate: {_describe(e)}") from e
    out.write(
        f"private key: {keyPath}\n"
        f"certificate: {certPath}\n"
        f"fingerprint: {fingerprint(loadCertificate(certPem, certPath))}\n"
    )


class FingerprintOptions(ToolOptions):
    synopsis = "FILE"
    longdesc = (
        "Print the fingerprint (SHA-256 of the public key) of the relay's"
        " certificate or private key FILE."
    )

    def parseArgs(self, *args: str) -> None:
        (self["file"],) = _arguments(args, "FILE")


def printFingerprint(options: FingerprintOptions, out: TextIO, err: TextIO) -> None:
    out.write(fingerprintOfFile(options["file"]) + "\n")


# trust


class TrustOptions(ToolOptions):
    synopsis = "URL --out FILE [--expect FINGERPRINT] [--force] [--timeout SECONDS]"
    longdesc = (
        "Download the relay's certificate from its web endpoint (a URL with no"
        f" path means {CERTIFICATE_PATH}) and save it to FILE if its fingerprint is"
        " the one the relay's operator gave you: the one given with --expect, or,"
        " without it, the one you confirm at the terminal when asked (with no"
        " terminal, --expect is needed). An existing FILE is replaced only with --force."
    )
    optFlags = [["force", None, "replace FILE if it exists"]]
    optParameters = [
        ["out", "o", None, "where to save the certificate"],
        ["expect", None, None, "the fingerprint the relay's operator gave you (sha256:...)"],
        ["timeout", None, 30.0, "seconds to wait for the relay", number("timeout", float)],
    ]

    def parseArgs(self, *args: str) -> None:
        (url,) = _arguments(args, "URL")
        parts = urlsplit(url)
        try:
            # urlsplit checks the port only when asked for it.
            _ = parts.port
        except ValueError:
            raise usage.UsageError(f"{url!r}: the port is not a number from 0 to 65535") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise usage.UsageError(
                f"not an http:// URL: {url!r} (the relay's web endpoint,"
                " like http://relay.example:7080)"
            )
        if parts.path in ("", "/"):
            parts = parts._replace(path=CERTIFICATE_PATH)
        self["url"] = urlunsplit(parts)
        if not self["url"].isascii():
            raise usage.UsageError(f"{url!r}: give a non-ASCII host name in its xn-- form")

    def postOptions(self) -> None:
        if self["out"] is None:
            raise usage.UsageError("give --out FILE: where to save the certificate")
        if self["expect"] is not None:
            try:
                self["expect"] = checkFingerprint(self["expect"])
            except IdentityError as e:
                raise usage.UsageError(f"--expect: {e}") from e
        if not (math.isfinite(self["timeout"]) and self["timeout"] > 0):
            raise usage.UsageError("--timeout must be a positive number of seconds")


async def trust(
    reactor: Any,
    options: TrustOptions,
    out: TextIO,
    err: TextIO,
    terminal: IO[str] | None = None,
) -> None:
    """
    Download, check and save the relay's certificate.  Only the certificate
    that was fingerprinted is saved, re-encoded, whatever else came with it.

    The answer came over plain HTTP, so anyone on the way could have sent
    it: it is saved only if its fingerprint is the one C{--expect} gave or
    the one the user, asked at C{terminal}, accepts.  Without either nothing
    is saved.
    """
    url, path, expected = options["url"], options["out"], options["expect"]
    replace = options["force"]
    if not replace and os.path.lexists(path):
        # Checked before the download to fail at once; saving checks again.
        raise _exists(path)
    body = await download(reactor, url, options["timeout"])
    certificate = loadCertificate(body, url)
    seen = fingerprint(certificate)
    if expected is not None:
        if not hmac.compare_digest(seen, expected):
            raise ToolError(
                f"{url} serves a certificate with fingerprint {seen}, but --expect"
                f" gave {expected}; nothing was saved. Ask the relay's operator:"
                " either the key changed or someone is intercepting."
            )
        out.write(f"fingerprint: {seen}\n")
    elif terminal is None:
        # The fingerprint seen is not shown: one copied from here into
        # --expect would prove nothing.
        raise ToolError(
            "nothing was saved: with no terminal to ask on, give --expect"
            " sha256:FINGERPRINT, the fingerprint obtained from the relay's operator"
            " (who prints it with 'relaynat fingerprint relay.pem' on the relay's host)"
        )
    else:
        answer = await ask(
            reactor,
            terminal,
            out,
            f"fingerprint: {seen}\n"
            "Compare it with the fingerprint the relay's operator gave you.\n"
            "Trust this relay? [y/N] ",
        )
        if answer.strip().lower() not in ("y", "yes"):
            raise ToolError("the relay was not trusted; nothing was saved")
    savePublic(path, certificate.public_bytes(serialization.Encoding.PEM), replace)
    out.write(f"saved the certificate to {path}\n")


def _exists(path: str) -> ToolError:
    return ToolError(
        f"{path} already exists (is it the relay's own certificate?); nothing was"
        " saved: give another --out, or --force to replace it"
    )


def ask(reactor: IReactorFDSet, terminal: IO[str], out: TextIO, question: str) -> Deferred[str]:
    """
    Write C{question} to C{out} and read the line typed in answer at
    C{terminal}, when the reactor sees it come: a blocking read would keep
    the reactor from handling Ctrl-C.  What was typed before the question
    is dropped, so that a key pressed too early does not answer it.
    """
    fd = terminal.fileno()
    try:
        termios.tcflush(fd, termios.TCIFLUSH)
    except termios.error:
        # Not a terminal after all (a pipe in a test): nothing to drop.
        pass
    out.write(question)
    out.flush()
    reader = _LineReader(reactor, fd)
    reactor.addReader(reader)

    def endLine(result: object) -> object:
        # Ctrl-C and Ctrl-D echo no line end; what follows needs its own line.
        if not reader.complete:
            out.write("\n")
        return result

    return reader.line.addBoth(endLine)


@implementer(IReadDescriptor)
class _LineReader:
    """Reads one line (or up to the end of input) from a descriptor."""

    def __init__(self, reactor: IReactorFDSet, fd: int) -> None:
        self.reactor, self.fd = reactor, fd
        self.parts: list[bytes] = []
        #: Whether the line ended with a line end, as typed lines do.
        self.complete = False
        self.line: Deferred[str] = Deferred(lambda d: self.reactor.removeReader(self))

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "terminal"

    def doRead(self) -> None:
        try:
            # The reactor saw it readable: this read returns at once.
            data = os.read(self.fd, 1024)
        except OSError:
            # A terminal that hung up (EIO) has nothing more to say.
            data = b""
        self.parts.append(data)
        self.complete = b"\n" in data
        if not data or self.complete:
            self.reactor.removeReader(self)
            text = b"".join(self.parts).split(b"\n", 1)[0]
            self.line.callback(text.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure) -> None:
        if self.line.called:
            return
        if reason.check(ConnectionDone):
            # Hung up, or the end of a pipe's input: no answer is a no.
            self.line.callback(b"".join(self.parts).decode("utf-8", "replace"))
        else:
            # The reactor is stopping (Ctrl-C) before a line came.
            self.line.errback(ToolError("interrupted; nothing was saved"))


async def download(reactor: Any, url: str, timeout: float) -> bytes:
    """The body of a successful GET of C{url}, in at most C{timeout} seconds."""
    try:
        return await _fetch(reactor, url, timeout)
    except ToolError:
        raise
    except TooLarge:
        raise ToolError(
            f"cannot download {url}: the answer is larger than {MAX_DOWNLOAD} bytes,"
            " too large for a certificate"
        ) from None
    except ResponseFailed as e:
        reasons = "; ".join(reason.getErrorMessage() for reason in e.reasons)
        raise ToolError(f"cannot download {url}: {reasons}") from None
    except Exception as e:
        # The network's failures come in many types (refused, no such host,
        # TLS, a malformed answer); each says what went wrong in its text.
        raise ToolError(f"cannot download {url}: {e}") from None


async def _fetch(reactor: Any, url: str, timeout: float) -> bytes:
    # One deadline for everything (name lookup, connecting, the answer),
    # kept here: a cancelled Agent fails with errors of several types.
    agent = Agent(reactor)
    expired = False

    async def get() -> bytes:
        response = await agent.request(
            b"GET",
            url.encode("ascii"),
            Headers({b"user-agent": [f"relaynat/{__version__}".encode()]}),
        )
        body = await readLimited(response, MAX_DOWNLOAD)
        if response.code != 200:
            phrase = response.phrase.decode("ascii", "replace")
            raise ToolError(f"cannot download {url}: the server answered {response.code} {phrase}")
        return body

    def expire() -> None:
        nonlocal expired
        expired = True
        d.cancel()

    d = ensureDeferred(get())
    deadline = reactor.callLater(timeout, expire)
    try:
        return await d
    except Exception:
        if expired:
            raise ToolError(
                f"cannot download {url}: no answer within {timeout:g} seconds"
            ) from None
        raise
    finally:
        if deadline.active():
            deadline.cancel()


class TooLarge(Exception):
    """A body was longer than the reader's limit."""


def readLimited(response: IResponse, limit: int) -> Deferred[bytes]:
    """
    The body of C{response}; L{TooLarge} past C{limit} bytes, at which point
    the connection is dropped rather than read to its end.
    """
    finished: Deferred[bytes] = Deferred(lambda d: protocol.stop())
    protocol = _LimitedBody(limit, finished)
    response.deliverBody(protocol)
    return finished


class _LimitedBody(Protocol):
    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self.limit, self.finished = limit, finished
        self.parts: list[bytes] = []
        self.size = 0

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.stop()
        else:
            self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            # Cancelled: the timeout already said what happened.
            return
        if self.size > self.limit:
            self.finished.errback(TooLarge())
        elif reason.check(ResponseDone, PotentialDataLoss):
            # PotentialDataLoss: an answer with no length, ended by closing.
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def savePublic(path: str, data: bytes, replace: bool = True) -> None:
    """
    Write C{data} to C{path}, readable by all: it is public.  With
    C{replace}, an existing file is replaced at once, so that a reader sees
    the old or the new one; without it an existing file is never touched.
    """
    if not replace:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise _exists(path) from None
        except OSError as e:
            raise ToolError(f"cannot save {path}: {e.strerror}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(fd, 0o644)
                f.write(data)
        except OSError as e:
            os.unlink(path)
            raise ToolError(f"cannot save {path}: {e.strerror}") from e
        return
    try:
        fd, temporary = tempfile.mkstemp(
            dir=os.path.dirname(os.path.abspath(path)), prefix=".relaynat-"
        )
    except OSError as e:
        raise ToolError(f"cannot save {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as e:
        os.unlink(temporary)
        raise ToolError(f"cannot save {path}: {e.strerror}") from e


# passwd


class PasswdOptions(ToolOptions):
    synopsis = (
        "FILE USER [--register IDS] [--join IDS] [--password-file F | --keep-password]"
        " | FILE USER --delete"
    )
    longdesc = (
        "Add a user to the relay's users file FILE (created if missing) or change"
        " one: the password is asked twice, or read from the first line of F."
        " IDS is a comma-separated list of server ids, or * for any; an existing"
        " user keeps the rights not given."
    )
    optFlags = [
        ["delete", None, "remove the user"],
        ["keep-password", None, "change an existing user's rights only"],
    ]
    optParameters = [
        ["register", None, None, "server ids the user's skeletons may register (IDS)"],
        ["join", None, None, "server ids the user may list and join (IDS)"],
        ["password-file", None, None, "read the password from the first line of this file"],
    ]

    def parseArgs(self, *args: str) -> None:
        self["file"], self["user"] = _arguments(args, "FILE", "USER")

    def postOptions(self) -> None:
        try:
            checkUserName(self["user"])
            #: The rights given on the command line, by name.
            self.rights = {
                key: parseIds(self[key], f"--{key}")
                for key in ("register", "join")
                if self[key] is not None
            }
        except UsersFileError as e:
            raise usage.UsageError(str(e)) from e
        given = [
            f"--{flag}"
            for flag in ("register", "join", "password-file", "keep-password")
            if self[flag]
        ]
        if self["delete"] and given:
            raise usage.UsageError(f"--delete cannot go with {', '.join(given)}")
        if self["keep-password"] and self["password-file"]:
            raise usage.UsageError("--keep-password cannot go with --password-file")


def passwd(options: PasswdOptions, out: TextIO, err: TextIO) -> None:
    path, name = options["file"], options["user"]
    users = loadUsers(path) if os.path.exists(path) else {}
    existing = users.get(name)
    if options["delete"]:
        if existing is None:
            raise ToolError(f"{path} has no user {name}")
        del users[name]
        _save(path, users)
        out.write(f"deleted user {name} from {path}\n")
        return
    if existing is None:
        rights = Rights(**options.rights)
    else:
        rights = attrs.evolve(existing.rights, **options.rights)
    if options["keep-password"]:
        if existing is None:
            raise ToolError(f"{path} has no user {name} yet; a new user needs a password")
        user = attrs.evolve(existing, rights=rights)
    else:
        user = User.create(name, readPassword(options), rights)
    users[name] = user
    _save(path, users)
    done = f"changed user {name} in" if existing else f"added user {name} to"
    out.write(f"{done} {path}: {' '.join(formatRights(rights)) or 'no rights'}\n")
    if rights.register == frozenset() and rights.join == frozenset():
        err.write(
            f"note: {name} may neither register nor join a server; give --register or --join\n"
        )


def readPassword(options: PasswdOptions) -> str:
    """
    The new password: from C{--password-file}, a private file like every
    password file (L{relaynat.private}), or asked twice.
    """
    source = options["password-file"]
    if source is not None:
        try:
            lines = readPrivate(source).decode("utf-8").splitlines()
        except PrivateFileError as e:
            raise ToolError(f"cannot read the password: {e}") from e
        except UnicodeDecodeError:
            raise ToolError(f"cannot read the password: {source} is not UTF-8 text") from None
        password = lines[0] if lines else ""
    else:
        try:
            password = getpass(f"New password for {options['user']}: ")
            again = getpass("The same password again: ")
        except EOFError:
            raise ToolError("no password was typed; use --password-file F to give one") from None
        if not hmac.compare_digest(password.encode(), again.encode()):
            raise ToolError("the two passwords differ; nothing was changed")
    if not password:
        raise ToolError("the password is empty; nothing was changed")
    return password


def _save(path: str, users: dict[str, User]) -> None:
    try:
        saveUsers(path, users)
    except OSError as e:
        raise ToolError(f"cannot save {path}: {e.strerror}") from e


# secret


class SecretOptions(ToolOptions):
    synopsis = "FILE [--force]"
    longdesc = (
        "Write a new random secret for one server to FILE, readable by its owner"
        " only, for that server's skeleton and the clients allowed to reach it."
    )
    optFlags = [["force", None, "replace an existing secret file"]]

    def parseArgs(self, *args: str) -> None:
        (self["file"],) = _arguments(args, "FILE")


def secret(options: SecretOptions, out: TextIO, err: TextIO) -> None:
    path = options["file"]
    if os.path.lexists(path) and not options["force"]:
        raise ToolError(
            f"{path} already exists; use --force to replace it (the skeleton and"
            " every client sharing the old secret then need the new one)"
        )
    try:
        generateSecret(path)
    except OSError as e:
        raise ToolError(f"cannot write {path}: {e.strerror}") from e
    out.write(
        f"wrote a new secret to {path}; copy it privately to the server's skeleton"
        " and to each client allowed to reach the server\n"
    )


#: The commands that need no reactor, by name.
LOCAL_COMMANDS: dict[str, Callable[[Any, TextIO, TextIO], None]] = {
    "keygen": keygen,
    "fingerprint": printFingerprint,
    "passwd": passwd,
    "secret": secret,
}
