"""`image rm`: a NAME:TAG loses that tag only; the image and its layers go only when no tag and no
workload of ANY state dir uses it (the store records its users, issue 13 item 7), and a SIGKILL at
any step of creating or removing a workload never deletes an image in use."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import images
from tests.conftest import Env
from tests.isolated import Box, ok, ps_json

REF = images.REF


@pytest.fixture
def box(cg: Env, tmp_path: Path) -> Iterator[Box]:
    """A store of this test's own (tests here remove its image), holding busybox as REF and `bb:2`."""
    if cg.agent:
        pytest.skip("drives the CLI's direct path (faults in the CLI process)")
    images.busybox_layout(str(tmp_path / "oci"))
    b = Box(cg, str(tmp_path / "store"))
    ok(b.run("image", "import", str(tmp_path / "oci")))
    ok(b.run("image", "import", str(tmp_path / "oci"), "--name", "bb:2"))
    yield b
    names = [f[:-5] for f in os.listdir(f"{cg.state_dir}/workloads")] if os.path.isdir(
        f"{cg.state_dir}/workloads") else []
    if names:
        b.run("rm", "-f", *names)


def other(b: Box, tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI with ANOTHER state dir than the workloads' (the reported bug's caller)."""
    return subprocess.run(b.cg.cmd(*args), env={**b.env(), "CGAGENT_STATE_DIR": str(tmp / "other"), **env},
                          capture_output=True, text=True, timeout=60)


def listing(b: Box) -> list[dict[str, object]]:
    return list(json.loads(ok(b.run("images", "--json"))))


def layers(b: Box) -> list[str]:
    return sorted(d for d in os.listdir(Path(b.store) / "layers") if d != "l")


def entries(b: Box) -> list[dict[str, object]]:
    d = Path(b.store) / "users"
    return [json.loads((d / f).read_text()) for f in sorted(os.listdir(d))] if d.is_dir() else []


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgagent: error: "), r.stderr
    return lines[0]


def test_rm_tag_removes_that_tag_only(box: Box, tmp_path: Path) -> None:
    [img] = listing(box)
    assert sorted(img["names"]) == sorted([REF, "bb:2"])   # type: ignore[call-overload]
    assert ok(other(box, tmp_path, "image", "rm", "bb:2")) == "Untagged: bb:2\n"
    [img] = listing(box)
    assert img["names"] == [REF] and layers(box)
    out = ok(other(box, tmp_path, "image", "rm", REF)).splitlines()
    assert out == [f"Untagged: {REF}", f"Deleted: {img['id']}"]
    assert listing(box) == [] and layers(box) == []


def test_rm_by_id_with_several_tags_needs_force(box: Box, tmp_path: Path) -> None:
    [img] = listing(box)
    short = str(img["id"]).partition(":")[2][:12]
    assert "2 tags" in one_line(other(box, tmp_path, "image", "rm", short))
    out = ok(other(box, tmp_path, "image", "rm", "-f", short)).splitlines()
    assert sorted(out) == sorted([f"Untagged: {REF}", "Untagged: bb:2", f"Deleted: {img['id']}"])
    assert listing(box) == [] and layers(box) == []


def test_image_of_a_running_workload_of_another_state_dir_is_kept(box: Box, tmp_path: Path) -> None:
    """The reported bug: `image rm` from another state dir deleted the image under a running workload."""
    ok(box.run("run", "-d", "--name", "user", REF, "--", "sleep", "1000"))
    ok(other(box, tmp_path, "image", "rm", "bb:2"))   # another tag remains: untagging is fine
    line = one_line(other(box, tmp_path, "image", "rm", REF))
    assert "user" in line and box.cg.state_dir in line and "rm -f" in line and "image rm -f" in line
    [img] = listing(box)
    assert img["names"] == [REF]
    # -f as Docker: the tag goes, the image (and its layers) stay while the workload uses it
    assert ok(other(box, tmp_path, "image", "rm", "-f", REF)) == f"Untagged: {REF}\n"
    [img] = listing(box)
    assert img["names"] == [] and len(layers(box)) == 2
    assert ok(box.run("exec", "user", "cat", "/etc/hostname")).strip()   # its root still reads
    assert [r["status"] for r in ps_json(box)] == ["running"]
    assert "user" in one_line(other(box, tmp_path, "image", "rm", str(img["id"])))
    ok(box.run("rm", "-f", "user"))
    assert entries(box) == []
    assert ok(other(box, tmp_path, "image", "rm", str(img["id"]))) == f"Deleted: {img['id']}\n"
    assert listing(box) == [] and layers(box) == []


def test_a_foreground_rm_run_leaves_no_user(box: Box, tmp_path: Path) -> None:
    ok(box.run("run", "--rm", REF, "--", "true"))
    assert entries(box) == []
    ok(box.run("run", "--name", "kept", REF, "--", "true"))   # exited, record kept: still a user
    [e] = entries(box)
    assert e["name"] == "kept" and e["state_dir"] == box.cg.state_dir
    ok(other(box, tmp_path, "image", "rm", "bb:2"))
    assert "kept" in one_line(other(box, tmp_path, "image", "rm", REF))
    ok(box.run("rm", "kept"))
    ok(other(box, tmp_path, "image", "rm", REF))


def test_stale_entry_is_pruned_only_after_its_record_is_gone(box: Box, tmp_path: Path) -> None:
    ok(box.run("run", "-d", "--name", "w", REF, "--", "sleep", "1000"))
    ok(other(box, tmp_path, "image", "rm", "bb:2"))
    # a later workload of the same name is not the one the entry names, and a damaged record counts as a user
    rec = Path(box.cg.state_dir) / "workloads" / "w.json"
    saved = rec.read_bytes()
    rec.write_bytes(b"{not json")
    assert "w" in one_line(other(box, tmp_path, "image", "rm", REF))
    rec.write_bytes(saved)
    assert len(entries(box)) == 1
    ok(box.run("rm", "-f", "w"))
    ok(other(box, tmp_path, "image", "rm", REF))
    assert entries(box) == [] and layers(box) == []


def _record_exists(b: Box, name: str) -> bool:
    return (Path(b.cg.state_dir) / "workloads" / f"{name}.json").exists()


@pytest.mark.parametrize("step", ["image_user", "record", "cgroup", "placed", "started"])
def test_sigkill_while_creating_never_deletes_an_image_in_use(box: Box, tmp_path: Path, step: str) -> None:
    ok(other(box, tmp_path, "image", "rm", "bb:2"))
    r = subprocess.run(box.cg.cmd("run", "-d", "--name", "k", REF, "--", "sleep", "1000"),
                       env={**box.env(), "CGAGENT_FAULT": f"step:{step}"}, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, step
    if _record_exists(box, "k"):   # never a record without its entry
        assert [e["name"] for e in entries(box)] == ["k"], step
        assert "k" in one_line(other(box, tmp_path, "image", "rm", REF)), step
        assert layers(box), step
        ok(box.run("rm", "-f", "k"))
    ok(other(box, tmp_path, "image", "rm", REF))   # the stale entry (if any) is pruned: its record is gone
    assert entries(box) == [] and listing(box) == [] and layers(box) == []


def test_sigkill_while_removing_leaves_a_prunable_entry(box: Box, tmp_path: Path) -> None:
    ok(box.run("run", "-d", "--name", "k", REF, "--", "sleep", "1000"))
    r = subprocess.run(box.cg.cmd("rm", "-f", "k"), env={**box.env(), "CGAGENT_FAULT": "step:image_release"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and not _record_exists(box, "k")
    assert [e["name"] for e in entries(box)] == ["k"]   # stale: its record went first
    ok(other(box, tmp_path, "image", "rm", "bb:2"))
    ok(other(box, tmp_path, "image", "rm", REF))
    assert entries(box) == [] and layers(box) == []


def test_an_import_killed_before_its_image_was_saved_leaves_nothing_after_the_next(box: Box, tmp_path: Path) -> None:
    """SIGKILL after the layers and blobs were published, before the image record that names them:
    nothing would ever remove them (no image owns them). The next import collects them."""
    def blobs() -> list[str]:
        return sorted(os.listdir(Path(box.store) / "blobs" / "sha256"))

    layers0, blobs0, names0 = layers(box), blobs(), sorted(os.listdir(Path(box.store) / "layers" / "l"))
    lay = str(tmp_path / "other")
    images.write_layout(lay, [images.layer1(), images.TarBuilder().file("orphan", b"mine\n").bytes()], ref="other:1")
    r = subprocess.run(box.cg.cmd("image", "import", lay), env={**box.env(), "CGAGENT_FAULT": "step:image_published"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    assert len(layers(box)) == len(layers0) + 1 and len(blobs()) == len(blobs0) + 2
    assert "other:1" not in ok(box.run("images"))
    ok(box.run("image", "import", str(tmp_path / "oci"), "--name", "bb:3"))
    assert (layers(box), blobs(), sorted(os.listdir(Path(box.store) / "layers" / "l"))) == (layers0, blobs0, names0)
    ok(box.run("run", "--rm", "bb:3", "--", "true"))   # the image's own layers are whole


@pytest.mark.parametrize("step", ["layer_linked", "written"])
def test_an_import_killed_inside_a_publishing_step_leaves_nothing_after_the_next(box: Box, tmp_path: Path,
                                                                                step: str) -> None:
    """SIGKILL between publish_layer's short link and its rename leaves a link to nothing; inside
    atomic_write, a blob's temp file. Nothing owns either: the next import sweeps them."""
    store = Path(box.store)

    def files() -> tuple[list[str], ...]:
        return tuple(sorted(os.listdir(store / d)) for d in ("layers", "layers/l", "blobs/sha256", "images"))

    before = files()
    lay = str(tmp_path / "other")
    images.write_layout(lay, [images.layer1(), images.TarBuilder().file("orphan", b"mine\n").bytes()], ref="other:1")
    r = subprocess.run(box.cg.cmd("image", "import", lay), env={**box.env(), "CGAGENT_FAULT": f"step:{step}"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    killed = files()
    if step == "layer_linked":
        [link] = set(killed[1]) - set(before[1])
        assert os.path.islink(store / "layers" / "l" / link) and not os.path.exists(store / "layers" / "l" / link)
    else:
        assert [n for n in killed[2] if ".tmp." in n], killed[2]
    ok(box.run("image", "import", str(tmp_path / "oci"), "--name", "bb:3"))
    assert files() == before
    ok(box.run("run", "--rm", "bb:3", "--", "true"))
