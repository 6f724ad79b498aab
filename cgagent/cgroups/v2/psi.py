"""v2 pressure stall information: cpu/memory/io.pressure totals (µs)."""

from __future__ import annotations

from cgagent.cgroups import fs
from cgagent.cgroups.stats import Pressure, Stats


def parse(text: str) -> Pressure:
    p = Pressure()
    for line in text.splitlines():
        kind, *fields = line.split()
        total = next((int(f[6:]) for f in fields if f.startswith("total=")), None)
        if kind == "some":
            p.some_us = total
        elif kind == "full":
            p.full_us = total
    return p


def stats(d: str, s: Stats) -> None:
    for res in ("cpu", "memory", "io"):
        try:
            s.pressure[res] = parse(fs.read(f"{d}/{res}.pressure"))
        except (FileNotFoundError, OSError):
            continue
