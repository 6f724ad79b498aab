"""`cgagent image import`: an OCI layout directory or a rootfs tarball -> the image store.

Each layer is unpacked once into tmp/ inside the store, its digests checked while it streams, then
published with a rename: a refused or interrupted import leaves no partial layer behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from cgagent.errors import CgagentError
from cgagent.images import oci
from cgagent.images.store import Image, ImageStore, normalize_ref
from cgagent.images.unpack import HashingReader, open_layer, unpack

PROGRESS_MIN_BYTES = 16 << 20
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr for big layers, only when stderr is a terminal."""
    if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def unpack_layer(store: ImageStore, path: str, digest: str | None, diff_id: str | None, label: str) -> str:
    """Unpack the layer blob at `path`, verify it, publish it. Returns its diff_id."""
    staged = tempfile.mkdtemp(prefix="layer-", dir=store.tmp)
    try:
        try:
            f = open(path, "rb")
        except OSError as e:
            raise CgagentError(f"cannot read layer {path}: {e.strerror}", "check the image") from None
        with f, _progress(label, os.fstat(f.fileno()).st_size) as tick:
            comp = HashingReader(f, tick)
            unc = HashingReader(open_layer(comp, f.peek(4)[:4]))  # type: ignore[arg-type]
            diff = os.path.join(staged, "diff")
            os.mkdir(diff, 0o755)
            try:
                unpack(unc, diff)  # type: ignore[arg-type]
                unc.drain()
                comp.drain()
            except (OSError, EOFError) as e:   # a truncated or corrupt stream, or the disk refused
                raise CgagentError(f"layer {digest or path} could not be unpacked: {e}", "check the image") from None
        if digest is not None and comp.digest() != digest:
            raise CgagentError(f"layer blob {digest} is corrupt (its content hashes to {comp.digest()})",
                               "re-export the image")
        got = unc.digest()
        if diff_id is not None and got != diff_id:
            raise CgagentError(f"layer {digest} does not match its diff_id {diff_id} (it is {got})",
                               "the image config is inconsistent; re-export the image")
        with store.lock():
            store.publish_layer(got, staged)
        return got
    finally:
        if os.path.isdir(staged):
            shutil.rmtree(staged, ignore_errors=True)


def import_path(store: ImageStore, path: str, name: str | None = None) -> Image:
    store.ensure()
    ref = normalize_ref(name) if name else None
    if oci.is_layout(path):
        p = oci.parse_layout(path)
        for i, layer in enumerate(p.layers):
            if not store.has_layer(layer.diff_id):
                unpack_layer(store, layer.path, layer.digest, layer.diff_id, f"layer {i + 1}/{len(p.layers)}")
        ref = ref or (normalize_ref(p.ref) if p.ref else None)
        store.put_blob(p.manifest_digest, p.manifest)
        store.put_blob(p.config_digest, p.config)
        img = Image(id=p.config_digest, layers=[x.diff_id for x in p.layers], config=p.run_config,
                    manifest=p.manifest_digest, created=time.time())
    elif os.path.isfile(path) and (kind := _archive_kind(path)):
        return _import_archive(store, path, kind, name)
    elif os.path.isfile(path):
        diff = unpack_layer(store, path, None, None, os.path.basename(path))
        run = {"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"]}
        config = {"architecture": "amd64", "os": "linux", "config": run,
                  "rootfs": {"type": "layers", "diff_ids": [diff]}}
        data = json.dumps(config, sort_keys=True).encode()
        cid = "sha256:" + hashlib.sha256(data).hexdigest()
        store.put_blob(cid, data)
        base = os.path.basename(path).split(".")[0]
        ref = ref or (normalize_ref(base) if base else None)
        img = Image(id=cid, layers=[diff], config=dict(run), created=time.time())
    else:
        raise CgagentError(f"{path} is neither an OCI image layout directory nor a tarball",
                           "give a directory with index.json, or a .tar/.tar.gz of a root filesystem")
    return _save(store, img, ref)


def _save(store: ImageStore, img: Image, ref: str | None) -> Image:
    """Record the image, moving `ref` to it from any other image that had it."""
    img.size = sum(_du(store.layer_dir(d)) for d in img.layers)
    with store.lock():
        old = {i.id: i for i in store.all()}
        if img.id in old:
            img.names = old[img.id].names
            img.created = old[img.id].created
        if ref:
            for other in old.values():
                if other.id != img.id and ref in other.names:
                    other.names.remove(ref)
                    store.save(other)
            if ref not in img.names:
                img.names.append(ref)
        store.save(img)
    return img


def _archive_kind(path: str) -> str | None:
    """"oci" for an OCI layout in a tar (what `docker save` writes since Docker 25), "docker" for the
    older `docker save` format (manifest.json + layer tars), None for a plain rootfs tarball."""
    import tarfile

    names = set()
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                names.add(m.name.removeprefix("./").rstrip("/"))
    except (tarfile.TarError, OSError, EOFError):
        return None   # unpack_layer reports what is wrong with it
    if {"oci-layout", "index.json"} <= names:
        return "oci"
    if "manifest.json" in names and not {"bin", "etc", "usr"} & names:
        return "docker"
    return None


def _import_archive(store: ImageStore, path: str, kind: str, name: str | None) -> Image:
    """Unpack the archive (with the same checks as a layer) into tmp/ of the store, import from there."""
    import tempfile

    staged = tempfile.mkdtemp(prefix="archive-", dir=store.tmp)
    try:
        with open(path, "rb") as f:
            unpack(open_layer(f, f.peek(4)[:4]), staged)
        if kind == "oci":
            return import_path(store, staged, name)
        return _import_docker(store, staged, name)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _import_docker(store: ImageStore, root: str, name: str | None) -> Image:
    """The pre-OCI `docker save` format: manifest.json -> Config (a JSON file) and Layers (tar files)."""
    try:
        with open(os.path.join(root, "manifest.json")) as f:
            entries = json.load(f)
        entry = entries[0]
        cfg_path = os.path.join(root, entry["Config"])
        with open(cfg_path, "rb") as f:
            cdata = f.read()
        config = json.loads(cdata)
        diff_ids = list(config["rootfs"]["diff_ids"])
        layers = [os.path.join(root, p) for p in entry["Layers"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise CgagentError(f"not a valid docker-save archive: {e}", "export it again with `docker save`") from None
    if len(diff_ids) != len(layers):
        raise CgagentError(f"the config lists {len(diff_ids)} diff_ids for {len(layers)} layers",
                           "the archive is inconsistent; export it again")
    for i, (lp, diff) in enumerate(zip(layers, diff_ids, strict=True)):
        if not os.path.realpath(lp).startswith(os.path.realpath(root) + "/"):
            raise CgagentError(f"layer path {entry['Layers'][i]!r} leaves the archive", "the archive was refused")
        if not store.has_layer(diff):
            unpack_layer(store, lp, None, diff, f"layer {i + 1}/{len(layers)}")
    cid = "sha256:" + hashlib.sha256(cdata).hexdigest()
    store.put_blob(cid, cdata)
    run = config.get("config") or {}
    tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
    ref = normalize_ref(name) if name else (normalize_ref(tags[0]) if tags else None)
    img = Image(id=cid, layers=diff_ids, config={k: run[k] for k in oci.RUN_KEYS if run.get(k) is not None},
                created=time.time())
    return _save(store, img, ref)


def _du(path: str) -> int:
    total = 0
    for d, _dirs, files in os.walk(path):
        for fn in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(d, fn)).st_blocks * 512
    return total
