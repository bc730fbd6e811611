"""
The relay's identity: its key and certificate, the fingerprint users pin,
and the TLS settings both ends use.

The fingerprint is the SHA-256 of the certificate's SubjectPublicKeyInfo, so
it survives re-issuing the certificate for the same key.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import os
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from relaynat.private import PrivateFileError, modeProblem, readPrivate

KEY_FILE = "relay.key"
CERT_FILE = "relay.pem"


class IdentityError(Exception):
    """A key, certificate or fingerprint cannot be used: says which and why."""


class RelayKeyMismatch(Exception):
    """The relay showed a key other than the pinned one."""

    def __init__(self, expected: str, seen: str) -> None:
        super().__init__(
            f"the relay's key is not the pinned one: expected {expected}, seen {seen}."
            " If the relay's key was changed on purpose, fetch and check the new one"
            " with 'relaynat trust'; otherwise someone may be intercepting."
        )
        self.expected, self.seen = expected, seen


def fingerprint(certOrKey: x509.Certificate | Any) -> str:
    """C{sha256:HEX} of the SubjectPublicKeyInfo of a certificate or key."""
    public = certOrKey.public_key()
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return "sha256:" + digest.finalize().hex()


def fingerprintOfFile(path: str) -> str:
    """
    The fingerprint of a PEM certificate or private key file; a key file
    must be private (L{relaynat.private}), as it must be for the relay.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except OSError as e:
        raise IdentityError(f"{path}: {e.strerror}") from e
    if b"CERTIFICATE" in data:
        return fingerprint(loadCertificate(data, path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise IdentityError(f"{path}: neither a PEM certificate nor a private key") from e
    except TypeError as e:
        # cryptography's word for "this key needs a password".
        raise IdentityError(f"{path}: the private key is encrypted; give its certificate") from e
    except UnsupportedAlgorithm as e:
        raise IdentityError(f"{path}: a private key of a kind relaynat cannot read") from e
    problem = modeProblem(path, mode)
    if problem is not None:
        raise IdentityError(f"{path}: {problem}")
    return fingerprint(key)


def checkFingerprint(text: str) -> str:
    """Return C{text} normalised if it is a C{sha256:HEX} fingerprint."""
    value = text.strip().lower()
    kind, _, digest = value.partition(":")
    if kind != "sha256" or len(digest) != 64 or not _isHex(digest):
        raise IdentityError(
            f"not a fingerprint: {text!r} (expected sha256: and 64 hex digits)"
        )
    return value


def loadCertificate(pem: bytes, source: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise IdentityError(f"{source}: not a PEM certificate") from e


def loadCertificates(pem: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate in C{pem}, in order; at least one."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise IdentityError(f"{source}: not a PEM certificate") from e


def trustRootFromPem(pem: bytes, source: str) -> Any:
    """
    A trust root (for L{ssl.optionsForClientTLS}) of every CA certificate
    in C{pem}, from C{source}, named in errors: a CA file may hold several,
    an old and a new root or one per CA the operator accepts, and the
    relay's may be any of them.  (The interface, C{IOpenSSLTrustRoot},
    lives in a private module of Twisted's, hence C{Any}.)
    """
    return ssl.trustRootFromCertificates(
        [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in loadCertificates(pem, source)]
    )


def serverEndPoint(cert: x509.Certificate) -> bytes:
    """
    The tls-server-end-point channel binding of RFC 5929: a hash of the
    relay's certificate, with the certificate's own signature hash (SHA-256
    where that is MD5, SHA-1 or absent, as for Ed25519).
    """
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    return digest.finalize()


def generate(names: list[str], days: int = 3650) -> tuple[bytes, bytes]:
    """
    A new P-256 key and a self-signed certificate for C{names} (host names
    or IP addresses), as PEM: (key, certificate).
    """
    if not names:
        raise IdentityError("give at least one name (--name relay.example.com)")
    key = ec.generate_private_key(ec.SECP256R1())
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyPem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return keyPem, cert.public_bytes(serialization.Encoding.PEM)


def writePrivate(path: str, data: bytes) -> None:
    """Write C{data} to a new file only its owner can read (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        f.write(data)


@attrs.frozen
class RelayIdentity:
    """
    The relay's key and certificate, loaded and checked to match.  The
    certificate file may hold the certificates that chain it to a CA after
    it (leaf first, as in a web server's full-chain file); the relay sends
    them all, since clients that check the chain have only the root.
    """

    certificate: x509.Certificate
    certificatePem: bytes
    options: ssl.CertificateOptions

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    @property
    def channelBinding(self) -> bytes:
        return serverEndPoint(self.certificate)

    @classmethod
    def load(cls, keyPath: str, certPath: str) -> RelayIdentity:
        try:
            keyPem = readPrivate(keyPath)
        except PrivateFileError as e:
            raise IdentityError(str(e)) from e
        try:
            with open(certPath, "rb") as f:
                certPem = f.read()
        except OSError as e:
            raise IdentityError(f"{certPath}: {e.strerror}") from e
        cert, *chain = loadCertificates(certPem, certPath)
        try:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyPem)
        except crypto.Error as e:
            raise IdentityError(f"{keyPath}: not a PEM private key") from e
        if fingerprint(key.to_cryptography_key()) != fingerprint(cert):
            raise IdentityError(f"{keyPath} and {certPath} do not belong together")
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=crypto.X509.from_cryptography(cert),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        options.getContext().set_mode(SSL.MODE_RELEASE_BUFFERS)
        return cls(cert, certPem, options)


@implementer(IOpenSSLClientConnectionCreator)
class PinnedRelay:
    """
    TLS to a relay whose key is pinned: the leaf certificate's public key
    must have the expected fingerprint; no CA, name or date is consulted, as
    with an ssh host key.
    """

    def __init__(self, expected: str) -> None:
        self.expected = checkFingerprint(expected)
        #: The fingerprint the last relay showed, for the mismatch error.
        self.seen: str | None = None
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        self._context = context

    def _verify(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if depth != 0:
            # Only the leaf's key is pinned; a chain above it changes nothing.
            return True
        self.seen = fingerprint(cert.to_cryptography())
        return hmac.compare_digest(self.seen, self.expected)

    def mismatch(self) -> RelayKeyMismatch | None:
        """The error to report if the last handshake saw another key."""
        if self.seen is not None and not hmac.compare_digest(self.seen, self.expected):
            return RelayKeyMismatch(self.expected, self.seen)
        return None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


def _isHex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
