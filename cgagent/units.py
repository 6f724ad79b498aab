"""Human units as Docker and systemd accept them: `512M`, `1.5G`, `0.5` CPUs."""

from __future__ import annotations

import math
import re

from cgagent.errors import CgagentError, kind_of

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any

# Docker's RAMInBytes: binary multiples, optional trailing "b", case-insensitive.
_BYTES = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE | re.ASCII)
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_INT = re.compile(r"^\s*[-+]?\d+\s*$", re.ASCII)

# The largest byte count any limit may be: LONG_MAX rounded down to 4 KiB pages, which is what the kernel
# itself reports for "no limit" on v1. Above it the kernel's parser wraps (2**64 + 1 reads as 1) and a
# 100-digit --memory became an instant OOM kill; systemd's uint64 properties refuse it outright.
MAX_BYTES = ((1 << 63) - 1) // 4096 * 4096
# Longest number text accepted: a bound on what int() is asked to digest
MAX_NUMBER_TEXT = 64
# CPU and memory-node numbers: the kernel's NR_CPUS is at most 8192 (MAX_NUMNODES is smaller)
MAX_CPU_ID = 8191
MAX_CPU_LIST_TEXT = 4096


def _scalar(value: Any, option: str, what: str, example: str) -> str | int | float:
    """Refuse what YAML can put where a number belongs (true, a mapping, a list, a 10 KB string)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CgagentError(f"{option} must be {what}, not {kind_of(value)}", f"give e.g. {example}")
    if isinstance(value, str) and len(value) > MAX_NUMBER_TEXT:
        raise CgagentError(f"{option} {value[:20]}... is too long to be {what}", f"give e.g. {example}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CgagentError(f"{option} {value} is not a finite number", f"give e.g. {example}")
    return value


def parse_bytes(value: Any, option: str) -> int:
    """`512M` -> 536870912. Negative and malformed values are refused (-1 only via 'unlimited'), and so is
    anything above MAX_BYTES (computed exactly, never through a float that could overflow)."""
    v = _scalar(value, option, "a size", "512M or 1.5G")
    if isinstance(v, int):
        n = v
    elif isinstance(v, float):
        n = math.floor(v)
    else:
        if v.strip().lower() in ("-1", "max", "unlimited"):
            return -1
        m = _BYTES.match(v)
        if not m:
            raise CgagentError(f"{option} {v!r} is not a size",
                               "use a number with an optional unit, e.g. 512M or 1.5G")
        # exact, in integers: "1.5" G is 15 * 2**30 // 10 (floor division floors as math.floor would;
        # the fractions module costs a launch ~1.5 ms of import)
        whole, _, frac = m.group(1).partition(".")
        n = int(whole + frac) * _MULT[m.group(2).lower()] // 10 ** len(frac)
    if n < 0:
        raise CgagentError(f"{option} {value} is negative", "give a positive size such as 256M, or 'unlimited'")
    if n > MAX_BYTES:
        raise CgagentError(f"{option} {value} is above the maximum of {MAX_BYTES} bytes (8 EiB)",
                           "give a smaller size, or 'unlimited' for no limit")
    return n


def parse_number(value: Any, option: str) -> float:
    v = _scalar(value, option, "a number", "0.5")
    try:
        n = float(v)
    except (TypeError, ValueError):
        raise CgagentError(f"{option} {value!r} is not a number", "give a decimal number, e.g. 0.5") from None
    if not math.isfinite(n):
        raise CgagentError(f"{option} {value!r} is not a finite number", "give a decimal number, e.g. 0.5")
    return n


def parse_int(value: Any, option: str) -> int:
    v = _scalar(value, option, "a whole number", "1024")
    if isinstance(v, int):
        return v
    if isinstance(v, float) or not _INT.match(v):
        raise CgagentError(f"{option} {value!r} is not a whole number", "give an integer, e.g. 1024")
    return int(v)


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 0 or n >= 1 << 62:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def flag_bytes(n: int) -> str:
    """A byte count in the units a size option takes (512M, 1G, 1536M): in the largest unit that holds
    it exactly, so a message repeats a size as the user typed it (not 512.0MiB, not 536870912)."""
    for unit in "ptgmk":
        if n and n % _MULT[unit] == 0:
            return f"{n // _MULT[unit]}{unit.upper()}"
    return str(n)


def parse_cpu_list(value: str, option: str) -> list[int]:
    """`0-2,5` -> [0, 1, 2, 5] (the kernel's cpuset list format). Every number is checked against
    MAX_CPU_ID before a range is expanded."""
    out: set[int] = set()
    text = value.strip()
    if not text:
        return []
    if len(text) > MAX_CPU_LIST_TEXT:
        raise CgagentError(f"{option} is {len(text)} characters long, too long for a CPU list",
                           "use ranges, e.g. 0-63")
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d{1,12})\s*(?:-\s*(\d{1,12})\s*)?", part, re.ASCII)
        if not m:
            raise CgagentError(f"{option} {value!r} is not a CPU list", "use the kernel's list format, e.g. 0-2,4")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise CgagentError(f"{option} {value!r} has a descending range", "write ranges low-high, e.g. 0-3")
        if hi > MAX_CPU_ID:
            raise CgagentError(f"{option} {value!r} names {hi}, above the largest possible number {MAX_CPU_ID}",
                               "name CPUs (or memory nodes) this machine has, e.g. 0-3")
        out.update(range(lo, hi + 1))
    return sorted(out)


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> `0-2,5`."""
    s = sorted(set(cpus))
    out: list[str] = []
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)
