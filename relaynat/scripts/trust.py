"""
C{relaynat trust URL --out FILE [--expect FINGERPRINT] [--force]
[--timeout SECONDS]}: download, check and save the relay's certificate.
"""

from __future__ import annotations

import hmac
import os
import sys
import tempfile
from argparse import ArgumentParser, Namespace
from typing import IO, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import attrs
from cryptography.hazmat.primitives import serialization

from relaynat.identity import (
    IdentityError,
    checkFingerprint,
    fingerprint,
    loadCertificate,
)
from relaynat.scripts.command import FAILURES, CommandFailed, Subcommand, UsageError, seconds
from relaynat.scripts.download import download
from relaynat.scripts.terminal import ask
from relaynat.web import CERTIFICATE_PATH


@attrs.frozen
class TrustOptions:
    """
    What C{relaynat trust} was told: the certificate's URL (its path filled
    in), where to save it, and the fingerprint expected, if given.
    """

    url: str
    out: str
    expect: str | None = None
    force: bool = False
    timeout: float = 30.0


def define(parser: ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="the relay's web endpoint, or its certificate's URL")
    parser.add_argument("-o", "--out", metavar="FILE", help="where to save the certificate")
    parser.add_argument(
        "--expect",
        metavar="FINGERPRINT",
        help="the fingerprint the relay's operator gave you (sha256:...)",
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        default="30",
        help="seconds to wait for the relay (default: %(default)s)",
    )


def read(args: Namespace) -> TrustOptions:
    url = certificateURL(args.url)
    if args.out is None:
        raise UsageError("give --out FILE: where to save the certificate")
    expect = args.expect
    if expect is not None:
        try:
            expect = checkFingerprint(expect)
        except IdentityError as e:
            raise UsageError(f"--expect: {e}") from e
    return TrustOptions(
        url=url,
        out=args.out,
        expect=expect,
        force=args.force,
        timeout=seconds("--timeout", args.timeout),
    )


def certificateURL(url: str) -> str:
    """C{url}, checked to be an http:// URL; with no path, the published certificate's."""
    parts = urlsplit(url)
    try:
        # urlsplit checks the port only when asked for it.
        _ = parts.port
    except ValueError:
        raise UsageError(f"{url!r}: the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"not an http:// URL: {url!r} (the relay's web endpoint,"
            " like http://relay.example:7080)"
        )
    if parts.path in ("", "/"):
        parts = parts._replace(path=CERTIFICATE_PATH)
    whole = urlunsplit(parts)
    if not whole.isascii():
        raise UsageError(f"{url!r}: give a non-ASCII host name in its xn-- form")
    return whole


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
    url, path, expected = options.url, options.out, options.expect
    replace = options.force
    if not replace and os.path.lexists(path):
        # Checked before the download to fail at once; saving checks again.
        raise _exists(path)
    body = await download(reactor, url, options.timeout)
    certificate = loadCertificate(body, url)
    seen = fingerprint(certificate)
    if expected is not None:
        if not hmac.compare_digest(seen, expected):
            raise CommandFailed(
                f"{url} serves a certificate with fingerprint {seen}, but --expect"
                f" gave {expected}; nothing was saved. Ask the relay's operator:"
                " either the key changed or someone is intercepting."
            )
        out.write(f"fingerprint: {seen}\n")
    elif terminal is None:
        # The fingerprint seen is not shown: one copied from here into
        # --expect would prove nothing.
        raise CommandFailed(
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
            raise CommandFailed("the relay was not trusted; nothing was saved")
    savePublic(path, certificate.public_bytes(serialization.Encoding.PEM), replace)
    out.write(f"saved the certificate to {path}\n")


def _exists(path: str) -> CommandFailed:
    return CommandFailed(
        f"{path} already exists (is it the relay's own certificate?); nothing was"
        " saved: give another --out, or --force to replace it"
    )


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
            raise CommandFailed(f"cannot save {path}: {e.strerror}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(fd, 0o644)
                f.write(data)
        except OSError as e:
            os.unlink(path)
            raise CommandFailed(f"cannot save {path}: {e.strerror}") from e
        return
    try:
        fd, temporary = tempfile.mkstemp(
            dir=os.path.dirname(os.path.abspath(path)), prefix=".relaynat-"
        )
    except OSError as e:
        raise CommandFailed(f"cannot save {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as e:
        os.unlink(temporary)
        raise CommandFailed(f"cannot save {path}: {e.strerror}") from e


async def runTrust(
    reactor: Any, options: TrustOptions, out: TextIO, err: TextIO, terminal: IO[str] | None = None
) -> int:
    """Run C{relaynat trust}, asking at C{terminal} if it is given; its exit status."""
    try:
        await trust(reactor, options, out, err, terminal)
    except FAILURES as e:
        err.write(f"relaynat trust: {e}\n")
        return 1
    return 0


async def trustCommand(reactor: Any, options: TrustOptions, out: TextIO, err: TextIO) -> int:
    """C{relaynat trust} as the command runs it: asking at stdin if it is a terminal."""
    terminal = sys.stdin if sys.stdin is not None and sys.stdin.isatty() else None
    return await runTrust(reactor, options, out, err, terminal)


SUBCOMMAND = Subcommand(
    name="trust",
    summary="download, check and save the relay's certificate",
    synopsis="URL --out FILE [--expect FINGERPRINT] [--force] [--timeout SECONDS]",
    description=(
        "Download the relay's certificate from its web endpoint (a URL with no"
        f" path means {CERTIFICATE_PATH}) and save it to FILE if its fingerprint is"
        " the one the relay's operator gave you: the one given with --expect, or,"
        " without it, the one you confirm at the terminal when asked (with no"
        " terminal, --expect is needed). An existing FILE is replaced only with --force."
    ),
    define=define,
    read=read,
    runInReactor=trustCommand,
)
