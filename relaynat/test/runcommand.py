"""Running a C{relaynat} subcommand in this process, for the tools' tests."""

from __future__ import annotations

from io import StringIO

from relaynat.cli import parse, runLocal


def command(*argv: str) -> tuple[int, str, str]:
    """Parse and run a C{relaynat} command in process: status, stdout, stderr."""
    invocation = parse(argv)
    out, err = StringIO(), StringIO()
    code = runLocal(invocation.name, invocation.options, out, err)
    return code, out.getvalue(), err.getvalue()
