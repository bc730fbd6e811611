"""
One leg of the round-trip benchmark's network (bench/rtt.py): the TUN device
DEV_A of namespace NS_A joined to DEV_B of NS_B by this user-space loop, which
holds every packet DELAY seconds before passing it on, both ways.  This
kernel has no sch_netem; a leg made of two TUN devices and this loop has the
delay of a long link, nothing else (no loss, no rate limit, no reordering).

    python delayline.py --delay 0.025 NS_A DEV_A NS_B DEV_B

Both descriptors are opened from this one process, each in its namespace
(bench/netns.py: setns for the opening thread only).  It prints "ready" once
both are open, then runs until SIGTERM, or until the process that started it
ends; it prints how many packets it carried when it stops.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import sys
import time
from collections import deque
from types import FrameType

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import netns  # noqa: E402

PR_SET_PDEATHSIG = 1
#: More than any packet a TUN device of MTU 1500 hands over.
PACKET = 65536


class DelayLine:
    """Two TUN descriptors; what one reads is written to the other C{delay} seconds later."""

    def __init__(self, a: int, b: int, delay: float) -> None:
        self.peer = {a: b, b: a}
        self.delay = delay
        # One queue for both directions: with one delay for all, release
        # times come in the order packets arrived.
        self.held: deque[tuple[float, int, bytes]] = deque()
        self.carried = self.dropped = 0

    def release(self, now: float) -> None:
        while self.held and self.held[0][0] <= now:
            _, out, packet = self.held.popleft()
            try:
                os.write(out, packet)
                self.carried += 1
            except OSError:
                # What a full or downed link does: the packet is lost.
                self.dropped += 1

    def receive(self, fd: int) -> None:
        while True:
            try:
                packet = os.read(fd, PACKET)
            except BlockingIOError:
                return
            self.held.append((time.monotonic() + self.delay, self.peer[fd], packet))

    def run(self) -> None:
        poller = select.epoll()
        for fd in self.peer:
            poller.register(fd, select.EPOLLIN)
        while True:
            now = time.monotonic()
            self.release(now)
            timeout = max(0.0, self.held[0][0] - now) if self.held else None
            for fd, _ in poller.poll(timeout):
                self.receive(fd)


def stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, required=True, help="seconds each way")
    parser.add_argument("nsA")
    parser.add_argument("devA")
    parser.add_argument("nsB")
    parser.add_argument("devB")
    args = parser.parse_args()
    parent = os.getppid()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it ended before prctl took effect
        return
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    line = DelayLine(netns.openTun(args.nsA, args.devA), netns.openTun(args.nsB, args.devB),
                     args.delay)
    print("ready", flush=True)
    try:
        line.run()
    finally:
        print(f"carried {line.carried} packets, dropped {line.dropped}", flush=True)


if __name__ == "__main__":
    main()
