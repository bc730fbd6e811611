"""Running a C{relaynat} subcommand in this process, for the tools' tests."""

from __future__ import annotations

from io import StringIO

from relaynat.cli import Options, runLocal


def command(*argv: str) -> tuple[int, str, str]:
    """Parse and run a C{relaynat} command in process: status, stdout, stderr."""
    options = Options()
    options.parseOptions(list(argv))
    assert options.subCommand is not None
    out, err = StringIO(), StringIO()
    code = runLocal(options.subCommand, options.subOptions, out, err)
    return code, out.getvalue(), err.getvalue()
