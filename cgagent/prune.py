"""What workloads left behind without a valid record, found and removed (`cgagent prune`, and
`cgagent rm -f` of a damaged or deleted record).

Ownership is decided from cgagent's own state only, never from a name pattern alone:
- a workload name is a *leftover* when its record is damaged, or when the events log says cgagent
  started it and no valid record has that name any more;
- a cgroup is one of cgagent's when it is `<parent>/<name>` (cgroupfs) or `<parent>/cgagent-<name>.scope`
  (systemd) for a leftover name (and, when only the events log vouches for the name, the very
  inode its start event logged), where <parent> is a cgroup parent cgagent uses: one it created
  (parents.json), the configured one (--cgroup-parent / CGAGENT_CGROUP_PARENT, default /cgagent or
  cgagent.slice), the parent of a valid record's cgroup, or the parent of a cgroup the events log
  says a workload was started in. A cgroup anywhere else, or with a name cgagent never used, is
  never touched, and neither is a cgroup a valid record names;
- overlay dirs are <image store>/containers/<name>-<8 hex> of a leftover name that no valid record
  names; temp files are `*.tmp.<pid>` of a dead pid; stop flags and start locks are those of a name
  with no record.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from cgagent import events
from cgagent.cgroups import DEFAULT_PARENT, existing_manager, manager_for, resolve_dirs
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.state import Damaged, Record, Store, validate_name

_TMP = re.compile(r"\.tmp\.(\d+)$")
SCOPE_PREFIX = "cgagent-"


@dataclass
class Leftover:
    """Something a dead or damaged workload left behind, and how to remove it."""

    kind: str                    # damaged | orphaned | overlay | temp | flag | pool
    name: str | None             # the workload it belonged to
    what: str                    # a path, or a workload's cgroup
    undo: Callable[[], None] = field(repr=False, default=lambda: None)
    pids: int = 0                # orphaned: processes still running in it

    def line(self) -> str:
        who = f" ({self.name})" if self.name and self.name not in self.what else ""
        extra = f", {self.pids} processes" if self.pids else ""
        return f"{self.kind:<9} {self.what}{who}{extra}"


def _mounts(host: Host) -> dict[str, list[str]]:
    """hierarchy mount -> controller keys of the dirs dict (v2: the one key "")."""
    if host.is_v2:
        return {host.v2_mount or "/sys/fs/cgroup": [""]}
    out: dict[str, list[str]] = {}
    for c, m in host.v1_mounts.items():
        out.setdefault(m, []).append(c)
    return out


def owned_parents(store: Store, host: Host, good: list[Record], started: dict[str, set[str]]) -> set[str]:
    """The absolute cgroup dirs under which cgagent puts workloads (see the module's docstring)."""
    from cgagent.cgroups import parents

    out = {os.path.normpath(p) for p in parents.load(store).dirs}
    for rec in good:
        out |= {os.path.dirname(d) for d in rec.dirs.values()}
    parent = os.environ.get("CGAGENT_CGROUP_PARENT") or DEFAULT_PARENT
    with contextlib.suppress(CgagentError):
        out |= {os.path.dirname(d) for d in resolve_dirs(host, parent, "x").values()}
    ids = {cg for cgs in started.values() for cg in cgs}
    with contextlib.suppress(CgagentError):
        from cgagent.cgroups.systemd import slice_for, slice_path

        ids.add(slice_path(slice_for(parent)) + "/x")
    for cg in ids:
        for m in _mounts(host):
            out.add(os.path.dirname(os.path.normpath(f"{m}/{cg}")))
    return {p for p in out if os.path.isdir(p)}


def _started(store: Store) -> tuple[dict[str, set[str]], dict[str, set[int]]]:
    """(name -> the cgroup ids the events log says it was started in, name -> their inodes)."""
    ids: dict[str, set[str]] = {}
    inos: dict[str, set[int]] = {}
    for _off, ev in events.read(store.root):
        if ev["kind"] == "start" and isinstance(ev.get("cgroup"), str) and ev["cgroup"].startswith("/"):
            ids.setdefault(ev["name"], set()).add(ev["cgroup"])
            got = ev.get("inos")
            if isinstance(got, list):
                inos.setdefault(ev["name"], set()).update(i for i in got if isinstance(i, int))
    return ids, inos


def _cgroups_of(host: Host, parents: set[str], name: str, taken: set[str],
                inos: set[int] | None) -> tuple[dict[str, str], str | None]:
    """The leftover cgroup of `name` under cgagent's parents: (dirs by controller, systemd unit or None).
    With `inos`, only dirs that are those inodes (the ones the workload was started in)."""
    dirs: dict[str, str] = {}
    unit = None
    mounts = _mounts(host)
    for p in sorted(parents):
        m = next((m for m in mounts if p == m or p.startswith(m.rstrip("/") + "/")), None)
        if m is None:
            continue
        for base in (name, f"{SCOPE_PREFIX}{name}.scope"):
            d = os.path.join(p, base)
            if d in taken or not os.path.isdir(d) or os.path.islink(d):
                continue
            if inos is not None and os.stat(d).st_ino not in inos:
                continue
            for c in mounts[m]:
                dirs.setdefault(c, d)
            if base != name:
                unit = base
    return dirs, unit


def _procs(host: Host, dirs: dict[str, str]) -> int:
    try:
        return len(manager_for(host, dirs).procs())
    except (OSError, CgagentError):
        return 0


def _destroy(host: Host, dirs: dict[str, str], unit: str | None) -> Callable[[], None]:
    def undo() -> None:
        if unit is not None:
            with contextlib.suppress(Exception):   # systemd stops the scope; without a bus, do it by hand
                existing_manager(host, "systemd", dirs, unit).destroy()
        manager_for(host, dirs).destroy()
    return undo


def find(store: Store, host: Host, only: str | None = None, image_root: str | None = None) -> list[Leftover]:
    """Everything no valid record owns (only what belonged to `only`, when given)."""
    good, bad = store.scan()
    valid = {r.name for r in good}
    started, inos = _started(store)
    names = {d.name for d in bad} | (started.keys() - valid)
    if only is not None:
        names = names & {only} if only in names else ({only} - valid)
    out: list[Leftover] = []
    damaged = {d.name: d for d in bad}
    for n in sorted(names & damaged.keys()):
        d = damaged[n]
        out.append(Leftover("damaged", n, d.path, partial(_forget_record, store, n)))
    taken = {d for r in good for d in r.dirs.values()}
    parents = owned_parents(store, host, good, started)
    for n in sorted(names):
        # a name only the events log vouches for must be the very cgroups it logged; a damaged
        # record of this state dir, or `rm -f NAME` asked by name, claims the name itself
        ident = inos.get(n) if n not in damaged and n != only else None
        if n not in damaged and n != only and ident is None:
            continue   # a start logged by a version that did not record inodes: only by name
        dirs, unit = _cgroups_of(host, parents, n, taken, ident)
        if dirs:
            what = unit or sorted(set(dirs.values()))[0]
            out.append(Leftover("orphaned", n, what, _destroy(host, dirs, unit), _procs(host, dirs)))
    out += _overlays(good, names, image_root)
    out = _fold_start_locks(out + _temp_and_flags(store, valid | damaged.keys(), only))
    if only is None:
        out += _pools(parents)
    return out


def _fold_start_locks(items: list[Leftover]) -> list[Leftover]:
    """A start lock is cgagent's own bookkeeping: it goes, unreported, with the damaged record or
    orphaned cgroup of its name; alone, it is reported as a flag."""
    named: dict[str, Leftover] = {}
    for i in items:
        if i.kind in ("damaged", "orphaned") and i.name:
            named.setdefault(i.name, i)
    out = []
    for i in items:
        owner = named.get(i.name or "") if i.kind == "flag" and i.what.endswith(".starting") else None
        if owner is None:
            out.append(i)
        else:
            owner.undo = partial(_in_turn, owner.undo, i.undo)
    return out


def _in_turn(*steps: Callable[[], None]) -> None:
    for step in steps:
        step()


def _pools(parents: set[str]) -> list[Leftover]:
    """The agent's pool cgroups (cgagent.zygote) that a killed agent left: without a process. A live
    one holds its zygote, and is its agent's to remove."""
    from cgagent.cgroups import fs
    from cgagent.zygote import POOL_PREFIX

    out = []
    for p in sorted(parents):
        with contextlib.suppress(OSError):
            for n in sorted(os.listdir(p)):
                d = os.path.join(p, n)
                if n.startswith(POOL_PREFIX) and os.path.isdir(d) and not fs.procs(d):
                    out.append(Leftover("pool", None, d, partial(os.rmdir, d)))
    return out


def _overlays(good: list[Record], names: set[str], image_root: str | None) -> list[Leftover]:
    from cgagent.images.store import ImageStore

    istore = ImageStore(image_root)
    used = {os.path.normpath(str((r.isolation or {}).get("container_dir"))) for r in good}
    try:
        entries = sorted(os.listdir(istore.containers))
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        n, _, tail = e.rpartition("-")
        path = os.path.join(istore.containers, e)
        if n in names and re.fullmatch(r"[0-9a-f]{8}", tail) and path not in used:
            out.append(Leftover("overlay", n, path, partial(_teardown, path, istore.root, n)))
    return out


def _teardown(container_dir: str, root: str, name: str) -> None:
    from cgagent.isolation import rootfs
    from cgagent.isolation.spec import IsolationSpec
    from cgagent.network import attach
    from cgagent.network import workload as network

    spec = IsolationSpec(store=root, container_dir=container_dir, net="bridge")
    if attach.load(name, root) is not None:   # a connection of the gone workload: release what is known
        network.release(spec, name)
    rootfs.teardown(spec)


# beside a record: its stop flag (cgagent.runtime.stopflag), its start lock (cgagent.runtime.starting)
_FLAGS = (".stopping", ".starting")


def _temp_and_flags(store: Store, recorded: set[str], only: str | None) -> list[Leftover]:
    from cgagent import procs

    out = []
    for d in (store.root, store.workloads, store.logs):
        try:
            entries = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        for e in entries:
            path = os.path.join(d, e)
            m = _TMP.search(e)
            owner = e.split(".", 1)[0]
            if only is not None and owner != only:
                continue
            if m and not procs.alive(int(m.group(1)), None):
                out.append(Leftover("temp", None, path, partial(_unlink, path)))
            elif d == store.workloads and e.endswith(_FLAGS) and e.rsplit(".", 1)[0] not in recorded:
                out.append(Leftover("flag", e.rsplit(".", 1)[0], path, partial(_unlink, path)))
    return out


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove(store: Store, items: list[Leftover]) -> list[str]:
    """Undo each, cgroups (the running processes) first, then files; -> lines of what failed.
    The caller holds store.lock() since before find(): a `run` cannot then make a record and a
    cgroup in between that would look like a leftover."""
    order = {"orphaned": 0, "pool": 0, "overlay": 1, "damaged": 2, "temp": 3, "flag": 4}
    failed = []
    from cgagent.runtime.parents import prune_parents
    from cgagent.runtime.stopflag import clear_stop, request_stop

    stopping = {i.name for i in items if i.kind == "orphaned" and i.name}
    for n in stopping:
        with contextlib.suppress(OSError, CgagentError):
            request_stop(store, n)   # a supervisor that is still alive must not restart it
    for it in sorted(items, key=lambda i: order.get(i.kind, 9)):
        try:
            it.undo()
        except (OSError, CgagentError) as e:
            failed.append(f"{it.kind} {it.what}: {e}")
    for n in stopping:
        clear_stop(store, n)
    with contextlib.suppress(OSError, CgagentError):
        prune_parents(store)
    return failed


def after_exit(store: Store, host: Host, damaged: Damaged, exit_code: int | None) -> None:
    """finish() of a workload whose record is damaged (caller holds the lock): remove its cgroups
    and overlay dir as a valid record's would be, log the exit once, and name the damage."""
    from cgagent.state import warn_damaged

    warn_damaged(damaged)
    items = [i for i in find(store, host, only=damaged.name) if i.kind in ("orphaned", "overlay")]
    remove(store, items)
    if not events.logged(store.root, "exit", damaged.name, damaged=True, exit_code=exit_code):
        events.append(store.root, "exit", damaged.name, exit_code=exit_code, damaged=True)


def reclaim(store: Store, host: Host, name: str, image_root: str | None = None) -> bool:
    """`rm -f NAME` without a valid record: remove what it left. False when nothing was found."""
    validate_name(name)   # the name becomes a cgroup path: "." or "x/.." would be the parent itself
    with store.lock():
        items = find(store, host, only=name, image_root=image_root)
        if not items:
            return False
        failed = remove(store, items)
    if failed:
        raise CgagentError(f"{name}: could not remove {failed[0]}", "see `cgagent prune --dry-run`")
    return True


__all__ = ["Damaged", "Leftover", "find", "reclaim", "remove"]


def _forget_record(store: Store, name: str) -> None:
    """A damaged record goes with its start lock and its OOM mark (the kills it logged stay in the
    events log)."""
    from cgagent import oom
    from cgagent.runtime import starting

    store.delete(name)
    starting.forget(store, name)
    oom.forget(store, name)
