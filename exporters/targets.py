"""Which cgroups a scrape covers: cgagent's workloads (state dir) plus every cgroup under each
`--watch-cgroup` root. Discovery runs once per scrape; a target's label text is built once and
kept while the cgroup keeps its id, name and directories."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cgagent.cgroups import tree, validate_parent
from cgagent.cgroups.reader import Reader
from cgagent.cgroups.readers import reader_for
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.state import Damaged, Record, Store, warn_damaged
from exporters.exposition import LabelSet


def labels(cid: str, name: str, policy: str) -> LabelSet:
    """`container` repeats `name`: kubernetes-mixin's CPUThrottlingHigh selects `container!=""` and
    keeps `container` while summing away id and name, so it works unchanged with it."""
    return LabelSet({"id": cid, "name": name, "container": name, "policy": policy})


@dataclass(eq=False)
class Target:
    id: str
    name: str
    policy: str
    dirs: dict[str, str]             # controller -> absolute directory, as the drivers keep it
    workload: str | None = None      # the record's name when cgagent launched it
    gen: float = 0                   # directory inode or record creation time: a re-created cgroup
                                     # at the same path is another Target (per-target caches reset)
    labels: LabelSet = field(default=None)  # type: ignore[assignment]
    key: tuple[object, ...] = ()     # Discovery's cache key
    reader: Reader = field(default=None)    # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = labels(self.id, self.name, self.policy)
        if self.reader is None:
            self.reader = reader_for(self.dirs)


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
            out.append(self._target(rec.cgroup, rec.name, rec.policy or "", rec.dirs, rec.name, rec.created))
        return out

    # --- watched roots

    def _watched(self, root: str) -> list[Target]:
        return [self._target(f.id, _name(f.id), "", f.dirs, None, f.gen) for f in tree.below(self.host, root)]

    def _target(self, cid: str, name: str, policy: str, dirs: dict[str, str], workload: str | None,
                gen: float) -> Target:
        key = _key(cid, name, policy, workload, dirs, gen)
        t = self._cache.get(key)
        if t is None:
            t = Target(cid, name, policy, dirs, workload, gen)
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


def _key(cid: str, name: str, policy: str, workload: str | None, dirs: dict[str, str],
         gen: float) -> tuple[object, ...]:
    return (cid, name, policy, workload, tuple(sorted(dirs.items())), gen)


def _name(cid: str) -> str:
    return cid.rstrip("/").rsplit("/", 1)[-1] or "/"
