"""Which cgroups a scrape covers: cgagent's workloads (state dir) plus every cgroup under each
`--watch-cgroup` root, named by exporters.discover from what the container runtimes write on disk.
Discovery runs once per scrape; a target's label text is built once and kept while the cgroup keeps
its id, metadata and directories."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cgagent.cgroups import tree, validate_parent
from cgagent.cgroups.reader import Reader
from cgagent.cgroups.readers import reader_for
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.state import Damaged, Record, Store, warn_damaged
from exporters.discover import Meta, Namer, Roots
from exporters.discover import cgagent as own
from exporters.discover.meta import utf8
from exporters.exposition import LabelSet


def labels(cid: str, name: str, policy: str, meta: Meta | None = None) -> LabelSet:
    """The kubelet's labels: `container` is set on leaf workloads only (a cgagent workload, a runtime's
    container, a leaf service) and "" on parents, slices, pod and QoS cgroups, so kubernetes-mixin's
    CPUThrottlingHigh (container!="", id/name/image summed away) and every sum(...{container!=""})
    count each CPU second once. A pod member's `container` is its name in the pod spec."""
    m = meta or Meta(name)
    out = {"id": utf8(cid), "name": utf8(name)}
    if m.image:
        out["image"] = m.image
    out["container"] = out["name"] if m.container is None else m.container
    if m.pod:
        out["pod"] = m.pod
        out["namespace"] = m.namespace
    out["policy"] = policy
    for k, v in m.labels:
        out.setdefault(k, v)
    return LabelSet(out)


@dataclass(eq=False, slots=True)   # one per cgroup per scrape: no __dict__ each
class Target:
    """One cgroup the exporter reports: its identity, labels and directories."""

    id: str
    name: str
    policy: str
    dirs: dict[str, str]             # controller -> absolute directory, as the drivers keep it
    workload: str | None = None      # the record's name when cgagent launched it
    meta: Meta | None = None         # what the runtime's records say (None: a plain name)
    gen: float = 0                   # directory inode or record creation time: a re-created cgroup
                                     # at the same path is another Target (per-target caches reset)
    labels: LabelSet = field(default=None)  # type: ignore[assignment]
    key: tuple[object, ...] = ()     # Discovery's cache key
    reader: Reader = field(default=None)    # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = labels(self.id, self.name, self.policy, self.meta)
        if self.reader is None:
            self.reader = reader_for(self.dirs)


class Discovery:
    def __init__(self, host: Host, store: Store | None, watch: list[str] | None = None,
                 roots: Roots | None = None) -> None:
        self.host = host
        self.store = store
        self.watch = [validate_parent(w) for w in (watch or [])]
        for w in self.watch:
            if not tree.exists(host, w):
                raise CgagentError(f"--watch-cgroup {w}: no such cgroup",
                                   "give an existing cgroup path (e.g. /system.slice), or --discover for the "
                                   "whole host")
        self.namer = Namer(roots)
        self.tree = tree.Watched(host)
        self._cache: dict[str, Target] = {}   # by cgroup id
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
            out.append(self._target(rec.cgroup, rec.name, rec.policy or "", rec.dirs, rec.name, rec.created,
                                    own.meta(rec)))
        return out

    # --- watched roots

    def _watched(self, root: str, seen: set[str]) -> list[Target]:
        every = self.tree.below(root)
        parents = {f.id.rpartition("/")[0] or "/" for f in every}
        found = [f for f in every if f.id not in seen]
        metas = [self.namer.meta(f.id, f.id not in parents) for f in found]
        # a pod cgroup is named by its members' records: the pod and namespace they carry
        pods = {m.pod_uid: m for m in metas if m.pod and m.pod_uid}
        out = []
        for f, m in zip(found, metas, strict=True):
            p = pods.get(m.pod_uid) if m.pod_uid and not m.pod else None
            if p is not None:
                m = self.namer.files.derive(("pod", f.id), (m, p), _in_pod, m, p)
            out.append(self._target(f.id, m.name, "", f.dirs, None, f.gen, m))
        return out

    def _target(self, cid: str, name: str, policy: str, dirs: dict[str, str], workload: str | None,
                gen: float, meta: Meta) -> Target:
        key = _key(cid, policy, workload, dirs, gen, meta)
        t = self._cache.get(cid)
        # compared element by element, identity first: an unchanged cgroup's key holds the same
        # strings and the same Meta object (exporters.discover keeps it), so no Meta is hashed
        if t is None or t.key != key:
            t = Target(cid, name, policy, dirs, workload, meta, gen)
            t.key = key
        return t

    def close(self) -> None:
        self.tree.close()

    def targets(self, recs: list[Record]) -> list[Target]:
        out = self._workload_targets(recs)
        seen = {t.id for t in out}
        self.namer.begin()
        try:
            for root in self.watch:
                for t in self._watched(root, seen):
                    seen.add(t.id)
                    out.append(t)
        finally:
            self.namer.end()
        # keep exactly this scrape's targets cached: removed cgroups do not pile up
        self._cache = {t.id: t for t in out}
        return out


def _in_pod(m: Meta, pod: Meta) -> Meta:
    return Meta(m.name, container=m.container, pod=pod.pod, namespace=pod.namespace, pod_uid=m.pod_uid)


def _key(cid: str, policy: str, workload: str | None, dirs: dict[str, str], gen: float,
         meta: Meta) -> tuple[object, ...]:
    # the directories' paths name their controllers, and each source lists them in a fixed order
    return (cid, policy, workload, tuple(dirs.values()), gen, meta)

