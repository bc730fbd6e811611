"""
The systemd units in debian/: each starts its role's twistd plugin on the
shipped configuration's name, gives the open-file limit a relay needs, and
passes C{systemd-analyze verify} where systemd is installed.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import tempfile

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SkipTest, TestCase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNITS = os.path.join(REPO, "debian")
ROLES = ("relay", "skeleton", "client")
TWISTD = "/opt/venvs/relaynat/bin/twistd"


def readUnit(role: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    with open(os.path.join(UNITS, f"relaynat-{role}.service")) as f:
        unit.read_file(f)
    return unit


class UnitTests(TestCase):
    def test_execStart(self) -> None:
        """
        Each unit runs twistd in the foreground, without a pid file, with
        its role's plugin and /etc/relaynat/ROLE.toml, a file conf/ ships.
        """
        plugins = {maker.tapname for maker in getPlugins(IServiceMaker)}
        for role in ROLES:
            argv = shlex.split(readUnit(role)["Service"]["ExecStart"])
            self.assertEqual(argv[:3], [TWISTD, "--nodaemon", "--pidfile="])
            self.assertEqual(argv[3:], [role, "--config", f"/etc/relaynat/{role}.toml"])
            self.assertIn(role, plugins)
            self.assertTrue(os.path.exists(os.path.join(REPO, "conf", f"{role}.toml")))

    def test_openFileLimit(self) -> None:
        """A hard limit far above systemd's soft 1024: two sockets per tunnel."""
        for role in ROLES:
            soft, hard = readUnit(role)["Service"]["LimitNOFILE"].split(":")
            self.assertGreaterEqual(int(hard), 65536)

    def test_reload(self) -> None:
        """
        Every role reloads on SIGHUP (the relay its users, a skeleton its
        servers, a client its tunnels), and each unit's reload sends it.
        """
        for role in ROLES:
            self.assertEqual(
                readUnit(role)["Service"]["ExecReload"], "/bin/kill -HUP $MAINPID", role
            )

    def test_systemdAccepts(self) -> None:
        """
        systemd-analyze verify finds nothing to say about any unit (with
        ExecStart pointed at an existing twistd, which it checks).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        twistd = shutil.which("twistd") or "/bin/true"
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        paths = []
        for role in ROLES:
            with open(os.path.join(UNITS, f"relaynat-{role}.service")) as f:
                text = f.read().replace(TWISTD, twistd)
            paths.append(os.path.join(directory, f"relaynat-{role}.service"))
            with open(paths[-1], "w") as f:
                f.write(text)
        result = subprocess.run(
            [analyze, "verify", *paths], capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stderr.strip()), (0, ""))
