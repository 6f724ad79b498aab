"""Disk I/O limits and the freezer without a kernel: option parsing and device checks, what the v1/v2
drivers write on fixture trees, the counters they parse, and the systemd properties."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cgagent import limits
from cgagent.cgroups.systemd import properties
from cgagent.cgroups.v1 import blkio
from cgagent.cgroups.v2 import freeze, io
from cgagent.cgroups.v2.reader import V2Reader
from cgagent.convert import UNLIMITED_U64
from cgagent.errors import CgagentError
from cgagent.host import detect
from cgagent.limits import Resources


def a_block_device() -> str:
    for name in sorted(os.listdir("/dev")):
        p = f"/dev/{name}"
        if name.startswith("loop") and stat.S_ISBLK(os.stat(p).st_mode):
            return p
    pytest.skip("no /dev/loopN node on this machine")


def dev_of(path: str) -> str:
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def test_device_options_resolve_to_major_minor_and_the_last_per_device_wins() -> None:
    d = a_block_device()
    got = limits.parse_fields({"device_read_bps": [f"{d}:1mb", f"{d}:2mb"], "device_write_iops": [f"{d}:30"],
                               "blkio_weight": "300", "blkio_weight_device": [f"{d}:200"]})
    assert got == {"device_read_bps": (f"{dev_of(d)} 2097152",), "device_write_iops": (f"{dev_of(d)} 30",),
                   "blkio_weight": 300, "blkio_weight_device": (f"{dev_of(d)} 200",)}


@pytest.mark.parametrize(("value", "words"), [
    ("/nonexistent-xyz:1mb", "No such file"), ("/dev/null:1mb", "not a block device"),
    ("{dev}", "not DEVICE:VALUE"), ("{dev}:-1", "cannot be unlimited"), ("{dev}:fast", "not a size"),
])
def test_bad_device_rates_are_one_line(value: str, words: str) -> None:
    with pytest.raises(CgagentError) as e:
        limits.parse_fields({"device_read_bps": [value.format(dev=a_block_device())]})
    assert words in str(e.value) and "\n" not in str(e.value) and "--device-read-bps" in str(e.value)


def test_weights_out_of_range_are_refused() -> None:
    with pytest.raises(CgagentError, match="--blkio-weight 5 is out of range"):
        limits.parse_fields({"blkio_weight": "5"})
    with pytest.raises(CgagentError, match="out of range"):
        limits.parse_fields({"blkio_weight_device": [f"{a_block_device()}:1001"]})


def test_a_partition_is_refused_naming_its_disk(tmp_path: Path) -> None:
    d = a_block_device()
    dev = dev_of(d)
    disk = tmp_path / "devices/virtual/block/vdz"
    (disk / "vdz1").mkdir(parents=True)
    (disk / "vdz1/partition").write_text("1\n")
    (tmp_path / "dev/block").mkdir(parents=True)
    (tmp_path / "dev/block" / dev).symlink_to(disk / "vdz1")
    with pytest.raises(CgagentError) as e:
        limits.block_device(d, "--device-read-bps", sysfs=str(tmp_path))
    assert "is a partition" in str(e.value) and "/dev/vdz" in str(e.value)


def test_update_replaces_one_device_and_keeps_the_others() -> None:
    base = Resources(device_read_bps=("7:0 100", "7:1 200"))
    new = limits.plan({"device_read_bps": ("7:1 0",)}, detect(), base)
    assert new.device_read_bps == ("7:0 100", "7:1 0")
    assert Resources.from_dict(new.to_dict()) == new   # a JSON record's lists come back as tuples
    assert "io" in new.controllers()


def test_v1_writes_the_bfq_weight_and_the_throttle_rules(tmp_path: Path) -> None:
    for f in ("blkio.bfq.weight", "blkio.bfq.weight_device", *blkio.LIMIT_FILES):
        (tmp_path / f).write_text("")
    blkio.apply(str(tmp_path), Resources(blkio_weight=300, blkio_weight_device=("8:0 200",),
                                         device_read_bps=("7:3 2097152",), device_write_iops=("7:3 0",)))
    assert (tmp_path / "blkio.bfq.weight").read_text() == "300"
    assert (tmp_path / "blkio.bfq.weight_device").read_text() == "8:0 200"
    assert (tmp_path / "blkio.throttle.read_bps_device").read_text() == "7:3 2097152"
    assert (tmp_path / "blkio.throttle.write_iops_device").read_text() == "7:3 0"   # 0 deletes the rule


def test_v1_weight_without_a_weight_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CgagentError, match="no blkio weight file"):
        blkio.apply(str(tmp_path), Resources(blkio_weight=300))


def test_v1_counters_sum_reads_and_writes_over_devices(tmp_path: Path) -> None:
    (tmp_path / "blkio.throttle.io_service_bytes_recursive").write_text(
        "7:0 Read 4096\n7:0 Write 8192\n7:0 Total 12288\n8:0 Read 1\n8:0 Write 0\nTotal 12289\n")
    (tmp_path / "blkio.throttle.io_serviced_recursive").write_text("7:0 Read 1\n7:0 Write 2\nTotal 3\n")
    u = blkio.usage(str(tmp_path))
    assert (u.read_bytes, u.write_bytes, u.read_ops, u.write_ops) == (4097, 8192, 1, 2)


def test_v2_io_max_gets_one_line_per_device_and_0_is_max(tmp_path: Path) -> None:
    (tmp_path / "io.weight").write_text("")
    (tmp_path / "io.max").write_text("")
    io.apply(str(tmp_path), Resources(blkio_weight=50, device_read_bps=("7:3 0",)))
    assert (tmp_path / "io.weight").read_text() == "default 50"
    assert (tmp_path / "io.max").read_text() == "7:3 rbps=max"
    io.apply(str(tmp_path), Resources(device_read_bps=("7:3 2097152",), device_write_iops=("7:3 10",)))
    assert (tmp_path / "io.max").read_text() == "7:3 rbps=2097152 wiops=10"


def test_v2_reader_parses_io_stat_io_max_and_frozen(tmp_path: Path) -> None:
    (tmp_path / "io.stat").write_text("7:3 rbytes=8388608 wbytes=4096 rios=64 wios=1 dbytes=0 dios=0\n"
                                      "8:0 rbytes=1 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n")
    (tmp_path / "io.max").write_text("7:3 rbps=2097152 wbps=max riops=max wiops=10\n")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    r = V2Reader({"": str(tmp_path)})
    u = r.io()
    assert (u.read_bytes, u.write_bytes, u.read_ops, u.write_ops) == (8388609, 4096, 65, 1)
    assert r.io_limits()["device_read_bps"] == {"7:3": 2097152}
    assert r.io_limits()["device_write_iops"] == {"7:3": 10} and r.io_limits()["device_write_bps"] == {}
    assert r.frozen() is True and freeze.is_frozen(str(tmp_path)) is True


def test_systemd_properties_per_mode() -> None:
    d = a_block_device()
    maj, mi = (int(x) for x in dev_of(d).split(":"))
    r = Resources(blkio_weight=300, device_read_bps=(f"{maj}:{mi} 2097152",), device_write_bps=(f"{maj}:{mi} 0",))
    v2 = {k: v[1] for k, v in properties.limits(r, "v2")}
    node = properties.device_node(maj, mi)
    assert os.stat(node).st_rdev == os.stat(d).st_rdev
    assert v2["IOWeight"] == 300 and v2["IOAccounting"] is True
    assert v2["IOReadBandwidthMax"] == [(node, 2097152)]
    assert v2["IOWriteBandwidthMax"] == [(node, UNLIMITED_U64)]   # 0 = no limit: systemd's infinity
    v1 = {k: v[1] for k, v in properties.limits(r, "v1")}
    assert v1["BlockIOWeight"] == 300 and v1["BlockIOReadBandwidth"] == [(node, 2097152)]
    with pytest.raises(CgagentError, match="no IOPS property"):
        properties.limits(Resources(device_read_iops=(f"{maj}:{mi} 10",)), "v1")


def test_v2_freeze_writes_and_waits_for_cgroup_events(tmp_path: Path) -> None:
    (tmp_path / "cgroup.freeze").write_text("0")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    freeze.set_frozen(str(tmp_path), True)   # the kernel already says frozen: no wait
    assert (tmp_path / "cgroup.freeze").read_text() == "1"
    with pytest.raises(CgagentError, match="did not thaw within"):
        freeze.set_frozen(str(tmp_path), False, timeout=0.05)   # nothing changes cgroup.events here


def test_v1_pause_without_a_freezer_is_one_line(tmp_path: Path) -> None:
    from cgagent.cgroups.v1 import V1Manager

    with pytest.raises(CgagentError, match="freezer controller"):
        V1Manager({"memory": str(tmp_path)}).freeze()
