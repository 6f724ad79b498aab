"""Every cgroup below a root, with its directory in each hierarchy it is in: how the exporter finds the
cgroups under a --watch-cgroup root (cgagent made none of them: only reading is done here)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NamedTuple

from cgagent import inotify
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


# Called with (relative path, directory, inode from the listing or None for base) before a directory
# is looked at; raising FileNotFoundError skips it (removed meanwhile).
Prepare = Callable[[str, str, "int | None"], None]


# walk()'s answer for a base that does not exist: always this object (never mutated), so that a
# hierarchy without the watched root does not make Watched assemble its listing anew at every scrape
NOTHING: dict[str, int] = {}


def walk(base: str, prepare: Prepare | None = None) -> dict[str, int]:
    """Relative path -> inode of `base` ("") and every cgroup below it; NOTHING when base does not exist.
    The inode tells a cgroup re-created under the same path apart. A cgroup directory's link count
    is 2 + its subdirectories, so a leaf costs one stat instead of a listing of its ~30 files."""
    try:
        if prepare is not None:
            prepare("", base, None)
        out = {"": os.stat(base).st_ino}
    except (FileNotFoundError, NotADirectoryError):
        return NOTHING
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
                # interned: the same relative path in every hierarchy is one string in the agent
                r = sys.intern(f"{rel}/{e.name}" if rel else e.name)
                try:
                    if prepare is not None:
                        prepare(r, e.path, e.inode())
                    st = e.stat(follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
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


def bases(host: Host, root: str) -> dict[str, str]:
    """Controller ("" on v2) -> `root`'s directory in each hierarchy the exporter reads."""
    if host.is_v2:
        return {"": os.path.normpath(f"{host.v2_mount or '/sys/fs/cgroup'}/{_rel(host, '', root)}")}
    return {c: os.path.normpath(f"{host.v1_mounts[c]}/{_rel(host, c, root)}") for c in V1_READ
            if c in host.v1_mounts}


def below(host: Host, root: str) -> list[Found]:
    """`root` (a cgroup path, or nested:...) and every cgroup below it, sorted by path."""
    where = bases(host, root)
    return assemble(host, where, {c: walk(b) for c, b in where.items()})


def assemble(host: Host, where: dict[str, str], listings: dict[str, dict[str, int]]) -> list[Found]:
    """The cgroups of walk()'s `listings` of each base in `where`, sorted by path."""
    if host.is_v2:
        mount = host.v2_mount or "/sys/fs/cgroup"
        base = where[""]
        out = []
        for rel, ino in sorted(listings[""].items()):
            d = sys.intern(os.path.join(base, rel)) if rel else base
            out.append(Found(_id(d, mount), {"": d}, ino))
        return out
    # every hierarchy: with systemd on v1 a unit has a cgroup only where its accounting is on
    rels: dict[str, dict[str, str]] = {}
    inodes: dict[str, dict[str, int]] = {}
    for c, base in where.items():
        for rel, ino in listings[c].items():
            # interned: fs.DirFds keys its descriptors by these very strings
            rels.setdefault(rel, {})[c] = sys.intern(os.path.join(base, rel)) if rel else base
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


class Watched:
    """below() that lists a hierarchy again only after inotify reported a directory made, removed or
    renamed in it. On a host of 1000 cgroups the listings were ~15% of a scrape, and between two
    scrapes they almost never change. mkdir, rmdir and rename of a cgroup are VFS operations, so the
    kernel reports them like any directory's (file changes inside cgroupfs are not asked for).

    A directory is watched before it is looked at, so a child made during a listing is either in it or
    reported. A directory already watched (same path, same inode, its watch still alive) is not added
    again, so a listing after a change costs what walk() costs. Without inotify, or once past the
    user's watch limit, every call lists again: the result is the same, only slower."""

    MASK = (inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO
            | inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_ONLYDIR | inotify.IN_DONT_FOLLOW)

    def __init__(self, host: Host, use_inotify: bool = True) -> None:
        self.host = host
        self._use = use_inotify   # the instance is made on first use: instances are few per user (128)
        self._in: inotify.Inotify | None = None
        self._bases: dict[int, tuple[str, ...]] = {}  # live watch -> the bases it serves
        self._wd: dict[str, dict[str, int]] = {}      # base -> relative path -> its watch
        self._fresh: dict[str, dict[str, int]] = {}  # base -> listing, valid until an event for base
        self._last: dict[str, dict[str, int]] = {}   # base -> the last listing whose every dir was watched
        self._found: dict[str, tuple[dict[str, dict[str, int]], list[Found]]] = {}  # root -> below()
        self.listings = 0                            # bases listed so far (tests and the bench read it)

    def below(self, root: str) -> list[Found]:
        """tree.below(), kept while no listing of root's bases changed."""
        self._drain()
        where = bases(self.host, root)
        listings = {c: self._list(b) for c, b in where.items()}
        kept = self._found.get(root)
        # the kept listings are held, so `is` cannot match a new dict at a reused address
        if kept is not None and kept[0].keys() == listings.keys() and \
                all(kept[0][c] is listings[c] for c in listings):
            return kept[1]
        out = assemble(self.host, where, listings)
        self._found[root] = (listings, out)
        return out

    def _drain(self) -> None:
        if self._in is None and self._use:
            self._use = False
            try:
                self._in = inotify.Inotify()
            except OSError:   # EMFILE: the user's instances are spent; list every time
                pass
        if self._in is None:
            return
        for wd, mask, _name in self._in.read():
            if mask & inotify.IN_Q_OVERFLOW:   # events were lost: nothing listed or watched is trusted
                self._fresh.clear()
                self._last.clear()
                continue
            for b in self._bases.get(wd, ()):
                self._fresh.pop(b, None)
            if mask & inotify.IN_IGNORED:      # its directory is gone: the watch with it
                self._bases.pop(wd, None)

    def _list(self, base: str) -> dict[str, int]:
        got = self._fresh.get(base)
        if got is not None:
            return got
        self.listings += 1
        ino = self._in
        if ino is None:
            return walk(base)
        prev = self._last.get(base, {})
        wds = self._wd.setdefault(base, {})
        complete = True

        def prepare(rel: str, path: str, inode: int | None) -> None:
            nonlocal complete
            wd = wds.get(rel)
            if inode is not None and prev.get(rel) == inode and wd in self._bases:
                return   # watched since the last listing and still there
            try:
                wd = ino.add(path, self.MASK)
            except (FileNotFoundError, NotADirectoryError):
                raise   # removed since it was listed: walk() leaves it out, as it does any vanished directory
            except OSError:   # ENOSPC: the user's watch limit
                complete = False
                return
            serves = self._bases.get(wd, ())
            if base not in serves:
                self._bases[wd] = (*serves, base)
            wds[rel] = wd

        out = walk(base, prepare)
        if not complete:
            # past the limit: stop watching at all (every watch given back to the user's budget)
            # rather than retry thousands of watches on every scrape; from now on, walk() each time
            self.close()
            return out
        if out:
            self._fresh[base] = self._last[base] = out
        else:
            self._last.pop(base, None)
        for rel in [r for r in wds if r not in out]:
            del wds[rel]
        return out

    def close(self) -> None:
        if self._in is not None:
            self._in.close()
            self._in = None
        self._use = False
        self._bases.clear()
        self._wd.clear()
        self._fresh.clear()
        self._last.clear()

    def __del__(self) -> None:   # an Exporter dropped without close() must not keep an instance
        self.close()
