"""`cgagent logs [-f] NAME`: the output of a detached workload, kept by its supervisor."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

if TYPE_CHECKING:
    from cgagent.logtime import LogReader


def logs(
    name: Annotated[str, typer.Argument(help="The workload.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the workload ends for good "
                                         "(its supervisor exits).")] = False,
    tail: Annotated[str | None, typer.Option("--tail", "-n", help="Only the last N lines (then, with -f, what "
                                             "follows); N or all.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only lines written since then: an RFC 3339 time "
                                              "(2024-05-01T10:00:00Z), Unix seconds, or a duration (10m).")] = None,
    timestamps: Annotated[bool, typer.Option("--timestamps", "-t", help="Begin each line with the time it was "
                                             "written (RFC 3339 UTC, nanoseconds).")] = False,
    state_dir: Annotated[str | None, typer.Option("--state-dir", envvar="CGAGENT_STATE_DIR",
                                                  help="Where records live (default /run/cgagent).")] = None,
) -> None:
    """Print a detached workload's output (stdout and stderr, in order).

    Example: cgagent logs -f --tail 20 --since 10m --timestamps web
    """
    from cgagent import procs
    from cgagent.logtime import LogReader, parse_since
    from cgagent.state import Store, parse_tail, seek_tail

    lines, since_ns = parse_tail(tail), parse_since(since)
    store = Store(state_dir)
    found = store.read_log(name)
    if found is None:
        return
    rec, path = found
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        seek_tail(f, lines)
        reader = LogReader(f, store.index_path(name), timestamps)
        reader.seek_since(since_ns)
        live = follow and procs.alive(rec.supervisor_pid, rec.supervisor_start)
        _copy(reader, out, final=not live)
        if not live:
            return
        from cgagent.inotify import IN_MODIFY, Follow
        from cgagent.wakeup import readable

        sup = procs.pidfd(rec.supervisor_pid, rec.supervisor_start)
        if sup is None:   # it has exited since
            _copy(reader, out, final=True)
            return
        try:
            with Follow([(path, IN_MODIFY)]) as watch:
                _copy(reader, out, final=False)   # what was written before the watch began
                while True:
                    ready = readable([*watch.fds, sup], watch.timeout)   # Ctrl-C ends it, whenever it comes
                    watch.drain()
                    # the supervisor is gone: nothing more will be written
                    _copy(reader, out, final=sup in ready)
                    if sup in ready:
                        return
        finally:
            os.close(sup)


def _copy(reader: LogReader, out: BinaryIO, final: bool) -> None:
    for chunk in reader.chunks(final):
        out.write(chunk)
    out.flush()
