"""
A bounded HTTP download, with one deadline for all of it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from relaynat import __version__
from relaynat.scripts.command import CommandFailed


#: The most C{trust} reads: a certificate is a few hundred bytes.
MAX_DOWNLOAD = 64 * 1024

async def download(reactor: Any, url: str, timeout: float) -> bytes:
    """The body of a successful GET of C{url}, in at most C{timeout} seconds."""
    try:
        return await _fetch(reactor, url, timeout)
    except CommandFailed:
        raise
    except TooLarge:
        raise CommandFailed(
            f"cannot download {url}: the answer is larger than {MAX_DOWNLOAD} bytes,"
            " too large for a certificate"
        ) from None
    except ResponseFailed as e:
        reasons = "; ".join(reason.getErrorMessage() for reason in e.reasons)
        raise CommandFailed(f"cannot download {url}: {reasons}") from None
    except Exception as e:
        # The network's failures come in many types (refused, no such host,
        # TLS, a malformed answer); each says what went wrong in its text.
        raise CommandFailed(f"cannot download {url}: {e}") from None


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
            raise CommandFailed(f"cannot download {url}: the server answered {response.code} {phrase}")
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
            raise CommandFailed(
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
