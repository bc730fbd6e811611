"""
The relay is blind: with the real C{twistd} processes, a known pattern
pushed through a sealed tunnel is found nowhere in the relay process's
memory, while the client, which reads it in the clear, holds it.
"""

from __future__ import annotations

import os
import re
import secrets

from twisted.internet.protocol import Factory
from twisted.trial.unittest import SkipTest

from relaynat.test.net import pollUntil as waitFor
from relaynat.test.net import runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.test.test_twistd import TwistdStack

_REGION = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (r)")


def occurrences(pid: int, pattern: bytes) -> int:
    """How often C{pattern} is in the readable memory of process C{pid}."""
    found = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            match = _REGION.match(line)
            if match is None or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            start, end = int(match.group(1), 16), int(match.group(2), 16)
            position, carry = start, b""
            while position < end:
                size = min(end - position, 1 << 22)
                try:
                    mem.seek(position)
                    chunk = mem.read(size)
                except OSError:
                    break
                data = carry + chunk
                found += data.count(pattern)
                # A pattern across the chunk boundary is counted once: keep
                # less than its length.
                carry = data[-(len(pattern) - 1) :]
                position += size
    return found


class BlindRelayTests(TwistdStack):
    """Memory of the real processes, read from /proc as root."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("reading another process's memory needs root here")

    @runAsync
    async def test_relayHoldsNoPlaintext(self) -> None:
        """
        2 MB of a random pattern through a sealed tunnel, echoed back: the
        relay's memory holds not one copy of the pattern, the client's does
        (so the scan would have found it).
        """
        stack = await self.startStack(Factory.forProtocol(Echo))
        pattern = b"relaynat canary " + secrets.token_hex(16).encode()
        message = pattern * (2_000_000 // len(pattern))
        collector = Collect(message)
        await stack.connectTunnel(collector)
        await waitFor(lambda: sum(map(len, collector.received)) == len(message), timeout=30)
        relayPid, clientPid = stack.children["relay"].pid, stack.children["client"].pid
        assert relayPid is not None and clientPid is not None
        self.assertEqual(occurrences(relayPid, pattern), 0)
        self.assertGreater(occurrences(clientPid, pattern), 0)
        assert collector.transport is not None
        collector.transport.loseConnection()
        await collector.finished
