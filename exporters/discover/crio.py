"""CRI-O: `crio-<id>.scope` (systemd cgroup manager) or `crio-<id>` / a bare id in the kubepods tree
(cgroupfs); its monitor is `crio-conmon-<id>.scope`. The OCI config.json CRI-O writes for each container
lies under its run root, <runroot>/<driver>-containers/<id>/userdata/config.json, with the
io.kubernetes.cri-o.{Name,ImageName,ContainerType,Labels} annotations."""

from __future__ import annotations

from typing import Any

from exporters.discover import oci
from exporters.discover.files import Files
from exporters.discover.meta import NOT_A_CONTAINER, Meta, named, strip
from exporters.discover.podman import DRIVERS


class Crio:
    def __init__(self, files: Files, root: str) -> None:
        self.files = files
        self.root = root

    def match(self, last: str) -> Meta | str | None:
        if strip("crio-conmon-", last, ".scope"):
            return Meta(last, container=NOT_A_CONTAINER)
        return strip("crio-", last, ".scope") or strip("crio-", last)

    def lookup(self, cid: str) -> Meta | None:
        for d in DRIVERS:
            m = self.files.get(self.root, f"{d}-containers/{cid}/userdata/config.json", _parse)
            if m is not None:
                return m if m.name else self.files.derive(("named", cid), (m,), named, m, cid)
        return None


def _parse(doc: Any) -> Meta | None:
    return oci.meta("", doc)
