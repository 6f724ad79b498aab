"""Disk I/O per block device (cAdvisor's names): container_blkio_device_usage_total{device,major,minor,
operation=Read|Write} bytes, container_fs_{reads,writes}_bytes_total and container_fs_{reads,writes}_total
{device}. From v1 blkio.throttle.io_service_bytes/io_serviced (recursive) or v2 io.stat, through the
drivers' reader. `device` is /dev/<DEVNAME> from /sys/dev/block/MAJ:MIN/uevent, looked up once per
device number (a device that has gone is its number, "MAJ:MIN")."""

from __future__ import annotations

from cgagent.cgroups.stats import DeviceIo
from exporters.collectors import PerCgroup, Scrape
from exporters.exposition import Family
from exporters.targets import Target

SYS_DEV_BLOCK = "/sys/dev/block"


def device_name(major: int, minor: int, root: str = SYS_DEV_BLOCK) -> str:
    try:
        with open(f"{root}/{major}:{minor}/uevent", encoding="utf-8", errors="replace") as f:
            text = f.read(4096)
    except OSError:
        return f"{major}:{minor}"
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value and ".." not in value.split("/"):
            return "/dev/" + value
    return f"{major}:{minor}"


class Blkio(PerCgroup[list[DeviceIo]]):
    name = "blkio"
    controller = "blkio"

    def __init__(self) -> None:
        self.names: dict[tuple[int, int], str] = {}
        self.root = SYS_DEV_BLOCK

    def families(self) -> list[Family]:
        return [
            Family("container_blkio_device_usage_total", "counter", "Blkio Device bytes usage"),
            Family("container_fs_reads_bytes_total", "counter", "Cumulative count of bytes read"),
            Family("container_fs_writes_bytes_total", "counter", "Cumulative count of bytes written"),
            Family("container_fs_reads_total", "counter", "Cumulative count of reads completed"),
            Family("container_fs_writes_total", "counter", "Cumulative count of writes completed"),
        ]

    def read(self, t: Target, scrape: Scrape) -> list[DeviceIo]:
        return t.reader.io_devices()

    def _name(self, major: int, minor: int) -> str:
        key = (major, minor)
        n = self.names.get(key)
        if n is None:
            n = self.names[key] = device_name(major, minor, self.root)
        return n

    def emit(self, t: Target, devs: list[DeviceIo], fams: list[Family], scrape: Scrape) -> None:
        usage, rbytes, wbytes, rops, wops = fams
        for d in devs:
            dev = t.labels.extend("device", self._name(d.major, d.minor))
            numbered = dev.extend("major", str(d.major)).extend("minor", str(d.minor))
            usage.add(numbered.extend("operation", "Read"), d.read_bytes)
            usage.add(numbered.extend("operation", "Write"), d.write_bytes)
            rbytes.add(dev, d.read_bytes)
            wbytes.add(dev, d.write_bytes)
            rops.add(dev, d.read_ops)
            wops.add(dev, d.write_ops)
