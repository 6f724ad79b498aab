"""`bench launches` (or the modules BENCH_VM names) on cgroup v2 + systemd: the same interleaved
launches inside the test VM (tests/vm/cgagent-vm.sh; `make test-vm-image` builds it), with runc and
bwrap of the VM's own.

Where the machine has no real VMX/SVM, the VM runs under emulation (qemu TCG), which makes every
process start ~15x slower: read the ratios (own cost against runc's whole time, bridge against none),
not the milliseconds. BENCH_ROUNDS (default 10 here) and BENCH_SETTLE are passed on; BENCH_VM names the bench modules
to run there (default `launches`; `launchcpu` says where a launch's CPU goes, process by process)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

from bench.common import SETTLE  # a float already: it lands in a shell line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VM = os.path.join(ROOT, "tests", "vm", "cgagent-vm.sh")
RUN_SH = """set -u
export PYTHONPATH=/opt/cgagent-pylib:/mnt/project PYTHONPYCACHEPREFIX=/tmp/pycache CGAGENT_SYSTEMD_TIMEOUT=120
cd /mnt/project
BENCH_ROUNDS={rounds} BENCH_SETTLE={settle} python3 -m bench {names}
"""


def main() -> None:
    if os.geteuid() != 0 or subprocess.run([VM, "ready"], capture_output=True).returncode != 0:
        print("vm bench skipped: no cgroup v2 VM image (or no qemu): run `make test-vm-image`")
        return
    rounds = int(os.environ.get("BENCH_ROUNDS", "10"))
    names = os.environ.get("BENCH_VM", "launches").split()
    if not names or not all(re.fullmatch(r"[a-z_]+", n) for n in names):
        raise ValueError("BENCH_VM names bench modules to run in the VM, e.g. BENCH_VM='launches launchcpu'")
    with tempfile.TemporaryDirectory(prefix="cgagent-bench-vm-") as job:
        with open(os.path.join(job, "run.sh"), "w") as f:
            f.write(RUN_SH.format(rounds=rounds, settle=SETTLE, names=" ".join(names)))
        env = dict(os.environ, CGAGENT_VM_TIMEOUT=str(600 + 60 * rounds))
        rc = subprocess.run([VM, "run", ROOT, job], env=env, capture_output=True, text=True).returncode
        with open(os.path.join(job, "out", "console.log"), errors="replace") as f:
            lines = [m.group(1) for m in (re.search(r"cgagent-vm-run\[\d+\]: (.*)", ln) for ln in f) if m]
    print("\n".join(ln for ln in lines if not ln.startswith("cgagent-vm:")))
    if rc != 0:
        raise RuntimeError(f"the VM's bench exited {rc}")
