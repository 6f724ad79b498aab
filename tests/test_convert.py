"""Conversions between v1, v2 and systemd values, against the published examples."""

import pytest

from cgagent import convert
from cgagent.errors import CgagentError
from cgagent.units import format_cpu_list, parse_bytes, parse_cpu_list


@pytest.mark.parametrize(("shares", "weight"), [
    (0, 0), (2, 1), (1, 1), (1024, 100), (512, 59), (2048, 174), (262144, 10000), (300000, 10000), (3, 2)])
def test_shares_to_weight_matches_runc_crun_youki(shares: int, weight: int) -> None:
    assert convert.shares_to_weight(shares) == weight


def test_old_linear_mapping_is_not_used() -> None:
    assert convert.shares_to_weight(1024) != 39


@pytest.mark.parametrize(("weight", "shares"), [(100, 1024), (1, 10), (10000, 102400), (50, 512)])
def test_weight_to_shares_as_systemd_maps_cpuweight_on_v1(weight: int, shares: int) -> None:
    assert convert.weight_to_shares(weight) == shares


def test_cpus_to_quota() -> None:
    assert convert.cpus_to_quota(0.5) == 50000
    assert convert.cpus_to_quota(1.5, 200000) == 300000
    assert convert.v2_cpu_max(50000, 100000) == "50000 100000"
    assert convert.v2_cpu_max(-1, None) == "max 100000"


@pytest.mark.parametrize(("quota", "period", "per_sec", "effective"), [
    (50000, 100000, 500000, 50000),
    (33000, 100000, 330000, 33000),
    (33333, 100000, 340000, 34000),      # rounded UP to 10 ms, cgroupfs recomputed to agree
    (1000, 100000, 10000, 1000),
    (25000, 50000, 500000, 25000),
])
def test_systemd_quota_rounding(quota: int, period: int, per_sec: int, effective: int) -> None:
    assert convert.systemd_quota_per_sec(quota, period) == per_sec
    assert convert.systemd_effective_quota(quota, period) == effective


def test_systemd_unlimited_and_tasks() -> None:
    assert convert.systemd_quota_per_sec(-1, 100000) == 2**64 - 1
    assert convert.systemd_tasks_max(0) == 1
    assert convert.systemd_tasks_max(-1) == 2**64 - 1
    assert convert.systemd_tasks_max(16) == 16


def test_v2_swap_is_swap_only() -> None:
    m = 256 << 20
    assert convert.v2_swap_max(m, 512 << 20) == 256 << 20
    assert convert.v2_swap_max(m, -1) == -1
    assert convert.v2_swap_max(m, None) is None
    with pytest.raises(ValueError):
        convert.v2_swap_max(m, 128 << 20)


def test_cpuset_bitmask() -> None:
    assert convert.cpuset_bitmask([0, 1]) == b"\x03"
    assert convert.cpuset_bitmask([9]) == b"\x00\x02"
    assert convert.cpuset_bitmask([]) == b""


@pytest.mark.parametrize(("text", "n"), [
    ("512M", 512 << 20), ("1.5G", 1536 << 20), ("64m", 64 << 20), ("1024", 1024), ("1k", 1024),
    ("2GiB", 2 << 30), ("100MB", 100 << 20), ("unlimited", -1), ("-1", -1)])
def test_parse_bytes(text: str, n: int) -> None:
    assert parse_bytes(text, "--memory") == n


@pytest.mark.parametrize("text", ["-5M", "lots", "5X", ""])
def test_parse_bytes_refuses(text: str) -> None:
    with pytest.raises(CgagentError) as e:
        parse_bytes(text, "--memory")
    assert "\n" not in str(e.value) and "--memory" in str(e.value)


def test_cpu_lists_round_trip() -> None:
    assert parse_cpu_list("0-2,5", "x") == [0, 1, 2, 5]
    assert format_cpu_list([5, 0, 1, 2]) == "0-2,5"
    assert format_cpu_list([0, 2, 3]) == "0,2-3"
    with pytest.raises(CgagentError):
        parse_cpu_list("3-1", "x")
