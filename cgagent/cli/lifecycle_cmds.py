"""The lifecycle commands docker users type: top, kill, wait, port, restart (and inspect's --format).
They take the direct path (the agent's API does not offer them: the thin client hands them here)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cgagent.cli import options
from cgagent.procopts import STOP_TIME_HELP

StateDir = Annotated[str | None, typer.Option("--state-dir", envvar="CGAGENT_STATE_DIR", help=options.STATE_DIR_HELP)]
Names = Annotated[list[str], typer.Argument(help="Workloads (one or more names).")]


def _store(state_dir: str | None) -> Any:
    from cgagent.state import Store

    return Store(state_dir)


def _host() -> Any:
    from cgagent import host

    return host.detect()


def top(
    name: Annotated[str, typer.Argument(help="The workload.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of columns.")] = False,
    state_dir: StateDir = None,
) -> None:
    """List the processes in a workload's cgroup (as docker top): PID, PPID, USER, CPU TIME, CMD.

    Example: cgagent top web
    """
    from cgagent.api.views import top_rows

    rows = top_rows(_store(state_dir), _host(), name)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    cols = ["PID", "PPID", "USER", "TIME", "CMD"]
    cells = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols) - 1)]
    for row in cells:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "   " + row[-1])


def kill(
    names: Names,
    sig: Annotated[str, typer.Option("--signal", "-s", help="Signal name or number (KILL, SIGHUP, 15 ...).")] = "KILL",
    state_dir: StateDir = None,
) -> None:
    """Send a signal (default KILL) to each workload's main process, as docker kill. Its --restart
    policy applies to the exit as to any other.

    Example: cgagent kill -s HUP web
    """
    from cgagent.cli.each import each
    from cgagent.runtime.control import kill as do_kill
    from cgagent.runtime.control import parse_signal

    num = parse_signal(sig)   # before any name: a bad signal is one line and nothing is sent
    store, h = _store(state_dir), _host()
    raise typer.Exit(each(names, lambda n: do_kill(store, h, n, num)))


def wait(names: Names, state_dir: StateDir = None) -> None:
    """Block until each workload has exited for good (after its restarts), then print its exit code
    (-1: it ended without one being recorded).

    Example: cgagent run -d --name job -- make; cgagent wait job
    """
    from cgagent.runtime.control import wait as do_wait

    store, h = _store(state_dir), _host()
    for n in names:
        store.load(n)   # every name checked before blocking on the first
    for n in names:
        code = do_wait(store, h, n)
        print(-1 if code is None else code, flush=True)


def port(
    name: Annotated[str, typer.Argument(help="The workload.")],
    private: Annotated[str | None, typer.Argument(help="Only this port: PORT, PORT/tcp or PORT/udp.")] = None,
    state_dir: StateDir = None,
) -> None:
    """List a workload's published ports (as docker port): 80/tcp -> 0.0.0.0:8080.

    Example: cgagent port web 80
    """
    from cgagent.api.views import port_lines

    for line in port_lines(_store(state_dir), name, private):
        print(line)


def restart(
    names: Names,
    time_: Annotated[float | None, typer.Option("--time", "-t", help=STOP_TIME_HELP)] = None,
    state_dir: StateDir = None,
) -> None:
    """Stop each workload (if it runs) and start it again from its record, detached, as docker
    restart; an exited workload is started again, and so is one left created by a killed `run -d`
    or `restart`. The new run starts once the old run's
    supervisor has exited (waited for up to 60 s). Limits are those it has now (after `update`);
    its cgroup, overlay and network connection are made anew (files it wrote in its overlay are
    gone: cgagent removes them at every exit). A workload run with --rm cannot restart.

    Example: cgagent restart web
    """
    from cgagent.cli.each import each
    from cgagent.runtime.restart import restart as do_restart

    if time_ is not None and time_ < 0:
        from cgagent.errors import CgagentError

        raise CgagentError(f"--time {time_:g} is negative", "give the seconds to wait, e.g. -t 10")
    store, h = _store(state_dir), _host()
    raise typer.Exit(each(names, lambda n: do_restart(store, h, n, time_)))
