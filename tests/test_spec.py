"""The resource spec: human units in, kernel units out, validated against the host."""

import pytest

from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.limits import Resources, parse_fields, plan
from cgagent.spec import ResourceSpec, from_options

HOST = Host(mode="v1", online_cpus=[0, 1], online_mems=[0])


def test_spec_to_resources() -> None:
    r = from_options({"cpus": "0.5", "memory": "256M", "memory_swap": "512M", "pids_limit": "16",
                      "cpuset_cpus": "0", "cpu_shares": "2048"}).to_resources(HOST)
    assert r == Resources(cpu_shares=2048, cpu_quota=50000, memory=256 << 20, memory_swap=512 << 20,
                          pids_limit=16, cpuset_cpus="0")
    assert r.effective_weight() == 174


@pytest.mark.parametrize(("raw", "needle"), [
    ({"memory": "-5M"}, "negative"), ({"memory": "1K"}, "minimum"), ({"cpus": "0"}, "greater than 0"),
    ({"cpu_shares": "1"}, "out of range"), ({"pids_limit": "0"}, "invalid"), ({"cpus": "abc"}, "not a number"),
])
def test_spec_refuses_bad_values(raw: dict[str, str], needle: str) -> None:
    with pytest.raises(CgagentError) as e:
        from_options(raw)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("raw", "needle"), [
    ({"memory": "64M", "memory_swap": "32M"}, "--memory-swap 32M is smaller than --memory 64M: give "
     "--memory-swap of at least 64M"),
    ({"memory_swap": "32M"}, "needs a memory limit"),
    ({"cpu_shares": "1024", "cpu_weight": "100"}, "--cpu-shares and --cpu-weight both given: give one"),
])
def test_options_checked_together_name_the_flags_and_the_fix(raw: dict[str, str], needle: str) -> None:
    with pytest.raises(CgagentError) as e:
        plan(from_options(raw).values(), HOST)
    assert needle in str(e.value) and "\n" not in str(e.value) and e.value.fix


def test_spec_files_are_checked_as_a_whole() -> None:
    with pytest.raises(ValueError, match="memory_swap needs memory: set memory too"):
        ResourceSpec.model_validate({"memory_swap": "64M"})


def test_update_memory_swap_alone_uses_the_current_memory_limit() -> None:
    base = plan(parse_fields({"memory": "64M"}), HOST)
    assert plan(parse_fields({"memory_swap": "128M"}), HOST, base).memory_swap == 128 << 20
    with pytest.raises(CgagentError, match=r"smaller than the workload's memory limit 64M"):
        plan(parse_fields({"memory_swap": "32M"}), HOST, base)
    with pytest.raises(CgagentError, match="the workload has none: give --memory too"):
        plan(parse_fields({"memory_swap": "32M"}), HOST, Resources())
    swapped = plan(parse_fields({"memory": "64M", "memory_swap": "128M"}), HOST)
    with pytest.raises(CgagentError, match=r"the workload's --memory-swap 128M is smaller than --memory 256M"):
        plan(parse_fields({"memory": "256M"}), HOST, swapped)


def test_spec_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError):
        ResourceSpec(memory="64M", bogus=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(("raw", "needle"), [
    ({"cpus": "999"}, "online CPUs"), ({"cpuset_cpus": "99"}, "not online"), ({"cpuset_mems": "3"}, "not online")])
def test_host_checks(raw: dict[str, str], needle: str) -> None:
    with pytest.raises(CgagentError) as e:
        plan(parse_fields(raw), HOST)
    assert needle in str(e.value)


def test_update_merges_and_keeps_fraction_when_period_changes() -> None:
    base = plan(parse_fields({"cpus": "0.5", "memory": "64M"}), HOST)
    new = plan(parse_fields({"cpu_period": "50000"}), HOST, base)
    assert (new.cpu_quota, new.cpu_period, new.memory) == (25000, 50000, 64 << 20)
    assert plan(parse_fields({"cpus": "0.2"}), HOST, base).cpu_quota == 20000
