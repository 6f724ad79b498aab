"""Docker: `/docker/<id>` (cgroupfs driver), `system.slice/docker-<id>.scope` (systemd driver), or a
bare id / docker-<id>.scope in the kubepods tree (cri-dockerd). Its record of a container is
<data-root>/containers/<id>/config.v2.json: `Name` ("/web"), `Config.Image` (as asked, "nginx:1.25"),
`Config.Labels`; the kubelet's labels there (io.kubernetes.pod.name, ...) make a pod member."""

from __future__ import annotations

from typing import Any

from exporters.discover.files import Files
from exporters.discover.meta import Meta, kubernetes, label_items, strip, text


def parse_config(doc: Any) -> Meta | None:
    if not isinstance(doc, dict):
        return None
    cfg = doc.get("Config")
    cfg = cfg if isinstance(cfg, dict) else {}
    labels = cfg.get("Labels")
    labels = labels if isinstance(labels, dict) else {}
    name = text(doc.get("Name")).lstrip("/")
    if not name:
        return None
    return kubernetes(name, text(cfg.get("Image")), {}, labels, label_items(labels))


class Docker:
    def __init__(self, files: Files, root: str) -> None:
        self.files = files
        self.root = root

    def match(self, last: str) -> Meta | str | None:
        return strip("docker-", last, ".scope")

    def lookup(self, cid: str) -> Meta | None:
        return self.files.get(self.root, f"containers/{cid}/config.v2.json", parse_config)
