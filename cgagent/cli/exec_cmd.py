"""`cgagent exec NAME -- CMD`."""

from __future__ import annotations

from typing import Annotated

import typer

from cgagent.cli.options import PRESERVE_FDS_HELP
from cgagent.errors import CgagentError


def exec_(
    name: Annotated[str, typer.Argument(help="The running workload.")],
    cmd: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Set KEY=VALUE (repeatable).")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="USER[:GROUP] or UID[:GID] inside.")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w", help="Working directory inside.")] = None,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Keep stdin open (with -t: your keys go "
                                              "to its terminal).")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Give CMD a terminal of its own: exec -it web sh.")] = False,
    preserve_fds: Annotated[int, typer.Option("--preserve-fds", help=PRESERVE_FDS_HELP, show_default=False)] = 0,
    state_dir: Annotated[str | None, typer.Option("--state-dir", envvar="CGAGENT_STATE_DIR",
                                                  help="Where records live (default /run/cgagent).")] = None,
) -> None:
    """Run CMD inside a running workload: its cgroup, its namespaces, its root, its privileges.

    Exit codes, as `run`'s and Docker's: the command's own; 125 when cgagent itself fails (usage, bad
    input, no such workload); 126 when the command cannot be executed; 127 when it is not found.

    Example: cgagent exec web -- ps

    Example: cgagent exec -it web sh
    """
    from cgagent import host
    from cgagent.isolation import enter
    from cgagent.launch import preserve_fds as preserve_fds_count
    from cgagent.runtime import live_status, manager, require_root
    from cgagent.state import Store

    require_root("cgagent exec")
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    h = host.detect()
    rec = Store(state_dir).load(name)
    if live_status(h, rec) != "running":
        raise CgagentError(f"workload {name!r} is not running", "see `cgagent ps -a`")
    keep = preserve_fds_count(preserve_fds)
    raise typer.Exit(enter.run(manager(h, rec), rec.isolation, cmd, env or [], user, workdir, keep, tty, interactive))
