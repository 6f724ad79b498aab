"""Records and the events log on disk: damage is named, never fatal; nothing secret is readable by
other users; counts folded from the log survive bad lines and a replaced log (issue 10, issue 15.5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgagent import events
from cgagent.errors import CgagentError
from cgagent.oom import Totals
from cgagent.state import Damaged, Record, Store, atomic_write
from tests.conftest import Env
from tests.isolated import IMG, Box, ok, wait_for

pytest_plugins = ("tests.isolated_fixtures",)


def _record(name: str) -> Record:
    return Record(name=name, cmd=["sleep", "1"], driver="cgroupfs", mode="v1",
                  dirs={"cpu": f"/sys/fs/cgroup/cpu/x/{name}"}, cgroup=f"/x/{name}")


GOOD = _record("good").to_json()
DAMAGE = {
    "truncated": (GOOD[: len(GOOD) // 2], "not JSON"),
    "empty": (b"", "empty file"),
    "array": (b"[1, 2]", "a list, not an object"),
    "null": (b"null", "null, not an object"),
    "missing": (b'{"name": "bad"}', "missing cgroup, cmd, dirs, driver, mode"),
    "wrong type": (GOOD.replace(b'"dirs": {', b'"dirs": "x", "o": {').replace(b'"good"', b'"bad"'),
                   "dirs is a string, of the wrong type"),
    "bool for int": (GOOD.replace(b'"oom_kills": 0', b'"oom_kills": true').replace(b'"good"', b'"bad"'),
                     "oom_kills is a boolean, of the wrong type"),
    "relative dir": (GOOD.replace(b'"/sys/fs/cgroup/cpu/x/good"', b'"../../etc"').replace(b'"good"', b'"bad"'),
                     "dirs is not a map of controller to absolute directory"),
    "other name": (GOOD, "it names workload 'good'"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_record_is_named_and_does_not_hide_the_others(tmp_path: Path, damage: str) -> None:
    store = Store(str(tmp_path))
    store.save(_record("good"))
    raw, reason = DAMAGE[damage]
    Path(store.path("bad")).write_bytes(raw)
    with pytest.raises(Damaged) as e:
        store.load("bad")
    assert reason in str(e.value) and store.path("bad") in str(e.value) and "rm -f bad" in str(e.value)
    good, bad = store.scan()
    assert [r.name for r in good] == ["good"] and [d.name for d in bad] == ["bad"]


def test_a_huge_or_special_record_file_is_damage_not_a_hang(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.ensure()
    with open(store.path("big"), "wb") as f:
        f.truncate(64 << 20)   # sparse: costs nothing on disk, would cost 64 MiB to read whole
    os.mkfifo(store.path("fifo"))
    os.symlink("/etc/passwd", store.path("link"))
    for name, why in (("big", "larger than"), ("fifo", "not a regular file"), ("link", "symbolic links")):
        with pytest.raises(Damaged, match=why):
            store.load(name)


def test_an_unknown_name_is_not_damage(tmp_path: Path) -> None:
    with pytest.raises(CgagentError) as e:
        Store(str(tmp_path)).load("nobody")
    assert not isinstance(e.value, Damaged)


def test_atomic_write_leaves_no_temp_file_when_it_fails(tmp_path: Path) -> None:
    target = tmp_path / "rec.json"
    target.mkdir()   # rename() of a file over a directory fails after the temp file was written
    with pytest.raises(OSError):
        atomic_write(str(target), b"x")
    assert sorted(os.listdir(tmp_path)) == ["rec.json"]


BAD_LINES = [b"[1,2]", b"null", b'{"time":"x","kind":"start","name":"a"}', b'{"time":1e300,"kind":"start","name":"a"}',
             b'{"kind":"oom_kill","name":"a"}', b"not json", b'{"time":1,"kind":5,"name":"a"}']


def _oom(name: str, kills: object) -> bytes:
    return json.dumps({"time": 1.0, "kind": "oom_kill", "name": name, "kills": kills, "cgroup": f"/x/{name}"}).encode()


def _log(root: Path, lines: list[bytes]) -> None:
    (root / events.FILE).write_bytes(b"".join(ln + b"\n" for ln in lines))


def test_bad_event_lines_are_skipped_with_file_and_line(tmp_path: Path) -> None:
    _log(tmp_path, [_oom("a", 1), *BAD_LINES, b"x" * (events.MAX_LINE + 10), _oom("a", 2)])
    seen: list[str] = []
    r = events.Reader(str(tmp_path), on_bad=lambda where, what: seen.append(f"{where}: {what}"))
    got = list(r.read())
    assert [e["kills"] for e in got] == [1, 2]
    f = str(tmp_path / events.FILE)
    assert [s.split(": ")[0] for s in seen] == [f"{f}:{i}" for i in range(2, 2 + len(BAD_LINES) + 1)]
    assert "longer than" in seen[-1]


def test_a_torn_last_line_is_read_once_it_is_whole(tmp_path: Path) -> None:
    p = tmp_path / events.FILE
    p.write_bytes(_oom("a", 1) + b"\n" + _oom("a", 2)[:10])
    r = events.Reader(str(tmp_path))
    assert [e["kills"] for e in r.read()] == [1]
    with open(p, "ab") as f:
        f.write(_oom("a", 2)[10:] + b"\n")
    assert [e["kills"] for e in r.read()] == [2]


def test_an_event_after_a_line_a_killed_writer_tore_is_not_lost(tmp_path: Path) -> None:
    """A fatal signal can cut a write of several pages short: the next event was appended to the torn
    piece and skipped with it (an OOM kill gone from the totals, an exit code gone)."""
    (tmp_path / events.FILE).write_bytes(_oom("a", 1) + b"\n" + _oom("a", 2)[:10])
    events.append(str(tmp_path), "oom_kill", "b", kills=3, cgroup="/x/b")
    seen: list[str] = []
    got = list(events.Reader(str(tmp_path), on_bad=lambda where, what: seen.append(what)).read())
    assert [(e["name"], e["kills"]) for e in got] == [("a", 1), ("b", 3)]
    assert seen == ["not JSON"]   # the torn piece, once


def test_totals_ignore_garbage_counts(tmp_path: Path) -> None:
    _log(tmp_path, [_oom("a", 3), _oom("a", -5), _oom("a", "7"), _oom("a", True), _oom("a", 1e9), _oom("a", 2**40),
                    *BAD_LINES, _oom("a", 1)])
    t = Totals(str(tmp_path))
    t.update()
    assert t.kills == {"a": 4}


@pytest.mark.parametrize("how", ["shorter", "same size, new file", "removed"])
def test_a_replaced_log_is_folded_again_from_zero(tmp_path: Path, how: str) -> None:
    p = tmp_path / events.FILE
    _log(tmp_path, [_oom("a", 5), _oom("b", 1)])
    t = Totals(str(tmp_path))
    t.update()
    assert t.kills == {"a": 5, "b": 1}
    if how == "removed":
        p.unlink()
        t.update()
        assert t.kills == {}
        _log(tmp_path, [_oom("a", 2)])
    else:
        new = tmp_path / "new"
        lines = [_oom("a", 2)] if how == "shorter" else [_oom("a", 2), _oom("c", 1)]
        new.write_bytes(b"".join(ln + b"\n" for ln in lines))
        os.rename(new, p)
    t.update()
    fresh = Totals(str(tmp_path))
    fresh.update()
    assert t.kills == fresh.kills and t.kills["a"] == 2
    with open(p, "ab") as f:   # and the next kill after the replacement is seen
        f.write(_oom("a", 1) + b"\n")
    t.update()
    assert t.kills["a"] == 3


def test_the_oom_collector_keeps_its_series_through_bad_lines(tmp_path: Path) -> None:
    from exporters.collectors import Scrape
    from exporters.collectors.oom import Oom

    _log(tmp_path, [_oom("a", 2), *BAD_LINES, _oom("a", 1)])
    sc = Scrape(targets=[], records=[], store=None, oom=Totals(str(tmp_path)))
    for _ in range(2):   # every scrape, not only the first
        fams = {f.name: f for f in Oom().collect(sc)}
        assert [v for _ls, v in fams["cgagent_oom_kills_total"].samples] == [3]
        with open(tmp_path / events.FILE, "ab") as f:
            f.write(b"[1,2]\n")


def test_logged_looks_from_its_offset_and_reads_a_replaced_log_whole(tmp_path: Path) -> None:
    root = str(tmp_path)
    _log(tmp_path, [_oom("a", 1)])
    end = events.size(root)
    assert events.logged(root, "oom_kill", "a", 0, kills=1)
    assert not events.logged(root, "oom_kill", "a", end, kills=1)   # only what came after `end`
    assert events.logged(root, "oom_kill", "a", end + 100, kills=1)   # shorter than the offset: replaced


def test_a_run_reads_the_events_log_only_from_its_own_start(cg: Env) -> None:
    """The log only grows: a launch and its exit must not read its history (finish() read all of it
    to log the exit once, a cost that grew with every event ever logged). A bad line in the history
    is warned about by whoever reads it: nobody on the run's path does."""
    os.makedirs(cg.state_dir, mode=0o700, exist_ok=True)   # exists where an agent serves it (CGAGENT_TEST_AGENT=1)
    _log(Path(cg.state_dir), [b"not json", *[_oom("old", 1)] * 3])
    r = cg.run("run", "--rm", "--", "true")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    assert [ev["kind"] for _off, ev in events.read(cg.state_dir) if ev["name"] != "old"] == ["start", "exit"]


def test_events_command_survives_bad_lines(tmp_path: Path) -> None:
    _log(tmp_path, [_oom("a", 1), *BAD_LINES, b'{"time":1,"kind":"start","name":"a","cmd":5,"resources":[]}'])
    env = dict(os.environ, CGAGENT_STATE_DIR=str(tmp_path))
    for args in ([], ["--json"]):
        r = subprocess.run([sys.executable, "-m", "cgagent", "events", *args], env=env, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        warnings = r.stderr.splitlines()
        assert len(warnings) == len(BAD_LINES) and all(f"{tmp_path}/events.jsonl:" in w for w in warnings)
        assert len(r.stdout.splitlines()) == 2


# --- secrets: state is private (issue 15, item 5)

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, timeout=30)


@pytest.fixture
def open_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every user can traverse (pytest's own tmp dirs are 0700: they would hide the bug)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    base = tmp_path_factory.mktemp("open")
    for d in (base, *base.parents):
        if str(d) in ("/", "/tmp"):
            break
        os.chmod(d, os.stat(d).st_mode | 0o711)
    return base


def test_state_files_written_by_an_older_version_are_made_private(open_base: Path) -> None:
    root = open_base / "state"
    for d in (root, root / "workloads", root / "logs"):
        d.mkdir(mode=0o755)
        os.chmod(d, 0o755)
    (root / events.FILE).write_bytes(_oom("a", 1) + b"\n")
    (root / "logs" / "a.log").write_text("DB_PASSWORD=x\n")
    for f in (root / events.FILE, root / "logs" / "a.log"):
        os.chmod(f, 0o644)
    store = Store(str(root))
    store.save(_record("a"))
    events.append(str(root), "update", "a")
    os.close(store.open_log("a"))
    for d in (root, root / "workloads", root / "logs"):
        assert os.stat(d).st_mode & 0o777 == 0o700, d
    for f in (root / events.FILE, root / "logs" / "a.log", Path(store.path("a"))):
        assert os.stat(f).st_mode & 0o777 == 0o600, f


def test_a_secret_given_with_e_is_not_readable_by_other_users(open_base: Path, box: Box) -> None:
    """`run -e DB_PASSWORD=...`: the record, the events log and the workload's log hold it; a local
    user who is not root reads none of them (they were 0644 in a 0755 dir)."""
    b = Box(Env(str(open_base / "state"), box.cg.parent, box.cg.roots), box.store)
    ok(b.run("run", "-d", "--name", "sec", "-e", "DB_PASSWORD=hunter2", IMG, "--", "sh", "-c",
             "echo $DB_PASSWORD; exec sleep 100"))
    try:
        root = open_base / "state"
        files = [root / "workloads" / "sec.json", root / events.FILE, root / "logs" / "sec.log"]
        wait_for(lambda: "hunter2" in files[2].read_text())
        assert all(b"hunter2" in f.read_bytes() for f in (files[0], files[2]))
        for f in files:
            r = _as_nobody("cat", str(f))
            assert r.returncode != 0 and "Permission denied" in r.stderr, (f, r.stdout)
        r = _as_nobody("ls", str(root / "workloads"))
        assert r.returncode != 0, r.stdout
    finally:
        ok(b.run("rm", "-f", "sec"))
