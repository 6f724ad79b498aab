"""v2 pressure stall information: cpu/memory/io.pressure totals (µs)."""

from __future__ import annotations

from cgagent.cgroups import fs
from cgagent.cgroups.fs import gone_check

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import Pressure

RESOURCES = ("cpu", "memory", "io")


def parse(text: str) -> Pressure:
    from cgagent.cgroups.stats import Pressure

    p = Pressure()
    for line in text.splitlines():
        kind, *fields = line.split()
        total = next((int(f[6:]) for f in fields if f.startswith("total=")), None)
        if kind == "some":
            p.some_us = total
        elif kind == "full":
            p.full_us = total
    return p


def read(d: str) -> dict[str, Pressure]:
    out: dict[str, Pressure] = {}
    for res in RESOURCES:
        try:
            out[res] = parse(fs.read(f"{d}/{res}.pressure"))
        except OSError:   # absent (CONFIG_PSI off, psi=0) or EOPNOTSUPP (cgroup.pressure 0)
            continue
    if not out:
        gone_check(d)
    return out
