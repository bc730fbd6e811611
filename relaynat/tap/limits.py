"""Process limits a server raises for itself at start-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

from twisted.logger import Logger

_log = Logger()


def raiseOpenFileLimit() -> int:
    """
    Raise the soft limit on open files to the hard limit: every tunnel holds
    two sockets in each role, and the usual soft limit of 1024 would cap a
    relay near 500 tunnels.  Returns the limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            _log.warn("could not raise the open-file limit from {soft}: {why}", soft=soft, why=e)
            return soft
        _log.info("open-file limit raised from {soft} to {hard}", soft=soft, hard=hard)
        return hard
    return soft


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keepBuffersOnHeap() -> bool:
    """
    Have glibc serve a tunnel's buffers (256 KiB reads, their records and
    joined writes) from the heap and reuse them, instead of mapping and
    unmapping memory for every read: past glibc's default threshold of
    128 KiB each one costs an mmap, an munmap and page faults.  Measured
    (bench/run.py --quick, two runs each): sealed bulk 331/403 and 400/372
    MB/s before, 584/591 and 634/604 after.  The cost is up to 8 MiB of
    freed heap kept for reuse.  Returns False where there is no glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 4 << 20) and mallopt(_M_TRIM_THRESHOLD, 8 << 20))
