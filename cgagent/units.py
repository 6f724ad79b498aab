"""Human units as Docker and systemd accept them: `512M`, `1.5G`, `0.5` CPUs."""

from __future__ import annotations

import re

from cgagent.errors import CgagentError

# Docker's RAMInBytes: binary multiples, optional trailing "b", case-insensitive.
_BYTES = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(value: str | int, option: str) -> int:
    """`512M` -> 536870912. Negative and malformed values are refused (-1 only via 'unlimited')."""
    if isinstance(value, int):
        n = value
    else:
        if value.strip().lower() in ("-1", "max", "unlimited"):
            return -1
        m = _BYTES.match(value)
        if not m:
            raise CgagentError(f"{option} {value!r} is not a size",
                               "use a number with an optional unit, e.g. 512M or 1.5G")
        n = int(float(m.group(1)) * _MULT[m.group(2).lower()])
    if n < 0:
        raise CgagentError(f"{option} {value} is negative", "give a positive size such as 256M, or 'unlimited'")
    return n


def parse_number(value: str | float | int, option: str) -> float:
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise CgagentError(f"{option} {value!r} is not a number", "give a decimal number, e.g. 0.5") from None
    if n != n or n in (float("inf"), float("-inf")):
        raise CgagentError(f"{option} {value!r} is not a finite number", "give a decimal number, e.g. 0.5")
    return n


def parse_int(value: str | int, option: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise CgagentError(f"{option} {value!r} is not a whole number", "give an integer, e.g. 1024") from None


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 0 or n >= 1 << 62:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def parse_cpu_list(value: str, option: str) -> list[int]:
    """`0-2,5` -> [0, 1, 2, 5] (the kernel's cpuset list format)."""
    out: set[int] = set()
    text = value.strip()
    if not text:
        return []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise CgagentError(f"{option} {value!r} is not a CPU list", "use the kernel's list format, e.g. 0-2,4")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise CgagentError(f"{option} {value!r} has a descending range", "write ranges low-high, e.g. 0-3")
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
