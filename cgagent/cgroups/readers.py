"""The factory of cgroup readers: which mode's Reader reads a cgroup (apart from the interface in
reader.py, which the per-controller modules import)."""

from __future__ import annotations

from cgagent.cgroups.reader import Reader


def reader_for(dirs: dict[str, str]) -> Reader:
    """The reader of the cgroup at `dirs` (a record's, or any cgroup's: nothing here needs cgagent to
    have made it)."""
    if "" in dirs:
        from cgagent.cgroups.v2.reader import V2Reader

        return V2Reader(dirs)
    from cgagent.cgroups.v1.reader import V1Reader

    return V1Reader(dirs)
