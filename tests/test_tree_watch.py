"""tree.Watched: the exporter's listing of the cgroups under a watched root is kept between scrapes and
taken again only when the kernel reports a cgroup made, removed or renamed (real cgroupfs, real inotify)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cgagent import host as hostmod
from cgagent.cgroups import tree
from tests.conftest import Env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ids(found: list[tree.Found]) -> list[tuple[str, tuple[tuple[str, str], ...], int]]:
    return [(f.id, tuple(sorted(f.dirs.items())), f.gen) for f in found]


def test_listing_is_kept_until_a_cgroup_is_made_removed_or_renamed(cg: Env) -> None:
    h = hostmod.detect()
    for r in cg.roots:
        os.makedirs(r, exist_ok=True)
    w = tree.Watched(h)
    try:
        def check() -> int:
            """Watched agrees with a fresh walk; -> how many listings it has taken so far."""
            assert _ids(w.below(cg.parent)) == _ids(tree.below(h, cg.parent))
            return w.listings

        n = check()
        assert n == len(tree.bases(h, cg.parent))   # every hierarchy read listed once
        assert check() == n                  # nothing changed: nothing listed again

        def each(op: str, *rel: str) -> None:
            for r in cg.roots:
                getattr(os, op)(*(f"{r}/{x}" for x in rel))

        each("mkdir", "a")
        assert check() > n and any(f.id.endswith("/a") for f in w.below(cg.parent))
        n = w.listings
        assert check() == n
        each("mkdir", "a/b")                 # a child of a leaf: the leaf is watched too
        assert check() > n and any(f.id.endswith("/a/b") for f in w.below(cg.parent))
        n = w.listings
        each("rmdir", "a/b")
        each("rename", "a", "c")
        assert check() > n
        got = {f.id.rsplit("/", 1)[1] for f in w.below(cg.parent)}
        assert "c" in got and "a" not in got and "b" not in got
        n = w.listings
        each("mkdir", "c/d")                 # under the renamed cgroup: its watch moved with it
        assert check() > n and any(f.id.endswith("/c/d") for f in w.below(cg.parent))
        each("rmdir", "c/d")
        each("rmdir", "c")
        assert not any(f.id.endswith(("/c", "/d")) for f in w.below(cg.parent))
        assert check() >= n
    finally:
        w.close()


def test_without_inotify_every_call_lists_again(cg: Env) -> None:
    h = hostmod.detect()
    for r in cg.roots:
        os.makedirs(r, exist_ok=True)
    w = tree.Watched(h, use_inotify=False)
    first = _ids(w.below(cg.parent))
    for r in cg.roots:
        os.mkdir(f"{r}/x")
    k = len(tree.bases(h, cg.parent))
    assert w.listings == k
    assert _ids(w.below(cg.parent)) != first and w.listings == 2 * k
    w.close()


CHILD = r"""
import json, sys
from cgagent import host as hostmod
from cgagent.cgroups import tree
with open("/proc/sys/user/max_inotify_watches", "w") as f:   # this user namespace's own limit
    f.write("3")
h, root = hostmod.detect(), sys.argv[1]
w = tree.Watched(h)
ids = lambda found: [f.id for f in found]
for _ in range(2):
    print(json.dumps({"same": ids(w.below(root)) == ids(tree.below(h, root)), "n": len(w.below(root)),
                      "watching": w._in is not None}), flush=True)
    sys.stdin.readline()   # the test makes one more cgroup
"""


def test_past_the_watch_limit_every_call_lists_again(cg: Env) -> None:
    """In a user namespace whose inotify watch limit is 3, far fewer than the cgroups below the root:
    the listing stays complete and follows a new cgroup, with no watch kept."""
    h = hostmod.detect()
    for r in cg.roots:
        for x in "abcde":
            os.makedirs(f"{r}/{x}", exist_ok=True)
    p = subprocess.Popen(["unshare", "-U", "-r", sys.executable, "-c", CHILD, cg.parent], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert p.stdin is not None and p.stdout is not None
        first = json.loads(p.stdout.readline())
        for r in cg.roots:
            os.mkdir(f"{r}/f")
        p.stdin.write("\n")
        p.stdin.flush()
        second = json.loads(p.stdout.readline())
        p.stdin.write("\n")
        p.stdin.close()
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    n = len(tree.below(h, cg.parent))
    assert first == {"same": True, "n": n - 1, "watching": False}
    assert second == {"same": True, "n": n, "watching": False}
