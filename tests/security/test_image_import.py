"""The hostile-image corpus: images built here (in tmp_path) that try to make `cgagent image import`
read host files, print what it read, exhaust memory, disk or the recursion limit, or turn
whiteouts against the store. Each import runs in a subprocess and must end in one line without a
traceback, leave the canary (a file outside the store that the images point at) unread and
unchanged, leave no file in the store, its tmp/ or $TMPDIR, and keep its peak RSS under 150 MB.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import resource
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import images

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking whiteouts needs root (mknod, trusted.* xattrs)")

MAX_RSS = 150 << 20
TIMEOUT = 120
MARKER = b"CANARY-7f3a-host-secret"
SKELETON = {"", "blobs", "blobs/sha256", "layers", "layers/l", "images", "tmp", "containers", "lock"}


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    max_rss: int   # bytes, the child's peak (wait4's ru_maxrss)


def run_cgagent(tmp: Path, *args: str) -> Result:
    """`cgagent ARGS` in a subprocess with its own store and $TMPDIR, a 1 GiB address-space limit
    (so that a regression reading /dev/zero fails this test instead of the machine), and the peak
    RSS of exactly that child from wait4()."""
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env = dict(os.environ, CGAGENT_ROOT=str(tmp / "store"), CGAGENT_STATE_DIR=str(tmp / "state"),
               TMPDIR=str(tmp / "tmpdir"))
    env.pop("CGAGENT_IMAGE_MAX_SIZE", None)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    with open(tmp / "out", "w+") as out, open(tmp / "err", "w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "cgagent", *args], env=env, stdout=out, stderr=err,
                             preexec_fn=limit)
        waited: list[tuple[int, int, resource.struct_rusage]] = []
        t = threading.Thread(target=lambda: waited.append(os.wait4(p.pid, 0)), daemon=True)
        t.start()
        t.join(TIMEOUT)
        timed_out = t.is_alive()
        if timed_out:
            p.kill()
            t.join()
        _pid, status, usage = waited[0]
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        res = Result(p.returncode, out.read(), err.read(), usage.ru_maxrss * 1024)
    assert not timed_out, f"cgagent {' '.join(args)} ran longer than {TIMEOUT} s"
    return res


def store_files(store: Path) -> set[str]:
    """Every path in the store except its empty skeleton (an import may create that)."""
    out: set[str] = set()
    if not store.exists():
        return out
    stack = [store]
    while stack:
        d = stack.pop()
        for e in os.scandir(d):
            rel = os.path.relpath(e.path, store)
            if rel not in SKELETON:
                out.add(rel)
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    return out


@dataclass
class Canary:
    """Files outside the store that hostile images point at: a valid layer tar and a valid image
    config (so that following the link would have imported them), both carrying MARKER."""

    dir: Path
    tar: Path
    config: Path

    def state(self) -> list[tuple[str, bytes, int, int]]:
        return [(p.name, p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(self.dir.iterdir())]

    def digests(self) -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in (self.tar, self.config)]


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    d = tmp_path / "canary"
    d.mkdir()
    tar = d / "secret.tar"
    tar.write_bytes(images.TarBuilder().file("secret", MARKER + b"\n").bytes())
    diff = "sha256:" + hashlib.sha256(images.layer1()).hexdigest()
    cfg = d / "config.json"
    cfg.write_text(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": [MARKER.decode()]},
                               "rootfs": {"type": "layers", "diff_ids": [diff]}}))
    return Canary(d, tar, cfg)


def assert_refused(tmp: Path, canary: Canary, args: list[str], expect: str, digest_may_show: bool = False) -> str:
    store = tmp / "store"
    before_store, before_canary = store_files(store), canary.state()
    r = run_cgagent(tmp, "image", "import", *args)
    lines = r.stderr.strip().splitlines()
    assert r.rc != 0 and len(lines) == 1 and lines[0].startswith("cgagent: error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and expect in lines[0], lines[0]
    assert MARKER.decode() not in r.stdout + r.stderr
    if not digest_may_show:   # the attacker named a blob by the canary's digest: that name may be quoted
        for h in canary.digests():
            assert h not in r.stdout + r.stderr
    assert canary.state() == before_canary
    assert store_files(store) == before_store, "a refused import left files in the store"
    assert os.listdir(tmp / "tmpdir") == []
    assert r.max_rss < MAX_RSS, f"peak RSS {r.max_rss >> 20} MiB"
    return lines[0]


# --- OCI layouts whose files are symlinks, devices, FIFOs or oversized


def _oci(tmp: Path) -> tuple[str, dict[str, str]]:
    layout = str(tmp / "oci")
    return layout, images.write_layout(layout, [images.layer1()], ref="evil:1")


def _symlinked(part: str, target: Callable[[Canary], str]) -> Callable[[Path, Canary], list[str]]:
    def build(tmp: Path, c: Canary) -> list[str]:
        layout, d = _oci(tmp)
        path = {"config": lambda: images.blob_file(layout, d["config"]),
                "manifest": lambda: images.blob_file(layout, d["manifest"]),
                "layer": lambda: images.blob_file(layout, d["layers"]),
                "index.json": lambda: os.path.join(layout, "index.json"),
                "oci-layout": lambda: os.path.join(layout, "oci-layout")}[part]()
        images.replace_with_symlink(path, target(c))
        return [layout]
    return build


def _canary_layer(tmp: Path, c: Canary) -> list[str]:
    """A layer blob named by the canary's own digest and diff_id: following it imported a host file."""
    layout = str(tmp / "oci")
    d = images.write_layout(layout, [c.tar.read_bytes()], ref="evil:1", gzip_from=9)
    images.replace_with_symlink(images.blob_file(layout, d["layers"]), str(c.tar))
    return [layout]


def _relative_symlink_layer(tmp: Path, c: Canary) -> list[str]:
    layout = str(tmp / "oci")
    d = images.write_layout(layout, [c.tar.read_bytes()], ref="evil:1", gzip_from=9)
    blob = images.blob_file(layout, d["layers"])
    images.replace_with_symlink(blob, os.path.relpath(c.tar, os.path.dirname(blob)))
    return [layout]


def _fifo_layer(tmp: Path, c: Canary) -> list[str]:
    layout, d = _oci(tmp)
    blob = images.blob_file(layout, d["layers"])
    os.unlink(blob)
    os.mkfifo(blob)   # opening it for reading would block forever
    return [layout]


def _big_index(tmp: Path, c: Canary) -> list[str]:
    layout, _ = _oci(tmp)
    with open(os.path.join(layout, "index.json"), "a") as f:
        f.write(" " * (5 << 20))
    return [layout]


def _nested_index(tmp: Path, c: Canary) -> list[str]:
    layout, _ = _oci(tmp)
    Path(layout, "index.json").write_text("[" * 1_000_000)
    return [layout]


def _deep_tree(tmp: Path, c: Canary) -> list[str]:
    layout = str(tmp / "oci")
    os.makedirs(layout)
    digest, diff_id, size = images.deep_layer(str(tmp / "deep.tar.gz"), 10_000)
    images.layout_with_blob(layout, str(tmp / "deep.tar.gz"), digest, diff_id, size)
    return [layout]


def _whiteout(kind: str) -> Callable[[Path, Canary], list[str]]:
    def build(tmp: Path, c: Canary) -> list[str]:
        layout = str(tmp / "oci")
        images.write_layout(layout, [images.whiteout_layer(kind)], ref="evil:1")
        return [layout]
    return build


def _sparse(fmt: str) -> Callable[[Path, Canary], list[str]]:
    def build(tmp: Path, c: Canary) -> list[str]:
        images.sparse_tarball(str(tmp / "giant.tar"), 2 << 30, fmt)
        return [str(tmp / "giant.tar"), "--max-size", "1G"]
    return build


def _sparse_in_layout(tmp: Path, c: Canary) -> list[str]:
    images.sparse_tarball(str(tmp / "giant.tar"), 2 << 30)
    layout = str(tmp / "oci")
    images.write_layout(layout, [(tmp / "giant.tar").read_bytes()], ref="evil:1")
    return [layout, "--max-size", "1G"]


def _cached(lie: str) -> Callable[[Path, Canary], list[str]]:
    """A layout whose config names the diff_id of a layer already in the store, with a blob that is
    another tar (`diff_id`) or does not match its own digest (`digest`)."""
    def build(tmp: Path, c: Canary) -> list[str]:
        images.write_layout(str(tmp / "good"), [images.layer1()], ref="good:1")
        r = run_cgagent(tmp, "image", "import", str(tmp / "good"))
        assert r.rc == 0, r.stderr
        layout = str(tmp / "oci")
        cached = "sha256:" + hashlib.sha256(images.layer1()).hexdigest()
        other = images.TarBuilder().file("evil", b"not the cached layer\n").bytes()
        d = images.write_layout(layout, [other], ref="evil:1", gzip_from=9)
        idx = json.loads(Path(layout, "index.json").read_text())
        man = json.loads(Path(images.blob_file(layout, d["manifest"])).read_text())
        cfg = json.loads(Path(images.blob_file(layout, d["config"])).read_text())
        cfg["rootfs"]["diff_ids"] = [cached]
        cdata = json.dumps(cfg).encode()
        man["config"] = dict(man["config"], digest=images._blob(layout, cdata), size=len(cdata))
        if lie == "digest":   # the blob's bytes no longer match the manifest's digest
            blob = Path(images.blob_file(layout, d["layers"]))
            blob.write_bytes(images.layer1()[: blob.stat().st_size])
        mdata = json.dumps(man).encode()
        idx["manifests"][0].update(digest=images._blob(layout, mdata), size=len(mdata))
        Path(layout, "index.json").write_text(json.dumps(idx))
        return [layout]
    return build


# --- docker-save archives naming files outside themselves


def _docker(config: Callable[[Canary], str] | None = None, layers: Callable[[Canary], list[str]] | None = None,
            links: Callable[[Canary], list[tuple[str, str]]] | None = None) -> Callable[[Path, Canary], list[str]]:
    def build(tmp: Path, c: Canary) -> list[str]:
        return [images.docker_archive_with(str(tmp / "dock"), config=config(c) if config else None,
                                           layers=layers(c) if layers else None,
                                           members=links(c) if links else None)]
    return build


def _oci_tar_symlink(tmp: Path, c: Canary) -> list[str]:
    """An OCI layout in a tar whose layer blob is a symlink member to the canary, named by its digest."""
    _canary_layer(tmp, c)
    images.tar_dir(str(tmp / "oci"), str(tmp / "oci.tar"))
    return [str(tmp / "oci.tar")]


def _giant_pax_header(tmp: Path, c: Canary) -> list[str]:
    """A pax header declaring 2 GiB: tarfile would read (and hold) all of it before the member."""
    import tarfile

    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type, ti.size = tarfile.XHDTYPE, 2 << 30
    (tmp / "pax.tar").write_bytes(ti.tobuf(tarfile.USTAR_FORMAT) + bytes(4096))
    return [str(tmp / "pax.tar")]


def _layout_of(*layers: bytes) -> Callable[[Path, Canary], list[str]]:
    def build(tmp: Path, c: Canary) -> list[str]:
        images.write_layout(str(tmp / "oci"), list(layers), ref="evil:1")
        return [str(tmp / "oci")]
    return build


def _same_dir_repeated(tmp: Path, c: Canary) -> list[str]:
    """A 3000-byte directory name 30000 times: each entry's name was kept for its mtime (90 MB)."""
    name = "/".join(["d" * 199] * 15)
    with (open(tmp / "dirs.tar.gz", "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz,
          tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tf):
        for _ in range(30000):
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
    return [str(tmp / "dirs.tar.gz")]


UP = "../" * 40

CORPUS: dict[str, tuple[Callable[[Path, Canary], list[str]], str]] = {
    "config-symlink-to-canary": (_symlinked("config", lambda c: str(c.config)), "symlink"),
    "manifest-symlink-to-canary": (_symlinked("manifest", lambda c: str(c.config)), "symlink"),
    "index-symlink-to-canary": (_symlinked("index.json", lambda c: str(c.config)), "symlink"),
    "layer-symlink-to-canary": (_symlinked("layer", lambda c: str(c.tar)), "symlink"),
    "layer-named-by-canary-digest": (_canary_layer, "symlink"),
    "layer-relative-symlink-out": (_relative_symlink_layer, "symlink"),
    "config-symlink-to-dev-zero": (_symlinked("config", lambda c: "/dev/zero"), "symlink"),
    "manifest-symlink-to-dev-zero": (_symlinked("manifest", lambda c: "/dev/zero"), "symlink"),
    "layer-symlink-to-dev-zero": (_symlinked("layer", lambda c: "/dev/zero"), "symlink"),
    "index-symlink-to-dev-zero": (_symlinked("index.json", lambda c: "/dev/zero"), "symlink"),
    "oci-layout-symlink-to-dev-zero": (_symlinked("oci-layout", lambda c: "/dev/zero"), "symlink"),
    "layer-fifo": (_fifo_layer, "not a regular file"),
    "index-5MiB": (_big_index, "larger than 4 MiB"),
    "index-nested-1M-deep": (_nested_index, "nests too deeply"),
    "tree-10000-deep": (_deep_tree, "path longer than"),
    "pax-header-2GiB": (_giant_pax_header, "tar header of the image is larger than 1 MiB"),
    "pax-path-with-nul": (_layout_of(images.nul_layer("path")), "NUL in a name"),
    "pax-linkpath-with-nul": (_layout_of(images.nul_layer("linkpath")), "NUL in a symlink's target"),
    # no layers: there is no root to mount (the run fell through to a `--rootfs` of None)
    "no-layers": (_layout_of(), "the image has no layers"),
    "one-dir-name-repeated": (_same_dir_repeated, "directory names of more than 64 MiB"),
    "whiteout-dotdot-at-top": (_whiteout("dotdot-top"), "whiteout of"),
    "whiteout-dotdot-in-dir": (_whiteout("dotdot-sub"), "whiteout of"),
    "whiteout-dot": (_whiteout("dot"), "whiteout of"),
    "whiteout-empty-name": (_whiteout("empty"), "whiteout of"),
    "opaque-through-symlink": (_whiteout("opaque-through-symlink"), "through a symlink"),
    "opaque-under-a-file": (_whiteout("opaque-under-file"), "not a directory"),
    "whiteout-through-symlink": (_whiteout("whiteout-through-symlink"), "through a symlink"),
    "sparse-2GiB-gnu-vs-1G-cap": (_sparse("gnu"), "more than 1 GiB"),
    "sparse-2GiB-pax-vs-1G-cap": (_sparse("pax"), "more than 1 GiB"),
    "sparse-2GiB-layer-vs-1G-cap": (_sparse_in_layout, "more than 1 GiB"),
    "cache-hit-wrong-diff-id": (_cached("diff_id"), "does not match its diff_id"),
    "cache-hit-wrong-digest": (_cached("digest"), "corrupt"),
    "docker-config-absolute": (_docker(config=lambda c: str(c.config)), "absolute path"),
    "docker-config-dotdot": (_docker(config=lambda c: UP + str(c.config).lstrip("/")), "contains '..'"),
    "docker-config-dev-zero": (_docker(config=lambda c: "/dev/zero"), "absolute path"),
    "docker-config-dotdot-dev-zero": (_docker(config=lambda c: UP + "dev/zero"), "contains '..'"),
    "docker-layer-dev-zero": (_docker(layers=lambda c: ["/dev/zero"]), "absolute path"),
    "docker-config-symlink-member": (_docker(config=lambda c: "cfg.json",
                                             links=lambda c: [("cfg.json", str(c.config))]), "symlink"),
    "docker-layer-symlink-member": (_docker(layers=lambda c: ["evil.tar"], links=lambda c: [("evil.tar", str(c.tar))]),
                                    "symlink"),
    "docker-layer-symlink-dev-zero": (_docker(layers=lambda c: ["z.tar"], links=lambda c: [("z.tar", "/dev/zero")]),
                                      "symlink"),
    "oci-tar-blob-symlink-member": (_oci_tar_symlink, "symlink"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_image_is_refused(tmp_path: Path, canary: Canary, case: str) -> None:
    build, expect = CORPUS[case]
    args = build(tmp_path, canary)
    assert_refused(tmp_path, canary, args, expect,
                   digest_may_show=case in ("layer-named-by-canary-digest", "layer-relative-symlink-out",
                                            "oci-tar-blob-symlink-member"))


def test_dev_zero_as_the_image_itself(tmp_path: Path, canary: Canary) -> None:
    assert_refused(tmp_path, canary, ["/dev/zero"], "neither")


def test_whiteout_names_in_an_archive_are_plain_files(tmp_path: Path, canary: Canary) -> None:
    """`.wh...` at the top of a docker-save archive once ran rmtree on the store's tmp/: in an archive
    (not a layer) whiteout names mean nothing, and another import's staging dir survives."""
    other = tmp_path / "store" / "tmp" / "import-1-other"
    other.mkdir(parents=True)
    (other / "keep").write_text("another import's work\n")
    root = tmp_path / "dock"
    images.docker_archive(str(root), layers=[images.layer1()])
    (root / ".wh...").write_text("")
    (root / ".wh..wh..opq").write_text("")
    images.tar_dir(str(root), str(tmp_path / "dock.tar"))
    r = run_cgagent(tmp_path, "image", "import", str(tmp_path / "dock.tar"))
    assert r.rc == 0, r.stderr
    assert (other / "keep").read_text() == "another import's work\n"
    assert sorted(os.listdir(tmp_path / "store" / "tmp")) == ["import-1-other"]
    assert r.max_rss < MAX_RSS


def test_sparse_giant_under_the_cap_stays_sparse(tmp_path: Path) -> None:
    """Under the default 10 GiB cap the 2 GiB sparse file imports, and holes stay holes on disk."""
    images.sparse_tarball(str(tmp_path / "giant.tar"), 2 << 30)
    r = run_cgagent(tmp_path, "image", "import", str(tmp_path / "giant.tar"))
    assert r.rc == 0, r.stderr
    [layer] = [d for d in os.listdir(tmp_path / "store" / "layers") if d != "l"]
    st = os.stat(tmp_path / "store" / "layers" / layer / "diff" / "giant")
    assert st.st_size == 2 << 30 and st.st_blocks * 512 < 1 << 20
    assert r.max_rss < MAX_RSS


def test_deep_tree_within_path_max_imports_and_is_removed(tmp_path: Path) -> None:
    """1,500 levels (past Python's recursion limit, within PATH_MAX): unpacked, measured and removed
    by iterative walks."""
    layout = str(tmp_path / "oci")
    os.makedirs(layout)
    digest, diff_id, size = images.deep_layer(str(tmp_path / "deep.tar.gz"), 1500)
    images.layout_with_blob(layout, str(tmp_path / "deep.tar.gz"), digest, diff_id, size)
    r = run_cgagent(tmp_path, "image", "import", layout)
    assert r.rc == 0, r.stderr
    deepest = tmp_path / "store" / "layers" / diff_id.partition(":")[2] / "diff"
    fd = os.open(deepest, os.O_RDONLY)
    try:   # walk down by fds: the full path is longer than PATH_MAX
        for _ in range(1500):
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    r = run_cgagent(tmp_path, "image", "rm", "deep:1")
    assert r.rc == 0, r.stderr
    assert store_files(tmp_path / "store") == set()


def test_max_size_from_the_environment(tmp_path: Path) -> None:
    images.rootfs_tarball(str(tmp_path / "root.tar"))
    env = dict(os.environ, CGAGENT_ROOT=str(tmp_path / "store"), CGAGENT_IMAGE_MAX_SIZE="100K")
    r = subprocess.run([sys.executable, "-m", "cgagent", "image", "import", str(tmp_path / "root.tar")],
                       env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and "more than 100 KiB" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "cgagent", "image", "import", str(tmp_path / "root.tar"),
                        "--max-size", "unlimited"], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr


def test_telling_the_archive_kind_inflates_no_more_than_the_cap(tmp_path: Path) -> None:
    """Before the import proper, the archive is read to tell an OCI layout from a docker save or a
    root filesystem; skipping a member inflates all of it, and that read was not capped: a 256 MiB
    member of zeros (250 KiB of gzip) was inflated whole against a 1 MiB cap."""
    from cgagent.images.importer import _archive_kind

    path = tmp_path / "bomb.tar.gz"
    with open(path, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tf:
        ti = tarfile.TarInfo("zeros")
        ti.size = 256 << 20
        tf.addfile(ti, images.Zeros(ti.size))
    compressed = path.stat().st_size

    class Counted(io.FileIO):
        read_bytes = 0

        def read(self, n: int = -1) -> bytes:
            data = super().read(n)
            self.read_bytes += len(data or b"")
            return data or b""

    with Counted(path, "r") as f:
        assert _archive_kind(f, 1 << 20) is None   # refused as an archive: the layer import says why
        assert f.read_bytes < compressed // 8, (f.read_bytes, compressed)


def test_sigterm_during_import_leaves_nothing(tmp_path: Path) -> None:
    """The test holds the store lock, so the import stages its layers and then waits to publish;
    SIGTERM there must end it in one line with its staging dir gone."""
    import signal
    import time

    from cgagent.images.store import ImageStore

    images.busybox_layout(str(tmp_path / "oci"))
    store = ImageStore(str(tmp_path / "store"))
    env = dict(os.environ, CGAGENT_ROOT=store.root, TMPDIR=str(tmp_path))
    with store.lock():
        p = subprocess.Popen([sys.executable, "-m", "cgagent", "image", "import", str(tmp_path / "oci")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + TIMEOUT
        # no event says "blocked in flock": wait for the kernel's list of lock waiters to name it
        while not any(line.split()[1:2] == ["->"] and f" {p.pid} " in line
                      for line in Path("/proc/locks").read_text().splitlines()):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.01)
        assert len(os.listdir(store.tmp)) == 1   # its staging dir, holding both layers
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 2 and err.strip().splitlines() == [
        "cgagent: error: interrupted by signal SIGTERM: nothing was imported"], err
    assert store_files(tmp_path / "store") == set()


def test_directory_replaced_by_a_symlink_changes_nothing_outside(tmp_path: Path, canary: Canary) -> None:
    """Directory metadata used to be applied after the whole layer: when a later member had turned
    the directory into a symlink, chmod(0777) and utime went through it to the host file."""
    os.chmod(canary.config, 0o600)
    before = canary.state(), stat.S_IMODE(canary.config.stat().st_mode)
    images.write_layout(str(tmp_path / "oci"), [images.dir_then_symlink(str(canary.config))], ref="x:1")
    r = run_cgagent(tmp_path, "image", "import", str(tmp_path / "oci"))
    assert r.rc == 0, r.stderr
    assert (canary.state(), stat.S_IMODE(canary.config.stat().st_mode)) == before
    [img] = [d for d in os.listdir(tmp_path / "store" / "layers") if d != "l"]
    assert os.readlink(tmp_path / "store" / "layers" / img / "diff" / "x") == str(canary.config)


def test_a_directory_on_the_way_replaced_by_a_symlink_changes_nothing_outside(tmp_path: Path, canary: Canary) -> None:
    """Directory mtimes are set after the whole layer, by name: `a/config.json`'s went through the
    symlink a later member made of `a`, to the host's file (the canary's config.json here)."""
    before = canary.state()
    layer = images.dir_symlinked_on_the_way(str(canary.dir), "config.json")
    images.write_layout(str(tmp_path / "oci"), [layer], ref="x:1")
    r = run_cgagent(tmp_path, "image", "import", str(tmp_path / "oci"))
    assert r.rc == 0, r.stderr
    assert canary.state() == before


def test_without_openat2_a_directory_on_the_way_is_not_followed(tmp_path: Path, canary: Canary,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from cgagent import beneath
    from cgagent.images.unpack import unpack

    monkeypatch.setattr(beneath, "_openat2_ok", False)
    before = canary.state()
    (tmp_path / "diff").mkdir()
    unpack(io.BytesIO(images.dir_symlinked_on_the_way(str(canary.dir), "config.json")), str(tmp_path / "diff"))
    assert os.readlink(tmp_path / "diff" / "a") == str(canary.dir)
    assert canary.state() == before


def test_without_openat2_the_walk_refuses_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where openat2 is missing (old kernels, seccomp), a component-by-component O_NOFOLLOW walk."""
    from cgagent import beneath
    from cgagent.errors import CgagentError
    from cgagent.images import confined

    monkeypatch.setattr(beneath, "_openat2_ok", False)
    (tmp_path / "t" / "blobs").mkdir(parents=True)
    (tmp_path / "t" / "blobs" / "ok").write_bytes(b"{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x").write_bytes(MARKER)
    os.symlink(tmp_path / "outside" / "x", tmp_path / "t" / "blobs" / "file-link")
    os.symlink(tmp_path / "outside", tmp_path / "t" / "dir-link")
    os.symlink("/dev/zero", tmp_path / "t" / "zero")
    with confined.Tree(str(tmp_path / "t"), "the layout") as t:
        assert t.read("blobs/ok", "blob") == b"{}"
        for name in ("blobs/file-link", "dir-link/x", "zero"):
            with pytest.raises(CgagentError, match="symlink"):
                t.read(name, "blob")
        with pytest.raises(CgagentError, match="not a regular file"):
            t.read("blobs", "blob")
    assert not beneath._openat2_ok


@pytest.mark.parametrize("part", ["config", "manifest", "layer", "index.json"])
def test_a_device_node_in_the_layout_is_refused_without_being_opened(tmp_path: Path, canary: Canary,
                                                                      part: str) -> None:
    """Opening a device has effects of its own (/dev/watchdog arms the watchdog, a tape rewinds): a
    node where a blob belongs is refused on its type alone. The node here has /dev/null's numbers;
    inotify reports every open of it (not an O_PATH look, which opens nothing)."""
    from cgagent.inotify import IN_OPEN, Inotify

    layout, d = _oci(tmp_path)
    path = (os.path.join(layout, "index.json") if part == "index.json"
            else images.blob_file(layout, d["layers" if part == "layer" else part]))
    os.unlink(path)
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
    ino = Inotify()
    try:
        ino.add(path, IN_OPEN)
        assert_refused(tmp_path, canary, [layout], "not a regular file")
        assert [m for _, m, _ in ino.read() if m & IN_OPEN] == []
    finally:
        os.close(ino.fd)
