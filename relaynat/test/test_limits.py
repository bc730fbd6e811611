"""The roles raise their own open-file limit at start-up."""

from __future__ import annotations

import resource

from twisted.trial.unittest import SynchronousTestCase

from relaynat.tap.limits import raiseOpenFileLimit


class OpenFileLimitTests(SynchronousTestCase):
    """L{raiseOpenFileLimit}."""

    def test_raisedToHard(self) -> None:
        """A soft limit below the hard one is raised to the hard one."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard == resource.RLIM_INFINITY or hard <= 256:
            raise self.skipTest(f"hard limit {hard} leaves nothing to raise")
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        self.assertEqual(raiseOpenFileLimit(), hard)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))
