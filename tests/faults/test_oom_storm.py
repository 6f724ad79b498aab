"""50 OOM kills in a row (whole workload and child only, foreground and detached) with `cgagent
serve` SIGKILLed and restarted at random points, some kills inside its OOM journal: the kernel's
count = events = container_oom_events_total = `ps` OOM column (issue 10). The systemd tier runs the
same program in tests/test_systemd_ns.py, the v2 VM in tests/vm_guest/guest_v2.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import Env

pytestmark = pytest.mark.slow
STORM = os.path.join(os.path.dirname(__file__), "oomstorm.py")


def test_fifty_oom_kills_counted_once_across_serve_sigkills(cg: Env) -> None:
    kills = os.environ.get("CGAGENT_OOM_STORM_KILLS", "50")
    seed = os.environ.get("CGAGENT_OOM_STORM_SEED", "4")
    r = subprocess.run([sys.executable, STORM, "--kills", kills, "--seed", seed],
                       env=cg.env(CGAGENT_DEFAULT_NET="none"), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["kills"] == int(kills) and summary["serve_kills"] > 0, summary
    assert not os.listdir(f"{cg.state_dir}/workloads")
