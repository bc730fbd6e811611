"""
The Noise state machine against the published cacophony test vectors, and
the failures a handshake must report.
"""

from __future__ import annotations

import json
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.trial.unittest import TestCase

from relaynat.noise import HandshakeState, NoiseError

_VECTORS = os.path.join(os.path.dirname(__file__), "data", "noise-vectors.json")


def _vectors() -> list[dict]:  # type: ignore[type-arg]
    with open(_VECTORS) as f:
        return list(json.load(f)["vectors"])


def _side(vector: dict, prefix: str, initiator: bool) -> HandshakeState:  # type: ignore[type-arg]
    return HandshakeState(
        vector["protocol_name"],
        initiator,
        prologue=bytes.fromhex(vector[prefix + "_prologue"]),
        psks=[bytes.fromhex(p) for p in vector.get(prefix + "_psks", [])],
        ephemeral=X25519PrivateKey.from_private_bytes(bytes.fromhex(vector[prefix + "_ephemeral"])),
    )


class VectorTests(TestCase):
    """Every message of every vector, both ways, byte for byte."""

    def test_vectorsPresent(self) -> None:
        """The file holds the four protocols relaynat can speak or is checked with."""
        self.assertEqual(
            sorted(v["protocol_name"] for v in _vectors()),
            [
                "Noise_NN_25519_AESGCM_SHA256",
                "Noise_NN_25519_ChaChaPoly_SHA256",
                "Noise_NNpsk0_25519_AESGCM_SHA256",
                "Noise_NNpsk0_25519_ChaChaPoly_SHA256",
            ],
        )

    def test_vectors(self) -> None:
        """
        The handshake messages, the handshake hash and the transport messages
        (alternating, initiator first) equal the published ones, and each
        side reads the other's message back to its payload.
        """
        for vector in _vectors():
            initiator = _side(vector, "init", True)
            responder = _side(vector, "resp", False)
            messages = vector["messages"]
            for index, message in enumerate(messages[:2]):
                writer, reader = (initiator, responder) if index == 0 else (responder, initiator)
                payload = bytes.fromhex(message["payload"])
                sent = writer.writeMessage(payload)
                self.assertEqual(sent.hex(), message["ciphertext"], vector["protocol_name"])
                self.assertEqual(reader.readMessage(sent), payload)
            self.assertEqual(initiator.handshakeHash.hex(), vector["handshake_hash"])
            self.assertEqual(responder.handshakeHash.hex(), vector["handshake_hash"])
            assert initiator.result is not None and responder.result is not None
            iSend, iReceive = initiator.result
            rReceive, rSend = responder.result
            for index, message in enumerate(messages[2:]):
                send, receive = (iSend, rReceive) if index % 2 == 0 else (rSend, iReceive)
                payload = bytes.fromhex(message["payload"])
                sent = send.encryptWithAd(b"", payload)
                self.assertEqual(sent.hex(), message["ciphertext"], vector["protocol_name"])
                self.assertEqual(receive.decryptWithAd(b"", sent), payload)


class FailureTests(TestCase):
    """What a handshake does with a wrong key or a changed message."""

    name = "Noise_NNpsk0_25519_AESGCM_SHA256"

    def pair(self, psk: bytes = b"k" * 32, other: bytes = b"k" * 32) -> tuple[HandshakeState, HandshakeState]:
        return (
            HandshakeState(self.name, True, b"p", [psk]),
            HandshakeState(self.name, False, b"p", [other]),
        )

    def test_wrongPsk(self) -> None:
        """A responder with another psk cannot read the first message."""
        initiator, responder = self.pair(other=b"x" * 32)
        self.assertRaises(NoiseError, responder.readMessage, initiator.writeMessage(b""))

    def test_wrongPrologue(self) -> None:
        """The prologue binds the handshake: another one fails."""
        initiator = HandshakeState(self.name, True, b"server a", [b"k" * 32])
        responder = HandshakeState(self.name, False, b"server b", [b"k" * 32])
        self.assertRaises(NoiseError, responder.readMessage, initiator.writeMessage(b""))

    def test_changedReply(self) -> None:
        """A bit flipped in the second message fails at the initiator."""
        initiator, responder = self.pair()
        responder.readMessage(initiator.writeMessage(b""))
        reply = bytearray(responder.writeMessage(b"\x01"))
        reply[40] ^= 1
        self.assertRaises(NoiseError, initiator.readMessage, bytes(reply))

    def test_shortMessage(self) -> None:
        """A message too short for its key and tag is refused, not misread."""
        initiator, responder = self.pair()
        self.assertRaises(NoiseError, responder.readMessage, b"\0" * 40)

    def test_lowOrderKey(self) -> None:
        """An all-zero ephemeral key from the peer fails the handshake cleanly."""
        initiator, responder = self.pair()
        responder.readMessage(initiator.writeMessage(b""))
        # The responder's reply with its key replaced: the initiator's DH
        # gives the all-zero secret, which cryptography refuses.
        reply = b"\0" * 32 + responder.writeMessage(b"")[32:]
        self.assertRaises(NoiseError, initiator.readMessage, reply)

    def test_turns(self) -> None:
        """A side may not write out of turn, nor after the handshake."""
        initiator, responder = self.pair()
        self.assertRaises(NoiseError, responder.writeMessage, b"")
        responder.readMessage(initiator.writeMessage(b""))
        initiator.readMessage(responder.writeMessage(b""))
        self.assertRaises(NoiseError, initiator.writeMessage, b"")

    def test_unsupported(self) -> None:
        """Only the patterns and primitives implemented are accepted."""
        for name in ("Noise_XX_25519_AESGCM_SHA256", "Noise_NN_448_AESGCM_SHA256", "Noise_NN_25519_AESGCM_BLAKE2s"):
            self.assertRaises(ValueError, HandshakeState, name, True)
