"""`cgagent attach NAME`: the terminal of a workload started with `run -dit`."""

from __future__ import annotations

from typing import Annotated

import typer

from cgagent.errors import CgagentError


def attach(
    name: Annotated[str, typer.Argument(help="A running workload started with -dit.")],
    state_dir: Annotated[str | None, typer.Option("--state-dir", envvar="CGAGENT_STATE_DIR",
                                                  help="Where records live (default /run/cgagent).")] = None,
) -> None:
    """Attach your terminal to a detached workload's (`run -dit`): your keys go to it, its output and
    window size follow yours. Ctrl-P Ctrl-Q detaches and leaves it running (exit code 0); when it
    ends, so does attach, with the workload's exit code (as docker attach).

    Example: cgagent run -dit --name box busybox sh; cgagent attach box
    """
    from cgagent import host, terminal
    from cgagent.runtime import live_status
    from cgagent.state import Store

    store = Store(state_dir)
    rec = store.load(name)
    if live_status(host.detect(), rec) != "running":
        raise CgagentError(f"workload {name!r} is not running", "see `cgagent ps -a`")
    if not rec.tty:
        raise CgagentError(f"workload {name!r} has no terminal to attach to",
                           "start it with -dit, or read its output with `cgagent logs -f`")
    terminal.check_input(True)
    try:
        detached = terminal.attach(store.tty_path(name))
    except OSError as e:
        raise CgagentError(f"cannot attach to {name!r}: {e.strerror or e}",
                           "only root or the workload's user may attach; see `cgagent ps`") from None
    if detached:
        print(f"\r\ndetached from {name} (it runs on)\r", flush=True)
        return
    from cgagent.runtime.control import wait

    # its terminal closed: it is ending, for good (-t excludes --restart)
    code = wait(store, host.detect(), name)
    raise typer.Exit(1 if code is None else code)
