"""Every cgroup below a root, with its directory in each hierarchy it is in: how the exporter finds the
cgroups under a --watch-cgroup root (cgagent made none of them: only reading is done here)."""

from __future__ import annotations

import os
from typing import NamedTuple

from cgagent.cgroups import _rel
from cgagent.host import Host

# The v1 hierarchies the readers report from (cpuset/freezer/... hold nothing they read).
V1_READ = ("cpu", "cpuacct", "memory", "pids", "blkio")
# The hierarchy whose path is a cgroup's `id`, the same order Record.cgroup is computed in.
V1_ID_ORDER = ("cpu", "memory", "pids", "cpuacct", "blkio")


class Found(NamedTuple):
    id: str                 # the cgroup's path inside its hierarchy
    dirs: dict[str, str]    # controller -> absolute directory ("" on v2), as records keep it
    gen: int                # the directory's inode: a cgroup re-created under the same path differs


def walk(base: str) -> dict[str, int]:
    """Relative path -> inode of `base` ("") and every cgroup below it; {} when base does not exist.
    The inode tells a cgroup re-created under the same path apart. A cgroup directory's link count
    is 2 + its subdirectories, so a leaf costs one stat instead of a listing of its ~30 files."""
    try:
        out = {"": os.stat(base).st_ino}
    except (FileNotFoundError, NotADirectoryError):
        return {}
    stack = [("", base)]
    while stack:
        rel, d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while walking: it is simply not there this time
        with it:
            for e in it:
                if not e.is_dir(follow_symlinks=False):
                    continue
                r = f"{rel}/{e.name}" if rel else e.name
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out[r] = st.st_ino
                if st.st_nlink != 2:   # subdirectories (or a filesystem without the convention)
                    stack.append((r, e.path))
    return out


def exists(host: Host, root: str) -> bool:
    """`root` is a cgroup in at least one hierarchy the exporter reads."""
    if host.is_v2:
        return os.path.isdir(os.path.normpath(f"{host.v2_mount or '/sys/fs/cgroup'}/{_rel(host, '', root)}"))
    return any(os.path.isdir(os.path.normpath(f"{host.v1_mounts[c]}/{_rel(host, c, root)}"))
               for c in V1_READ if c in host.v1_mounts)


def below(host: Host, root: str) -> list[Found]:
    """`root` (a cgroup path, or nested:...) and every cgroup below it, sorted by path."""
    if host.is_v2:
        mount = host.v2_mount or "/sys/fs/cgroup"
        base = os.path.normpath(f"{mount}/{_rel(host, '', root)}")
        out = []
        for rel, ino in sorted(walk(base).items()):
            d = os.path.join(base, rel) if rel else base
            out.append(Found(_id(d, mount), {"": d}, ino))
        return out
    bases = {c: os.path.normpath(f"{host.v1_mounts[c]}/{_rel(host, c, root)}") for c in V1_READ
             if c in host.v1_mounts}
    # every hierarchy: with systemd on v1 a unit has a cgroup only where its accounting is on
    rels: dict[str, dict[str, str]] = {}
    inodes: dict[str, dict[str, int]] = {}
    for c, base in bases.items():
        for rel, ino in walk(base).items():
            rels.setdefault(rel, {})[c] = os.path.join(base, rel) if rel else base
            inodes.setdefault(rel, {})[c] = ino
    out = []
    for rel in sorted(rels):
        dirs = rels[rel]
        c = next(c for c in V1_ID_ORDER if c in dirs)
        out.append(Found(_id(dirs[c], host.v1_mounts[c]), dirs, inodes[rel][c]))
    return out


def _id(d: str, mount: str) -> str:
    """The cgroup's path inside its hierarchy (`d` is under `mount`, both normalised)."""
    rel = d[len(mount.rstrip("/")):]
    return rel or "/"
