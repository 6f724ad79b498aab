"""tree.Watched: the exporter's listing of the cgroups under a watched root is kept between scrapes and
taken again only when the kernel reports a cgroup made, removed or renamed (real cgroupfs, real inotify)."""

from __future__ import annotations

import os

from cgagent import host as hostmod
from cgagent.cgroups import tree
from tests.conftest import Env


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
