"""Test images built here from Debian's busybox-static: an OCI layout of two layers (the second
deletes a file of the first with a whiteout and makes a directory opaque), rootfs tarballs, and
the hostile tarballs of the tar-slip tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

BUSYBOX = "/bin/busybox"
REF = "busybox:test"
WHITED_OUT = "/etc/removed.txt"      # in layer 1, deleted by layer 2
OPAQUE_GONE = "/opq/from-layer1"     # hidden by layer 2's opaque marker on /opq
OPAQUE_KEPT = "/opq/from-layer2"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home/nobody:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\ntty:x:5:\n"


def applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return [a for a in out.split() if a and a != "busybox" and "/" not in a]


class TarBuilder:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.mtime = 1_700_000_000  # fixed: the same content gives the same digest

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = kind, mode, self.mtime
        return ti

    def dir(self, name: str, mode: int = 0o755) -> TarBuilder:
        self.tf.addfile(self._info(name, tarfile.DIRTYPE, mode))
        return self

    def file(self, name: str, data: bytes, mode: int = 0o644) -> TarBuilder:
        ti = self._info(name, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tf.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str) -> TarBuilder:
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tf.addfile(ti)
        return self

    def hardlink(self, name: str, target: str) -> TarBuilder:
        ti = self._info(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.tf.addfile(ti)
        return self

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def layer1() -> bytes:
    t = TarBuilder()
    for d in ("bin", "etc", "proc", "sys", "dev", "root", "home", "home/nobody", "opq", "usr", "usr/bin"):
        t.dir(d)
    t.dir("tmp", 0o1777)
    with open(BUSYBOX, "rb") as f:
        t.file("bin/busybox", f.read(), 0o755)
    for a in applets():
        t.symlink(f"bin/{a}", "busybox")
    t.file("etc/passwd", PASSWD.encode()).file("etc/group", GROUP.encode())
    t.file(WHITED_OUT.lstrip("/"), b"layer 1 wrote this\n")
    t.file(OPAQUE_GONE.lstrip("/"), b"hidden by the opaque dir\n")
    t.file("etc/hostname", b"image\n")
    return t.bytes()


def layer2() -> bytes:
    t = TarBuilder()
    t.dir("etc").file("etc/.wh.removed.txt", b"").file("etc/layer2.txt", b"layer 2\n")
    t.dir("opq").file("opq/.wh..wh..opq", b"").file(OPAQUE_KEPT.lstrip("/"), b"kept\n")
    return t.bytes()


def _blob(layout: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    d = os.path.join(layout, "blobs", "sha256")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def write_layout(layout: str, layers: list[bytes], config: dict[str, object] | None = None,
                 ref: str | None = REF, gzip_from: int = 1) -> dict[str, str]:
    """An OCI layout of `layers` (plain tars, gzipped from index `gzip_from` on). Returns the digests."""
    os.makedirs(layout, exist_ok=True)
    descs, diff_ids = [], []
    for i, raw in enumerate(layers):
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        data = gzip.compress(raw, mtime=0) if i >= gzip_from else raw
        mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if i >= gzip_from else "")
        descs.append({"mediaType": mt, "digest": _blob(layout, data), "size": len(data)})
    run = config if config is not None else {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "IMAGE_VAR=from-image"],
        "Cmd": ["sh", "-c", "echo default-cmd"], "WorkingDir": "/"}
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": run,
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _blob(layout, cfg), "size": len(cfg)}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": cdesc, "layers": descs}).encode()
    mdesc: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "digest": _blob(layout, manifest), "size": len(manifest)}
    if ref:
        mdesc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
    return {"config": str(cdesc["digest"]), "manifest": str(mdesc["digest"]),
            "layers": ",".join(str(d["digest"]) for d in descs), "diff_ids": ",".join(diff_ids)}


def busybox_layout(layout: str, config: dict[str, object] | None = None, ref: str | None = REF) -> dict[str, str]:
    return write_layout(layout, [layer1(), layer2()], config=config, ref=ref)


def rootfs_tarball(path: str, gz: bool = False) -> None:
    data = layer1()
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


# --- hostile layers (tar-slip): each must be refused without writing outside the store

def evil_dotdot(victim_rel: str) -> bytes:
    return TarBuilder().dir("etc").file(f"../../../../../../../..{victim_rel}", b"pwned\n").bytes()


def evil_absolute(victim: str) -> bytes:
    t = TarBuilder()
    ti = t._info(victim, tarfile.REGTYPE, 0o644)  # tarfile would strip nothing: the name stays absolute
    ti.size = 6
    t.tf.addfile(ti, io.BytesIO(b"pwned\n"))
    return t.bytes()


def evil_symlink_write(victim_dir: str) -> bytes:
    """A symlink to a host directory, then a file written through it."""
    return TarBuilder().symlink("escape", victim_dir).file("escape/pwned.txt", b"pwned\n").bytes()


def evil_relative_symlink() -> bytes:
    return TarBuilder().dir("a").symlink("a/up", "../../../../../../tmp").bytes()


def evil_hardlink(victim: str) -> bytes:
    return TarBuilder().hardlink("passwd-copy", victim).bytes()


def tar_dir(src: str, dest: str, gz: bool = False) -> None:
    """`tar -C src -c .` (optionally gzipped): how an OCI layout or a docker-save archive travels."""
    with tarfile.open(dest, "w:gz" if gz else "w") as tf:
        for name in sorted(os.listdir(src)):
            tf.add(os.path.join(src, name), arcname=name)


def docker_archive(root: str, tag: str = "dock:1", layers: list[bytes] | None = None,
                   layer_paths: list[str] | None = None) -> str:
    """The pre-OCI `docker save` layout: manifest.json, <config>.json, <id>/layer.tar. Returns the config id."""
    layers = layers if layers is not None else [layer1(), layer2()]
    os.makedirs(root, exist_ok=True)
    paths = []
    for i, raw in enumerate(layers):
        os.makedirs(f"{root}/l{i}", exist_ok=True)
        with open(f"{root}/l{i}/layer.tar", "wb") as f:
            f.write(raw)
        paths.append(f"l{i}/layer.tar")
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["echo", "from-docker"]},
                      "rootfs": {"type": "layers",
                                 "diff_ids": ["sha256:" + hashlib.sha256(r).hexdigest() for r in layers]}}).encode()
    cid = hashlib.sha256(cfg).hexdigest()
    with open(f"{root}/{cid}.json", "wb") as f:
        f.write(cfg)
    with open(f"{root}/manifest.json", "w") as f:
        json.dump([{"Config": f"{cid}.json", "RepoTags": [tag], "Layers": layer_paths or paths}], f)
    return "sha256:" + cid


# --- the hostile-image corpus (tests/security/test_image_import.py): images that try to read host
# files, exhaust memory, disk or the recursion limit, or turn whiteouts against the store

def blob_file(layout: str, digest: str) -> str:
    return os.path.join(layout, "blobs", "sha256", digest.partition(":")[2])


def replace_with_symlink(path: str, target: str) -> None:
    os.unlink(path)
    os.symlink(target, path)


def deep_layer(path: str, depth: int) -> tuple[str, str, int]:
    """A gzipped layer holding a directory tree `depth` levels deep ("d/d/d/..."), streamed to
    `path` (the uncompressed tar of 10,000 levels is ~200 MB). Returns (digest, diff_id, size)."""
    raw = hashlib.sha256()

    class Tee(io.RawIOBase):
        def __init__(self, gz: gzip.GzipFile) -> None:
            self.gz = gz

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            raw.update(b)
            self.gz.write(b)
            return len(b)

    with (open(path, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz,
          tarfile.open(fileobj=Tee(gz), mode="w|", format=tarfile.PAX_FORMAT) as tf):
        name = ""
        for _ in range(depth):
            name += "d/"
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return "sha256:" + digest, "sha256:" + raw.hexdigest(), os.path.getsize(path)


def layout_with_blob(layout: str, src: str, digest: str, diff_id: str, size: int) -> None:
    """An OCI layout of one gzipped layer blob already written at `src` (moved into place)."""
    write_layout(layout, [TarBuilder().bytes()], ref="deep:1")
    idx = json.loads(open(os.path.join(layout, "index.json")).read())
    man_path = blob_file(layout, idx["manifests"][0]["digest"])
    man = json.loads(open(man_path).read())
    cfg = json.loads(open(blob_file(layout, man["config"]["digest"])).read())
    cfg["rootfs"]["diff_ids"] = [diff_id]
    cdata = json.dumps(cfg).encode()
    man["config"] = dict(man["config"], digest=_blob(layout, cdata), size=len(cdata))
    man["layers"] = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}]
    mdata = json.dumps(man).encode()
    idx["manifests"][0].update(digest=_blob(layout, mdata), size=len(mdata))
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(idx, f)
    os.rename(src, blob_file(layout, digest))


def sparse_tarball(path: str, size: int, fmt: str = "gnu") -> None:
    """A tar (~10 KB) declaring one sparse file of `size` bytes, written by GNU tar."""
    work = os.path.dirname(path)
    victim = os.path.join(work, "giant")
    with open(victim, "wb") as f:
        f.truncate(size)
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-C", work, "-cf", path, "giant"], check=True)
    os.unlink(victim)


def whiteout_layer(kind: str) -> bytes:
    t = TarBuilder().dir("sub").file("sub/keep", b"keep\n").file("plain", b"a file\n")
    if kind == "dotdot-top":       # `.wh...` names `..`: the layer's parent in the store
        t.file(".wh...", b"")
    elif kind == "dotdot-sub":
        t.file("sub/.wh...", b"")
    elif kind == "dot":            # `.wh..` names the directory itself
        t.file("sub/.wh..", b"")
    elif kind == "empty":          # `.wh.` names nothing: the directory it is in
        t.file(".wh.", b"")
    elif kind == "opaque-through-symlink":
        t.symlink("escape", "/").file("escape/.wh..wh..opq", b"")
    elif kind == "opaque-under-file":
        t.file("plain/.wh..wh..opq", b"")
    elif kind == "whiteout-through-symlink":
        t.symlink("escape", "/").file("escape/.wh.etc", b"")
    return t.bytes()


def docker_archive_with(root: str, config: str | None = None, layers: list[str] | None = None,
                        members: list[tuple[str, str]] | None = None) -> str:
    """A docker-save archive (tar) whose manifest.json names `config`/`layers` as given, plus
    symlink `members` (name, target). Returns the tar path."""
    docker_archive(root, layers=[layer1()])
    man = json.loads(open(os.path.join(root, "manifest.json")).read())
    if config is not None:
        man[0]["Config"] = config
    if layers is not None:
        man[0]["Layers"] = layers
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(man, f)
    for name, target in members or []:
        p = os.path.join(root, name)
        if os.path.lexists(p):
            os.unlink(p)
        os.symlink(target, p)
    tar_dir(root, root + ".tar")
    return root + ".tar"


def dir_then_symlink(target: str) -> bytes:
    """A directory `x` (mode 0777), then `x` again as a symlink to `target`: metadata applied to the
    directory after the fact would go through the link (chmod and utime follow symlinks)."""
    return TarBuilder().dir("x", 0o777).file("x/f", b"in x\n").symlink("x", target).bytes()


def dir_symlinked_on_the_way(target_dir: str, inside: str) -> bytes:
    """Directories `a` and `a/INSIDE`, then `a` as a symlink to `target_dir`: metadata applied to
    `a/INSIDE` after the fact would go through the link at `a`, to TARGET_DIR/INSIDE."""
    return TarBuilder().dir("a").dir(f"a/{inside}").symlink("a", target_dir).bytes()


class Zeros:
    """`n` zero bytes to tarfile.addfile, never all of them in memory."""

    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, k: int = -1) -> bytes:
        k = self.left if k < 0 else min(k, self.left)
        self.left -= k
        return bytes(k)


def nul_layer(header: str) -> bytes:
    """One member whose pax `header` (path or linkpath) holds a NUL: tarfile hands it on as is."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("x")
        if header == "linkpath":
            ti.type = tarfile.SYMTYPE
        ti.pax_headers = {header: "a\0b"}
        tf.addfile(ti, io.BytesIO(b""))
    return buf.getvalue()


def many_dirs_layer(path: str, n: int) -> None:
    """A gzipped layer of `n` sibling directories: what the unpacker remembers per directory."""
    with (open(path, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz,
          tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tf):
        for i in range(n):
            ti = tarfile.TarInfo(f"{i:07d}-a-directory-with-a-longish-name/")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tf.addfile(ti)
