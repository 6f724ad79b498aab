"""Which cgroups a scrape covers: cgagent's workloads (state dir) plus every cgroup under each
`--watch-cgroup` root. Discovery runs once per scrape; a target's label text is built once and
kept while the cgroup keeps its id, name and directories."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cgagent.cgroups import _rel, validate_parent
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.state import Damaged, Record, Store, warn_damaged
from exporters.exposition import LabelSet

# Hierarchies a collector reads on v1 (cpuset/freezer/... hold nothing we export).
V1_READ = ("cpu", "cpuacct", "memory", "pids")
# The hierarchy whose path is a cgroup's `id`, the same order Record.cgroup is computed in.
V1_ID_ORDER = ("cpu", "memory", "pids", "cpuacct")


def labels(cid: str, name: str, policy: str) -> LabelSet:
    """`container` repeats `name`: kubernetes-mixin's CPUThrottlingHigh selects `container!=""` and
    keeps `container` while summing away id and name, so it works unchanged with it."""
    return LabelSet({"id": cid, "name": name, "container": name, "policy": policy})


@dataclass(eq=False)
class Target:
    id: str
    name: str
    policy: str
    v2: bool
    dirs: dict[str, str]             # controller -> absolute directory ("" on v2)
    workload: str | None = None      # the record's name when cgagent launched it
    gen: float = 0                   # directory inode or record creation time: a re-created cgroup
                                     # at the same path is another Target (per-target caches reset)
    labels: LabelSet = field(default=None)  # type: ignore[assignment]
    key: tuple[object, ...] = ()     # Discovery's cache key

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = labels(self.id, self.name, self.policy)

    def dir(self, controller: str) -> str | None:
        """The directory holding `controller`'s files (None: not in that hierarchy)."""
        return self.dirs.get("") if self.v2 else self.dirs.get(controller)


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
            continue  # removed while walking: it is simply not there this scrape
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


class Discovery:
    def __init__(self, host: Host, store: Store | None, watch: list[str] | None = None) -> None:
        self.host = host
        self.store = store
        self.watch = [validate_parent(w) for w in (watch or [])]
        self._cache: dict[tuple[object, ...], Target] = {}
        self._records: dict[str, tuple[tuple[int, int], Record | None]] = {}

    # --- workloads

    def records(self) -> list[Record]:
        """Every record, re-read only when its file changed (records are replaced by rename)."""
        if self.store is None:
            return []
        seen: dict[str, tuple[tuple[int, int], Record | None]] = {}
        try:
            it = os.scandir(self.store.workloads)
        except FileNotFoundError:
            self._records = {}
            return []
        with it:
            for e in it:
                if not e.name.endswith(".json"):
                    continue
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                key = (st.st_ino, st.st_mtime_ns)
                old = self._records.get(e.name)
                if old is not None and old[0] == key:
                    seen[e.name] = old
                    continue
                rec: Record | None = None
                try:
                    rec = self.store.load(e.name[:-5])
                except Damaged as d:
                    warn_damaged(d)   # once per process, in serve's log: the scrape goes on without it
                except CgagentError:
                    pass   # removed meanwhile, or not a workload's name
                seen[e.name] = (key, rec)
        self._records = seen
        return [r for _k, r in sorted(seen.values(), key=lambda x: x[1].name if x[1] else "") if r is not None]

    def _workload_targets(self, recs: list[Record]) -> list[Target]:
        out = []
        for rec in recs:
            if rec.status == "exited" or not any(os.path.isdir(d) for d in rec.dirs.values()):
                continue
            out.append(self._target(rec.cgroup, rec.name, rec.policy or "", "" in rec.dirs, rec.dirs, rec.name,
                                    rec.created))
        return out

    # --- watched roots

    def _watched(self, root: str) -> list[Target]:
        h = self.host
        if h.is_v2:
            mount = h.v2_mount or "/sys/fs/cgroup"
            base = os.path.normpath(f"{mount}/{_rel(h, '', root)}")
            out = []
            for rel, ino in sorted(walk(base).items()):
                d = os.path.join(base, rel) if rel else base
                cid = _id(d, mount)
                out.append(self._target(cid, _name(cid), "", True, {"": d}, None, ino))
            return out
        bases = {c: os.path.normpath(f"{h.v1_mounts[c]}/{_rel(h, c, root)}") for c in V1_READ if c in h.v1_mounts}
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
            mount = h.v1_mounts[c]
            cid = _id(dirs[c], mount)
            out.append(self._target(cid, _name(cid), "", False, dirs, None, inodes[rel][c]))
        return out

    def _target(self, cid: str, name: str, policy: str, v2: bool, dirs: dict[str, str],
                workload: str | None, gen: float) -> Target:
        key = _key(cid, name, policy, v2, workload, dirs, gen)
        t = self._cache.get(key)
        if t is None:
            t = Target(cid, name, policy, v2, dirs, workload, gen)
            t.key = key
        return t

    def targets(self, recs: list[Record]) -> list[Target]:
        out = self._workload_targets(recs)
        seen = {t.id for t in out}
        for root in self.watch:
            for t in self._watched(root):
                if t.id not in seen:
                    seen.add(t.id)
                    out.append(t)
        # keep exactly this scrape's targets cached: removed cgroups do not pile up
        self._cache = {t.key: t for t in out}
        return out


def _id(d: str, mount: str) -> str:
    """The cgroup's path inside its hierarchy (`d` is under `mount`, both normalised)."""
    rel = d[len(mount.rstrip("/")):]
    return rel or "/"


def _key(cid: str, name: str, policy: str, v2: bool, workload: str | None, dirs: dict[str, str],
         gen: float) -> tuple[object, ...]:
    return (cid, name, policy, v2, workload, tuple(sorted(dirs.items())), gen)


def _name(cid: str) -> str:
    return cid.rstrip("/").rsplit("/", 1)[-1] or "/"
