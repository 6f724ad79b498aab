"""containerd: `cri-containerd-<id>.scope` (systemd cgroup driver) or a bare id in the kubepods tree
(cgroupfs). Each running task's OCI bundle is <state>/io.containerd.runtime.v2.task/<namespace>/<id>/
(k8s.io for the CRI, moby for Docker's containers); its config.json carries the CRI annotations
io.kubernetes.cri.{container-type,sandbox-name,sandbox-namespace,sandbox-uid,container-name,image-name}."""

from __future__ import annotations

from typing import Any

from exporters.discover import oci
from exporters.discover.files import Files
from exporters.discover.meta import Meta, named, strip

TASKS = "io.containerd.runtime.v2.task"
NAMESPACES = ("k8s.io", "moby", "default")


class Containerd:
    def __init__(self, files: Files, root: str) -> None:
        self.files = files
        self.root = root

    def match(self, last: str) -> Meta | str | None:
        return strip("cri-containerd-", last, ".scope")

    def lookup(self, cid: str) -> Meta | None:
        for ns in NAMESPACES:
            m = self.files.get(self.root, f"{TASKS}/{ns}/{cid}/config.json", _parse)
            if m is not None:
                return m if m.name else self.files.derive(("named", cid), (m,), named, m, cid)
        return None


def _parse(doc: Any) -> Meta | None:
    # the id is the bundle directory's name, not in the document: the caller's cid names it
    return oci.meta("", doc)
