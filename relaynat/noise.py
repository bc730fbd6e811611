"""
The Noise Protocol Framework (revision 34), as much of it as relaynat's
tunnels use: the C{NN} and C{NNpsk0} handshake patterns over Curve25519,
SHA-256 and either AES-256-GCM or ChaCha20-Poly1305, built on C{cryptography}.

Followed line by line from the specification (https://noiseprotocol.org/noise.html):
L{CipherState} is section 5.1, L{SymmetricState} 5.2, L{HandshakeState} 5.3
with the C{psk} modifier of section 9.  HKDF here is the RFC 5869 HKDF that
section 4.3 describes (salt = chaining key, empty info).  Checked against
the published cacophony test vectors (C{relaynat/test/data}).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HASHLEN = 32
DHLEN = 32
TAGLEN = 16
KEYLEN = 32
#: The largest Noise message (section 3).
MAX_MESSAGE = 65535
#: Nonce 2^64-1 is reserved (section 5.1).
_MAX_NONCE = 2**64 - 1


class NoiseError(Exception):
    """A handshake or transport message failed: wrong key, changed, or malformed."""


def _aesNonce(n: int) -> bytes:
    return struct.pack(">4xQ", n)


def _chachaNonce(n: int) -> bytes:
    return struct.pack("<4xQ", n)


#: Cipher name -> (AEAD class, nonce encoding), per section 12.
CIPHERS: dict[str, tuple[type[AESGCM] | type[ChaCha20Poly1305], Callable[[int], bytes]]] = {
    "AESGCM": (AESGCM, _aesNonce),
    "ChaChaPoly": (ChaCha20Poly1305, _chachaNonce),
}


def hkdf(chainingKey: bytes, material: bytes, outputs: int) -> list[bytes]:
    """Section 4.3: HKDF-SHA256 with the chaining key as salt, C{outputs} keys."""
    okm = HKDF(hashes.SHA256(), HASHLEN * outputs, salt=chainingKey, info=b"").derive(material)
    return [okm[i * HASHLEN : (i + 1) * HASHLEN] for i in range(outputs)]


class CipherState:
    """Section 5.1: a key (or none yet) and a counter nonce."""

    def __init__(self, cipher: str, key: bytes | None = None) -> None:
        self.cipher = cipher
        self._aeadClass, self.nonce = CIPHERS[cipher]
        self.n = 0
        self.aead: AESGCM | ChaCha20Poly1305 | None = None
        if key is not None:
            self.initializeKey(key)

    def initializeKey(self, key: bytes) -> None:
        self.aead = self._aeadClass(key)
        self.n = 0

    def hasKey(self) -> bool:
        return self.aead is not None

    def _next(self) -> bytes:
        if self.n >= _MAX_NONCE:
            raise NoiseError("nonce exhausted: this cipher state may not be used again")
        nonce = self.nonce(self.n)
        self.n += 1
        return nonce

    def encryptWithAd(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.aead is None:
            return plaintext
        return self.aead.encrypt(self._next(), plaintext, ad or None)

    def encryptInto(self, plaintext: memoryview, out: memoryview) -> int:
        """
        Encrypt with empty associated data (a transport message) into
        C{out}, C{len(plaintext) + TAGLEN} bytes long, without copies.
        """
        assert self.aead is not None
        return self.aead.encrypt_into(self._next(), plaintext, None, out)

    def decryptInto(self, ciphertext: memoryview, out: memoryview) -> int:
        """The reverse of L{encryptInto}: C{out} is C{len(ciphertext) - TAGLEN} bytes long."""
        assert self.aead is not None
        if self.n >= _MAX_NONCE:
            raise NoiseError("nonce exhausted: this cipher state may not be used again")
        try:
            written = self.aead.decrypt_into(self.nonce(self.n), ciphertext, None, out)
        except InvalidTag:
            raise NoiseError("authentication failed") from None
        self.n += 1
        return written

    def decryptWithAd(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.aead is None:
            return ciphertext
        if self.n >= _MAX_NONCE:
            raise NoiseError("nonce exhausted: this cipher state may not be used again")
        try:
            plaintext = self.aead.decrypt(self.nonce(self.n), ciphertext, ad or None)
        except InvalidTag:
            # The nonce only advances on success (section 5.1).
            raise NoiseError("authentication failed") from None
        self.n += 1
        return plaintext


class SymmetricState:
    """Section 5.2: the chaining key, the handshake hash and a cipher state."""

    def __init__(self, protocolName: str) -> None:
        name = protocolName.encode("ascii")
        cipher = protocolName.split("_")[3]
        self.h = name.ljust(HASHLEN, b"\0") if len(name) <= HASHLEN else _hash(name)
        self.ck = self.h
        self.cipherState = CipherState(cipher)

    def mixKey(self, material: bytes) -> None:
        self.ck, key = hkdf(self.ck, material, 2)
        self.cipherState.initializeKey(key)

    def mixHash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mixKeyAndHash(self, material: bytes) -> None:
        self.ck, tempH, key = hkdf(self.ck, material, 3)
        self.mixHash(tempH)
        self.cipherState.initializeKey(key)

    def encryptAndHash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipherState.encryptWithAd(self.h, plaintext)
        self.mixHash(ciphertext)
        return ciphertext

    def decryptAndHash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipherState.decryptWithAd(self.h, ciphertext)
        self.mixHash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        first, second = hkdf(self.ck, b"", 2)
        cipher = self.cipherState.cipher
        return CipherState(cipher, first), CipherState(cipher, second)


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


#: Message patterns, initiator's first (section 7.4, and 9.2 for psk0).
PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "NN": (("e",), ("e", "ee")),
    "NNpsk0": (("psk", "e"), ("e", "ee")),
}


def _publicBytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class HandshakeState:
    """
    Section 5.3 for the patterns in L{PATTERNS}: one side of one handshake.
    Call L{writeMessage} and L{readMessage} in the pattern's order; after
    the last message, L{result} holds the two transport cipher states.
    """

    def __init__(
        self,
        protocolName: str,
        initiator: bool,
        prologue: bytes = b"",
        psks: Sequence[bytes] = (),
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        parts = protocolName.split("_")
        if len(parts) != 5 or parts[0] != "Noise" or parts[2] != "25519" or parts[4] != "SHA256":
            raise ValueError(f"unsupported Noise protocol {protocolName!r}")
        if parts[1] not in PATTERNS or parts[3] not in CIPHERS:
            raise ValueError(f"unsupported Noise protocol {protocolName!r}")
        self.pattern = list(PATTERNS[parts[1]])
        self.pskMode = "psk" in parts[1]
        self.psks = list(psks)
        if self.pskMode and (len(self.psks) != 1 or len(self.psks[0]) != 32):
            raise ValueError("a psk pattern needs one 32-byte pre-shared key")
        self.initiator = initiator
        self.symmetric = SymmetricState(protocolName)
        self.symmetric.mixHash(prologue)
        self.e = ephemeral
        self.re: X25519PublicKey | None = None
        self.result: tuple[CipherState, CipherState] | None = None
        # Whose turn it is: the initiator writes the first message.
        self._writing = initiator

    @property
    def handshakeHash(self) -> bytes:
        return self.symmetric.h

    def _tokens(self, writing: bool) -> tuple[str, ...]:
        if self.result is not None or not self.pattern:
            raise NoiseError("the handshake is over")
        if writing != self._writing:
            raise NoiseError("not this side's turn")
        self._writing = not self._writing
        return self.pattern.pop(0)

    def _ee(self) -> None:
        assert self.e is not None and self.re is not None
        try:
            shared = self.e.exchange(self.re)
        except ValueError:
            # A low-order point: the peer's key cannot make a secret.
            raise NoiseError("the peer's ephemeral key is invalid") from None
        self.symmetric.mixKey(shared)

    def _mixEphemeral(self, public: bytes) -> None:
        self.symmetric.mixHash(public)
        if self.pskMode:
            # Section 9.2: with a psk, an ephemeral key is mixed into the key too.
            self.symmetric.mixKey(public)

    def _mixShared(self, token: str) -> None:
        """The tokens both sides process alike, writing or reading."""
        if token == "ee":
            self._ee()
        elif token == "psk":
            self.symmetric.mixKeyAndHash(self.psks[0])

    def writeMessage(self, payload: bytes = b"") -> bytes:
        out = []
        for token in self._tokens(writing=True):
            if token == "e":
                if self.e is None:
                    self.e = X25519PrivateKey.generate()
                public = _publicBytes(self.e)
                out.append(public)
                self._mixEphemeral(public)
            else:
                self._mixShared(token)
        out.append(self.symmetric.encryptAndHash(payload))
        message = b"".join(out)
        if len(message) > MAX_MESSAGE:
            raise NoiseError("message too long")
        self._finishIfDone()
        return message

    def readMessage(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise NoiseError("message too long")
        position = 0
        for token in self._tokens(writing=False):
            if token == "e":
                public = message[position : position + DHLEN]
                if len(public) != DHLEN:
                    raise NoiseError("message too short")
                position += DHLEN
                self.re = X25519PublicKey.from_public_bytes(public)
                self._mixEphemeral(public)
            else:
                self._mixShared(token)
        rest = message[position:]
        if self.symmetric.cipherState.hasKey() and len(rest) < TAGLEN:
            raise NoiseError("message too short")
        payload = self.symmetric.decryptAndHash(rest)
        self._finishIfDone()
        return payload

    def _finishIfDone(self) -> None:
        if not self.pattern:
            self.result = self.symmetric.split()
