"""nftables changes go through libnftables in-process, and through the `nft` program where the library
cannot be loaded: both give the same ruleset and the same answers (real kernel, in a network
namespace of the test's own)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cgagent.network import libnft

SCRIPT = r"""
import json, sys
from cgagent.network import libnft, nft
if sys.argv[1] == "program":
    libnft._tried, libnft._lib = True, None     # as on a host without libnftables
nft.guard(("vethx", "02:00:00:00:00:01", "10.9.0.2"))
snap = nft._snapshot("bridge")
bad = nft._nft("delete element bridge cgagent guarded { \"nope\" }", check=False)
nft.unguard("vethx", "02:00:00:00:00:01", "10.9.0.2")
after = nft._snapshot("bridge")
nft.delete_table()
print(json.dumps({"guarded": snap["guarded"], "pairs": len(snap["pairs"]), "bad": bad.returncode,
                  "err": bool(bad.stderr.strip()), "after": after["guarded"], "gone": nft._snapshot() is None}))
"""


@pytest.mark.parametrize("path", ["library", "program"])
def test_guard_and_unguard_through_each_path(path: str) -> None:
    if path == "library" and libnft.library() is None:
        pytest.fail("libnftables.so.1 is not loadable here (Debian: libnftables1, a dependency of nftables)")
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT, path], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {"guarded": ["vethx"], "pairs": 1, "bad": 1, "err": True, "after": [], "gone": True}


WARM = r"""
import json, os, sys
from cgagent.network import attach, config, libnft, nft
from cgagent.api.attach import _close_inherited
from cgagent.procs import close_all_but
root = sys.argv[1]
attach.warm(root)                       # no default network made yet: nothing done
cold = libnft._lib is None or libnft._lib.ctx == 0
config.save(config.load(config.DEFAULT_NETWORK, root), root)   # as after the first bridged run
attach.warm(root)
ctx, held = libnft._lib.ctx, libnft.held_fds()
_close_inherited(set())                 # what a runner does when its request arrives
nft.guard(("vethx", "02:00:00:00:00:01", "10.9.0.2"))
kept = libnft._lib.ctx == ctx
close_all_but({0, 1, 2})                # without keeping them (the mutant): the next command makes one again
nft.unguard("vethx", "02:00:00:00:00:01", "10.9.0.2")
remade = libnft._lib.ctx != ctx or libnft._lib.socks.keys() != held
nft.delete_table()
print(json.dumps({"cold": cold, "held": bool(held), "kept": kept, "remade": remade}))
"""


def test_a_runner_warms_its_nft_context_at_idle_and_keeps_it_for_the_request(tmp_path: object) -> None:
    """attach.warm (a parked runner's, cgagent.api.attach.Pool.park) makes the context a bridged
    launch's first nft command would (~1.6 ms), only once the default network exists, and the
    runner's close of what it inherited from the agent keeps its sockets."""
    if libnft.library() is None:
        pytest.fail("libnftables.so.1 is not loadable here (Debian: libnftables1, a dependency of nftables)")
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", WARM, str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"cold": True, "held": True, "kept": True, "remade": True}
