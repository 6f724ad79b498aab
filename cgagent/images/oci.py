"""Reading an OCI image layout directory: index.json -> manifest -> config + layers, digests checked."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cgagent.errors import CgagentError
from cgagent.images.store import digest_hex

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
REF_ANNOTATION = "org.opencontainers.image.ref.name"
RUN_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User")


@dataclass
class Layer:
    path: str          # the blob file
    digest: str        # of the blob as stored (maybe compressed)
    size: int
    diff_id: str       # of the uncompressed tar
    media_type: str


@dataclass
class Parsed:
    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes
    run_config: dict[str, Any]
    layers: list[Layer]
    ref: str | None


def is_layout(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "index.json"))


def blob_path(layout: str, digest: str) -> str:
    return os.path.join(layout, "blobs", "sha256", digest_hex(digest))


def read_blob(layout: str, desc: dict[str, Any]) -> bytes:
    """A small blob (manifest, config), checked against its descriptor's digest and size."""
    digest = str(desc.get("digest", ""))
    path = blob_path(layout, digest)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CgagentError(f"blob {digest} is missing from {layout}", "the layout is incomplete") from None
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise CgagentError(f"blob {digest} is corrupt (its content hashes to {got})", "re-export the image")
    if "size" in desc and int(desc["size"]) != len(data):
        raise CgagentError(f"blob {digest} has size {len(data)}, the descriptor says {desc['size']}",
                           "re-export the image")
    return data


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        out = json.loads(data)
    except ValueError as e:
        raise CgagentError(f"{what} is not valid JSON: {e}", "check the image") from None
    if not isinstance(out, dict):
        raise CgagentError(f"{what} is not a JSON object", "check the image")
    return out


def _platform_ok(desc: dict[str, Any]) -> bool:
    p = desc.get("platform") or {}
    return bool(p.get("os", "linux") == "linux" and p.get("architecture", "amd64") == "amd64")


def _pick(layout: str, index: dict[str, Any], want: str | None) -> tuple[dict[str, Any], str | None]:
    """The image manifest descriptor to import (descending into nested indexes) and its ref name."""
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    if want:
        named = [m for m in manifests if (m.get("annotations") or {}).get(REF_ANNOTATION) == want]
        manifests = named or manifests
    for m in manifests:
        ref = (m.get("annotations") or {}).get(REF_ANNOTATION)
        mt = m.get("mediaType", MANIFEST_TYPES[0])
        if mt in MANIFEST_TYPES and _platform_ok(m):
            return m, ref
        if mt in INDEX_TYPES:
            inner = _json(read_blob(layout, m), f"index {m.get('digest')}")
            d, _ = _pick(layout, inner, None)
            return d, ref
    raise CgagentError("the layout holds no linux/amd64 image manifest", "export the image for linux/amd64")


def parse_layout(layout: str, want_ref: str | None = None) -> Parsed:
    try:
        with open(os.path.join(layout, "oci-layout"), "rb") as f:
            _json(f.read(), "oci-layout")
        with open(os.path.join(layout, "index.json"), "rb") as f:
            index = _json(f.read(), "index.json")
    except FileNotFoundError as e:
        raise CgagentError(f"{layout} is not an OCI image layout ({e.filename} is missing)",
                           "give the directory holding oci-layout and index.json") from None
    desc, ref = _pick(layout, index, want_ref)
    mdata = read_blob(layout, desc)
    manifest = _json(mdata, "manifest")
    cdesc = manifest.get("config") or {}
    cdata = read_blob(layout, cdesc)
    config = _json(cdata, "image config")
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    ldescs = list(manifest.get("layers") or [])
    if len(diff_ids) != len(ldescs):
        raise CgagentError(f"the config lists {len(diff_ids)} diff_ids for {len(ldescs)} layers",
                           "the image is inconsistent; re-export it")
    layers = []
    for ld, diff in zip(ldescs, diff_ids, strict=True):
        digest = str(ld.get("digest", ""))
        layers.append(Layer(path=blob_path(layout, digest), digest=digest, size=int(ld.get("size", 0)),
                            diff_id=str(diff), media_type=str(ld.get("mediaType", ""))))
        digest_hex(str(diff))
    run = config.get("config") or {}
    return Parsed(manifest_digest=str(desc["digest"]), manifest=mdata, config_digest=str(cdesc["digest"]),
                  config=cdata, run_config={k: run[k] for k in RUN_KEYS if run.get(k) is not None},
                  layers=layers, ref=ref)
