"""What a workload's creation makes above it (directories, v2 subtree_control bits) is remembered
and undone when its last workload goes: on a fixture tree (the VM tier does it on a real v2 host)."""

from __future__ import annotations

import json
from pathlib import Path

from cgagent.cgroups import parents
from cgagent.cgroups.v2 import V2Manager
from cgagent.state import Store


def _root(tmp: Path) -> Path:
    root = tmp / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("memory pids\n")
    return root


def test_v2_remembers_the_bits_it_enables_above_the_first_dir_it_makes(tmp_path: Path) -> None:
    root = _root(tmp_path)
    made = V2Manager({"": str(root / "a" / "b" / "web")}, mount=str(root)).made_by_create()
    assert made.dirs == [str(root / "a" / "b"), str(root / "a")]
    assert made.subtree == [(str(root), str(root / "a"), ["cpu", "cpuset", "io"])]
    (root / "a").mkdir()   # it exists already: nothing of ours above it to undo
    assert V2Manager({"": str(root / "a" / "web")}, mount=str(root)).made_by_create().empty()


def test_prune_reverts_the_bits_once_their_dir_is_gone(tmp_path: Path) -> None:
    root = _root(tmp_path)
    store = Store(str(tmp_path / "state"))
    store.ensure()
    parents.remember(store, V2Manager({"": str(root / "a" / "web")}, mount=str(root)).made_by_create())
    (root / "a" / "x").mkdir(parents=True)   # still in use: nothing is undone
    parents.prune(store)
    assert (root / "a").is_dir() and parents.load(store).subtree
    (root / "a" / "x").rmdir()
    parents.prune(store)
    assert not (root / "a").exists()
    # a plain file stands in for subtree_control here: the last write is what the kernel got last
    assert (root / "cgroup.subtree_control").read_text() == "-io"
    assert parents.load(store).empty()


def test_the_old_list_format_still_loads(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "state"))
    store.ensure()
    (tmp_path / "state" / "parents.json").write_text(json.dumps(["/sys/fs/cgroup/cpu/cgagent"]))
    assert parents.load(store).dirs == ["/sys/fs/cgroup/cpu/cgagent"]
