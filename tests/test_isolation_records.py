"""Records written before the isolation spec was typed (issue 14) keep working.

Record.isolation stays the dict the untyped code wrote; IsolationSpec reads it back. The fixtures in
tests/fixtures/records are that dict as two earlier versions wrote it: the last untyped one, and
the one before --device (no `devices` key, volumes of three fields). A workload whose record holds
either is stopped and removed with its overlay dir, by the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cgagent.errors import CgagentError
from cgagent.isolation.spec import IsolationSpec, Volume, for_teardown, from_record
from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures

FIXTURES = Path(__file__).parent / "fixtures" / "records"
SHAPES = ("isolation-untyped", "isolation-before-devices")


def fixture(shape: str, values: dict[str, Any]) -> dict[str, Any]:
    """The fixture with its @KEY@ placeholders filled: a string that is one placeholder takes the
    value as it is (a list for @LOWERS@), one inside a longer string is replaced in it."""
    def fill(v: Any) -> Any:
        if isinstance(v, str):
            if v in values:
                return values[v]
            for k, x in values.items():
                v = v.replace(k, str(x))
            return v
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v

    out = fill(json.loads((FIXTURES / f"{shape}.json").read_text()))
    assert isinstance(out, dict)
    return out


PLAIN = {"@CONTAINER_DIR@": "/var/lib/cgagent/containers/old-0a1b2c3d", "@STORE@": "/var/lib/cgagent",
         "@HOSTNAME@": "old", "@IMAGE@": "sha256:" + "1" * 64, "@IMAGE_REF@": "busybox:test",
         "@LAYERS_DIR@": "/var/lib/cgagent/layers", "@LOWERS@": ["l/ABC", "l/DEF"], "@VOLUME@": "/srv/data"}


@pytest.mark.parametrize("shape", SHAPES)
def test_old_shapes_read_back_typed(shape: str) -> None:
    spec = IsolationSpec.from_record(fixture(shape, PLAIN))
    assert spec.container_dir == PLAIN["@CONTAINER_DIR@"] and spec.store == PLAIN["@STORE@"]
    assert spec.volumes == (Volume("/srv/data", "/data", read_only=True, dev=False),)
    assert spec.lowers == ("l/ABC", "l/DEF") and spec.layers_dir == "/var/lib/cgagent/layers"
    assert spec.devices == () and spec.userns is None and spec.rootfs is None and spec.publish is None
    assert spec.net == "none" and spec.seccomp and not spec.init and spec.workdir == "/"
    assert spec.env[-1] == "MARK=old" and "SYS_CHROOT" in spec.caps


def test_the_record_keeps_the_untyped_shape() -> None:
    """to_record writes exactly what the untyped code wrote: older and newer versions read each other."""
    old = fixture("isolation-untyped", PLAIN)
    assert IsolationSpec.from_record(old).to_record() == old


def test_missing_keys_default_as_the_old_reads_did() -> None:
    spec = from_record({"store": "/s", "container_dir": "/s/containers/x-00000000"})
    assert spec is not None
    assert (spec.net, spec.seccomp, spec.workdir, spec.caps, spec.hostname, spec.volumes) == \
        ("none", True, "/", (), "", ())
    assert from_record({}) is None   # a host workload's record


def test_a_malformed_field_is_named_and_removal_does_not_need_it() -> None:
    bad = {"store": "/s", "container_dir": "/s/containers/x-00000000", "net": "none", "volumes": "/etc"}
    with pytest.raises(CgagentError, match="isolation volumes"):
        IsolationSpec.from_record(bad)
    spec = for_teardown(bad)
    assert (spec.store, spec.container_dir, spec.net) == ("/s", "/s/containers/x-00000000", "none")


def _record_path(box: Box, name: str) -> Path:
    return Path(box.cg.state_dir) / "workloads" / f"{name}.json"


def _rewrite(box: Box, name: str, change: Any) -> dict[str, Any]:
    """Edit the record on disk as another version would have written it (atomically: the
    supervisor may read it at any time). -> the isolation dict it held before."""
    path = _record_path(box, name)
    rec = json.loads(path.read_text())
    before = dict(rec["isolation"])
    change(rec)
    tmp = path.with_suffix(".edit")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, path)
    return before


def _values(iso: dict[str, Any], vol: Path) -> dict[str, Any]:
    return {"@CONTAINER_DIR@": iso["container_dir"], "@STORE@": iso["store"], "@HOSTNAME@": iso["hostname"],
            "@IMAGE@": iso["image"], "@IMAGE_REF@": iso["image_ref"], "@LAYERS_DIR@": iso["layers_dir"],
            "@LOWERS@": iso["lowers"], "@VOLUME@": str(vol)}


@pytest.mark.parametrize(("shape", "how"), [("isolation-untyped", "stop"), ("isolation-before-devices", "stop"),
                                            ("isolation-before-devices", "rm -f")])
def test_a_workload_with_an_old_record_stops_and_is_removed(box: Box, tmp_path: Path, shape: str,
                                                            how: str) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    ok(box.run("run", "-d", "--name", "old", "-v", f"{vol}:/data:ro", IMG, "--", "sleep", "1000"))
    wait_for(lambda: any(r["name"] == "old" and r["status"] == "running" for r in ps_json(box)))
    iso: dict[str, Any] = {}

    def to_old(rec: dict[str, Any]) -> None:
        iso.update(rec["isolation"])
        rec["isolation"] = fixture(shape, _values(rec["isolation"], vol))

    _rewrite(box, "old", to_old)
    cdir = Path(iso["container_dir"])
    assert cdir.is_dir() and box.containers() == [cdir.name]
    if how == "stop":
        ok(box.run("stop", "old"))
        [row] = [r for r in ps_json(box) if r["name"] == "old"]
        assert row["status"] == "exited", row
        assert not cdir.exists()   # the supervisor's finish() tore the old record's overlay down
        ok(box.run("rm", "old"))
    else:
        ok(box.run("rm", "-f", "old"))
    assert not _record_path(box, "old").exists()
    assert box.containers() == []


@pytest.mark.parametrize("shape", SHAPES)
def test_a_workload_with_an_old_record_is_entered_and_restarted_from_it(box: Box, tmp_path: Path,
                                                                       shape: str) -> None:
    """`exec` and the supervisor's restart read the whole old record: its volume is there both times."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "mark").write_text("from the host\n")
    ok(box.run("run", "-d", "--name", "old", "--restart", "always", "-v", f"{vol}:/data:ro", IMG, "--",
               "sleep", "1000"))
    wait_for(lambda: any(r["name"] == "old" and r["status"] == "running" for r in ps_json(box)))
    _rewrite(box, "old", lambda rec: rec.update(isolation=fixture(shape, _values(rec["isolation"], vol))))
    assert ok(box.run("exec", "old", "--", "cat", "/data/mark")) == "from the host\n"
    [row] = [r for r in ps_json(box) if r["name"] == "old"]
    assert isinstance(row["pid"], int)
    os.kill(row["pid"], signal.SIGKILL)
    wait_for(lambda: any(r["name"] == "old" and r["status"] == "running" and r["restarts"] == 1
                         for r in ps_json(box)), timeout=30)
    assert ok(box.run("exec", "old", "--", "sh", "-c", "cat /data/mark; echo $MARK")) == "from the host\nold\n"
    ok(box.run("rm", "-f", "old"))
    assert box.containers() == []


def test_rm_of_a_record_with_a_malformed_isolation_field_removes_its_overlay(box: Box) -> None:
    ok(box.run("run", "--name", "bad", IMG, "--", "true"))
    iso: dict[str, Any] = {}

    def break_it(rec: dict[str, Any]) -> None:
        iso.update(rec["isolation"])
        rec["isolation"]["volumes"] = "/etc"   # what no version wrote: the rest must still be removable

    _rewrite(box, "bad", break_it)
    cdir = Path(iso["container_dir"])
    (cdir / "upper").mkdir(parents=True)   # as a crash before the exit's teardown would leave it
    ok(box.run("rm", "bad"))
    assert not cdir.exists() and not _record_path(box, "bad").exists()
