"""
Tests for L{relaynat.identity} (keys, certificates and their fingerprints)
and for the commands around them, C{relaynat keygen} and C{relaynat
fingerprint}, run in process.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
import sys
from io import StringIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from relaynat.cli import main, parse
from relaynat.identity import (
    CERT_FILE,
    KEY_FILE,
    IdentityError,
    RelayIdentity,
    checkFingerprint,
    fingerprint,
    fingerprintOfFile,
    generate,
    trustRootFromPem,
    writePrivate,
)
from relaynat.link import hostnameVerifier
from relaynat.scripts.command import UsageError
from relaynat.test.runcommand import command

#: Two key pairs for the whole module: a key pair is not free.
KEYS = generate(["relay.example", "192.0.2.7", "2001:db8::7"])
OTHER = generate(["other.example"])


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def opensslFingerprint(certPem: bytes) -> str:
    """The fingerprint by another route: OpenSSL's own DER of the public key."""
    cert = crypto.load_certificate(crypto.FILETYPE_PEM, certPem)
    spki = crypto.dump_publickey(crypto.FILETYPE_ASN1, cert.get_pubkey())
    return "sha256:" + hashlib.sha256(spki).hexdigest()


class GenerateTests(SynchronousTestCase):
    """L{generate}: a key and a self-signed certificate for the relay's names."""

    def test_certificate(self) -> None:
        """
        The certificate names the relay's host names and IP addresses as
        subject alternative names (the first also as common name), is not a
        CA, is valid from now for about ten years, and signs itself.
        """
        cert = x509.load_pem_x509_certificate(KEYS[1])
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["relay.example"])
        self.assertEqual(
            names.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")],
        )
        self.assertEqual(cert.subject.rfc4514_string(), "CN=relay.example")
        self.assertEqual(cert.issuer, cert.subject)
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(cert.not_valid_before_utc, now)
        self.assertGreater(cert.not_valid_after_utc, now + datetime.timedelta(days=3649))
        cert.verify_directly_issued_by(cert)

    def test_key(self) -> None:
        """The key is an unencrypted P-256 key, and the certificate's."""
        key = serialization.load_pem_private_key(KEYS[0], password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key.curve.name, "secp256r1")
        cert = x509.load_pem_x509_certificate(KEYS[1])
        self.assertEqual(fingerprint(key), fingerprint(cert))

    def test_fresh(self) -> None:
        """Each call makes a new key."""
        self.assertNotEqual(
            fingerprint(x509.load_pem_x509_certificate(KEYS[1])),
            fingerprint(x509.load_pem_x509_certificate(OTHER[1])),
        )

    def test_noNames(self) -> None:
        """Without a name there is no certificate."""
        self.assertRaises(IdentityError, generate, [])


class FingerprintTests(SynchronousTestCase):
    """L{fingerprint}, L{fingerprintOfFile} and L{checkFingerprint}."""

    def test_spki(self) -> None:
        """
        The fingerprint is C{sha256:} and the hex SHA-256 of the DER
        SubjectPublicKeyInfo, as OpenSSL encodes it.
        """
        cert = x509.load_pem_x509_certificate(KEYS[1])
        self.assertEqual(fingerprint(cert), opensslFingerprint(KEYS[1]))
        self.assertRegex(fingerprint(cert), r"\Asha256:[0-9a-f]{64}\Z")

    def test_sameKeyNewCertificate(self) -> None:
        """
        A new certificate for the same key keeps the fingerprint: it pins
        the key, not the certificate.
        """
        key = serialization.load_pem_private_key(KEYS[0], password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "renamed.example")])
        now = datetime.datetime.now(datetime.timezone.utc)
        reissued = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.assertEqual(
            fingerprint(reissued), fingerprint(x509.load_pem_x509_certificate(KEYS[1]))
        )

    def test_ofFile(self) -> None:
        """A certificate file and its (private) key file have the same fingerprint."""
        certPath = write(self.mktemp(), KEYS[1])
        keyPath = self.mktemp()
        writePrivate(keyPath, KEYS[0])
        self.assertEqual(fingerprintOfFile(certPath), opensslFingerprint(KEYS[1]))
        self.assertEqual(fingerprintOfFile(keyPath), opensslFingerprint(KEYS[1]))

    def test_ofFileErrors(self) -> None:
        """
        A missing file, a file of something else, a broken certificate and
        an encrypted key each give an L{IdentityError} naming the file.
        """
        missing = self.mktemp()
        other = write(self.mktemp(), b"hello\n")
        broken = write(
            self.mktemp(), b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        key = serialization.load_pem_private_key(KEYS[0], password=None)
        encrypted = write(
            self.mktemp(),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
        for path, problem in [
            (missing, "No such file or directory"),
            (other, "neither a PEM certificate nor a private key"),
            (broken, "not a PEM certificate"),
            (encrypted, "the private key is encrypted; give its certificate"),
        ]:
            error = self.assertRaises(IdentityError, fingerprintOfFile, path)
            self.assertEqual(str(error), f"{path}: {problem}")

    def test_check(self) -> None:
        """
        L{checkFingerprint} gives a fingerprint back in lower case without
        surrounding space, and refuses anything else, quoting it.
        """
        digest = "0123456789abcdef" * 4
        self.assertEqual(checkFingerprint(f"  SHA256:{digest.upper()}\n"), f"sha256:{digest}")
        for bad in [
            "",
            digest,
            f"sha1:{digest}",
            f"sha256:{digest[:-1]}",
            f"sha256:{digest}0",
            f"sha256:{digest[:-1]}g",
            f"sha256: {digest}",
            f"sha256:{digest[:-2]}\u00e9\u00e9",
        ]:
            error = self.assertRaises(IdentityError, checkFingerprint, bad)
            self.assertEqual(
                str(error), f"not a fingerprint: {bad!r} (expected sha256: and 64 hex digits)"
            )

    @given(st.binary(min_size=32, max_size=32))
    def test_checkAny(self, digest: bytes) -> None:
        """Every SHA-256 fingerprint, in either case, passes the check unchanged."""
        text = "sha256:" + digest.hex()
        self.assertEqual(checkFingerprint(text), text)
        self.assertEqual(checkFingerprint(text.upper()), text)


class RelayIdentityTests(SynchronousTestCase):
    """L{RelayIdentity.load}."""

    def pair(self, key: bytes, cert: bytes) -> tuple[str, str]:
        directory = self.mktemp()
        os.makedirs(directory)
        keyPath, certPath = os.path.join(directory, KEY_FILE), os.path.join(directory, CERT_FILE)
        writePrivate(keyPath, key)
        writePrivate(certPath, cert)
        return keyPath, certPath

    def test_load(self) -> None:
        """A matching key and certificate load, with the certificate's fingerprint."""
        keyPath, certPath = self.pair(*KEYS)
        identity = RelayIdentity.load(keyPath, certPath)
        self.assertEqual(identity.certificatePem, KEYS[1])
        self.assertEqual(identity.fingerprint, opensslFingerprint(KEYS[1]))

    def test_mismatch(self) -> None:
        """A key with another key's certificate is refused, naming both files."""
        keyPath, certPath = self.pair(KEYS[0], OTHER[1])
        error = self.assertRaises(IdentityError, RelayIdentity.load, keyPath, certPath)
        self.assertEqual(str(error), f"{keyPath} and {certPath} do not belong together")

    def test_missing(self) -> None:
        """A missing file is named."""
        keyPath, certPath = self.pair(*KEYS)
        os.remove(certPath)
        error = self.assertRaises(IdentityError, RelayIdentity.load, keyPath, certPath)
        self.assertEqual(str(error), f"{certPath}: No such file or directory")

    def test_swapped(self) -> None:
        """Files given the wrong way round say which is not what it should be."""
        keyPath, certPath = self.pair(*KEYS)
        error = self.assertRaises(IdentityError, RelayIdentity.load, certPath, keyPath)
        self.assertEqual(str(error), f"{keyPath}: not a PEM certificate")


class KeygenTests(SynchronousTestCase):
    """C{relaynat keygen}."""

    def test_keygen(self) -> None:
        """
        C{keygen DIR} makes DIR (private to its owner) with the key and the
        certificate, each readable by their owner only, and prints their
        paths and the fingerprint, which both files have.
        """
        directory = os.path.join(self.mktemp(), "keys")
        code, out, err = command(
            "keygen", directory, "--name", "relay.example", "--name", "192.0.2.7"
        )
        self.assertEqual((code, err), (0, ""))
        keyPath, certPath = os.path.join(directory, KEY_FILE), os.path.join(directory, CERT_FILE)
        printed = fingerprintOfFile(certPath)
        self.assertEqual(
            out, f"private key: {keyPath}\ncertificate: {certPath}\nfingerprint: {printed}\n"
        )
        self.assertEqual(fingerprintOfFile(keyPath), printed)
        self.assertEqual((mode(keyPath), mode(certPath)), (0o600, 0o600))
        self.assertEqual(mode(directory) & 0o077, 0)
        identity = RelayIdentity.load(keyPath, certPath)
        names = identity.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(names.value.get_values_for_type(x509.DNSName), ["relay.example"])

    def test_existingDirectory(self) -> None:
        """An existing directory is used as it is."""
        directory = self.mktemp()
        os.makedirs(directory, mode=0o755)
        code, out, err = command("keygen", "--name", "relay.example", directory)
        self.assertEqual(code, 0)
        self.assertEqual(mode(directory), 0o755)
        self.assertEqual(mode(os.path.join(directory, KEY_FILE)), 0o600)

    def test_refusesToOverwrite(self) -> None:
        """
        Without C{--force}, an existing key or certificate is left alone
        and the failure says how to replace it; with it both are replaced.
        """
        directory = self.mktemp()
        self.assertEqual(command("keygen", directory, "--name", "relay.example")[0], 0)
        keyPath = os.path.join(directory, KEY_FILE)
        before = fingerprintOfFile(keyPath)
        code, out, err = command("keygen", directory, "--name", "relay.example")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"relaynat keygen: {keyPath} and {os.path.join(directory, CERT_FILE)} already exist;"
            " use --force to replace the relay's key (every user must then trust it again)\n",
        )
        self.assertEqual(fingerprintOfFile(keyPath), before)
        os.remove(keyPath)
        code, out, err = command("keygen", directory, "--name", "relay.example")
        self.assertEqual(code, 1)
        self.assertIn(f"{os.path.join(directory, CERT_FILE)} already exists;", err)
        code, out, err = command("keygen", directory, "--name", "relay.example", "--force")
        self.assertEqual((code, err), (0, ""))
        self.assertNotEqual(fingerprintOfFile(keyPath), before)
        RelayIdentity.load(keyPath, os.path.join(directory, CERT_FILE))

    def test_forceTightensMode(self) -> None:
        """Replacing a key file that others could read leaves it private."""
        directory = self.mktemp()
        os.makedirs(directory)
        keyPath = write(os.path.join(directory, KEY_FILE), b"old")
        os.chmod(keyPath, 0o644)
        self.assertEqual(command("keygen", directory, "--name", "r.example", "--force")[0], 0)
        self.assertEqual(mode(keyPath), 0o600)

    def test_unwritable(self) -> None:
        """A directory that cannot be made is a failure naming it."""
        blocker = write(self.mktemp(), b"a file, not a directory")
        code, out, err = command("keygen", os.path.join(blocker, "keys"), "--name", "r.example")
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(
            err.startswith("relaynat keygen: cannot write the key and certificate: "), err
        )
        self.assertIn(blocker, err)

    def test_usage(self) -> None:
        """Each bad command line is a usage error saying what is wrong."""
        for argv, message in [
            ([], "the following arguments are required: DIR"),
            (["d"], "give at least one --name: a host name or IP address of the relay"),
            (["d", "e", "--name", "r.example"], "unrecognized arguments: e"),
            (["d", "--name", "bad name"], "--name 'bad name': not a host name or IP address"),
            (["d", "--name", "b\u00fccher.example"], "(give a non-ASCII name in its xn-- form)"),
            (["d", "--name=-x.example"], "not a host name"),
            # argparse reads a value that looks like an option only after "=".
            (["d", "--name", "-x.example"], "argument --name: expected one argument"),
            (["d", "--name", "a..b"], "not a host name"),
            (["d", "--name", "a" * 64 + ".example"], "not a host name"),
            (["d", "--nmae", "r.example"], "unrecognized arguments: --nmae"),
        ]:
            error = self.assertRaises(UsageError, parse, ["keygen", *argv])
            self.assertIn(message, str(error), argv)

    def test_names(self) -> None:
        """Host names, IPv4 and IPv6 addresses and xn-- names are accepted."""
        invocation = parse(
            [
                "keygen",
                "d",
                "--name",
                "relay.example",
                "--name",
                "10.0.0.1",
                "--name",
                "::1",
                "--name",
                "xn--bcher-kva.example",
                "--name",
                "localhost",
            ]
        )
        self.assertEqual(
            invocation.options.names,
            ("relay.example", "10.0.0.1", "::1", "xn--bcher-kva.example", "localhost"),
        )


class FingerprintCommandTests(SynchronousTestCase):
    """C{relaynat fingerprint}."""

    def test_certificateAndKey(self) -> None:
        """The fingerprint of a certificate or its key is printed alone on a line."""
        expected = opensslFingerprint(KEYS[1])
        for data in KEYS:
            path = self.mktemp()
            writePrivate(path, data)
            self.assertEqual(command("fingerprint", path), (0, expected + "\n", ""))

    def test_keygenAgrees(self) -> None:
        """It prints what C{keygen} printed."""
        directory = self.mktemp()
        code, out, err = command("keygen", directory, "--name", "relay.example")
        code, again, err = command("fingerprint", os.path.join(directory, CERT_FILE))
        self.assertEqual(out.splitlines()[-1], "fingerprint: " + again.strip())

    def test_failures(self) -> None:
        """A file that is missing or not a certificate or key is a one-line failure."""
        missing = self.mktemp()
        self.assertEqual(
            command("fingerprint", missing),
            (1, "", f"relaynat fingerprint: {missing}: No such file or directory\n"),
        )
        other = write(self.mktemp(), b"\x00\x01 not PEM")
        self.assertEqual(
            command("fingerprint", other),
            (
                1,
                "",
                f"relaynat fingerprint: {other}: neither a PEM certificate nor a private key\n",
            ),
        )

    def test_usage(self) -> None:
        """It takes exactly one file."""
        for argv in [[], ["a", "b"]]:
            self.assertRaises(UsageError, parse, ["fingerprint", *argv])


class MainTests(SynchronousTestCase):
    """C{main}'s exit statuses for these commands, in process."""

    def runMain(self, *argv: str) -> tuple[object, str, str]:
        out, err = StringIO(), StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as raised:
            main(list(argv))
        return raised.exception.code, out.getvalue(), err.getvalue()

    def test_success(self) -> None:
        """A command that did its work exits with status 0."""
        code, out, err = self.runMain("keygen", self.mktemp(), "--name", "relay.example")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("fingerprint: sha256:", out)

    def test_failure(self) -> None:
        """A command that could not do its work exits with status 1 and one line."""
        missing = self.mktemp()
        self.assertEqual(
            self.runMain("fingerprint", missing),
            (1, "", f"relaynat fingerprint: {missing}: No such file or directory\n"),
        )

    def test_usage(self) -> None:
        """A bad command line exits with status 2, the problem on the last line."""
        code, out, err = self.runMain("keygen", self.mktemp())
        self.assertEqual((code, out), (2, ""))
        self.assertTrue(
            err.endswith(
                "\nrelaynat keygen: give at least one --name: a host name or IP address of the relay\n"
            ),
            err,
        )

    def test_version(self) -> None:
        """C{--version} after a command prints relaynat's version, not Twisted's."""
        from relaynat import __version__

        code, out, err = self.runMain("keygen", "--version")
        self.assertEqual((code, out), (0, f"relaynat {__version__}\n"))


class Authority:
    """A certificate authority for the tests: a key and its certificate."""

    def __init__(self, name: str, issuer: Authority | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
        self.certificate = (issuer or self).sign(self.key, self.name, ca=True)

    def sign(
        self, key: ec.EllipticCurvePrivateKey, name: x509.Name, ca: bool, dns: str | None = None
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        if dns is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False
            )
        return builder.sign(self.key, hashes.SHA256())

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


class Closing(Protocol):
    """Fires C{closed} when its connection is gone, so a test can wait for it."""

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(None)


@implementer(IHandshakeListener)
class Handshake(Closing):
    """Fires C{done} when the TLS handshake completes, or fails it with the reason."""

    def __init__(self) -> None:
        super().__init__()
        self.done: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        self.done.callback(None)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.errback(reason)
        super().connectionLost(reason)


class CertificateChainTests(TestCase):
    """
    The relay with a certificate from a CA (C{relay_verify = "hostname"}):
    it sends the whole chain from its certificate file, and a client trusts
    every CA certificate in its C{relay_ca} file.  Real TLS on loopback.
    """

    NAME = "relay.example"

    def setUp(self) -> None:
        self.root = Authority("Test Root CA")
        self.intermediate = Authority("Test Intermediate CA", issuer=self.root)
        self.unrelated = Authority("Unrelated CA")
        self.leafKey = ec.generate_private_key(ec.SECP256R1())
        leaf = self.intermediate.sign(
            self.leafKey,
            x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, self.NAME)]),
            ca=False,
            dns=self.NAME,
        )
        self.leafPem = leaf.public_bytes(serialization.Encoding.PEM)
        #: The usual relay_ca: another CA first, the relay's root second.
        self.caFile = self.unrelated.pem() + self.root.pem()

    def relay(self, certPem: bytes) -> RelayIdentity:
        directory = self.mktemp()
        os.makedirs(directory)
        keyPath, certPath = os.path.join(directory, KEY_FILE), os.path.join(directory, CERT_FILE)
        writePrivate(
            keyPath,
            self.leafKey.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write(certPath, certPem)
        return RelayIdentity.load(keyPath, certPath)

    def handshake(self, identity: RelayIdentity, caPem: bytes) -> Deferred[None]:
        """
        A TLS handshake on loopback between the relay's TLS settings and a
        client verifying C{NAME} against C{caPem}; both ends closed after.
        """

        async def run() -> None:
            served: list[Closing] = []

            def serve() -> Closing:
                served.append(Closing())
                return served[-1]

            endpoint = SSL4ServerEndpoint(reactor, 0, identity.options, interface="127.0.0.1")
            port = await endpoint.listen(Factory.forProtocol(serve))
            client = wrapClientTLS(
                hostnameVerifier(self.NAME, caPem),
                TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),  # type: ignore[attr-defined]
            )
            protocol = Handshake()
            try:
                await client.connect(Factory.forProtocol(lambda: protocol))
                await protocol.done
            finally:
                await protocol.closed
                for server in served:
                    await server.closed
                await port.stopListening()

        return Deferred.fromCoroutine(run())

    async def test_chainAndSecondCA(self) -> None:
        """
        A relay whose certificate file holds its certificate and the
        intermediate is verified by a client whose CA file holds an
        unrelated CA and then the root: the relay sends the intermediate,
        and the client trusts the second CA in its file, not only the first.
        """
        identity = self.relay(self.leafPem + self.intermediate.pem())
        self.assertEqual(identity.certificatePem, self.leafPem + self.intermediate.pem())
        self.assertEqual(identity.fingerprint, fingerprint(self.leafKey))
        await self.handshake(identity, self.caFile)

    async def test_leafOnly(self) -> None:
        """
        With only its own certificate in the file, the relay cannot be
        verified: the client has the root but not the intermediate.
        """
        identity = self.relay(self.leafPem)
        with self.assertRaises(SSL.Error) as raised:
            await self.handshake(identity, self.caFile)
        self.assertIn("certificate verify failed", str(raised.exception))

    async def test_otherCAOnly(self) -> None:
        """A CA file without the relay's root does not verify it."""
        identity = self.relay(self.leafPem + self.intermediate.pem())
        with self.assertRaises(SSL.Error) as raised:
            await self.handshake(identity, self.unrelated.pem())
        self.assertIn("certificate verify failed", str(raised.exception))

    def test_notACAFile(self) -> None:
        """A CA file with no certificate in it is an error naming it."""
        error = self.assertRaises(IdentityError, trustRootFromPem, b"hello\n", "ca.pem")
        self.assertEqual(str(error), "ca.pem: not a PEM certificate")

    def test_chainNotTheKeysFirst(self) -> None:
        """
        The certificate the key must match is the file's first: a file
        with the intermediate first is refused.
        """
        error = self.assertRaises(IdentityError, self.relay, self.intermediate.pem() + self.leafPem)
        self.assertTrue(str(error).endswith(" do not belong together"), str(error))
