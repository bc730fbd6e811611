"""Process limits a server raises for itself at start-up."""

from __future__ import annotations

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
