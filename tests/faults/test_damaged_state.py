"""A damaged or deleted record while its workload runs (issue 10): every command names the damage in
one line and the other workloads keep working; `ps -a` shows it; `rm -f NAME` and `prune` remove
what it left, and only that: never a cgroup cgagent did not make."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.isolated import IMG, Box, wait_for

pytest_plugins = ("tests.isolated_fixtures",)

def _truncated(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _not_an_object(raw: bytes) -> bytes:
    return b"[1, 2]\n"


def _wrong_types(raw: bytes) -> bytes:
    return json.dumps({**json.loads(raw), "dirs": "x", "pid": "1"}).encode()


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": _truncated, "not an object": _not_an_object, "wrong types": _wrong_types}


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and lines, r.stderr
    assert all(n in lines[-1] for n in needles), r.stderr


def ps(cg: Env, *args: str) -> dict[str, dict[str, object]]:
    return {str(r["name"]) + ":" + str(r["status"]): r for r in json.loads(ok(cg.run("ps", "--json", *args)))}


def procs(dirs: list[str]) -> list[int]:
    out = []
    for d in dirs:
        try:
            out += [int(p) for p in Path(d, "cgroup.procs").read_text().split()]
        except OSError:
            pass
    return out


def cgroup_dirs(cg: Env, name: str) -> list[str]:
    return [os.path.join(r, name) for r in cg.roots]


@pytest.fixture
def two(cg: Env) -> Iterator[Env]:
    """Two detached workloads, `a` (to be damaged) and `b` (must not notice)."""
    for n in ("a", "b"):
        ok(cg.run("run", "-d", "--name", n, "--", "sleep", "300"))
    yield cg


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_record_is_one_line_everywhere_and_rm_f_cleans_it(two: Env, damage: str) -> None:
    cg = two
    rec = Path(cg.state_dir, "workloads", "a.json")
    rec.write_bytes(DAMAGE[damage](rec.read_bytes()))
    for cmd in (["stop", "-t", "1", "a"], ["rm", "a"], ["update", "a", "--cpus", "0.5"], ["stats", "a"],
                ["logs", "a"], ["exec", "a", "true"]):
        one_line_error(cg.run(*cmd), str(rec), "is damaged")
    # the others keep working, and the damage is named once, as a warning
    rows = ps(cg, "-a")
    assert rows["b:running"]["status"] == "running" and "a:damaged" in rows, rows
    r = cg.run("stats", "--json")
    assert r.returncode == 0 and [x["name"] for x in json.loads(r.stdout)] == ["b"], r.stderr
    assert len(r.stderr.splitlines()) == 1 and str(rec) in r.stderr
    ok(cg.run("update", "b", "--cpus", "0.5"))
    # rm -f: the workload's processes and cgroups go, and its name can be used again
    assert procs(cgroup_dirs(cg, "a"))
    ok(cg.run("rm", "-f", "a"))
    assert not rec.exists() and not any(os.path.isdir(d) for d in cgroup_dirs(cg, "a"))
    assert set(ps(cg, "-a")) == {"b:running"}
    ok(cg.run("run", "-d", "--name", "a", "--", "sleep", "300"))
    ok(cg.run("rm", "-f", "a", "b"))


def test_a_deleted_record_leaves_an_orphan_that_ps_shows_and_prune_removes(two: Env) -> None:
    cg = two
    Path(cg.state_dir, "workloads", "a.json").unlink()
    pids = procs(cgroup_dirs(cg, "a"))
    assert pids
    rows = ps(cg, "-a")
    assert rows["a:orphaned"]["processes"] == 1 and rows["b:running"], rows
    one_line_error(cg.run("run", "-d", "--name", "a", "--", "sleep", "1"), "already exists")
    dry = ok(cg.run("prune", "--dry-run"))
    lines = dry.splitlines()
    assert len(lines) == 1 and "would remove orphaned" in dry, dry   # a, not b (it has its record)
    words = lines[0].split()
    assert any(w.endswith("/a,") for w in words) and not any(w.endswith("/b,") for w in words), dry
    assert procs(cgroup_dirs(cg, "a")) == pids
    ok(cg.run("prune"))
    assert not any(os.path.isdir(d) for d in cgroup_dirs(cg, "a"))
    assert set(ps(cg, "-a")) == {"b:running"}
    ok(cg.run("run", "-d", "--name", "a", "--", "sleep", "300"))   # the name is free again
    ok(cg.run("rm", "-f", "a", "b"))


def test_rm_f_of_a_deleted_record_frees_the_name(two: Env) -> None:
    cg = two
    Path(cg.state_dir, "workloads", "a.json").unlink()
    ok(cg.run("rm", "-f", "a"))
    assert not any(os.path.isdir(d) for d in cgroup_dirs(cg, "a"))
    ok(cg.run("run", "-d", "--name", "a", "--", "sleep", "300"))
    ok(cg.run("rm", "-f", "a", "b"))


def test_prune_touches_nothing_cgagent_did_not_make(two: Env) -> None:
    """Foreign cgroups beside cgagent's parent and inside it, with a process each; temp files of a
    live process; the valid workload b: all untouched. Only a's leftovers go."""
    cg = two
    made: list[str] = []
    sleepers = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    try:
        for r in cg.roots:
            for sleeper, d in zip(sleepers, (os.path.join(os.path.dirname(r), f"foreign-{os.path.basename(r)}"),
                                             os.path.join(r, "foreign")), strict=True):
                os.makedirs(d)
                made.append(d)
                if "cpuset" not in d:   # a new cpuset cgroup has no CPUs to run a process on
                    Path(d, "cgroup.procs").write_text(str(sleeper.pid))
        w = Path(cg.state_dir, "workloads")
        dead = _dead_pid()
        leftovers = [w / f"x.json.tmp.{dead}", w / "gone.stopping", Path(cg.state_dir, f"parents.json.tmp.{dead}")]
        kept = [w / f"y.json.tmp.{os.getpid()}", w / "b.stopping"]
        for f in leftovers + kept:
            f.write_text("")
        Path(cg.state_dir, "workloads", "a.json").write_text("{")
        out = ok(cg.run("prune"))
        assert sorted(ln.split()[0] for ln in out.splitlines()) == ["damaged", "flag", "orphaned", "temp", "temp"], out
        assert all(os.path.isdir(d) for d in made)
        assert all(p.poll() is None for p in sleepers)
        assert not any(f.exists() for f in leftovers) and all(f.exists() for f in kept)
        assert not any(os.path.isdir(d) for d in cgroup_dirs(cg, "a"))
        assert set(ps(cg, "-a")) == {"b:running"}
        assert ok(cg.run("prune", "--dry-run")) == ""
    finally:
        for p in sleepers:
            p.send_signal(signal.SIGKILL)
            p.wait()
        for d in reversed(made):
            os.rmdir(d)
        for f in Path(cg.state_dir, "workloads").glob("*.tmp.*"):
            f.unlink()
    ok(cg.run("rm", "-f", "b"))


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_rm_goes_on_past_names_that_fail(cg: Env) -> None:
    for n in ("run1", "done1", "done2"):
        ok(cg.run("run", "-d", "--name", n, "--", "sleep", "300"))
    ok(cg.run("stop", "-t", "1", "done1", "done2"))
    r = cg.run("rm", "missing", "done1", "run1", "done2")
    assert r.returncode != 0 and r.stdout.split() == ["done1", "done2"], (r.stdout, r.stderr)
    errs = r.stderr.strip().splitlines()
    assert len(errs) == 2 and "'missing'" in errs[0] and "'run1' is running" in errs[1], errs
    assert set(ps(cg, "-a")) == {"run1:running"}
    ok(cg.run("rm", "-f", "run1"))


def test_an_image_workload_with_a_damaged_record_leaves_no_overlay(box: Box) -> None:
    ok(box.run("run", "-d", "--name", "img", IMG, "--", "sleep", "300"))
    assert len(box.containers()) == 1
    Path(box.cg.state_dir, "workloads", "img.json").write_text("{")
    assert "overlay" in ok(box.run("prune", "--dry-run"))
    ok(box.run("rm", "-f", "img"))
    assert box.containers() == [] and not any(os.path.isdir(d) for d in cgroup_dirs(box.cg, "img"))


def test_prune_leaves_a_namesake_in_another_state_dir_alone(cg: Env, tmp_path: Path) -> None:
    """State dir A ran and removed `x`; state dir B runs its own `x` under the same cgroup parent.
    A's events log names `x`, A has no record of it: the cgroup is still B's, not A's leftover."""
    other = Env(str(tmp_path / "other"), cg.parent, cg.roots)
    ok(cg.run("run", "-d", "--name", "x", "--", "sleep", "300"))
    ok(cg.run("rm", "-f", "x"))
    ok(other.run("run", "-d", "--name", "x", "--", "sleep", "300"))
    assert "x" not in ok(cg.run("prune", "--dry-run"))
    ok(cg.run("prune"))
    assert json.loads(ok(other.run("ps", "--json")))[0]["status"] == "running"
    ok(other.run("rm", "-f", "x"))


def test_a_workload_whose_record_is_damaged_leaves_no_cgroup_when_it_exits(cg: Env) -> None:
    ok(cg.run("run", "-d", "--name", "d", "--", "sleep", "300"))
    rec = Path(cg.state_dir, "workloads", "d.json")
    pid = json.loads(rec.read_text())["pid"]
    rec.write_text("{")
    os.kill(pid, signal.SIGTERM)

    def exits() -> list[tuple[object, object]]:
        evs = [json.loads(ln) for ln in Path(cg.state_dir, "events.jsonl").read_text().splitlines()]
        return [(e["exit_code"], e.get("damaged")) for e in evs if e["kind"] == "exit" and e["name"] == "d"]

    # the supervisor's finish() removes the cgroups, then logs the exit
    wait_for(lambda: bool(exits()), 60)
    assert exits() == [(143, True)]
    assert not any(os.path.isdir(d) for d in cgroup_dirs(cg, "d"))
    assert "d:damaged" in ps(cg, "-a")
    ok(cg.run("rm", "-f", "d"))
    assert ps(cg, "-a") == {}
