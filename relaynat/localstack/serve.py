"""
A local stack as a process of its own, for a program that has no reactor
(C{bench/run.py}, C{bench/rtt.py}): the three roles started by L{LocalStack},
as the demo starts them, from the files L{writeConfigs} and
L{writeKeysAndUsers} left in a folder, and kept up until SIGTERM.

    python -m relaynat.localstack serve DIR [--ready FILE] [--netns ROLE=NAME]...

Once the relay lists every server of the skeleton, it prints one JSON line
(L{announcement}: this process's pid, each role's pid, the ports) and writes
it to FILE, replaced whole, so that a reader never sees half of it.  SIGUSR1
restarts the client (C{bench/rtt.py} times a fresh client's first tunnel) and
the line is written again with the new pid.  A role that does not start, or
that ends on its own, stops the others, and this process exits 1 with what
that role said last.  On SIGTERM or SIGINT it stops the client, the skeleton,
then the relay, in L{STOP_BOUND} seconds at most.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react

from relaynat.localstack import ROLES, ChildProcess, LocalStack, LocalStackError

#: Seconds each role has to end after SIGTERM, before SIGKILL (which
#: L{ChildProcess.stop} gives 5 seconds more).
STOP_TIMEOUT = 5.0
#: The longest this process takes to stop once told to: every role's bound.
STOP_BOUND = len(ROLES) * (STOP_TIMEOUT + 5.0)
#: Seconds from the start to the relay listing the skeleton's servers.
START_TIMEOUT = 60.0
#: The longest from the start to the line, or to the exit that says why not.
READY_BOUND = START_TIMEOUT + STOP_BOUND


def serveArgv(
    workDir: str, ready: str, namespaces: Mapping[str, str] | None = None
) -> list[str]:
    """
    The command that serves the stack in C{workDir} with this Python (run it
    with L{childEnvironment}, so that it runs this checkout), its line
    written to C{ready}, each role of C{namespaces} in that network namespace.
    """
    argv = [sys.executable, "-m", "relaynat.localstack", "serve", workDir, "--ready", ready]
    for role, name in (namespaces or {}).items():
        argv += ["--netns", f"{role}={name}"]
    return argv


def readReady(path: str) -> dict[str, Any]:
    """
    The line a stack served with C{--ready PATH} wrote; L{OSError} until it
    has (a poll's "not yet").
    """
    with open(path, encoding="utf-8") as f:
        announced: dict[str, Any] = json.load(f)
    return announced


def announcement(stack: LocalStack) -> dict[str, Any]:
    """What a served stack says once it is up: the pids, and the ports to reach it by."""
    configs = stack.configs
    return {
        "pid": os.getpid(),
        "pids": {role: child.pid for role, child in stack.children.items()},
        "ports": {
            "clients": configs.clientsPort,
            "skeletons": configs.skeletonsPort,
            "web": configs.webPort,
            "tunnels": list(configs.tunnelPorts),
        },
    }


def _announce(stack: LocalStack, ready: str | None) -> None:
    line = json.dumps(announcement(stack))
    if ready is not None:
        partial = ready + ".partial"
        with open(partial, "w", encoding="utf-8") as f:
            f.write(line + "\n")
        os.replace(partial, ready)
    print(line, flush=True)


async def serve(
    reactor: Any, workDir: str, ready: str | None, namespaces: Mapping[str, str]
) -> None:
    """Run the stack in C{workDir} until SIGTERM or SIGINT; exits 1 if a role fails."""
    try:
        stack = LocalStack(reactor, workDir, namespaces=namespaces)
    except LocalStackError as e:
        print(f"relaynat local stack: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    done: Deferred[None] = Deferred()
    stopping = [False]

    async def shutdown(failure: str | None = None) -> None:
        # On a failure, and by the reactor on SIGTERM or SIGINT (which waits
        # for it); only the first one acts.
        if stopping[0]:
            return
        stopping[0] = True
        await stack.stop(STOP_TIMEOUT)
        if failure is not None:
            print(failure, file=sys.stderr, flush=True)
            done.errback(SystemExit(1))
        else:
            done.callback(None)

    def ended(child: ChildProcess) -> None:
        # A child that is no longer the stack's was stopped to be restarted.
        if stack.children.get(child.name) is child and not stopping[0]:
            ensureDeferred(shutdown(
                f"relaynat local stack: the {child.name} process {child.describeEnd()}:\n"
                + child.tail()
            ))

    def watch(child: ChildProcess) -> None:
        child.ended().addCallback(lambda _: ended(child))

    async def restartClient() -> None:
        if stopping[0]:
            return
        try:
            watch(await stack.restart("client", STOP_TIMEOUT))
        except LocalStackError:
            return  # stopping meanwhile: nothing to announce
        _announce(stack, ready)

    reactor.addSystemEventTrigger("before", "shutdown", lambda: ensureDeferred(shutdown()))
    signal.signal(
        signal.SIGUSR1,
        lambda signum, frame: reactor.callFromThread(lambda: ensureDeferred(restartClient())),
    )
    stack.start()
    try:
        await stack.waitRegistered(START_TIMEOUT)
    except LocalStackError as e:
        await shutdown(f"relaynat local stack: {e}")
        await done
        return
    for child in stack.children.values():
        watch(child)
    _announce(stack, ready)
    await done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m relaynat.localstack",
        description="Run a local stack (relay, skeleton, client) as a process of its own.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "serve",
        help="start the three roles from the files in DIR and keep them up until SIGTERM",
    )
    command.add_argument("dir", help="the folder writeConfigs and writeKeysAndUsers filled")
    command.add_argument("--ready", metavar="FILE", help="write the JSON line here too")
    command.add_argument(
        "--netns",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="run ROLE in network namespace NAME (ip netns exec); repeatable",
    )
    options = parser.parse_args(argv)
    namespaces: dict[str, str] = {}
    for item in options.netns:
        role, _, name = item.partition("=")
        if role not in ROLES or not name:
            parser.error(f"--netns takes ROLE=NAME with ROLE one of {', '.join(ROLES)}")
        namespaces[role] = name
    react(lambda reactor: ensureDeferred(serve(reactor, options.dir, options.ready, namespaces)))
