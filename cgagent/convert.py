"""Conversions between cgroup v1, cgroup v2 and systemd values (see runc, crun, youki, systemd)."""

from __future__ import annotations

import math

UNLIMITED_U64 = 2**64 - 1          # systemd's "infinity" for usec and byte properties
SYSTEMD_QUOTA_GRANULARITY = 10_000  # systemd rounds CPUQuotaPerSecUSec to 10 ms
DEFAULT_PERIOD_US = 100_000
SHARES_DEFAULT, WEIGHT_DEFAULT = 1024, 100
SHARES_MIN, SHARES_MAX = 2, 262_144
WEIGHT_MIN, WEIGHT_MAX = 1, 10_000


def shares_to_weight(shares: int) -> int:
    """cpu.shares -> cpu.weight, the quadratic-in-log mapping current runc/crun/youki use.

    0 means unset; 1024 -> 100, 512 -> 59, 2048 -> 174.
    """
    if shares == 0:
        return 0
    if shares <= 2:
        return 1
    if shares >= SHARES_MAX:
        return WEIGHT_MAX
    lg = math.log2(shares)
    return math.ceil(10 ** ((lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0))


def weight_to_shares(weight: int) -> int:
    """cpu.weight -> cpu.shares as systemd maps CPUWeight on a v1 host (linear, default to default)."""
    return max(SHARES_MIN, min(SHARES_MAX, weight * SHARES_DEFAULT // WEIGHT_DEFAULT))


def weight_to_cadvisor_shares(weight: int) -> int:
    """cpu.weight -> the cpu.shares cAdvisor reports on v2 (container_spec_cpu_shares): the inverse of
    runc's former linear shares->weight map, 2 + (weight-1)*262142/9999 (100 -> 2597, not 1024), so
    dashboards see the value cAdvisor would show for the same cgroup."""
    weight = max(WEIGHT_MIN, min(WEIGHT_MAX, weight))
    return SHARES_MIN + (weight - WEIGHT_MIN) * (SHARES_MAX - SHARES_MIN) // (WEIGHT_MAX - WEIGHT_MIN)


def cpus_to_quota(cpus: float, period_us: int = DEFAULT_PERIOD_US) -> int:
    """`--cpus 0.5` at a 100 ms period -> 50000 µs quota (Docker's NanoCPUs arithmetic)."""
    return round(cpus * period_us)


def quota_to_cpus(quota_us: int, period_us: int) -> float | None:
    if quota_us < 0 or period_us <= 0:
        return None
    return quota_us / period_us


def v2_cpu_max(quota_us: int | None, period_us: int | None) -> str:
    """cpu.max content: "quota period" or "max period"."""
    period = period_us or DEFAULT_PERIOD_US
    q = "max" if quota_us is None or quota_us < 0 else str(quota_us)
    return f"{q} {period}"


def systemd_quota_per_sec(quota_us: int, period_us: int) -> int:
    """CPUQuotaPerSecUSec for a quota/period, rounded UP to systemd's 10 ms granularity."""
    if quota_us < 0:
        return UNLIMITED_U64
    per_sec = quota_us * 1_000_000 // period_us
    if (quota_us * 1_000_000) % period_us:
        per_sec += 1
    return -(-per_sec // SYSTEMD_QUOTA_GRANULARITY) * SYSTEMD_QUOTA_GRANULARITY


def systemd_effective_quota(quota_us: int, period_us: int) -> int:
    """The quota systemd writes to cgroupfs for our request, so our own files agree with it."""
    per_sec = systemd_quota_per_sec(quota_us, period_us)
    if per_sec == UNLIMITED_U64:
        return -1
    return per_sec * period_us // 1_000_000


def v2_swap_max(memory: int | None, memory_swap: int | None) -> int | None:
    """v1 memory+swap total -> v2 memory.swap.max (swap only). -1 stays -1 (unlimited)."""
    if memory_swap is None:
        return None
    if memory_swap < 0:
        return -1
    if memory is None or memory < 0:
        raise ValueError("memory+swap needs a memory limit")
    if memory_swap < memory:
        raise ValueError("memory+swap is smaller than memory")
    return memory_swap - memory


def systemd_tasks_max(pids: int) -> int:
    """TasksMax: systemd refuses 0, and -1 means infinity."""
    if pids < 0:
        return UNLIMITED_U64
    return max(1, pids)


def cpuset_bitmask(cpus: list[int]) -> bytes:
    """AllowedCPUs/AllowedMemoryNodes: little-endian bitmask bytes, CPU 0 = bit 0 of byte 0."""
    if not cpus:
        return b""
    out = bytearray(max(cpus) // 8 + 1)
    for c in cpus:
        out[c // 8] |= 1 << (c % 8)
    return bytes(out)


def v2_limit(n: int | None) -> str:
    """Bytes or counts for v2 files: -1/None -> "max"."""
    return "max" if n is None or n < 0 else str(n)
