"""Tier (b): a cgroup v2 host with systemd as PID 1, under qemu. Boots the cached image once
(`make test-vm-image` builds it), runs tests/vm_guest/guest_v2.py inside with this project shared
read-only over 9p, and reports each guest test here, by name, from the guest's JUnit XML."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VM = os.path.join(HERE, "vm", "cgagent-vm.sh")
GUEST = "tests/vm_guest/guest_v2.py"

RUN_SH = """set -u
# the project share is read-only: bytecode goes to the VM's tmpfs, compiled once per boot
export PYTHONPATH=/opt/cgagent-pylib:/mnt/project PYTHONPYCACHEPREFIX=/tmp/pycache CGAGENT_VM_GUEST=1
# under emulation a busy guest's systemd can take longer than the 25 s a user's host is given
export CGAGENT_SYSTEMD_TIMEOUT=120
# each D-Bus silence cgagent made up for (a call sent again, a job looked up) is a line here
export CGAGENT_SYSTEMD_TRACE=/mnt/job/out/systemd-retries.txt
cd /mnt/project
echo "guest: $(uname -r), $(systemctl --version | head -1), boot $(cut -d' ' -f1 /proc/uptime)s"
python3 -m pytest -p no:cacheprovider -v -rA --durations=5 {guest} {select} --junitxml=/mnt/job/out/junit.xml
rc=$?
echo "guest: D-Bus silences made up for: $(cat /mnt/job/out/systemd-retries.txt 2>/dev/null | wc -l)"
# the guest's journal outlives the VM: what systemd said around a failure
timeout 60 journalctl -b --no-pager -o short-monotonic > /mnt/job/out/journal.txt 2>&1
exit $rc
"""
# CGAGENT_VM_K="expr": run only the guest tests pytest's -k selects (the others are reported skipped)
SELECT = os.environ.get("CGAGENT_VM_K", "")


def _skip_reason() -> str | None:
    if os.environ.get("CGAGENT_TEST_VM") == "0":
        return "CGAGENT_TEST_VM=0"
    if os.geteuid() != 0 or subprocess.run([VM, "ready"], capture_output=True).returncode != 0:
        return "no cgroup v2 VM image (or it is stale, or no qemu): run `make test-vm-image`"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _guest_tests() -> list[str]:
    with open(os.path.join(ROOT, GUEST)) as f:
        tree = ast.parse(f.read())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


_RESULT = re.compile(r"^\S*::(test_\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", re.M)


def partial_results(log: str) -> list[tuple[str, str]]:
    """(case, outcome) of each guest test pytest -v reported in the guest's log."""
    return _RESULT.findall(log)


@pytest.fixture(scope="module")
def guest_results(tmp_path_factory: Any) -> dict[str, tuple[str, str]]:
    job = tmp_path_factory.mktemp("vmjob")
    (job / "run.sh").write_text(RUN_SH.format(guest=GUEST, select=f"-k {shlex.quote(SELECT)}" if SELECT else ""))
    # the guest runs the whole product (demo, README walk, isolation, networking, I/O, freezer): under
    # TCG on a busy machine that takes longer than the VM script's default 900 s (a run beside five
    # other jobs' tests once needed more than 2400 s)
    env = dict(os.environ, CGAGENT_VM_TIMEOUT=os.environ.get("CGAGENT_VM_TIMEOUT", "3600"))
    r = subprocess.run([VM, "run", ROOT, str(job)], capture_output=True, text=True, env=env,
                       timeout=int(env["CGAGENT_VM_TIMEOUT"]) + 120)
    junit = job / "out" / "junit.xml"
    # one entry per guest function: its parametrized cases ("name[driver]") folded together
    cases: dict[str, list[tuple[str, str]]] = {}
    if not junit.exists():
        # the VM timed out or died: what finished is in the guest's -v log; the rest did not run
        console = (job / "out" / "console.log").read_text(errors="replace")[-4000:] \
            if (job / "out" / "console.log").exists() else ""
        log = (job / "out" / "log").read_text(errors="replace") if (job / "out" / "log").exists() else ""
        done = partial_results(log)
        if not done:
            pytest.fail(f"the VM produced no results (rc {r.returncode}): {r.stderr}\n{console}")
        for case, outcome in done:
            text = f"{case}: {outcome} in the guest (its traceback was lost with the VM: see {job}/out/log)"
            cases.setdefault(case.split("[")[0], []).append(
                ("passed" if outcome == "PASSED" else "skipped" if outcome == "SKIPPED" else "failed", text))
        for name in _guest_tests():
            cases.setdefault(name, [("failed", f"{name}: did not finish before the VM stopped (rc {r.returncode}, "
                                     f"CGAGENT_VM_TIMEOUT {env['CGAGENT_VM_TIMEOUT']} s)\n{console[-1500:]}")])
    else:
        for case in ET.parse(junit).iter("testcase"):
            outcome, text = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = "skipped" if child.tag == "skipped" else "failed"
                    text = f"{case.get('name', '')}: " + (child.get("message") or "") + "\n" + (child.text or "")
            cases.setdefault(case.get("name", "").split("[")[0], []).append((outcome, text))
    out: dict[str, tuple[str, str]] = {}
    for name, got in cases.items():
        # the guest's journal.txt and its PID 1 diagnostics (pid1-, timeout-, stall-*.txt) stay in the job dir
        failed = [f"{t}\n(guest journal and diagnostics: {job}/out)" for o, t in got if o == "failed"]
        if failed:
            out[name] = ("failed", "\n".join(failed))
        elif all(o == "skipped" for o, _t in got):
            out[name] = ("skipped", got[0][1])
        else:
            out[name] = ("passed", "")
    return out


@pytest.mark.parametrize("name", _guest_tests())
def test_in_v2_vm(guest_results: dict[str, tuple[str, str]], name: str) -> None:
    if SELECT and name not in guest_results:
        pytest.skip(f"not selected by CGAGENT_VM_K={SELECT!r}")
    assert name in guest_results, f"{name} did not run in the VM"
    outcome, text = guest_results[name]
    if outcome == "skipped":
        pytest.skip(text.strip().splitlines()[0] if text.strip() else f"{name} skipped in the VM")
    assert outcome == "passed", f"{name}: {outcome}\n{text}"
