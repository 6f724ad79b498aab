"""Each exported value equals what the kernel file says after unit conversion (ns -> s, µs -> s,
USER_HZ -> s): on this host for a running workload, and on the cgroup v2 tree in tests/fixtures/v2.

Expected values are computed here from the raw file text, independently of cgagent's parsers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cgagent import host as hostmod
from cgagent.convert import weight_to_cadvisor_shares
from cgagent.host import Host
from cgagent.oomwatch import OomWatcher
from cgagent.state import Record, Store
from exporters.registry import Exporter, Options
from tests.conftest import Env
from tests.exporter_helpers import Samples, end, parse, poll, value

FIXTURE = Path(__file__).parent / "fixtures" / "v2"
USER_HZ = os.sysconf("SC_CLK_TCK")


def kv(path: str) -> dict[str, int]:
    with open(path) as f:
        return {k: int(v) for k, v in (ln.split()[:2] for ln in f if ln.strip())}


def num(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def scrape(exp: Exporter) -> Samples:
    return parse(exp.render().decode())


# --- this host (cgroup v1 / hybrid): a running workload, frozen so its counters hold still

def _v1_limit(n: int | None) -> int | None:
    """v1's "unlimited" is a huge page-counter value: cAdvisor (and so cgagent) reports 0."""
    return None if n is None else 0 if n >= 1 << 62 else n


def v1_expected(dirs: dict[str, str]) -> dict[str, float | None]:
    cpu, acct, mem, pids = dirs["cpu"], dirs["cpuacct"], dirs["memory"], dirs["pids"]
    st, ticks, ms = kv(f"{cpu}/cpu.stat"), kv(f"{acct}/cpuacct.stat"), kv(f"{mem}/memory.stat")
    usage = num(f"{mem}/memory.usage_in_bytes")
    quota = num(f"{cpu}/cpu.cfs_quota_us")
    return {
        "container_cpu_cfs_periods_total": st["nr_periods"],
        "container_cpu_cfs_throttled_periods_total": st["nr_throttled"],
        "container_cpu_cfs_throttled_seconds_total": st["throttled_time"] / 1e9,
        "container_cpu_usage_seconds_total": num(f"{acct}/cpuacct.usage") / 1e9,
        "container_cpu_user_seconds_total": ticks["user"] / USER_HZ,
        "container_cpu_system_seconds_total": ticks["system"] / USER_HZ,
        "container_memory_usage_bytes": usage,
        "container_memory_working_set_bytes": max(0, usage - ms["total_inactive_file"]),
        "container_memory_rss": ms["total_rss"],
        "container_memory_cache": ms["total_cache"],
        "container_memory_max_usage_bytes": num(f"{mem}/memory.max_usage_in_bytes"),
        "container_memory_failcnt": num(f"{mem}/memory.failcnt"),
        "container_memory_swap": ms.get("total_swap"),
        "container_spec_cpu_shares": num(f"{cpu}/cpu.shares"),
        "container_spec_cpu_quota": quota if quota > 0 else None,
        "container_spec_cpu_period": num(f"{cpu}/cpu.cfs_period_us"),
        "container_spec_memory_limit_bytes": num(f"{mem}/memory.limit_in_bytes"),
        "container_spec_memory_swap_limit_bytes": _v1_limit(num(f"{mem}/memory.memsw.limit_in_bytes")),
        "container_spec_memory_reservation_limit_bytes": _v1_limit(num(f"{mem}/memory.soft_limit_in_bytes")),
        "container_threads": num(f"{pids}/pids.current"),
        "container_threads_max": num(f"{pids}/pids.max"),
        "container_oom_events_total": 0,
    }


def test_values_equal_kernel_files_for_a_running_workload(cg: Env) -> None:
    h = hostmod.detect()
    assert not h.is_v2, "this test covers the host's v1 hierarchy; v2 is covered by the fixture tree"
    r = cg.run("run", "-d", "--name", "w", "--cpus", "0.5", "--memory", "96M", "--pids-limit", "40",
               "--", "sh", "-c", "while :; do :; done")
    assert r.returncode == 0, r.stderr
    rec = Store(cg.state_dir).load("w")
    cg.favour_cpu()   # a loaded machine must still let it reach its quota; 60 s only guards a hang
    assert poll(lambda: kv(f"{rec.dirs['cpu']}/cpu.stat")["nr_throttled"] > 0, 60)
    freezer = f"{rec.dirs['freezer']}/freezer.state"
    with open(freezer, "w") as f:
        f.write("FROZEN")
    assert poll(lambda: open(freezer).read().strip() == "FROZEN", 5)
    exp = Exporter(Options(host=h, state_dir=cg.state_dir, process_metrics=False))
    for _ in range(5):   # a frozen cgroup's counters hold still; retry if the kernel moved one anyway
        before = v1_expected(rec.dirs)
        got = scrape(exp)
        if v1_expected(rec.dirs) == before:
            break
    else:
        raise AssertionError("kernel counters kept moving in a frozen cgroup")
    labels = {"name": "w", "id": rec.cgroup, "policy": ""}
    for metric, want in before.items():
        assert value(got, metric, **labels) == want, metric
    assert value(got, "container_cpu_usage_seconds_total", name="w", cpu="total") == \
        before["container_cpu_usage_seconds_total"]
    assert value(got, "container_cpu_cfs_throttled_periods_total", name="w") > 0  # type: ignore[operator]
    assert value(got, "container_spec_cpu_quota", name="w") == 50000
    # per-CPU series only with --per-cpu
    assert not [k for k in got if k[0] == "container_cpu_usage_seconds_total" and ("cpu", "cpu00") in k[1]]
    per = scrape(Exporter(Options(host=h, state_dir=cg.state_dir, per_cpu=True, process_metrics=False)))
    with open(f"{rec.dirs['cpuacct']}/cpuacct.usage_percpu") as f:
        percpu = [int(x) / 1e9 for x in f.read().split()]
    for i, secs in enumerate(percpu):
        assert value(per, "container_cpu_usage_seconds_total", name="w", cpu=f"cpu{i:02d}") == secs
    # ...and then without the total: sum() over the family must not count the CPU time twice
    assert value(per, "container_cpu_usage_seconds_total", name="w", cpu="total") is None
    assert value(got, "cgagent_workloads", state="running") == 1
    # limits are kept between scrapes until the kernel reports a write to their file
    assert cg.run("update", "w", "--cpus", "0.25", "--memory", "80M", "--pids-limit", "30").returncode == 0
    again = scrape(exp)
    assert value(again, "container_spec_cpu_quota", name="w") == num(f"{rec.dirs['cpu']}/cpu.cfs_quota_us") == 25000
    assert value(again, "container_spec_memory_limit_bytes", name="w") == 80 << 20
    assert value(again, "container_threads_max", name="w") == 30
    with open(freezer, "w") as f:
        f.write("THAWED")
    end(cg, "w")


# --- cgroup v2: the fixture tree stands in for /sys/fs/cgroup

def v2_host(mount: Path) -> Host:
    return Host(mode="v2", v2_mount=str(mount), v2_controllers=["cpuset", "cpu", "io", "memory", "pids"],
                own_cgroup={"": "/"})


def v2_expected(d: Path) -> dict[str, float | None]:
    st, ms, ev = kv(f"{d}/cpu.stat"), kv(f"{d}/memory.stat"), kv(f"{d}/memory.events")
    quota, period = (d / "cpu.max").read_text().split()
    mem_max, pids_max = (d / "memory.max").read_text().strip(), (d / "pids.max").read_text().strip()
    usage = num(f"{d}/memory.current")
    out: dict[str, float | None] = {
        "container_cpu_cfs_periods_total": st["nr_periods"],
        "container_cpu_cfs_throttled_periods_total": st["nr_throttled"],
        "container_cpu_cfs_throttled_seconds_total": st["throttled_usec"] / 1e6,
        "container_cpu_usage_seconds_total": st["usage_usec"] / 1e6,
        "container_cpu_user_seconds_total": st["user_usec"] / 1e6,
        "container_cpu_system_seconds_total": st["system_usec"] / 1e6,
        "container_memory_usage_bytes": usage,
        "container_memory_working_set_bytes": max(0, usage - ms["inactive_file"]),
        "container_memory_rss": ms["anon"],
        "container_memory_cache": ms["file"],
        "container_memory_max_usage_bytes": num(f"{d}/memory.peak"),
        "container_memory_failcnt": ev["max"],
        "container_spec_cpu_shares": weight_to_cadvisor_shares(num(f"{d}/cpu.weight")),
        "container_spec_cpu_weight": None,
        "container_spec_cpu_quota": None if quota == "max" else int(quota),
        "container_spec_cpu_period": int(period),
        "container_spec_memory_limit_bytes": 0 if mem_max == "max" else int(mem_max),
        "container_threads": num(f"{d}/pids.current"),
        "container_threads_max": 0 if pids_max == "max" else int(pids_max),
    }
    for res in ("cpu", "memory", "io"):
        totals = {ln.split()[0]: int(ln.split("total=")[1]) for ln in (d / f"{res}.pressure").read_text().splitlines()}
        out[f"container_pressure_{res}_waiting_seconds_total"] = totals["some"] / 1e6
        out[f"container_pressure_{res}_stalled_seconds_total"] = totals["full"] / 1e6
    return out


def v2_store(root: Path, mount: Path) -> Store:
    store = Store(str(root))
    store.save(Record(name="web", cmd=["web"], driver="cgroupfs", mode="v2", dirs={"": str(mount / "cgagent/web")},
                      cgroup="/cgagent/web", status="running", policy="batch", created=1.0, pid=1))
    return store


def test_v2_fixture_values_equal_file_contents(tmp_path: Path) -> None:
    store = v2_store(tmp_path / "state", FIXTURE)
    exp = Exporter(Options(host=v2_host(FIXTURE), state_dir=store.root, watch=["/system.slice"],
                           process_metrics=False))
    got = scrape(exp)
    cgroups = {"/system.slice": "system.slice", "/system.slice/cron.service": "cron.service",
               "/system.slice/ssh.service": "ssh.service", "/cgagent/web": "web"}
    for cid, name in cgroups.items():
        want = v2_expected(FIXTURE / cid.lstrip("/"))
        policy = "batch" if name == "web" else ""
        for metric, v in want.items():
            assert value(got, metric, id=cid, name=name, policy=policy) == v, (cid, metric)
        # watched cgroups: the kernel's counter of their own processes' kills (ssh.service's two kills
        # are not counted again at system.slice, whose memory.events holds them); workloads: the
        # durable log (empty here)
        oom = 0 if name == "web" else kv(str(FIXTURE / cid.lstrip("/") / "memory.events.local"))["oom_kill"]
        assert value(got, "container_oom_events_total", id=cid) == oom
    assert value(got, "container_cpu_usage_seconds_total", name="web", cpu="total") == 250.0
    assert kv(str(FIXTURE / "system.slice/memory.events"))["oom_kill"] == 2   # what a parent's counter says
    assert value(got, "container_oom_events_total", id="/system.slice") == 0
    assert value(got, "container_cpu_cfs_throttled_seconds_total", name="ssh.service") == 4.567891
    assert {ls for n, ls in got if n == "container_memory_usage_bytes"} == {
        # a slice groups others: container="" (the kubelet's convention), leaf units and workloads: their name
        frozenset({("id", c), ("name", n), ("container", "" if n.endswith(".slice") else n),
                   ("policy", "batch" if n == "web" else "")})
        for c, n in cgroups.items()}
    assert sum(v for (n, _), v in got.items() if n == "cgagent_scrape_errors_total") == 0


def test_v2_limit_changes_show_on_the_next_scrape(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    shutil.copytree(FIXTURE, mount)
    exp = Exporter(Options(host=v2_host(mount), watch=["/system.slice"], process_metrics=False))
    assert value(scrape(exp), "container_spec_cpu_quota", name="ssh.service") == 50000
    (mount / "system.slice/ssh.service/cpu.max").write_text("20000 50000\n")
    (mount / "system.slice/ssh.service/cpu.weight").write_text("300\n")
    (mount / "system.slice/ssh.service/pids.max").write_text("max\n")
    got = scrape(exp)
    assert value(got, "container_threads_max", name="ssh.service") == 0
    assert value(got, "container_spec_cpu_quota", name="ssh.service") == 20000
    assert value(got, "container_spec_cpu_period", name="ssh.service") == 50000
    assert value(got, "container_spec_cpu_shares", name="ssh.service") == weight_to_cadvisor_shares(300) == 7840


def test_limits_follow_a_cgroup_removed_and_made_again_for_the_same_workload(tmp_path: Path) -> None:
    """`cgagent restart` removes the workload's cgroup and makes it again: the same record, so the same
    Target. Its kept limits must not outlive the old files' watches (the kernel drops them: IN_IGNORED)."""
    mount = tmp_path / "cg"
    shutil.copytree(FIXTURE, mount)
    store = v2_store(tmp_path / "state", mount)
    exp = Exporter(Options(host=v2_host(mount), state_dir=store.root, process_metrics=False))
    web = mount / "cgagent/web"
    assert value(scrape(exp), "container_spec_cpu_quota", name="web") is not None
    kept = web.with_name("kept")
    shutil.copytree(web, kept)
    shutil.rmtree(web)
    shutil.copytree(kept, web)
    scrape(exp)   # reads the new files (the old watches are gone)...
    (web / "cpu.max").write_text("30000 100000\n")
    (web / "memory.max").write_text(f"{96 << 20}\n")
    (web / "pids.max").write_text("33\n")
    for _ in range(2):   # ...and watches them: a write shows at once, and the value stays
        got = scrape(exp)
        assert value(got, "container_spec_cpu_quota", name="web") == 30000
        assert value(got, "container_spec_memory_limit_bytes", name="web") == 96 << 20
        assert value(got, "container_threads_max", name="web") == 33


def test_limits_follow_writes_when_a_new_target_takes_over_the_same_files(tmp_path: Path) -> None:
    """A workload whose record changes (here its policy) is a new Target on the same directory: inotify
    gives it the old Target's watch (same file, same wd), which must outlive the old Target."""
    mount = tmp_path / "cg"
    shutil.copytree(FIXTURE, mount)
    store = v2_store(tmp_path / "state", mount)
    exp = Exporter(Options(host=v2_host(mount), state_dir=store.root, process_metrics=False))
    assert value(scrape(exp), "container_spec_cpu_quota", name="web", policy="batch") is not None
    rec = store.load("web")
    rec.policy = "latency"
    store.save(rec)
    assert value(scrape(exp), "container_spec_cpu_quota", name="web", policy="latency") is not None
    web = mount / "cgagent/web"
    (web / "cpu.max").write_text("30000 100000\n")
    (web / "memory.max").write_text(f"{96 << 20}\n")
    (web / "pids.max").write_text("33\n")
    for _ in range(2):
        got = scrape(exp)
        assert value(got, "container_spec_cpu_quota", name="web") == 30000
        assert value(got, "container_spec_memory_limit_bytes", name="web") == 96 << 20
        assert value(got, "container_threads_max", name="web") == 33


def test_v2_oom_watcher_logs_memory_events_changes(tmp_path: Path) -> None:
    """inotify IN_MODIFY on memory.events: a write to the fixture file is what the kernel's
    notification looks like to the watcher."""
    mount = tmp_path / "cg"
    shutil.copytree(FIXTURE, mount)
    store = v2_store(tmp_path / "state", mount)
    exp = Exporter(Options(host=v2_host(mount), state_dir=store.root, process_metrics=False))
    watcher = OomWatcher(store).start()
    try:
        # the kill that happened before the watcher started is caught up at once (oom_kill 1 in the file)
        assert poll(lambda: value(scrape(exp), "container_oom_events_total", name="web") == 1, 5)
        events = mount / "cgagent/web/memory.events"
        events.write_text(events.read_text().replace("oom_kill 1", "oom_kill 3"))
        assert poll(lambda: value(scrape(exp), "container_oom_events_total", name="web") == 3, 5)
        assert value(scrape(exp), "cgagent_oom_kills_total", name="web") == 3
    finally:
        watcher.stop()
    from cgagent import oom

    assert oom.kills(store, Store(store.root).load("web")) == 3   # the OOM mark, not the record


def test_fast_text_equals_prometheus_client_text(tmp_path: Path) -> None:
    """render() (served when the web layer uses it) and prometheus_client's generate_latest over
    collect() carry the same samples, label escaping included."""
    from prometheus_client import generate_latest

    store = v2_store(tmp_path / "state", FIXTURE)
    rec = store.load("web")
    rec.policy = 'quote"back\\slash\nnewline'
    store.save(rec)
    exp = Exporter(Options(host=v2_host(FIXTURE), state_dir=store.root, watch=["/system.slice"],
                           process_metrics=False, collectors=["cpu", "memory", "spec", "oom"]))
    fast, client = parse(exp.render().decode()), parse(generate_latest(exp).decode())
    timings = "cgagent_scrape_duration_seconds"   # differ from scrape to scrape by nature
    assert {k: v for k, v in fast.items() if k[0] != timings} == {k: v for k, v in client.items() if k[0] != timings}
    assert value(fast, "container_memory_usage_bytes", name="web", policy=rec.policy) == 52428800
