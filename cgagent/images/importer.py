"""`cgagent image import`: an OCI layout directory, an archive of one, a `docker save` archive or a
rootfs tarball -> the image store.

An import works in one private staging dir under tmp/ of the store: an archive is unpacked there,
then every layer is unpacked there, each blob hashed while it streams. Only when every digest and
diff_id matched are the layers, blobs and the image record published, under the store lock: a
refused, failed or interrupted import leaves nothing behind.

A layer already in the store (same diff_id) is not unpacked again, but its blob is still read and
hashed against the manifest's digest and the config's diff_id: the cache saves the writing, never
the verification, so an image is never recorded for a blob that does not match its digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from types import FrameType
from typing import BinaryIO

from cgagent.errors import CgagentError
from cgagent.faults import fault
from cgagent.images import oci
from cgagent.images.confined import Tree, disk_usage, remove_tree
from cgagent.images.store import Image, ImageStore, digest_hex, normalize_ref
from cgagent.images.unpack import (
    DEFAULT_MAX_SIZE,
    MAX_SIZE_ENV,
    TAR_ERRORS,
    Budget,
    HashingReader,
    members,
    open_layer,
    open_tar,
    unpack,
)
from cgagent.regular import NotRegular, open_regular
from cgagent.state import fsync_dir

PROGRESS_MIN_BYTES = 16 << 20
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STAGING_PREFIX = "import-"
_STREAM_ERRORS = (OSError, EOFError, zlib.error)   # a truncated or corrupt stream, or the disk refused


def max_size(value: str | None = None) -> int:
    """--max-size, else $CGAGENT_IMAGE_MAX_SIZE, else 10 GiB; 'unlimited' lifts the cap."""
    from cgagent.units import parse_bytes

    raw = value if value is not None else os.environ.get(MAX_SIZE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_SIZE
    return parse_bytes(raw, "--max-size" if value is not None else MAX_SIZE_ENV)


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


@contextlib.contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP end the import through the same cleanup as an error (the default action
    would kill the process and leave the staging dir)."""
    def stop(signum: int, _frame: FrameType | None) -> None:
        raise CgagentError(f"interrupted by signal {signal.Signals(signum).name}", "nothing was imported")

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _sweep_stale(store: ImageStore) -> None:
    """Staging dirs of imports that were killed (SIGKILL, power loss): their owner pid is gone."""
    with contextlib.suppress(OSError):
        for name in os.listdir(store.tmp):
            pid = name[len(STAGING_PREFIX):].partition("-")[0]
            if name.startswith(STAGING_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(OSError):
                    remove_tree(os.path.join(store.tmp, name))


class _Import:
    """One import: layers staged in a private dir, published together by finish()."""

    def __init__(self, store: ImageStore, budget: Budget) -> None:
        self.store = store
        self.budget = budget
        self.staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=store.tmp)
        self.staged: dict[str, str] = {}    # diff_id -> staged layer dir (holding diff/)
        self.blobs: dict[str, bytes] = {}   # digest -> manifest or config, to publish
        self.n = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            remove_tree(self.staging)

    def _dir(self, name: str) -> str:
        self.n += 1
        path = os.path.join(self.staging, f"{self.n}-{name}")
        os.mkdir(path, 0o700)
        return path

    # --- layers

    def layer(self, f: BinaryIO, digest: str | None, size: int | None, diff_id: str | None, label: str) -> str:
        """Verify one layer blob and unpack it unless its diff_id is already staged or stored.
        Returns its diff_id."""
        have = os.fstat(f.fileno()).st_size
        if size is not None and have != size:
            raise CgagentError(f"layer {digest} has size {have}, the manifest says {size}", "re-export the image")
        cached = diff_id is not None and (diff_id in self.staged or self.store.has_layer(diff_id))
        dest = None if cached else self._dir("layer")
        got = self._consume(f, have, digest, diff_id, label, dest)
        if dest is not None:
            if got in self.staged or self.store.has_layer(got):   # a rootfs tarball equal to a stored layer
                remove_tree(dest)
            else:
                self.staged[got] = dest
        return got

    def _consume(self, f: BinaryIO, total: int, digest: str | None, diff_id: str | None, label: str,
                 dest: str | None) -> str:
        """Stream the blob through its hashes, unpacking into dest/diff when dest is given."""
        magic = _magic(f)
        with _progress(label, total) as tick:
            comp = HashingReader(f, tick)
            unc = HashingReader(open_layer(comp, magic), self.budget.stream)  # type: ignore[arg-type]
            try:
                if dest is not None:
                    os.mkdir(os.path.join(dest, "diff"), 0o755)
                    unpack(unc, os.path.join(dest, "diff"), self.budget)  # type: ignore[arg-type]
                unc.drain()
                comp.drain()
            except _STREAM_ERRORS as e:
                raise CgagentError(f"layer {digest or label} could not be unpacked: {_why(e)}",
                                   "check the image") from None
            except TAR_ERRORS as e:   # a truncated tar, a bad header field
                raise CgagentError(f"layer {digest or label} is damaged: {e}", "export the image again") from None
        if digest is not None and comp.digest() != digest:
            raise CgagentError(f"layer blob {digest} is corrupt (its content hashes to {comp.digest()})",
                               "re-export the image")
        got = unc.digest()
        if diff_id is not None and got != diff_id:
            raise CgagentError(f"layer {digest or label} does not match its diff_id {diff_id} (it is {got})",
                               "the image config is inconsistent; re-export the image")
        return got

    # --- the three kinds of image

    def oci(self, t: Tree, ref: str | None) -> Image:
        p = oci.parse_layout(t)
        for i, layer in enumerate(p.layers):
            with t.open(layer.path, "layer") as f:
                self.layer(f, layer.digest, layer.size, layer.diff_id, f"layer {i + 1}/{len(p.layers)}")
        self.blobs[p.manifest_digest] = p.manifest
        self.blobs[p.config_digest] = p.config
        ref = ref or (normalize_ref(p.ref) if p.ref else None)
        img = Image(id=p.config_digest, layers=[x.diff_id for x in p.layers], config=p.run_config,
                    manifest=p.manifest_digest, created=time.time())
        return self.finish(img, ref)

    def docker(self, t: Tree, ref: str | None) -> Image:
        """The pre-OCI `docker save` format: manifest.json -> Config (a JSON file) and Layers (tar files)."""
        def bad(why: str) -> CgagentError:
            return CgagentError(f"not a valid docker-save archive: {why}", "export it again with `docker save`")

        entries = oci.parse_json(t.read("manifest.json", "manifest.json"), "manifest.json")
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
            raise bad("manifest.json lists no image")
        entry = entries[0]
        cdata = t.read(entry.get("Config"), "config")
        config = oci.parse_json(cdata, "image config")
        config = config if isinstance(config, dict) else {}
        diff_ids = oci.dict_or_empty(config.get("rootfs")).get("diff_ids")
        layers = entry.get("Layers")
        if not isinstance(diff_ids, list) or not isinstance(layers, list):
            raise bad("no rootfs.diff_ids in the config or no Layers in manifest.json")
        if len(diff_ids) != len(layers):
            raise CgagentError(f"the config lists {len(diff_ids)} diff_ids for {len(layers)} layers",
                               "the archive is inconsistent; export it again")
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list):
            raise bad("RepoTags in manifest.json is not a list")
        run = config.get("config")
        run_config = oci.run_config(run if isinstance(run, dict) else {})   # refused before any layer is read
        for i, (lp, diff) in enumerate(zip(layers, diff_ids, strict=True)):
            digest_hex(str(diff))
            with t.open(lp, "layer") as f:
                self.layer(f, None, None, str(diff), f"layer {i + 1}/{len(layers)}")
        cid = "sha256:" + hashlib.sha256(cdata).hexdigest()
        self.blobs[cid] = cdata
        tags = [x for x in tags if isinstance(x, str)]
        ref = ref or (normalize_ref(tags[0]) if tags else None)
        img = Image(id=cid, layers=[str(d) for d in diff_ids], config=run_config, created=time.time())
        return self.finish(img, ref)

    def rootfs(self, f: BinaryIO, path: str, ref: str | None) -> Image:
        diff = self.layer(f, None, None, None, os.path.basename(path))
        run = {"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"]}
        config = {"architecture": "amd64", "os": "linux", "config": run,
                  "rootfs": {"type": "layers", "diff_ids": [diff]}}
        data = json.dumps(config, sort_keys=True).encode()
        cid = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[cid] = data
        base = os.path.basename(path).split(".")[0]
        ref = ref or (normalize_ref(base) if base else None)
        return self.finish(Image(id=cid, layers=[diff], config=dict(run), created=time.time()), ref)

    def archive(self, f: BinaryIO) -> str:
        """Unpack an archive of an image (its files are plain files: `.wh.` names mean nothing here)
        under its own budget; returns the dir."""
        dest = self._dir("archive")
        budget = Budget(self.budget.max_bytes)
        stream = HashingReader(open_layer(f, _magic(f)), budget.stream)
        try:
            unpack(stream, dest, budget, whiteouts=False)  # type: ignore[arg-type]
        except _STREAM_ERRORS as e:
            raise CgagentError(f"the archive could not be unpacked: {_why(e)}", "check the archive") from None
        except TAR_ERRORS as e:   # a truncated tar, a bad header field
            raise CgagentError(f"the archive is damaged: {e}", "export the image again") from None
        return dest

    # --- publishing

    def finish(self, img: Image, ref: str | None) -> Image:
        """Publish the staged layers and blobs and record the image, moving `ref` to it."""
        if not img.layers:   # nothing to make a root of: the run would have no overlay to mount
            raise CgagentError("the image has no layers", "add a filesystem layer to the image and export it again")
        with self.store.lock():
            for d in img.layers:
                if d not in self.staged and not self.store.has_layer(d):
                    raise CgagentError(f"layer {d} was removed from the store during the import", "import again")
            # a power loss must not leave a layer that looks whole (its link file) with its files
            # torn, nor a record naming a layer whose rename was lost: data first, then the renames
            if self.staged:
                fsync_dir(self.staging, whole_filesystem=True)
                for d, staged in self.staged.items():
                    self.store.publish_layer(d, staged)
                fsync_dir(self.store.layers)
                fsync_dir(self.store.links)
            for digest, data in self.blobs.items():
                self.store.put_blob(digest, data)
            fault("image_published")
            img.size = sum(disk_usage(self.store.layer_dir(d)) for d in img.layers)
            old = {i.id: i for i in self.store.all()}
            if img.id in old:
                img.names = old[img.id].names
                img.created = old[img.id].created
            if ref:
                for other in old.values():
                    if other.id != img.id and ref in other.names:
                        other.names.remove(ref)
                        self.store.save(other)
                if ref not in img.names:
                    img.names.append(ref)
            self.store.save(img)
            self.store.collect()   # what an import killed before its save left
        return img


def _why(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def _magic(f: BinaryIO) -> bytes:
    magic = f.read(4)
    f.seek(0)
    return magic


def _archive_kind(f: BinaryIO, max_bytes: int) -> str | None:
    """"oci" for an OCI layout in a tar (what `docker save` writes since Docker 25), "docker" for the
    older `docker save` format (manifest.json + layer tars), None for a plain rootfs tarball (or
    something that is no tar at all: the layer import reports what is wrong with it)."""
    names: set[str] = set()
    budget = Budget(max_bytes)
    try:
        # the cap counts what is inflated here too: skipping a member inflates all of it
        with open_tar(HashingReader(open_layer(f, _magic(f)), budget.stream), "r|") as tf:  # type: ignore[arg-type]
            for m in members(tf, budget):
                names.add(m.name.removeprefix("./").split("/")[0])
                if {"bin", "etc", "usr"} & names:
                    return None   # a root filesystem: no need to read on
    except (CgagentError, *TAR_ERRORS, *_STREAM_ERRORS):
        return None
    finally:
        f.seek(0)
    if {"oci-layout", "index.json"} <= names:
        return "oci"
    if "manifest.json" in names:
        return "docker"
    return None


def _neither(path: str) -> CgagentError:
    return CgagentError(f"{path} is neither an OCI image layout directory nor a tarball",
                        "give a directory with index.json, or a .tar/.tar.gz of a root filesystem")


def import_path(store: ImageStore, path: str, name: str | None = None, max_bytes: int | None = None) -> Image:
    ref = normalize_ref(name) if name else None
    budget = Budget(max_size() if max_bytes is None else max_bytes)
    try:
        st = os.stat(path)
    except OSError as e:
        raise CgagentError(f"cannot import {path}: {e.strerror}", "give an image directory or archive") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise _neither(path)   # a device such as /dev/zero, a FIFO, a socket
    store.ensure()
    _sweep_stale(store)
    with _cleanup_on_signals():
        imp = _Import(store, budget)
        try:
            if stat.S_ISDIR(st.st_mode):
                with Tree(path, f"the layout {path}") as t:
                    if not t.exists("index.json"):
                        raise _neither(path)
                    return imp.oci(t, ref)
            try:   # the path may have been replaced since the stat above
                fd = open_regular(path)
            except NotRegular:
                raise _neither(path) from None
            with os.fdopen(fd, "rb") as f:
                kind = _archive_kind(f, budget.max_bytes)
                if kind is None:
                    return imp.rootfs(f, path, ref)
                unpacked = imp.archive(f)
            with Tree(unpacked, f"the archive {os.path.basename(path)}") as t:
                return imp.oci(t, ref) if kind == "oci" else imp.docker(t, ref)
        finally:
            imp.close()
