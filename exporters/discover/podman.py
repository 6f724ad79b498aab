"""podman (libpod): `<parent>/libpod-<id>` with the cgroupfs manager (parent /libpod_parent by default),
`machine.slice/libpod-<id>.scope` with systemd; its monitor conmon sits in `<parent>/conmon` or
`libpod-conmon-<id>.scope`. Name and image come from containers/storage's containers.json under
the graph root: `names[0]`, and the `image-name` podman writes into the entry's `metadata` (a JSON
string), else the first name of its `image` id in images.json. podman keeps labels only in its
database (bolt or sqlite): they are not exported."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from exporters.discover.files import Files
from exporters.discover.meta import NOT_A_CONTAINER, Meta, strip, text

DRIVERS = ("overlay", "vfs", "btrfs", "zfs", "devmapper", "aufs")   # containers/storage's <driver>-containers
MAX_STORE = 16 << 20        # containers.json lists every container of the store (~600 bytes each)


def parse_store(doc: Any) -> dict[str, tuple[Meta, str]]:
    """containers.json: id -> (Meta, image id); the image's name is in the entry's metadata when
    podman made the container (buildah's and others' entries have only the image id)."""
    out: dict[str, tuple[Meta, str]] = {}
    for c in doc if isinstance(doc, list) else []:
        if not isinstance(c, dict) or not isinstance(c.get("id"), str):
            continue
        names = c.get("names")
        name = text(names[0]) if isinstance(names, list) and names else ""
        image = ""
        if isinstance(c.get("metadata"), str):
            try:
                md = json.loads(c["metadata"][:65536])
                image = text(md.get("image-name")) if isinstance(md, dict) else ""
            except ValueError:
                pass
        if name:
            out[c["id"]] = (Meta(name, image), text(c.get("image")))
    return out


def parse_images(doc: Any) -> dict[str, str]:
    """images.json: image id -> its first name."""
    out: dict[str, str] = {}
    for i in doc if isinstance(doc, list) else []:
        if isinstance(i, dict) and isinstance(i.get("id"), str) and isinstance(i.get("names"), list) and i["names"]:
            out[i["id"]] = text(i["names"][0])
    return out


class Podman:
    def __init__(self, files: Files, root: str) -> None:
        self.files = files
        self.root = root

    def match(self, last: str) -> Meta | str | None:
        if strip("libpod-conmon-", last, ".scope"):
            return Meta(last, container=NOT_A_CONTAINER)
        return strip("libpod-", last, ".scope") or strip("libpod-", last)

    def lookup(self, cid: str) -> Meta | None:
        for d in DRIVERS:
            store = self.files.get(self.root, f"{d}-containers/containers.json", parse_store, MAX_STORE)
            if store and cid in store:
                m, image_id = store[cid]
                if m.image or not image_id:
                    return m
                images = self.files.get(self.root, f"{d}-images/images.json", parse_images, MAX_STORE)
                return self.files.derive(("image", cid), (m, images), _with_image, m, images, image_id)
        return None


def _with_image(m: Meta, images: dict[str, str] | None, image_id: str) -> Meta:
    return dataclasses.replace(m, image=(images or {}).get(image_id, ""))
