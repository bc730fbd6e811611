"""
Per-server secrets: shared by a skeleton and the clients allowed to reach
one of its servers, never by the relay.

On each join the client proves it knows the secret with an HMAC-SHA256 over
both sides' fresh nonces and the join id; the skeleton checks it in
constant time before it opens any connection to the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets

from relaynat.identity import writePrivate

SECRET_BYTES = 32
NONCE_BYTES = 16
_MIN_BYTES = 16


class SecretFileError(Exception):
    """A secret file cannot be used: names the file and why."""


def newNonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def generateSecret(path: str) -> None:
    """Write a new random secret to C{path}, readable by its owner only."""
    text = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")
    writePrivate(path, (text + "\n").encode("ascii"))


def loadSecret(path: str) -> bytes:
    """The secret in C{path}."""
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except OSError as e:
        raise SecretFileError(f"{path}: {e.strerror}") from e
    try:
        secret = base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        raise SecretFileError(f"{path}: not a secret file (make one with 'relaynat secret')") from None
    if len(secret) < _MIN_BYTES:
        raise SecretFileError(f"{path}: the secret is too short (make one with 'relaynat secret')")
    if os.stat(path).st_mode & 0o077:
        raise SecretFileError(f"{path}: others can read it; run chmod 600 {path}")
    return secret


def joinProof(secret: bytes, clientNonce: bytes, skeletonNonce: bytes, joinId: str) -> bytes:
    """The client's proof for one join."""
    mac = hmac.new(secret, b"relaynat join proof\0", hashlib.sha256)
    for part in (clientNonce, skeletonNonce, joinId.encode("utf-8")):
        mac.update(len(part).to_bytes(2, "big") + part)
    return mac.digest()


def checkJoinProof(
    secret: bytes, clientNonce: bytes, skeletonNonce: bytes, joinId: str, proof: bytes
) -> bool:
    """Is C{proof} right for this join?  Compared in constant time."""
    return hmac.compare_digest(joinProof(secret, clientNonce, skeletonNonce, joinId), proof)
