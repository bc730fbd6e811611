"""
The benchmark (bench/run.py): its verdicts on made-up results, and one quick
run of the paths that need nothing installed, end to end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(REPO, "bench", "run.py")


def loadRun() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = loadRun()


def results(bulk: float, setup: float, p99: float, ping: float, rss: float, growth: float) -> dict:
    """Made-up relaynat and ssh results, one repetition each."""
    relaynat = {
        "bulk_up": [{"mb_per_s": bulk}],
        "bulk_down": [{"mb_per_s": bulk}],
        "setup": [{"per_s": setup, "p99_ms": p99}],
        "ping": [{"p50_us": ping}],
        "hold": [{"rss_kb_per_conn": 3 * rss,
                  "relay_only": {"rss_kb_per_conn": rss, "pss_kb_per_conn": rss}}],
        "push": [{"rss_growth_mb": growth, "relay_only_rss_growth_mb": growth}],
    }
    ssh = {"bulk_up": [{"mb_per_s": 400}], "bulk_down": [{"mb_per_s": 400}],
           "ping": [{"p50_us": 500}]}
    return {"relaynat": relaynat, "ssh": ssh}


class TargetTests(SynchronousTestCase):
    def verdicts(self, **kw: float) -> list[str]:
        lines = BENCH.targets(results(**kw), {"hold": 1000})
        return [line.rsplit(": ", 1)[1] for line in lines if line.startswith("- ")]

    def test_allMet(self) -> None:
        """At every threshold exactly, each target is met."""
        self.assertEqual(
            self.verdicts(bulk=600, setup=1000, p99=4.9, ping=500, rss=30, growth=9.9),
            ["met"] * 6,
        )

    def test_allMissed(self) -> None:
        """Just past every threshold, each target is missed."""
        self.assertEqual(
            self.verdicts(bulk=599, setup=999, p99=4.9, ping=501, rss=30.1, growth=10),
            ["**missed**"] * 6,
        )

    def test_setupNeedsBoth(self) -> None:
        """Setup is met only with the rate and the p99 both."""
        verdict = self.verdicts(bulk=0, setup=5000, p99=5, ping=0, rss=0, growth=0)[2]
        self.assertEqual(verdict, "**missed**")

    def test_noSshRun(self) -> None:
        """Without an ssh run, the ratios say neither met nor missed."""
        made = results(bulk=600, setup=1000, p99=1, ping=1, rss=1, growth=1)
        del made["ssh"]
        lines = BENCH.targets(made, {"hold": 1000})
        self.assertTrue(lines[2].endswith(": —"), lines[2])


class FileLimitTests(SynchronousTestCase):
    def many(self, fds: int, emfile: int, ok: int = 9990, stalled: int = 0) -> dict[str, Any]:
        return {
            "count": 10000, "ok": ok, "log_emfile": emfile, "open": {"stalled": stalled},
            "roles": {"relay": {"fds": fds, "nofile": "20000/20000", "alive": True}},
        }

    def test_shortByTheLimit(self) -> None:
        self.assertTrue(BENCH.atFileLimit(self.many(fds=19990, emfile=10)))

    def test_otherFailures(self) -> None:
        """Failures not all logged as EMFILE, stalls, or room left: relaynat's fault."""
        self.assertFalse(BENCH.atFileLimit(self.many(fds=19990, emfile=9)))
        self.assertFalse(BENCH.atFileLimit(self.many(fds=19990, emfile=10, stalled=1)))
        self.assertFalse(BENCH.atFileLimit(self.many(fds=15000, emfile=10)))


class QuickRunTests(SynchronousTestCase):
    def test_quickRun(self) -> None:
        """
        bench/run.py --quick on the paths that need nothing installed
        (direct, portforward, relaynat) finishes, checks the bytes, and
        writes a table and a JSON file with every measurement of each path.
        """
        out = os.path.abspath(self.mktemp()) + ".json"
        done = subprocess.run(
            [sys.executable, RUN, "--quick", "--only", "direct,portforward,relaynat",
             "--no-many", "--json", out],
            capture_output=True, text=True, timeout=240, cwd=REPO,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-2000:] + done.stderr[-2000:])
        with open(out) as f:
            measured = json.load(f)["results"]
        tests = ["checked", "bulk_up", "bulk_down", "setup", "ping", "hold", "push"]
        for path in ("direct", "portforward", "relaynat"):
            self.assertEqual(sorted(measured[path]), sorted(tests), path)
            [checked] = measured[path]["checked"]
            self.assertTrue(checked["ok"], (path, checked))
            [hold] = measured[path]["hold"]
            self.assertEqual(hold["ok"], 100, (path, hold))
            [setup] = measured[path]["setup"]
            self.assertEqual(setup["failed"], 0, (path, setup))
        with open(out[: -len(".json")] + ".md") as f:
            table = f.read()
        self.assertIn("| relaynat |", table)
        self.assertIn("backpressure RSS growth < 10 MB", table)
