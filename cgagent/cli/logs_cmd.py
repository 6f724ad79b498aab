"""`cgagent logs [-f] NAME`: the output of a detached workload, kept by its supervisor."""

from __future__ import annotations

import os
import select
import sys
from typing import Annotated

import typer


def logs(
    name: Annotated[str, typer.Argument(help="The workload.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the workload ends for good "
                                         "(its supervisor exits).")] = False,
    tail: Annotated[str | None, typer.Option("--tail", "-n", help="Only the last N lines (then, with -f, what "
                                             "follows); N or all.")] = None,
    state_dir: Annotated[str | None, typer.Option("--state-dir", envvar="CGAGENT_STATE_DIR",
                                                  help="Where records live (default /run/cgagent).")] = None,
) -> None:
    """Print a detached workload's output (stdout and stderr, in order).

    Example: cgagent logs -f --tail 20 web
    """
    from cgagent import procs
    from cgagent.state import Store, parse_tail, seek_tail

    lines = parse_tail(tail)
    store = Store(state_dir)
    found = store.read_log(name)
    if found is None:
        return
    rec, path = found
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        seek_tail(f, lines)
        _copy(f, out)
        if not follow or not procs.alive(rec.supervisor_pid, rec.supervisor_start):
            return
        assert rec.supervisor_pid is not None
        from cgagent.inotify import IN_MODIFY, Inotify

        ino = Inotify()
        ino.add(path, IN_MODIFY)
        try:
            sup = os.pidfd_open(rec.supervisor_pid)
        except ProcessLookupError:
            _copy(f, out)
            return
        try:
            while True:
                ready = select.select([ino.fd, sup], [], [])[0]
                for _ in ino.read():
                    pass
                _copy(f, out)
                if sup in ready:   # the supervisor is gone: nothing more will be written
                    _copy(f, out)
                    return
        finally:
            os.close(sup)
            ino.close()


def _copy(f: object, out: object) -> None:
    while chunk := f.read(65536):  # type: ignore[attr-defined]
        out.write(chunk)  # type: ignore[attr-defined]
    out.flush()  # type: ignore[attr-defined]
