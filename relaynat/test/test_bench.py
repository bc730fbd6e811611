"""
The benchmarks (bench/run.py, bench/rtt.py): their verdicts on made-up
results, and one quick run of bench/run.py on the paths that need nothing
installed, end to end.  Nothing here needs root or apt.
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
RTT = os.path.join(REPO, "bench", "rtt.py")


def loadModule(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first, as importlib's recipe does: dataclasses look their
    # module up while the module runs.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


BENCH = loadModule("bench_run", RUN)
ROUND_TRIPS = loadModule("bench_rtt", RTT)


def rates(up: float, down: float | None = None, **extra: Any) -> dict[str, list[dict]]:
    """One repetition of bulk up and down at these MB/s."""
    return {"bulk_up": [{"mb_per_s": up, **extra}],
            "bulk_down": [{"mb_per_s": up if down is None else down, **extra}]}


def results(bulk: float, setup: float, p99: float, ping: float, rss: float, growth: float,
            cpu: float = 0.5, openBulk: float = 1000) -> dict:
    """
    Made-up results, one repetition each: relaynat, and the paths it is held
    against (ssh 400 MB/s, socat x2 800, haproxy x2 900 and with splicing
    1000), relaynat-open at C{openBulk} MB/s.
    """
    relaynat = {
        **rates(bulk, relay_only_cpu_s_per_gb=cpu),
        "setup": [{"per_s": setup, "p99_ms": p99}],
        "ping": [{"p50_us": ping}],
        "hold": [{"rss_kb_per_conn": 3 * rss,
                  "relay_only": {"rss_kb_per_conn": rss, "pss_kb_per_conn": rss}}],
        "push": [{"rss_growth_mb": growth, "relay_only_rss_growth_mb": growth}],
    }
    ssh = {**rates(400), "ping": [{"p50_us": 500}]}
    return {"relaynat": relaynat, "ssh": ssh, "socat": rates(800), "haproxy": rates(900),
            "haproxy-splice": rates(1000), "relaynat-open": rates(openBulk)}


class TargetTests(SynchronousTestCase):
    def verdicts(self, made: dict | None = None, **kw: float) -> list[str]:
        lines = BENCH.targets(made or results(**kw), {"hold": 1000})
        return [line.rsplit(": ", 1)[1] for line in lines if line.startswith("- ")]

    def test_allMet(self) -> None:
        """At every threshold exactly, each target is met."""
        self.assertEqual(
            self.verdicts(bulk=800, setup=1000, p99=4.9, ping=500, rss=16, growth=9.9,
                          cpu=0.5, openBulk=1000),
            ["met"] * 11,
        )

    def test_allMissed(self) -> None:
        """Just past every threshold, each target is missed."""
        verdicts = self.verdicts(bulk=799, setup=999, p99=4.9, ping=501, rss=16.1, growth=10,
                                 cpu=0.51, openBulk=999)
        self.assertEqual(verdicts[:2], ["**missed** (the must, 1.5×, met)"] * 2)
        self.assertEqual(verdicts[2:], ["**missed**"] * 9)

    def test_bulkMust(self) -> None:
        """Against ssh, 1.5× meets the must and misses the target; less misses both."""
        def ssh(bulk: float) -> list[str]:
            return self.verdicts(bulk=bulk, setup=0, p99=0, ping=0, rss=0, growth=0)[:2]

        self.assertEqual(ssh(600), ["**missed** (the must, 1.5×, met)"] * 2)
        self.assertEqual(ssh(599), ["**missed** (the must, 1.5×, too)"] * 2)

    def test_fasterHaproxy(self) -> None:
        """relaynat-open is held against the faster haproxy pair, in each direction."""
        made = results(bulk=800, setup=1000, p99=1, ping=1, rss=1, growth=1, openBulk=1100)
        made["haproxy"] = rates(1200, 900)
        self.assertEqual(self.verdicts(made)[4:6], ["**missed**", "met"])
        lines = BENCH.targets(made, {"hold": 1000})
        self.assertIn("haproxy-splice): 1100 vs 1000 MB/s", lines[7])

    def test_relayCpuBothWays(self) -> None:
        """The relay's CPU target needs both directions within the bound."""
        made = results(bulk=800, setup=1000, p99=1, ping=1, rss=1, growth=1)
        made["relaynat"]["bulk_down"][0]["relay_only_cpu_s_per_gb"] = 0.6
        self.assertEqual(self.verdicts(made)[6], "**missed**")

    def test_setupNeedsBoth(self) -> None:
        """Setup is met only with the rate and the p99 both."""
        verdict = self.verdicts(bulk=0, setup=5000, p99=5, ping=0, rss=0, growth=0)[7]
        self.assertEqual(verdict, "**missed**")

    def test_noSshRun(self) -> None:
        """Without an ssh run, the ratios say neither met nor missed."""
        made = results(bulk=600, setup=1000, p99=1, ping=1, rss=1, growth=1)
        del made["ssh"]
        lines = BENCH.targets(made, {"hold": 1000})
        self.assertTrue(lines[2].endswith(": —"), lines[2])

    def test_noPeers(self) -> None:
        """relaynat alone: every comparison with another path says neither."""
        made = {"relaynat": results(bulk=800, setup=1000, p99=1, ping=1, rss=1,
                                    growth=1)["relaynat"]}
        self.assertEqual(self.verdicts(made)[:6], ["—"] * 6)


class RoundTripTargetTests(SynchronousTestCase):
    def verdicts(self, p50: float | None, first: float | None) -> list[str]:
        lines = ROUND_TRIPS.targets(100.0, 1.0, p50, first)
        return [line.rsplit(": ", 1)[1] for line in lines]

    def test_atTheBounds(self) -> None:
        """1.1 round trips plus the server's time, and 2 round trips more, are met."""
        self.assertEqual(self.verdicts(111.0, 311.0), ["met", "met"])

    def test_pastTheBounds(self) -> None:
        """A tenth of a millisecond past either bound misses it."""
        self.assertEqual(self.verdicts(111.1, 311.1), ["**missed**", "**missed**"])

    def test_notMeasured(self) -> None:
        """Without relaynat's figures, neither met nor missed."""
        self.assertEqual(self.verdicts(None, None), ["—", "—"])

    def test_inRoundTrips(self) -> None:
        """A TTFB in round trips leaves the server's own time out."""
        self.assertEqual(ROUND_TRIPS.inRtts(201.0, 100.0, 1.0), 2.0)
        self.assertIsNone(ROUND_TRIPS.inRtts(None, 100.0, 1.0))


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
