"""Resources -> systemd unit properties, and slice/unit naming (no systemd needed)."""

from __future__ import annotations

import pytest
from jeepney import new_method_call

from cgagent.cgroups import parents
from cgagent.cgroups.systemd import properties, slice_for, slice_path, unit_name
from cgagent.cgroups.systemd.dbus import MANAGER
from cgagent.convert import UNLIMITED_U64
from cgagent.errors import CgagentError
from cgagent.limits import Resources

M = 1024 * 1024


def props(r: Resources, mode: str) -> dict[str, object]:
    return {k: v[1] for k, v in properties.limits(properties.effective(r), mode)}


def test_v1_33_percent_quota_is_330000_per_sec_and_33000_at_100ms() -> None:
    r = Resources(cpu_quota=33_000)
    assert props(r, "v1")["CPUQuotaPerSecUSec"] == 330_000
    eff = properties.effective(r)
    assert (eff.cpu_quota, eff.cpu_period) == (33_000, None)   # what cpu.cfs_quota_us will hold


def test_quota_rounds_up_to_10ms_and_the_recorded_quota_follows() -> None:
    r = Resources(cpu_quota=33_300)                  # --cpus 0.333
    assert props(r, "v1")["CPUQuotaPerSecUSec"] == 340_000
    assert properties.effective(r).cpu_quota == 34_000
    assert properties.effective(properties.effective(r)) == properties.effective(r)   # stable on update


def test_short_period_is_stretched_as_systemd_does() -> None:
    # 0.05 CPU at a 10 ms period would be a 0.5 ms quota: systemd raises the period to keep >= 1 ms
    r = Resources(cpu_quota=500, cpu_period=10_000)
    eff = properties.effective(r)
    assert (eff.cpu_quota, eff.cpu_period) == (1_000, 20_000)
    assert props(r, "v2")["CPUQuotaPeriodUSec"] == 20_000


def test_period_given_is_sent() -> None:
    p = props(Resources(cpu_quota=50_000, cpu_period=200_000), "v1")
    assert p["CPUQuotaPeriodUSec"] == 200_000 and p["CPUQuotaPerSecUSec"] == 250_000


def test_unlimited_quota_is_infinity() -> None:
    assert props(Resources(cpu_quota=-1), "v2")["CPUQuotaPerSecUSec"] == UNLIMITED_U64


def test_shares_on_v1_and_weight_on_v2() -> None:
    r = Resources(cpu_shares=1024)
    assert props(r, "v1") == {"CPUShares": 1024}
    assert props(r, "v2") == {"CPUWeight": 100}
    assert props(Resources(cpu_shares=512), "v2") == {"CPUWeight": 59}
    assert props(Resources(cpu_weight=200), "v1") == {"CPUShares": 2048}


def test_tasks_max_zero_becomes_one_and_unlimited_is_infinity() -> None:
    assert props(Resources(pids_limit=0), "v1")["TasksMax"] == 1
    assert props(Resources(pids_limit=-1), "v2")["TasksMax"] == UNLIMITED_U64
    assert props(Resources(pids_limit=64), "v2")["TasksMax"] == 64


def test_memory_v1_is_memory_limit_v2_is_memory_max() -> None:
    assert props(Resources(memory=100 * M), "v1") == {"MemoryLimit": 100 * M}
    assert props(Resources(memory=100 * M), "v2") == {"MemoryMax": 100 * M}
    assert props(Resources(memory=-1), "v2") == {"MemoryMax": UNLIMITED_U64}


def test_swap_v2_is_swap_only_and_v1_refuses() -> None:
    assert props(Resources(memory=100 * M, memory_swap=300 * M), "v2")["MemorySwapMax"] == 200 * M
    assert props(Resources(memory=100 * M, memory_swap=-1), "v2")["MemorySwapMax"] == UNLIMITED_U64
    with pytest.raises(CgagentError, match="memory-swap"):
        properties.limits(Resources(memory=100 * M, memory_swap=300 * M), "v1")


def test_cpuset_is_a_bitmask_on_v2_and_no_property_on_v1() -> None:
    p = props(Resources(cpuset_cpus="0-1,3", cpuset_mems="0"), "v2")
    assert p["AllowedCPUs"] == b"\x0b" and p["AllowedMemoryNodes"] == b"\x01"
    assert properties.limits(Resources(cpuset_cpus="0"), "v1") == []   # the driver writes v1 cpuset


def test_unset_fields_send_nothing() -> None:
    assert properties.limits(Resources(), "v1") == []


def test_scope_properties_delegate_and_no_default_dependencies() -> None:
    p = {k: v for k, v in properties.scope("d", "cgagent.slice", 42)}
    assert p["PIDs"] == ("au", [42]) and p["Slice"] == ("s", "cgagent.slice")
    assert p["Delegate"] == ("b", True) and p["DefaultDependencies"] == ("b", False)
    assert all(p[k] == ("b", True) for k in ("CPUAccounting", "MemoryAccounting", "TasksAccounting"))


def test_start_transient_unit_message_serialises() -> None:
    # every property's D-Bus type must match its value, or jeepney (and systemd) refuse it
    r = Resources(cpu_shares=512, cpu_quota=50_000, cpu_period=100_000, memory=100 * M, memory_swap=200 * M,
                  pids_limit=10, cpuset_cpus="0", cpuset_mems="0")
    props = properties.scope("x", "cgagent.slice", 1) + properties.limits(r, "v2")
    body: tuple[object, ...] = ("cgagent-x.scope", "fail", props, [])
    assert new_method_call(MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))", body).serialise(serial=1)
    v1 = Resources(cpu_shares=512, cpu_quota=50_000, memory=100 * M, pids_limit=10)
    assert new_method_call(MANAGER, "SetUnitProperties", "sba(sv)",
                           ("cgagent-x.scope", True, properties.limits(v1, "v1"))).serialise(serial=2)


def test_slice_paths_expand_by_dashes() -> None:
    assert slice_path("cgagent.slice") == "/cgagent.slice"
    assert slice_path("a-b.slice") == "/a.slice/a-b.slice"
    assert slice_path("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert slice_path("-.slice") == "/"


def test_parent_to_slice() -> None:
    assert slice_for(None) == slice_for("/cgagent") == "cgagent.slice"
    assert slice_for("a-b.slice") == "a-b.slice"
    assert slice_for("/custom/path") == "custom-path.slice"
    for bad in ("a--b.slice", "a-.slice", "a b.slice", "/a/../b"):
        with pytest.raises(CgagentError, match=r"not a valid slice name|not a cgroup path or slice"):
            slice_for(bad)
    with pytest.raises(CgagentError, match="only the cgroupfs driver"):
        slice_for("nested:x")
    assert unit_name("web") == "cgagent-web.scope"


# (path, slice) pairs as `systemd-escape --path` and `systemd-escape --unescape --path` make them
@pytest.mark.parametrize(("path", "slice_"), [
    ("/", "-.slice"), ("/cgagent", "cgagent.slice"), ("/a/b", "a-b.slice"), ("/a/b/c", "a-b-c.slice"),
    ("/cgagent-demo", "cgagent\\x2ddemo.slice"), ("/x-y/z", "x\\x2dy-z.slice"), ("/.hidden", "\\x2ehidden.slice"),
    ("/a.b_c", "a.b_c.slice"),
])
def test_path_and_slice_name_the_same_place(path: str, slice_: str) -> None:
    assert parents.path_to_slice(path) == slice_ == slice_for(path)
    assert parents.slice_to_path(slice_) == path == parents.as_path(slice_)
    assert parents.as_path(path) == path and slice_for(slice_) == slice_


def test_escaped_slice_lives_where_systemd_puts_it() -> None:
    assert slice_path("cgagent\\x2ddemo.slice") == "/cgagent\\x2ddemo.slice"
    assert slice_path(slice_for("/x-y/z")) == "/x\\x2dy.slice/x\\x2dy-z.slice"
