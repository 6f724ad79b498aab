"""The factory of cgroup readers: which mode's Reader reads a cgroup (apart from the interface in
reader.py, which the per-controller modules import)."""

from __future__ import annotations

from cgagent.cgroups.fs import oom_counter as _read_counter

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.reader import Reader


def reader_for(dirs: dict[str, str]) -> Reader:
    """The reader of the cgroup at `dirs` (a record's, or any cgroup's: nothing here needs cgagent to
    have made it)."""
    if "" in dirs:
        from cgagent.cgroups.v2.reader import V2Reader

        return V2Reader(dirs)
    from cgagent.cgroups.v1.reader import V1Reader

    return V1Reader(dirs)


def oom_counter(dirs: dict[str, str]) -> tuple[int, int]:
    """reader_for(dirs).oom_counter() without the readers' imports: the end of every run reads it, and
    a launch should not pay for the read side (cgagent.cgroups.stats)."""
    if "" in dirs:
        from cgagent.cgroups.v2 import memory as v2

        return _read_counter(dirs[""], v2.OOM_FILE)
    from cgagent.cgroups.v1 import memory as v1

    d = dirs.get("memory")
    if d is None:
        raise FileNotFoundError(f"{dirs}: no memory cgroup")
    return _read_counter(d, v1.OOM_FILE)
