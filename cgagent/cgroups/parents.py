"""--cgroup-parent: one place, named as a cgroup path or as a systemd slice, and what cgagent made
there (directories, slices, subtree_control bits), undone when its last workload goes.

The two names map with systemd's own path escaping (`systemd-escape --path`): the path /a/b is the
slice a-b.slice (which systemd puts at /a.slice/a-b.slice), a dash inside a path component is
escaped (/cgagent-demo is cgagent\\x2ddemo.slice), / is -.slice. The cgroupfs driver turns a slice
back into its path, the systemd driver turns a path into its slice, so either spelling works under
either driver and the default /cgagent is cgagent.slice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field

from cgagent.errors import CgagentError

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.state import Store

_PATH = re.compile(r"^(/|nested(:[A-Za-z0-9_.\-/]*)?|(/[A-Za-z0-9_.\-]+)+/?)$")
_UNIT_CHAR = r"(?:[A-Za-z0-9:_.]|\\x[0-9a-f]{2})"
_SLICE = re.compile(rf"^(?:-|{_UNIT_CHAR}(?:{_UNIT_CHAR}|-)*)\.slice$")
_KEEP = re.compile(r"[A-Za-z0-9:_.]")
_MAX_UNIT = 255


def validate_path(parent: str) -> str:
    """`/abs/path`, or `nested[:sub/path]` = under the agent's own cgroup (per hierarchy on v1)."""
    if not _PATH.match(parent) or any(p in ("..", ".") for p in parent.replace(":", "/").split("/")):
        raise CgagentError(f"--cgroup-parent {parent!r} is not a cgroup path or slice",
                           "use an absolute path such as /cgagent, a slice such as cgagent.slice, or nested[:sub] "
                           "to nest under the agent's cgroup")
    return parent


def validate_slice(slice_: str) -> str:
    stem = slice_[: -len(".slice")]
    if len(slice_) > _MAX_UNIT or not _SLICE.match(slice_) or (stem != "-" and ("--" in stem or stem.endswith("-"))):
        raise CgagentError(f"--cgroup-parent {slice_!r} is not a valid slice name",
                           "use e.g. cgagent.slice or a-b.slice (= a.slice/a-b.slice); `systemd-escape --path` "
                           "makes a slice name from a path")
    return slice_


def path_to_slice(path: str) -> str:
    """/a/b -> a-b.slice; / -> -.slice (systemd's unit_name_path_escape)."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "-.slice"
    text = "/".join(parts)
    out = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif _KEEP.match(ch) and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out) + ".slice"


def slice_to_path(slice_: str) -> str:
    """a-b.slice -> /a/b; cgagent\\x2ddemo.slice -> /cgagent-demo; -.slice -> /."""
    stem = slice_[: -len(".slice")]
    if stem == "-":
        return "/"
    return "/" + re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), stem.replace("-", "/"))


def as_slice(parent: str | None, default: str) -> str:
    """--cgroup-parent for the systemd driver: a slice name (paths are mapped)."""
    if not parent:
        return default
    if parent.endswith(".slice"):
        return validate_slice(parent)
    if parent.startswith("nested"):
        raise CgagentError(f"--cgroup-parent {parent!r} nests under cgagent's own cgroup, which only the cgroupfs "
                           "driver can do", "use --cgroup-driver cgroupfs, or give a path or a slice")
    return path_to_slice(validate_path(parent))


def as_path(parent: str) -> str:
    """--cgroup-parent for the cgroupfs driver: a cgroup path (slices are mapped)."""
    if parent.endswith(".slice"):
        path = slice_to_path(validate_slice(parent))
        if not _PATH.match(path):
            raise CgagentError(f"--cgroup-parent {parent!r} maps to {path!r}, not a cgroup path cgagent accepts",
                               "use letters, digits, _ . and - in slice names")
        return path
    return validate_path(parent)


# --- what a workload's creation makes, remembered in <state>/parents.json until its last user goes

@dataclass
class Made:
    """dirs: cgroup directories mkdir'ed; slices: systemd slices started by our scopes; subtree:
    (level, child, controllers) = controllers enabled in level/cgroup.subtree_control for child."""

    dirs: list[str] = field(default_factory=list)
    slices: list[str] = field(default_factory=list)
    subtree: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.dirs or self.slices or self.subtree)

    def to_json(self) -> bytes:
        return json.dumps({"dirs": sorted(set(self.dirs)), "slices": sorted(set(self.slices)),
                           "subtree": sorted({(a, b, tuple(c)) for a, b, c in self.subtree})}).encode()


def _file(store: Store) -> str:
    return os.path.join(store.root, "parents.json")


def load(store: Store) -> Made:
    try:
        with open(_file(store)) as f:
            raw = json.load(f)
    except (FileNotFoundError, ValueError):
        return Made()
    if isinstance(raw, list):   # the format before slices and subtree bits: directories only
        return Made(dirs=[str(d) for d in raw])
    return Made(dirs=[str(d) for d in raw.get("dirs", [])], slices=[str(s) for s in raw.get("slices", [])],
                subtree=[(str(a), str(b), [str(x) for x in c]) for a, b, c in raw.get("subtree", [])])


def remember(store: Store, new: Made) -> None:
    """Caller holds the store lock."""
    if new.empty():
        return
    from cgagent.state import atomic_write

    known = load(store)
    merged = Made(known.dirs + new.dirs, known.slices + new.slices, known.subtree + new.subtree)
    atomic_write(_file(store), merged.to_json())


def prune(store: Store) -> None:
    """Undo what nobody uses any more, deepest first. Caller holds the store lock."""
    known = load(store)
    if known.empty():
        return
    left = Made()
    for d in sorted(set(known.dirs), key=lambda p: p.count("/"), reverse=True):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            left.dirs.append(d)
    for level, child, ctrls in sorted(known.subtree, key=lambda t: t[0].count("/"), reverse=True):
        if os.path.isdir(child) and os.path.isdir(level):
            left.subtree.append((level, child, ctrls))   # still in use
            continue
        kept = [c for c in ctrls if not _disable(level, c)]
        if kept:
            left.subtree.append((level, child, kept))
    left.slices = _stop_slices(store, known.slices) if known.slices else []
    if left.to_json() != known.to_json():   # each rewrite is an fsync: only when something changed
        from cgagent.state import atomic_write

        atomic_write(_file(store), left.to_json())


def _disable(level: str, ctrl: str) -> bool:
    """Write -ctrl; False when the kernel refuses (another child of level now uses it: it stays)."""
    if not os.path.isdir(level):
        return True
    try:
        with open(f"{level}/cgroup.subtree_control", "w") as f:
            f.write(f"-{ctrl}")
        return True
    except OSError:
        return False


def slice_path(slice_: str) -> str:
    """systemd's cgroup path of a slice: `a-b.slice` lives in /a.slice/a-b.slice; -.slice is /.
    Here, not in the systemd driver, which imports this module: pruning slices needs it too."""
    stem = slice_[: -len(".slice")]
    if stem in ("-", ""):
        return "/"
    parts = stem.split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def _stop_slices(store: Store, slices: list[str]) -> list[str]:
    """Stop the slices we started once no live workload of ours is in them and they hold no process
    (stopping a slice stops what is in it: never one someone else has put something into)."""
    live = [r.cgroup for r in store.all() if r.driver == "systemd" and r.status != "exited"]
    left: list[str] = []
    idle: list[str] = []
    for s in sorted(set(slices), key=lambda x: x.count("-"), reverse=True):
        prefix = slice_path(s).rstrip("/") + "/"
        (left if any(c.startswith(prefix) for c in live) else idle).append(s)
    if not idle:
        return left
    from cgagent.cgroups.systemd import dbus
    from cgagent.cgroups.systemd.connection import connection, release

    try:
        bus = connection()   # the workload's end may have opened it (one_connection())
    except CgagentError:
        return left + idle
    try:
        for s in idle:
            try:
                if bus.call("GetUnitProcesses", "s", (s,))[0]:
                    left.append(s)
                    continue
                if bus.job("StopUnit", "ss", (s, "fail")) == "done":
                    continue
            except dbus.SystemdError as e:
                if e.dbus_name == dbus.NO_SUCH_UNIT:
                    continue   # not loaded: stopped and collected already
                left.append(s)
            except CgagentError:
                left.append(s)
            with contextlib.suppress(CgagentError):
                bus.call("ResetFailedUnit", "s", (s,))
    finally:
        release()
    return left
