"""v2 cpuset: cpuset.cpus / cpuset.mems (empty = inherit, unlike v1: the effective ones are read)."""

from __future__ import annotations

from cgagent.cgroups.v1 import cpuset as v1
from cgagent.cgroups.v1.cpuset import apply
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import Limits

NAME = "cpuset"
LIMIT_FILES = ("cpuset.cpus.effective", "cpuset.mems.effective")
__all__ = ["LIMIT_FILES", "NAME", "Resources", "apply", "limits"]


def limits(d: str, out: Limits) -> None:
    v1.limits(d, out, LIMIT_FILES)
