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
