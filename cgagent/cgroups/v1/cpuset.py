"""v1 cpuset: cpuset.cpus / cpuset.mems. A new v1 cpuset is empty and takes no tasks until filled."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import Limits

NAME = "cpuset"
LIMIT_FILES = ("cpuset.cpus", "cpuset.mems")


def prepare(d: str) -> None:
    """Copy cpus/mems from the parent into a freshly made (empty) cpuset directory."""
    parent = os.path.dirname(d)
    for f in LIMIT_FILES:
        if not fs.read(f"{d}/{f}").strip():
            fs.write(f"{d}/{f}", fs.read(f"{parent}/{f}").strip())


def apply(d: str, r: Resources) -> None:
    if r.cpuset_cpus is not None:
        fs.write(f"{d}/cpuset.cpus", r.cpuset_cpus)
    if r.cpuset_mems is not None:
        fs.write(f"{d}/cpuset.mems", r.cpuset_mems)


def limits(d: str, out: Limits, files: tuple[str, str] = LIMIT_FILES) -> None:
    try:
        out.cpuset_cpus = fs.read(f"{d}/{files[0]}").strip()
        out.cpuset_mems = fs.read(f"{d}/{files[1]}").strip()
    except FileNotFoundError:
        pass
