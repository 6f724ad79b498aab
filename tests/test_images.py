"""Image import into the content-addressed store: digests, layers once, whiteouts, tar-slip refusal."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import images

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking whiteouts needs root (mknod, trusted.* xattrs)")


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CGAGENT_ROOT=str(tmp / "store"), CGAGENT_STATE_DIR=str(tmp / "state"))
    return subprocess.run([sys.executable, "-m", "cgagent", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgagent: error: "), r.stderr
    return lines[0]


def listing(tmp: Path) -> list[dict[str, object]]:
    r = cli(tmp, "images", "--json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def test_import_oci_layout_two_layers_with_whiteouts(tmp_path: Path) -> None:
    digests = images.busybox_layout(str(tmp_path / "oci"))
    r = cli(tmp_path, "image", "import", str(tmp_path / "oci"))
    assert r.returncode == 0, r.stderr
    assert digests["config"] in r.stdout and images.REF in r.stdout
    [img] = listing(tmp_path)
    assert img["names"] == [images.REF] and img["id"] == digests["config"]
    assert img["layers"] == digests["diff_ids"].split(",")
    assert img["config"]["Cmd"] == ["sh", "-c", "echo default-cmd"]  # type: ignore[index]
    store = tmp_path / "store" / "layers"
    l1, l2 = (store / d.partition(":")[2] / "diff" for d in digests["diff_ids"].split(","))
    assert (l1 / "bin" / "busybox").read_bytes() == Path(images.BUSYBOX).read_bytes()
    assert os.readlink(l1 / "bin" / "sh") == "busybox"
    wh = os.lstat(l2 / "etc" / "removed.txt")  # `.wh.removed.txt` became a 0/0 char device
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert not (l2 / "etc" / ".wh.removed.txt").exists()
    assert os.getxattr(l2 / "opq", "trusted.overlay.opaque") == b"y"
    assert not (l2 / "opq" / ".wh..wh..opq").exists()
    for d in (l1, l2):  # overlay2's short links, so many lowerdirs fit in one mount option page
        short = (d.parent / "link").read_text()
        assert os.path.realpath(store / "l" / short) == str(d)
    assert os.listdir(tmp_path / "store" / "tmp") == []


def test_each_layer_is_unpacked_once(tmp_path: Path) -> None:
    images.busybox_layout(str(tmp_path / "oci"))
    assert cli(tmp_path, "image", "import", str(tmp_path / "oci")).returncode == 0
    layers = tmp_path / "store" / "layers"
    before = {d: os.stat(layers / d).st_ino for d in os.listdir(layers) if d != "l"}
    # the same first layer as a plain rootfs tarball: same diff_id, same directory
    images.rootfs_tarball(str(tmp_path / "rootfs.tar"))
    r = cli(tmp_path, "image", "import", str(tmp_path / "rootfs.tar"), "--name", "plain")
    assert r.returncode == 0, r.stderr
    after = {d: os.stat(layers / d).st_ino for d in os.listdir(layers) if d != "l"}
    assert after == before
    names = sorted(n for i in listing(tmp_path) for n in i["names"])  # type: ignore[attr-defined]
    assert names == [images.REF, "plain:latest"]


def test_gzip_rootfs_tarball(tmp_path: Path) -> None:
    images.rootfs_tarball(str(tmp_path / "root.tar.gz"), gz=True)
    r = cli(tmp_path, "image", "import", str(tmp_path / "root.tar.gz"), "--name", "gz:1")
    assert r.returncode == 0, r.stderr
    [img] = listing(tmp_path)
    assert img["names"] == ["gz:1"] and len(img["layers"]) == 1  # type: ignore[arg-type]


def test_corrupt_blob_is_refused(tmp_path: Path) -> None:
    digests = images.busybox_layout(str(tmp_path / "oci"))
    blob = tmp_path / "oci" / "blobs" / "sha256" / digests["layers"].split(",")[1].partition(":")[2]
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0xFF
    blob.write_bytes(bytes(data))
    line = one_line_error(cli(tmp_path, "image", "import", str(tmp_path / "oci")))
    assert "corrupt" in line or "could not be unpacked" in line
    assert listing(tmp_path) == []
    assert os.listdir(tmp_path / "store" / "tmp") == []


def test_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    layout = str(tmp_path / "oci")
    images.write_layout(layout, [images.layer1()])
    cfg_path = None
    for fn in os.listdir(f"{layout}/blobs/sha256"):
        data = Path(f"{layout}/blobs/sha256/{fn}").read_bytes()
        if b'"diff_ids"' in data:
            cfg_path = fn
    assert cfg_path
    # rebuild the layout with a config that lies about the diff_id
    images.write_layout(str(tmp_path / "oci2"), [images.layer1()])
    idx = json.loads(Path(tmp_path / "oci2" / "index.json").read_text())
    man_hex = idx["manifests"][0]["digest"].partition(":")[2]
    man = json.loads(Path(tmp_path / "oci2" / "blobs" / "sha256" / man_hex).read_text())
    cfg = json.loads(Path(tmp_path / "oci2" / "blobs" / "sha256" / man["config"]["digest"][7:]).read_text())
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    import hashlib

    raw = json.dumps(cfg).encode()
    cd = hashlib.sha256(raw).hexdigest()
    Path(tmp_path / "oci2" / "blobs" / "sha256" / cd).write_bytes(raw)
    man["config"] = {"mediaType": man["config"]["mediaType"], "digest": f"sha256:{cd}", "size": len(raw)}
    mraw = json.dumps(man).encode()
    md = hashlib.sha256(mraw).hexdigest()
    Path(tmp_path / "oci2" / "blobs" / "sha256" / md).write_bytes(mraw)
    idx["manifests"][0].update(digest=f"sha256:{md}", size=len(mraw))
    Path(tmp_path / "oci2" / "index.json").write_text(json.dumps(idx))
    line = one_line_error(cli(tmp_path, "image", "import", str(tmp_path / "oci2")))
    assert "diff_id" in line
    assert [d for d in os.listdir(tmp_path / "store" / "layers") if d != "l"] == []


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-write", "relative-symlink", "hardlink"])
def test_tar_slip_is_refused(tmp_path: Path, kind: str) -> None:
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "pwned.txt"
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    rel = str(victim)  # ../../.. from any depth reaches /, then this absolute path
    layer = {
        "dotdot": lambda: images.evil_dotdot(rel),
        "absolute": lambda: images.evil_absolute(str(victim)),
        "symlink-write": lambda: images.evil_symlink_write(str(victim_dir)),
        "relative-symlink": images.evil_relative_symlink,
        "hardlink": lambda: images.evil_hardlink(str(secret)),
    }[kind]()
    images.write_layout(str(tmp_path / "oci"), [layer], ref="evil:1")
    line = one_line_error(cli(tmp_path, "image", "import", str(tmp_path / "oci")))
    assert "unsafe layer" in line
    assert os.listdir(victim_dir) == []
    assert secret.stat().st_nlink == 1
    assert listing(tmp_path) == []
    store = tmp_path / "store"
    assert [d for d in os.listdir(store / "layers") if d != "l"] == [] and os.listdir(store / "tmp") == []
    # the same layer as a plain rootfs tarball is refused too
    (tmp_path / "evil.tar").write_bytes(layer)
    assert "unsafe layer" in one_line_error(cli(tmp_path, "image", "import", str(tmp_path / "evil.tar")))
    assert os.listdir(victim_dir) == []


def test_image_rm_frees_layers_and_is_refused_while_used(tmp_path: Path) -> None:
    digests = images.busybox_layout(str(tmp_path / "oci"))
    assert cli(tmp_path, "image", "import", str(tmp_path / "oci")).returncode == 0
    from cgagent.state import Record, Store

    st = Store(str(tmp_path / "state"))
    st.save(Record(name="user1", cmd=["sh"], driver="cgroupfs", mode="v1", dirs={}, cgroup="/x",
                   isolation={"image": digests["config"]}))
    line = one_line_error(cli(tmp_path, "image", "rm", images.REF))
    assert "user1" in line
    assert len(listing(tmp_path)) == 1
    st.delete("user1")
    r = cli(tmp_path, "image", "rm", images.REF)
    assert r.returncode == 0, r.stderr
    assert listing(tmp_path) == []
    assert [d for d in os.listdir(tmp_path / "store" / "layers") if d != "l"] == []
    assert os.listdir(tmp_path / "store" / "layers" / "l") == []
    assert "no image" in one_line_error(cli(tmp_path, "image", "rm", images.REF))


def test_progress_bar_only_on_a_terminal_for_big_layers(tmp_path: Path) -> None:
    import pty

    big = images.TarBuilder().file("blob.bin", os.urandom(20 << 20)).bytes()  # over the 16 MiB threshold
    (tmp_path / "big.tar").write_bytes(big)
    r = cli(tmp_path, "image", "import", str(tmp_path / "big.tar"), "--name", "big:1")
    assert r.returncode == 0 and r.stderr == ""        # stderr is a pipe: no bar
    leader, follower = pty.openpty()
    env = dict(os.environ, CGAGENT_ROOT=str(tmp_path / "store2"), COLUMNS="100")
    p = subprocess.Popen([sys.executable, "-m", "cgagent", "image", "import", str(tmp_path / "big.tar")],
                         env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:   # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert p.wait(timeout=120) == 0
    assert b"big.tar" in seen and b"MB" in seen, seen[-300:]   # rich's bar: label, bytes done


def test_multi_platform_index_picks_linux_amd64(tmp_path: Path) -> None:
    import hashlib

    layout = tmp_path / "oci"
    d = images.write_layout(str(layout), [images.layer1()], ref=None)
    idx = json.loads((layout / "index.json").read_text())
    amd64 = dict(idx["manifests"][0], platform={"os": "linux", "architecture": "amd64"})
    arm = {"mediaType": amd64["mediaType"], "digest": "sha256:" + "1" * 64, "size": 1,
           "platform": {"os": "linux", "architecture": "arm64"}}   # absent blob: must never be read
    inner = json.dumps({"schemaVersion": 2, "manifests": [arm, amd64]}).encode()
    digest = hashlib.sha256(inner).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(inner)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}", "size": len(inner),
        "annotations": {"org.opencontainers.image.ref.name": "multi:1"}}]}))
    r = cli(tmp_path, "image", "import", str(layout))
    assert r.returncode == 0, r.stderr
    [img] = listing(tmp_path)
    assert img["id"] == d["config"] and img["names"] == ["multi:1"]


def test_not_an_image_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "neither" in one_line_error(cli(tmp_path, "image", "import", str(tmp_path / "empty")))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    assert "tar" in one_line_error(cli(tmp_path, "image", "import", str(tmp_path / "junk.tar")))
    assert listing(tmp_path) == []


def test_oci_layout_in_a_tarball(tmp_path: Path) -> None:
    d = images.busybox_layout(str(tmp_path / "oci"))
    images.tar_dir(str(tmp_path / "oci"), str(tmp_path / "oci.tar.gz"), gz=True)   # docker save (Docker >= 25)
    r = cli(tmp_path, "image", "import", str(tmp_path / "oci.tar.gz"))
    assert r.returncode == 0, r.stderr
    [img] = listing(tmp_path)
    assert img["id"] == d["config"] and img["names"] == [images.REF] and len(img["layers"]) == 2  # type: ignore[arg-type]
    assert os.listdir(tmp_path / "store" / "tmp") == []


def test_docker_save_archive(tmp_path: Path) -> None:
    cid = images.docker_archive(str(tmp_path / "dock"))
    images.tar_dir(str(tmp_path / "dock"), str(tmp_path / "dock.tar"))
    r = cli(tmp_path, "image", "import", str(tmp_path / "dock.tar"))
    assert r.returncode == 0, r.stderr
    [img] = listing(tmp_path)
    assert img["id"] == cid and img["names"] == ["dock:1"] and img["config"] == {"Cmd": ["echo", "from-docker"]}
    l2 = tmp_path / "store" / "layers" / img["layers"][1].partition(":")[2] / "diff"  # type: ignore[index]
    assert stat.S_ISCHR(os.lstat(l2 / "etc" / "removed.txt").st_mode)   # its whiteout converted too
    # a manifest pointing a layer outside the archive is refused
    images.docker_archive(str(tmp_path / "evil"), layer_paths=["../../../../../../etc/passwd", "l1/layer.tar"])
    images.tar_dir(str(tmp_path / "evil"), str(tmp_path / "evil.tar"))
    line = one_line_error(cli(tmp_path, "image", "import", str(tmp_path / "evil.tar"), "--name", "evil:1"))
    assert "leaves the archive" in line
    assert [i["names"] for i in listing(tmp_path)] == [["dock:1"]]


# --- damaged or hostile archives: one line, nothing imported (never a traceback)

def nothing_imported(tmp: Path) -> None:
    assert listing(tmp) == []
    store = tmp / "store"
    assert [d for d in os.listdir(store / "layers") if d != "l"] == [] and os.listdir(store / "layers" / "l") == []
    assert os.listdir(store / "blobs" / "sha256") == [] and os.listdir(store / "tmp") == []


def pax_layer(records: list[tuple[str, bytes]], data: bytes = b"data", lead: bool = False,
              raw: bytes = b"") -> bytes:
    """A tar of one file `f` after a pax header of raw `records` (tarfile writes no invalid ones),
    or of the `raw` body; `lead` puts a plain file before them (tarfile.open reads the first
    member's headers itself)."""
    import io
    import tarfile

    body = raw
    for key, value in records:
        rec = b" " + key.encode() + b"=" + value + b"\n"
        n = len(rec) + 1
        while n != len(rec) + len(str(n)):   # the length counts its own digits
            n = len(rec) + len(str(n))
        body += str(n).encode() + rec
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        if lead:
            tf.addfile(tarfile.TarInfo("first"))
        hdr = tarfile.TarInfo("././@PaxHeader")
        hdr.type, hdr.size = tarfile.XHDTYPE, len(body)
        tf.addfile(hdr, io.BytesIO(body))
        ti = tarfile.TarInfo("f")
        ti.size, ti.mtime = len(data), 1_700_000_000
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def import_layer(tmp: Path, layer: bytes, carrier: str) -> str:
    """Import `layer` as a rootfs tarball or as the layer of an OCI layout; -> the one-line error."""
    if carrier == "tarball":
        (tmp / "bad.tar").write_bytes(layer)
        target = tmp / "bad.tar"
    else:
        images.write_layout(str(tmp / "oci"), [layer], ref="bad:1")
        target = tmp / "oci"
    return one_line_error(cli(tmp, "image", "import", str(target)))


def ordered_tar(src: Path, dest: Path, first: list[str]) -> None:
    """`src` as a tar whose `first` names come first (the rest after, smallest file first)."""
    import tarfile

    files = [p for p in sorted(src.rglob("*"), key=lambda p: (p.is_file() and p.stat().st_size, str(p)))
             if p.is_file() and p.name not in first]
    with tarfile.open(dest, "w") as tf:
        for p in [src / n for n in first] + files:
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)


@pytest.mark.parametrize("carrier", ["rootfs-tarball", "oci-archive"])
def test_truncated_tar_is_one_line(tmp_path: Path, carrier: str) -> None:
    """(a) a tar cut off inside a member's data: tarfile's ReadError while the file is written."""
    big = images.TarBuilder().dir("etc").file("etc/big", os.urandom(200_000)).bytes()
    if carrier == "rootfs-tarball":
        data = big
    else:   # index.json and oci-layout first, so it is taken for an OCI archive; cut in the layer blob
        images.write_layout(str(tmp_path / "oci"), [big], ref="cut:1")
        ordered_tar(tmp_path / "oci", tmp_path / "whole.tar", ["oci-layout", "index.json"])
        data = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[:len(data) - 100_000])
    line = one_line_error(cli(tmp_path, "image", "import", str(tmp_path / "t.tar")))
    assert "damaged: unexpected end of data" in line
    nothing_imported(tmp_path)


@pytest.mark.parametrize("carrier", ["tarball", "layout"])
@pytest.mark.parametrize("mtime", [b"nan", b"inf", b"-inf", b"1e400"])
def test_pax_mtime_not_finite_is_one_line(tmp_path: Path, mtime: bytes, carrier: str) -> None:
    """(b) int(nan) is a ValueError, int(inf) an OverflowError."""
    line = import_layer(tmp_path, pax_layer([("mtime", mtime)]), carrier)
    assert "damaged" in line and "mtime" in line
    nothing_imported(tmp_path)


@pytest.mark.parametrize("lead", [False, True], ids=["first-member", "second-member"])
@pytest.mark.parametrize("carrier", ["tarball", "layout"])
@pytest.mark.parametrize("records,data", [
    pytest.param([("hdrcharset", b"\xff\xfe")], b"data", id="c-hdrcharset-not-utf8"),
    pytest.param([("GNU.sparse.map", b"a")], b"data", id="d-sparse-0.1-map"),
    pytest.param([("GNU.sparse.size", b"x")], b"data", id="d-sparse-0.0-size"),
    pytest.param([("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")], b"a" * 600, id="d-sparse-1.0-no-newline"),
])
def test_bad_pax_header_is_one_line(tmp_path: Path, records: list[tuple[str, bytes]], data: bytes,
                                    carrier: str, lead: bool) -> None:
    """(c, d) tarfile raises ValueError (UnicodeDecodeError, int()) for these, not TarError."""
    line = import_layer(tmp_path, pax_layer(records, data, lead), carrier)
    assert "tar archive" in line
    nothing_imported(tmp_path)


@pytest.mark.parametrize("lead", [False, True], ids=["first-member", "second-member"])
@pytest.mark.parametrize("carrier", ["tarball", "layout"])
@pytest.mark.parametrize(("body", "why"), [
    pytest.param(b"1" * (64 << 10), "a record is malformed", id="digits"),
    pytest.param(b"1 hdrcharset=" * 5000, "a record is malformed", id="stray-hdrcharset"),
    pytest.param(b"65015 comment=" + b"1 hdrcharset=" * 5000 + b"\n", "it holds hdrcharset= where no record's key is",
                 id="hdrcharset-in-a-value"),
    pytest.param(b"120 path=" + b"7" * 110 + b"\n", "it holds more than 64 digits in a row",
                 id="digit-run-in-a-record"),
])
def test_a_pax_header_cpythons_parser_takes_quadratic_time_on_is_refused(tmp_path: Path, body: bytes, why: str,
                                                                        carrier: str, lead: bool) -> None:
    """CVE-2024-6232: CPython before 3.11.10 and 3.12.6 parses pax headers with regexes that take
    quadratic time on a long run of digits or on many `hdrcharset=` (a 1 MiB header: minutes of
    CPU, from a 1 KiB gzip). Those are refused before CPython parses them; without the check these
    64 KiB take seconds each and then import."""
    line = import_layer(tmp_path, pax_layer([], lead=lead, raw=body), carrier)
    assert f"a pax header of the image was refused: {why}" in line
    nothing_imported(tmp_path)


def test_well_formed_pax_records_still_import(tmp_path: Path) -> None:
    """check_pax takes what tarfile writes: a long name, an xattr, a fractional mtime."""
    import tarfile

    layer = pax_layer([("path", b"d" * 200), ("SCHILY.xattr.user.k", b"v" * 1000), ("mtime", b"1700000000.5"),
                       ("hdrcharset", b"BINARY")])
    (tmp_path / "ok.tar").write_bytes(layer)
    r = cli(tmp_path, "image", "import", str(tmp_path / "ok.tar"))
    assert r.returncode == 0, r.stderr
    with tarfile.open(tmp_path / "ok.tar") as tf:
        assert tf.getnames() == ["d" * 200]


@pytest.mark.parametrize("kind", ["oci-manifests", "docker-repotags"])
def test_wrong_json_types_are_one_line(tmp_path: Path, kind: str) -> None:
    """(e) `{"manifests": 1}` in index.json, `"RepoTags": 1` in manifest.json."""
    layer = images.TarBuilder().file("f", b"x").bytes()
    if kind == "oci-manifests":
        images.write_layout(str(tmp_path / "oci"), [layer])
        (tmp_path / "oci" / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": 1}))
        target = tmp_path / "oci"
    else:
        images.docker_archive(str(tmp_path / "dock"), layers=[layer])
        man = json.loads((tmp_path / "dock" / "manifest.json").read_text())
        man[0]["RepoTags"] = 1
        (tmp_path / "dock" / "manifest.json").write_text(json.dumps(man))
        images.tar_dir(str(tmp_path / "dock"), str(tmp_path / "dock.tar"))
        target = tmp_path / "dock.tar"
    line = one_line_error(cli(tmp_path, "image", "import", str(target)))
    assert "not a list" in line
    nothing_imported(tmp_path)


@pytest.mark.parametrize("carrier", ["layout", "docker"])
@pytest.mark.parametrize("run,key", [
    ({"Entrypoint": 5}, "Entrypoint"),
    ({"Cmd": {"sh": 1}}, "Cmd"),
    ({"Env": ["A", 5]}, "Env"),
    ({"Env": "PATH=/bin"}, "Env"),
    ({"User": 0}, "User"),
    ({"WorkingDir": ["/"]}, "WorkingDir"),
    ({"StopSignal": 15}, "StopSignal"),
])
def test_run_config_of_wrong_type_is_refused_at_import(tmp_path: Path, run: dict[str, object], key: str,
                                                       carrier: str) -> None:
    """(f) what `run` takes from the image config: lists of strings and strings, or absent/null."""
    layer = images.TarBuilder().file("f", b"x").bytes()
    if carrier == "layout":
        images.write_layout(str(tmp_path / "oci"), [layer], config=run)
        target = tmp_path / "oci"
    else:
        images.docker_archive(str(tmp_path / "dock"), layers=[layer])
        man = json.loads((tmp_path / "dock" / "manifest.json").read_text())
        cfg_path = tmp_path / "dock" / man[0]["Config"]
        cfg = json.loads(cfg_path.read_text())
        cfg["config"] = run
        cfg_path.write_text(json.dumps(cfg))
        images.tar_dir(str(tmp_path / "dock"), str(tmp_path / "dock.tar"))
        target = tmp_path / "dock.tar"
    line = one_line_error(cli(tmp_path, "image", "import", str(target)))
    assert f"image config's {key} is" in line and "not a" in line
    nothing_imported(tmp_path)


def test_run_config_null_or_absent_is_kept_allowed(tmp_path: Path) -> None:
    layer = images.TarBuilder().file("f", b"x").bytes()
    images.write_layout(str(tmp_path / "oci"), [layer], ref="ok:1", config={
        "Entrypoint": None, "Cmd": ["sh", "-c", "true"], "Env": [], "User": None, "WorkingDir": "", "StopSignal": None})
    r = cli(tmp_path, "image", "import", str(tmp_path / "oci"))
    assert r.returncode == 0, r.stderr
    [img] = listing(tmp_path)
    assert img["config"] == {"Cmd": ["sh", "-c", "true"], "Env": [], "WorkingDir": ""}


def test_a_string_entrypoint_is_one_argument(tmp_path: Path) -> None:
    """As Docker reads it (its StrSlice): "sh" is ["sh"], never the letters of it."""
    layer = images.TarBuilder().file("f", b"x").bytes()
    images.write_layout(str(tmp_path / "oci"), [layer], ref="ok:1", config={"Entrypoint": "/bin/sh", "Cmd": "-i"})
    r = cli(tmp_path, "image", "import", str(tmp_path / "oci"))
    assert r.returncode == 0, r.stderr
    [img] = listing(tmp_path)
    assert img["config"] == {"Entrypoint": ["/bin/sh"], "Cmd": ["-i"]}
