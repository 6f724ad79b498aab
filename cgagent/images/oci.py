"""Reading an OCI image layout directory: index.json -> manifest -> config + layers, digests checked.

Every file is read through a confined Tree: only regular files inside the layout, documents capped."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cgagent.errors import CgagentError, kind_of
from cgagent.images.confined import MAX_DOC, Tree
from cgagent.images.store import digest_hex

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
REF_ANNOTATION = "org.opencontainers.image.ref.name"
RUN_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "StopSignal")
LIST_KEYS = ("Env", "Entrypoint", "Cmd")    # lists of strings (argv, NAME=value); the other RUN_KEYS are strings
MAX_INDEX_DEPTH = 8


@dataclass
class Layer:
    """One layer of an image's manifest, as the layout stores it."""

    path: str          # the blob file, relative to the layout
    digest: str        # of the blob as stored (maybe compressed)
    size: int
    diff_id: str       # of the uncompressed tar
    media_type: str


@dataclass
class Parsed:
    """An image read from an OCI layout: manifest, config and layers, checked against their digests."""

    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes
    run_config: dict[str, Any]
    layers: list[Layer]
    ref: str | None


def blob_name(digest: str) -> str:
    """Where a blob lives, relative to the layout root."""
    return f"blobs/sha256/{digest_hex(digest)}"


def read_blob(layout: Tree, desc: dict[str, Any], what: str) -> bytes:
    """A small blob (index, manifest, config), checked against its descriptor's digest and size."""
    digest = str(desc.get("digest", ""))
    name = blob_name(digest)
    size = desc.get("size")
    if size is not None and (not isinstance(size, int) or not 0 <= size <= MAX_DOC):
        raise CgagentError(f"{what} {digest} has size {size!r}, not at most {MAX_DOC >> 20} MiB",
                           "the image was refused; image documents are small JSON files")
    data = layout.read(name, what)
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise CgagentError(f"{what} blob {digest} is corrupt (its content hashes to {got})", "re-export the image")
    if size is not None and size != len(data):
        raise CgagentError(f"{what} blob {digest} has size {len(data)}, the descriptor says {size}",
                           "re-export the image")
    return data


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:   # `[[[[...` within the size cap
        raise CgagentError(f"{what} nests too deeply", "check the image") from None
    except ValueError as e:
        raise CgagentError(f"{what} is not valid JSON: {e}", "check the image") from None


def _json(data: bytes, what: str) -> dict[str, Any]:
    out = parse_json(data, what)
    if not isinstance(out, dict):
        raise CgagentError(f"{what} is not a JSON object", "check the image")
    return out


def dict_or_empty(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _platform_ok(desc: dict[str, Any]) -> bool:
    p = dict_or_empty(desc.get("platform"))
    return bool(p.get("os", "linux") == "linux" and p.get("architecture", "amd64") == "amd64")


def _pick(layout: Tree, index: dict[str, Any], want: str | None) -> tuple[dict[str, Any], str | None]:
    """The image manifest descriptor to import (descending into nested indexes) and its ref name."""
    ref: str | None = None
    for depth in range(MAX_INDEX_DEPTH):
        listed = index.get("manifests") or []
        if not isinstance(listed, list):
            raise CgagentError(f"the manifests of {'index.json' if depth == 0 else 'an image index'} are not a list",
                               "check the image")
        manifests = [m for m in listed if isinstance(m, dict)]
        if want and depth == 0:
            named = [m for m in manifests if dict_or_empty(m.get("annotations")).get(REF_ANNOTATION) == want]
            manifests = named or manifests
        for m in manifests:
            if depth == 0:
                r = dict_or_empty(m.get("annotations")).get(REF_ANNOTATION)
                ref = r if isinstance(r, str) else None
            mt = m.get("mediaType", MANIFEST_TYPES[0])
            if mt in MANIFEST_TYPES and _platform_ok(m):
                return m, ref
            if mt in INDEX_TYPES:
                index = _json(read_blob(layout, m, "index"), f"index {m.get('digest')}")
                break
        else:
            raise CgagentError("the layout holds no linux/amd64 image manifest", "export the image for linux/amd64")
    raise CgagentError(f"the layout nests image indexes more than {MAX_INDEX_DEPTH} deep", "check the image")


def parse_layout(layout: Tree, want_ref: str | None = None) -> Parsed:
    _json(layout.read("oci-layout", "oci-layout file"), "oci-layout")
    index = _json(layout.read("index.json", "index"), "index.json")
    desc, ref = _pick(layout, index, want_ref)
    mdata = read_blob(layout, desc, "manifest")
    manifest = _json(mdata, "manifest")
    cdesc = dict_or_empty(manifest.get("config"))
    cdata = read_blob(layout, cdesc, "config")
    config = _json(cdata, "image config")
    diff_ids = dict_or_empty(config.get("rootfs")).get("diff_ids") or []
    ldescs = manifest.get("layers") or []
    if not isinstance(diff_ids, list) or not isinstance(ldescs, list):
        raise CgagentError("the manifest's layers or the config's diff_ids are not lists", "check the image")
    if len(diff_ids) != len(ldescs):
        raise CgagentError(f"the config lists {len(diff_ids)} diff_ids for {len(ldescs)} layers",
                           "the image is inconsistent; re-export it")
    layers = []
    for ld, diff in zip(ldescs, diff_ids, strict=True):
        ld = dict_or_empty(ld)
        digest, size = str(ld.get("digest", "")), ld.get("size")
        if not isinstance(size, int) or size < 0:
            raise CgagentError(f"layer {digest} has no valid size in the manifest", "check the image")
        digest_hex(str(diff))
        layers.append(Layer(path=blob_name(digest), digest=digest, size=size, diff_id=str(diff),
                            media_type=str(ld.get("mediaType", ""))))
    run = dict_or_empty(config.get("config"))
    return Parsed(manifest_digest=str(desc["digest"]), manifest=mdata, config_digest=str(cdesc["digest"]),
                  config=cdata, run_config=run_config(run), layers=layers, ref=ref)


def run_config(run: dict[str, Any]) -> dict[str, Any]:
    """What a run takes from the image config; a field of the wrong type is refused here, at import
    (the run would fail on it). Absent or null is fine."""
    out = {k: run[k] for k in RUN_KEYS if run.get(k) is not None}
    for k, v in out.items():
        if k in ("Entrypoint", "Cmd") and isinstance(v, str):   # Docker reads one string as one argument
            out[k] = v = [v]
        if k in LIST_KEYS:
            if not isinstance(v, list):
                what = kind_of(v)
            else:
                what = next((f"a list holding {kind_of(x)}" for x in v if not isinstance(x, str)), "")
            if what:
                raise CgagentError(f"the image config's {k} is {what}, not a list of strings",
                                   f"fix {k} in the image's config and export it again")
        elif not isinstance(v, str):
            raise CgagentError(f"the image config's {k} is {kind_of(v)}, not a string",
                               f"fix {k} in the image's config and export it again")
    return out
