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
