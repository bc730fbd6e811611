"""
A tunnel's seal: the handshake that proves a server's secret both ways and
the record layer that carries the tunnel's bytes between client and
skeleton, which the relay passes on without being able to read or change.

The construction (README, "The seal"):

- The handshake is Noise C{NNpsk0} (L{relaynat.noise}): C{Noise_NNpsk0_25519_
  AESGCM_SHA256}, or C{..._ChaChaPoly_...} when the client's CPU has no AES
  instructions.  The pre-shared key is HKDF-SHA256 of the server's secret
  (info C{relaynat tunnel psk 1}); the prologue is C{relaynat tunnel 1},
  a zero byte and the server id, so a handshake for one server fails for any
  other.  Both sides make fresh ephemeral X25519 keys: recorded tunnels stay
  closed to whoever steals the secret later.
- The client (initiator) sends message 1 (empty payload) framed with the
  cipher's id; the skeleton answers message 2, whose payload says whether
  the tunnel stays sealed.  Message 2 proves the skeleton knows the secret,
  fresh, to the client; the client's first transport record (L{BEGIN})
  proves the same of the client to the skeleton, which only then connects to
  its target.  The relay can make neither proof.
- Every message, handshake or record, is framed as a 2-byte big-endian
  length and the Noise message (at most 65535 bytes).  A record's plaintext
  is one kind byte and a body: L{DATA} (the body is tunnel bytes), L{END}
  (this direction is finished: the authenticated end-of-stream), L{BEGIN},
  L{REFUSED}.  Each direction's first record is L{BEGIN}: the client's when
  a connection starts using the tunnel, the skeleton's once its target
  accepted the connection (L{REFUSED} instead if it did not).  A tunnel that
  is not sealed carries raw bytes after each side's L{BEGIN}.  Keys are Noise's two transport keys, one per direction, and
  nonces its counters, so a record changed, dropped, repeated or moved
  fails to authenticate, and a stream that stops without L{END} was cut.
"""

from __future__ import annotations

import functools
import platform

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relaynat.noise import MAX_MESSAGE, TAGLEN, CipherState, HandshakeState, NoiseError

#: Record kinds (the first plaintext byte of a record).
DATA, END, BEGIN, REFUSED = 0, 1, 2, 3
_KINDS = {DATA, END, BEGIN, REFUSED}

#: The most tunnel bytes one record carries: a Noise message's limit less
#: the tag and the kind byte.
MAX_BODY = MAX_MESSAGE - TAGLEN - 1

#: Cipher ids on the wire, in message 1's frame.
CIPHER_IDS = {1: "AESGCM", 2: "ChaChaPoly"}
_CIPHER_NUMBERS = {name: number for number, name in CIPHER_IDS.items()}

#: Message 2's payload: whether records follow, or raw bytes after BEGIN.
_SEALED, _UNSEALED = b"\x01", b"\x00"

#: The longest handshake frame either side accepts; the real ones are
#: 2 + 1 + 32 + 16 and 2 + 32 + 17 bytes.
_MAX_HANDSHAKE = 256


class SealBroken(Exception):
    """The far end sent what the seal does not accept: changed, cut or malformed."""


#: Why a tunnel ends when the skeleton's first record is L{REFUSED}.
TARGET_REFUSED = "the server's target refused the connection"


def tunnelPsk(secret: bytes) -> bytes:
    """The Noise pre-shared key of a server's secret."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"relaynat tunnel psk 1").derive(secret)


def prologue(serverId: str) -> bytes:
    return b"relaynat tunnel 1\0" + serverId.encode("ascii")


def protocolName(cipher: str) -> str:
    return f"Noise_NNpsk0_25519_{cipher}_SHA256"


@functools.cache
def preferredCipher() -> str:
    """AES-GCM where the CPU has AES instructions (about twice as fast), else ChaCha20."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "AESGCM"
    if platform.machine() in ("x86_64", "AMD64", "i686", "aarch64", "arm64"):
        words = set(flags.split())
        return "AESGCM" if "aes" in words else "ChaChaPoly"
    return "AESGCM"


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


class _FrameBuffer:
    """Bytes in, whole frames out, across any split."""

    def __init__(self, limit: int) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def take(self, data: bytes) -> bytes | None:
        """Add C{data}; return the first whole frame's message, if there is one."""
        self._buffer += data
        if len(self._buffer) < 2:
            return None
        length = int.from_bytes(self._buffer[:2], "big")
        if length > self._limit:
            raise SealBroken(f"a handshake message of {length} bytes")
        if len(self._buffer) < 2 + length:
            return None
        message = bytes(self._buffer[2 : 2 + length])
        del self._buffer[: 2 + length]
        return message

    def rest(self) -> bytes:
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest


class Sealed:
    """
    The outcome of a handshake: the record writer and reader of this end,
    whether the tunnel stays sealed after L{BEGIN}, and the bytes that came
    after the handshake in the same read.
    """

    def __init__(self, send: CipherState, receive: CipherState, sealed: bool, rest: bytes) -> None:
        self.writer = RecordWriter(send)
        self.reader = RecordReader(receive)
        self.sealed = sealed
        self.rest = rest


class ClientHandshake:
    """The client's side: message 1 out, message 2 in."""

    def __init__(self, secret: bytes, serverId: str, cipher: str | None = None) -> None:
        self.cipher = cipher or preferredCipher()
        self._state = HandshakeState(
            protocolName(self.cipher), True, prologue(serverId), [tunnelPsk(secret)]
        )
        self._frames = _FrameBuffer(_MAX_HANDSHAKE)

    def first(self) -> bytes:
        """Message 1, framed, with the cipher's id."""
        number = _CIPHER_NUMBERS[self.cipher]
        return frame(bytes([number]) + self._state.writeMessage(b""))

    def receive(self, data: bytes) -> Sealed | None:
        """
        Feed bytes from the skeleton; the seal once message 2 is whole and
        proves the secret.  Raises L{SealBroken} if it does not.
        """
        message = self._frames.take(data)
        if message is None:
            return None
        try:
            payload = self._state.readMessage(message)
        except NoiseError as e:
            raise SealBroken(f"the far end did not prove the server's secret ({e})") from None
        if payload not in (_SEALED, _UNSEALED):
            raise SealBroken("the far end's answer is malformed")
        assert self._state.result is not None
        send, receive = self._state.result
        return Sealed(send, receive, payload == _SEALED, self._frames.rest())


class SkeletonHandshake:
    """The skeleton's side for one server: message 1 in, message 2 out."""

    def __init__(self, secret: bytes, serverId: str, sealed: bool = True) -> None:
        self._psk = tunnelPsk(secret)
        self._prologue = prologue(serverId)
        self._sealed = sealed
        self._frames = _FrameBuffer(_MAX_HANDSHAKE)

    def receive(self, data: bytes) -> tuple[bytes, Sealed] | None:
        """
        Feed bytes from the client; once message 1 is whole, the framed
        message 2 to send and this end's seal.  Raises L{SealBroken} for a
        client that does not know the secret (or speaks nonsense).
        """
        message = self._frames.take(data)
        if message is None:
            return None
        if not message or message[0] not in CIPHER_IDS:
            raise SealBroken("the client's handshake names no known cipher")
        state = HandshakeState(
            protocolName(CIPHER_IDS[message[0]]), False, self._prologue, [self._psk]
        )
        try:
            state.readMessage(message[1:])
        except NoiseError as e:
            raise SealBroken(f"the client does not know the server's secret ({e})") from None
        reply = frame(state.writeMessage(_SEALED if self._sealed else _UNSEALED))
        assert state.result is not None
        receive, send = state.result
        return reply, Sealed(send, receive, self._sealed, self._frames.rest())


class RecordWriter:
    """Seals tunnel bytes into framed records, in order."""

    def __init__(self, cipher: CipherState) -> None:
        self.cipher = self._cipher = cipher
        self.ended = False

    def record(self, kind: int, body: bytes = b"") -> bytes:
        if self.ended:
            raise SealBroken("nothing may follow the end of a direction")
        if kind == END:
            self.ended = True
        return frame(self._cipher.encryptWithAd(b"", bytes([kind]) + body))

    def data(self, data: bytes) -> list[bytes]:
        """C{data} as one record per L{MAX_BODY} bytes."""
        if len(data) <= MAX_BODY:
            return [self.record(DATA, data)]
        view = memoryview(data)
        return [self.record(DATA, bytes(view[i : i + MAX_BODY])) for i in range(0, len(data), MAX_BODY)]


class RecordReader:
    """
    Opens framed records from any split of the stream.  Raises
    L{SealBroken} at the first record that fails to authenticate, is
    malformed, or follows L{END}.
    """

    def __init__(self, cipher: CipherState) -> None:
        self.cipher = self._cipher = cipher
        self._buffer = bytearray()
        self.ended = False

    def pending(self) -> int:
        """Bytes held of a record not yet whole."""
        return len(self._buffer)

    def feed(self, data: bytes, limit: int | None = None) -> list[tuple[int, bytes]]:
        """
        The records whole so far, at most C{limit} of them: the bytes after
        those stay unread (L{leftover}), for a stream that turns raw there.
        """
        self._buffer += data
        records: list[tuple[int, bytes]] = []
        position, size = 0, len(self._buffer)
        buffer = self._buffer
        while size - position >= 2 and (limit is None or len(records) < limit):
            length = (buffer[position] << 8) | buffer[position + 1]
            if size - position - 2 < length:
                break
            if self.ended:
                raise SealBroken("bytes after the end of the stream")
            try:
                plaintext = self._cipher.decryptWithAd(
                    b"", bytes(buffer[position + 2 : position + 2 + length])
                )
            except NoiseError:
                raise SealBroken("a record failed to authenticate") from None
            position += 2 + length
            if not plaintext or plaintext[0] not in _KINDS:
                raise SealBroken("a record of no known kind")
            kind = plaintext[0]
            if kind == END:
                self.ended = True
            records.append((kind, plaintext[1:]))
        del buffer[:position]
        if self.ended and buffer:
            raise SealBroken("bytes after the end of the stream")
        return records

    def leftover(self) -> bytes:
        """The bytes received but not read as records; forgotten here."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest
