"""A cgroup removed mid-scrape, an unreadable file, a malformed stat file: the scrape still succeeds
for everything else and cgagent_scrape_errors_total counts the failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cgagent import host as hostmod
from cgagent.state import Record
from exporters.registry import Exporter, Options
from exporters.targets import Target
from tests.conftest import ROOT, Env
from tests.exporter_helpers import Samples, parse, value
from tests.test_exporter_values import FIXTURE, v2_host

V1_DIRS = ("cpu", "cpuacct", "memory", "pids")


def errors(s: Samples, collector: str) -> float | None:
    return value(s, "cgagent_scrape_errors_total", collector=collector)


def make_cgroups(cg: Env, *names: str) -> dict[str, dict[str, str]]:
    """Empty cgroups under the test's own parent, in every hierarchy; removed by the `cg` fixture."""
    h = hostmod.detect()
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    sub = cg.parent.split(":", 1)[1]
    for c in V1_DIRS:
        base = os.path.normpath(f"{h.v1_mounts[c]}/{h.own_cgroup.get(c, '/')}/{sub}")
        for n in names:
            os.makedirs(f"{base}/{n}", exist_ok=True)
            out[n][c] = f"{base}/{n}"
    return out


def test_cgroup_removed_mid_scrape(cg: Env) -> None:
    dirs = make_cgroups(cg, "stays", "goes")
    exp = Exporter(Options(host=hostmod.detect(), watch=[cg.parent], process_metrics=False))
    found = exp.discovery.targets

    def targets_then_rmdir(recs: list[Record]) -> list[Target]:
        ts = found(recs)
        for d in dirs["goes"].values():   # between discovery and the collectors' reads
            os.rmdir(d)
        return ts

    exp.discovery.targets = targets_then_rmdir  # type: ignore[method-assign]
    s = parse(exp.render().decode())
    for metric in ("container_cpu_cfs_periods_total", "container_cpu_usage_seconds_total",
                   "container_memory_usage_bytes", "container_threads", "container_spec_cpu_shares"):
        assert value(s, metric, name="stays") is not None, metric
        assert value(s, metric, name="goes") is None, metric
    for collector in ("cpu", "cpuacct", "memory", "pids", "spec", "oom"):
        assert errors(s, collector) == 1, collector
    exp.discovery.targets = found  # type: ignore[method-assign]
    s = parse(exp.render().decode())   # gone from discovery: no new error, the counter stays
    assert errors(s, "cpu") == 1
    assert value(s, "container_cpu_cfs_periods_total", name="stays") is not None


SCRAPE = """
import sys
from cgagent import host
from exporters.registry import Exporter, Options
sys.stdout.write(Exporter(Options(host=host.detect(), watch=[sys.argv[1]], process_metrics=False)).render().decode())
"""


def test_unreadable_file(cg: Env) -> None:
    dirs = make_cgroups(cg, "locked", "open")
    os.chmod(f"{dirs['locked']['cpu']}/cpu.stat", 0)
    # root reads mode-000 files through CAP_DAC_OVERRIDE: scrape without it, as a locked-down agent would
    drop = "-dac_override,-dac_read_search"
    r = subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable, "-c", SCRAPE,
                        cg.parent], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    s = parse(r.stdout)
    assert errors(s, "cpu") == 1
    assert value(s, "container_cpu_cfs_periods_total", name="locked") is None
    assert value(s, "container_cpu_cfs_periods_total", name="open") is not None
    assert value(s, "container_memory_usage_bytes", name="locked") is not None   # its other files still count
    assert value(s, "container_spec_cpu_shares", name="locked") is not None


def test_malformed_stat_files(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    shutil.copytree(FIXTURE, mount)
    (mount / "system.slice/ssh.service/cpu.stat").write_text("usage_usec twelve\nnr_periods 1\n")
    (mount / "system.slice/cron.service/memory.stat").write_text("anon 1O24\n")
    (mount / "system.slice/cron.service/pids.current").write_text("")
    exp = Exporter(Options(host=v2_host(mount), watch=["/system.slice"], process_metrics=False))
    for n in (1, 2):   # a counter: each scrape that meets the broken files adds to it
        s = parse(exp.render().decode())
        assert errors(s, "cpu") == n and errors(s, "cpuacct") == n   # v2 cpu.stat feeds both
        assert errors(s, "memory") == n and errors(s, "pids") == n
        assert value(s, "container_cpu_cfs_periods_total", name="ssh.service") is None
        assert value(s, "container_cpu_cfs_periods_total", name="cron.service") == 0
        assert value(s, "container_memory_usage_bytes", name="cron.service") is None
        assert value(s, "container_memory_usage_bytes", name="ssh.service") == 8388608
        assert value(s, "container_threads", name="ssh.service") == 5
        assert value(s, "container_spec_cpu_shares", name="cron.service") == 2597   # weight 100, as cAdvisor
        assert value(s, "container_memory_usage_bytes", name="system.slice") is not None
