"""
Tests for L{relaynat.web}, the relay's published certificate and
fingerprint, and for C{relaynat trust}, which fetches them: a real web
server on 127.0.0.1 in this process, and the command's own function run
against it.
"""

from __future__ import annotations

import os
import stat
from io import StringIO

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from relaynat.cli import parse
from relaynat.identity import CERT_FILE, KEY_FILE, RelayIdentity, generate, writePrivate
from relaynat.scripts.command import CommandFailed, UsageError
from relaynat.scripts.download import MAX_DOWNLOAD
from relaynat.scripts.trust import TrustOptions, runTrust, trust
from relaynat.web import publicationResource

#: A relay identity for the whole module: a key pair is not free.
_KEYS = generate(["127.0.0.1", "relay.example"])


def identityIn(directory: str, keys: tuple[bytes, bytes] = _KEYS) -> RelayIdentity:
    os.makedirs(directory)
    keyPath, certPath = os.path.join(directory, KEY_FILE), os.path.join(directory, CERT_FILE)
    writePrivate(keyPath, keys[0])
    writePrivate(certPath, keys[1])
    return RelayIdentity.load(keyPath, certPath)


class Served(TestCase):
    """A test case with a web server on 127.0.0.1, stopped with the test."""

    async def serve(self, resource: Resource) -> str:
        """Serve C{resource}; the server's base URL."""
        site = Site(resource)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]

    async def servePublication(self) -> tuple[RelayIdentity, str]:
        identity = identityIn(self.mktemp())
        return identity, await self.serve(publicationResource(identity))


class PublicationTests(Served):
    """L{publicationResource} over real HTTP."""

    async def get(self, url: str) -> tuple[int, bytes, list[bytes]]:
        response = await Agent(reactor).request(b"GET", url.encode("ascii"))
        body = await readBody(response)
        return response.code, body, response.headers.getRawHeaders(b"content-type", [])

    async def test_certificate(self) -> None:
        """C{GET /relay.pem} answers the relay's certificate as a PEM file."""
        identity, base = await self.servePublication()
        code, body, types = await self.get(base + "/relay.pem")
        self.assertEqual((code, body, types), (200, _KEYS[1], [b"application/x-pem-file"]))
        self.assertEqual(body, identity.certificatePem)

    async def test_fingerprint(self) -> None:
        """C{GET /fingerprint} answers the fingerprint and a newline, as text."""
        identity, base = await self.servePublication()
        code, body, types = await self.get(base + "/fingerprint")
        self.assertEqual(code, 200)
        self.assertEqual(body, (identity.fingerprint + "\n").encode("ascii"))
        self.assertEqual(types, [b"text/plain; charset=us-ascii"])

    async def test_nothingElse(self) -> None:
        """
        Every other path is not found: other names, and paths below or
        beside the published ones.
        """
        identity, base = await self.servePublication()
        for path in [
            "/relay.key",
            "/relay.pem/",
            "/relay.pem/x",
            "/fingerprint/x",
            "/RELAY.PEM",
            "/../relay.key",
            "/index.html",
        ]:
            code, body, types = await self.get(base + path)
            self.assertEqual(code, 404, path)
            self.assertNotIn(b"PRIVATE", body)


class PublicationRootTests(Served):
    """The page at the root, the health check and the metrics."""

    async def get(self, url: str) -> tuple[int, bytes]:
        response = await Agent(reactor).request(b"GET", url.encode("ascii"))
        return response.code, await readBody(response)

    async def test_rootPage(self) -> None:
        """
        C{GET /} shows the fingerprint and the command that trusts this
        relay (with this page's own address), and nothing else of the relay.
        """
        identity, base = await self.servePublication()
        code, body = await self.get(base + "/")
        self.assertEqual(code, 200)
        page = body.decode("utf-8")
        self.assertIn(f"<pre>{identity.fingerprint}</pre>", page)
        self.assertIn(
            f"relaynat trust {base}/relay.pem --expect {identity.fingerprint} --out relay.pem",
            page,
        )
        self.assertNotIn("PRIVATE", page)

    async def test_healthz(self) -> None:
        _, base = await self.servePublication()
        self.assertEqual(await self.get(base + "/healthz"), (200, b"ok\n"))

    async def test_metricsOnlyToAllowedNetworks(self) -> None:
        """
        C{GET /metrics} answers the relay's metrics to the networks of
        C{metrics_allow}, and 403 to anyone else; without metrics there is
        no such page.
        """
        from prometheus_client import CollectorRegistry, Counter

        registry = CollectorRegistry()
        Counter("relaynat_test", "a test counter", registry=registry).inc()
        identity = identityIn(self.mktemp())
        base = await self.serve(publicationResource(identity, registry, ("127.0.0.1/32",)))
        code, body = await self.get(base + "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"relaynat_test_total 1.0", body)
        refusing = await self.serve(publicationResource(identity, registry, ("10.0.0.0/8",)))
        code, body = await self.get(refusing + "/metrics")
        self.assertEqual(code, 403)
        self.assertNotIn(b"relaynat_test", body)
        bare = await self.serve(publicationResource(identity))
        self.assertEqual((await self.get(bare + "/metrics"))[0], 404)


def trustOptions(*argv: str) -> TrustOptions:
    """The options of C{relaynat trust} with C{argv}, parsed as the command parses them."""
    options = parse(["trust", *argv]).options
    assert isinstance(options, TrustOptions)
    return options


class TrustOptionsTests(SynchronousTestCase):
    """C{relaynat trust}'s command line."""

    def parse(self, *argv: str) -> TrustOptions:
        return trustOptions(*argv)

    def test_options(self) -> None:
        """
        The URL, C{--out}, C{--expect} and C{--timeout} parse, options before
        or after the URL; the fingerprint is normalised to lower case.
        """
        fingerprint = "sha256:" + "AB" * 32
        options = self.parse(
            "http://relay.example:7080/relay.pem",
            "--out",
            "relay.pem",
            "--expect",
            fingerprint,
            "--timeout",
            "2.5",
        )
        self.assertEqual(options.url, "http://relay.example:7080/relay.pem")
        self.assertEqual(options.out, "relay.pem")
        self.assertEqual(options.expect, fingerprint.lower())
        self.assertEqual(options.timeout, 2.5)
        options = self.parse("-o", "f", "http://relay.example:7080/x.pem")
        self.assertEqual((options.url, options.out), ("http://relay.example:7080/x.pem", "f"))
        self.assertIsNone(options.expect)
        self.assertEqual(options.timeout, 30.0)

    def test_pathDefaults(self) -> None:
        """A URL without a path means the published certificate."""
        for url in ["http://relay.example:7080", "http://relay.example:7080/"]:
            options = self.parse(url, "--out", "f")
            self.assertEqual(options.url, "http://relay.example:7080/relay.pem")

    def test_errors(self) -> None:
        """Each bad command line is a usage error saying what is wrong."""
        for argv, message in [
            (["http://h/"], "give --out FILE: where to save the certificate"),
            ([], "the following arguments are required: URL"),
            (["http://h/", "http://i/", "--out", "f"], "unrecognized arguments: http://i/"),
            (["relay.example:7080", "--out", "f"], "not an http:// URL: 'relay.example:7080'"),
            (["ftp://h/", "--out", "f"], "not an http:// URL: 'ftp://h/'"),
            (["http:///x", "--out", "f"], "not an http:// URL: 'http:///x'"),
            (["http://h/", "--out", "f", "--expect", "sha256:abc"], "--expect: not a fingerprint"),
            (
                ["http://h/", "--out", "f", "--expect", "md5:" + "0" * 64],
                "--expect: not a fingerprint",
            ),
            (["http://h:x/", "--out", "f"], "'http://h:x/': the port is not a number"),
            (["http://h:70000/", "--out", "f"], "'http://h:70000/': the port is not a number"),
            (["http://h/", "--out", "f", "--timeout", "0"], "--timeout must be a positive"),
            (["http://h/", "--out", "f", "--timeout", "inf"], "--timeout must be a positive"),
            (["http://h/", "--out", "f", "--timeout", "soon"], "--timeout must be a number"),
            (["http://h\u00e9/", "--out", "f"], "'http://h\u00e9/': give a non-ASCII host name"),
        ]:
            error = self.assertRaises(UsageError, self.parse, *argv)
            self.assertIn(message, str(error), argv)


class TrustTests(Served):
    """C{relaynat trust} run for real against a published certificate."""

    def options(self, *argv: str) -> TrustOptions:
        return trustOptions(*argv)

    async def trust(self, *argv: str) -> tuple[int, str, str]:
        """Run the command as C{main} would; its exit status and output."""
        out, err = StringIO(), StringIO()
        code = await runTrust(reactor, self.options(*argv), out, err)
        return code, out.getvalue(), err.getvalue()

    async def test_saves(self) -> None:
        """
        The certificate is saved as published, readable by all (it is
        public), and its fingerprint printed.  (Without C{--expect}, which
        asks at a terminal, see L{relaynat.test.test_cli}.)
        """
        identity, base = await self.servePublication()
        path = self.mktemp()
        code, out, err = await self.trust(
            base + "/relay.pem", "--out", path, "--expect", identity.fingerprint
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out, f"fingerprint: {identity.fingerprint}\nsaved the certificate to {path}\n"
        )
        with open(path, "rb") as f:
            self.assertEqual(f.read(), identity.certificatePem)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)

    async def test_baseURL(self) -> None:
        """Given only the web endpoint's address, C{trust} finds the certificate."""
        identity, base = await self.servePublication()
        path = self.mktemp()
        code, out, err = await self.trust(base, "--out", path, "--expect", identity.fingerprint)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"fingerprint: {identity.fingerprint}\n", out)
        self.assertTrue(os.path.exists(path))

    async def test_replaces(self) -> None:
        """With C{--force}, an older certificate in the file is replaced (the way to re-trust)."""
        identity, base = await self.servePublication()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"an older certificate")
        code, out, err = await self.trust(
            base, "--out", path, "--force", "--expect", identity.fingerprint
        )
        self.assertEqual(code, 0)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), identity.certificatePem)

    async def test_expectMatches(self) -> None:
        """With the right C{--expect}, given in any case, the file is saved."""
        identity, base = await self.servePublication()
        path = self.mktemp()
        code, out, err = await self.trust(
            base,
            "--out",
            path,
            "--expect",
            identity.fingerprint.upper().replace("SHA256", "sha256"),
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out, f"fingerprint: {identity.fingerprint}\nsaved the certificate to {path}\n"
        )
        self.assertTrue(os.path.exists(path))

    async def test_expectMismatch(self) -> None:
        """
        With another C{--expect}, nothing is saved and the error names both
        fingerprints, the one seen and the one expected; the status is 1.
        """
        identity, base = await self.servePublication()
        path = self.mktemp()
        other = "sha256:" + "0" * 64
        code, out, err = await self.trust(base, "--out", path, "--expect", other)
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(
            err.startswith(f"relaynat trust: {base}/relay.pem serves a certificate"), err
        )
        self.assertIn(f"fingerprint {identity.fingerprint}, but --expect gave {other}", err)
        self.assertEqual(err.count("\n"), 1)
        self.assertFalse(os.path.exists(path))

    async def test_onlyTheCertificateSaved(self) -> None:
        """
        Whatever comes with the certificate in the download (here a key) is
        not saved: only the certificate that was fingerprinted.
        """
        root = Resource()
        root.putChild(b"both.pem", Data(_KEYS[1] + _KEYS[0], "application/x-pem-file"))
        base = await self.serve(root)
        path = self.mktemp()
        expected = identityIn(self.mktemp()).fingerprint
        code, out, err = await self.trust(base + "/both.pem", "--out", path, "--expect", expected)
        self.assertEqual(code, 0)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), _KEYS[1])

    async def test_notFound(self) -> None:
        """A 404 is a failure naming the URL and the answer; nothing is saved."""
        identity, base = await self.servePublication()
        path = self.mktemp()
        code, out, err = await self.trust(base + "/cert.pem", "--out", path)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"relaynat trust: cannot download {base}/cert.pem: the server answered 404 Not Found\n",
        )
        self.assertFalse(os.path.exists(path))

    async def test_notCertificate(self) -> None:
        """An answer that is not a PEM certificate is refused."""
        identity, base = await self.servePublication()
        path = self.mktemp()
        code, out, err = await self.trust(base + "/fingerprint", "--out", path)
        self.assertEqual(
            (code, out, err),
            (1, "", f"relaynat trust: {base}/fingerprint: not a PEM certificate\n"),
        )
        self.assertFalse(os.path.exists(path))

    async def test_tooLarge(self) -> None:
        """An answer too large to be a certificate is refused unread."""
        root = Resource()
        root.putChild(b"big.pem", Data(b"x" * (MAX_DOWNLOAD * 4), "application/x-pem-file"))
        base = await self.serve(root)
        path = self.mktemp()
        code, out, err = await self.trust(base + "/big.pem", "--out", path)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("too large for a certificate", err)
        self.assertFalse(os.path.exists(path))

    async def test_refused(self) -> None:
        """A web endpoint nobody listens on is a one-line failure."""
        port: IListeningPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        number = port.getHost().port  # type: ignore[attr-defined]
        await port.stopListening()  # type: ignore[misc]
        path = self.mktemp()
        code, out, err = await self.trust(f"http://127.0.0.1:{number}", "--out", path)
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(
            err.startswith(
                f"relaynat trust: cannot download http://127.0.0.1:{number}/relay.pem:"
                " Connection was refused"
            ),
            err,
        )
        self.assertEqual(err.count("\n"), 1)

    async def test_unwritable(self) -> None:
        """A file that cannot be written is a failure naming it."""
        identity, base = await self.servePublication()
        path = os.path.join(self.mktemp(), "missing", "relay.pem")
        code, out, err = await self.trust(base, "--out", path, "--expect", identity.fingerprint)
        self.assertEqual(code, 1)
        self.assertEqual(err, f"relaynat trust: cannot save {path}: No such file or directory\n")


class TrustTimeoutTests(SynchronousTestCase):
    """C{trust}'s timeout, on a clock the test moves."""

    def test_timeout(self) -> None:
        """
        A relay that never answers makes C{trust} fail when the timeout
        passes, saying so, and the connection attempt is abandoned.
        """
        clock = MemoryReactorClock()
        options = trustOptions("http://relay.example:7080", "--out", self.mktemp(), "--timeout", "5")
        result = ensureDeferred(trust(clock, options, StringIO(), StringIO()))
        # The memory reactor resolves every name to 127.0.0.1.
        [(host, port, *_)] = clock.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 7080))
        self.assertNoResult(result)
        clock.advance(4.9)
        self.assertNoResult(result)
        clock.advance(0.1)
        error = self.failureResultOf(result, CommandFailed).value
        self.assertEqual(
            str(error),
            "cannot download http://relay.example:7080/relay.pem: no answer within 5 seconds",
        )
        self.assertTrue(clock.connectors[0].stoppedConnecting)  # type: ignore[attr-defined]
        self.assertFalse(os.path.exists(options.out))
