"""`cgagent serve` scraped by a real Prometheus, OOM kills that are never lost, `cgagent events`,
and promtool's lint of a real exposition. Real kernel, real cgroups (the `cg` fixture)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

from tests.conftest import Env
from tests.exporter_helpers import Agent, agent, end, parse, poll, value
from tests.prom import promtool_check_metrics

BUSY = ["sh", "-c", "while :; do :; done"]
# 200 MiB of touched memory under a 64 MiB limit: the kernel's OOM killer ends it (exit 137)
ALLOC = ["python3", "-c", "b = bytearray(200 << 20)"]


def oom_events(cg: Env, name: str) -> list[dict[str, object]]:
    r = cg.run("events", "--json", name, check=True)
    return [e for e in map(json.loads, r.stdout.splitlines()) if e["kind"] == "oom_kill"]


def test_prometheus_sees_throttling_and_cpu_throttling_high_fires(cg: Env, prometheus: object) -> None:
    r = cg.run("run", "-d", "--name", "busy", "--cpus", "0.2", "--", *BUSY)
    assert r.returncode == 0, r.stderr
    with agent(cg) as a:
        prom = prometheus([a.listen])  # type: ignore[operator]
        got = prom.wait_for('rate(container_cpu_cfs_throttled_periods_total{name="busy"}[30s]) > 0', timeout=60)
        assert [s["metric"]["name"] for s in got] == ["busy"]
        ratio = ('increase(container_cpu_cfs_throttled_periods_total{name="busy"}[30s])'
                 ' / increase(container_cpu_cfs_periods_total{name="busy"}[30s])')
        got = prom.wait_for(ratio, lambda res: bool(res) and float(res[0]["value"][1]) > 0.5, timeout=60)
        assert float(got[0]["value"][1]) > 0.5
        # kubernetes-mixin's CPUThrottlingHigh expression, unchanged but for the window
        mixin = ('sum(increase(container_cpu_cfs_throttled_periods_total{container!=""}[30s])) '
                 'without (id, metrics_path, name, image, endpoint, job, node) '
                 '/ on (cluster, namespace, pod, container, instance) group_left '
                 'sum(increase(container_cpu_cfs_periods_total{}[30s])) '
                 'without (id, metrics_path, name, image, endpoint, job, node) > (25 / 100)')
        fired = prom.wait_for(mixin, lambda res: any(s["metric"].get("container") == "busy" for s in res),
                              timeout=30)
        assert any(s["metric"].get("container") == "busy" for s in fired)
    end(cg, "busy")


def test_oom_kill_is_counted_and_survives_restart_and_rm(cg: Env) -> None:
    # how soon the count shows (issue: within 1 s) is bench/oom.py's number, from the kernel's own kill
    # time: a wall-clock bound here failed under a loaded full run, and says nothing a benchmark does not
    srv = Agent(cg)
    try:
        r = cg.run("run", "--name", "oomer", "--memory", "64M", "--", *ALLOC)
        assert r.returncode == 137, r.stderr

        def counted() -> bool:
            return value(srv.samples(), "container_oom_events_total", name="oomer") == 1

        assert poll(counted, 30), "container_oom_events_total{name=oomer} did not reach 1"
    finally:
        assert srv.stop() == 0   # SIGTERM: a clean shutdown
    # restart on the same address: the count comes back from the durable log
    listen = srv.listen
    with agent(cg, listen=listen) as srv2:
        s = srv2.samples()
        assert value(s, "container_oom_events_total", name="oomer") == 1
        assert value(s, "cgagent_oom_kills_total", name="oomer") == 1
        assert cg.run("rm", "oomer").returncode == 0
        s = srv2.samples()
        assert value(s, "container_oom_events_total", name="oomer") == 1
        assert value(s, "container_oom_events_total", name="oomer", id=f"/{cg.parent.split(':')[1]}/oomer") == 1
    # counted exactly once, whoever logged it (the watcher or the exiting supervisor)
    evs = oom_events(cg, "oomer")
    assert sum(int(e["kills"]) for e in evs) == 1, evs  # type: ignore[call-overload]


def test_watcher_logs_oom_while_the_workload_keeps_running(cg: Env) -> None:
    """The OOM kills a child; the workload lives on, so only the agent's watcher can report it now."""
    with agent(cg) as srv:
        script = f"{' '.join(ALLOC[:2])} '{ALLOC[2]}'; exec sleep 1000"
        r = cg.run("run", "-d", "--name", "survivor", "--label", "team=a", "--memory", "64M", "--", "sh", "-c",
                   script)
        assert r.returncode == 0, r.stderr
        assert poll(lambda: value(srv.samples(), "container_oom_events_total", name="survivor") == 1, 20)
        evs = oom_events(cg, "survivor")
        assert [e["source"] for e in evs] == ["serve"]
        ps = json.loads(cg.run("ps", "--json", check=True).stdout)
        assert [w["status"] for w in ps if w["name"] == "survivor"] == ["running"]
        # the supervisor reads the same kernel counter at exit: it must not count the kill again
        end(cg, "survivor")
        # gone, its count stays one series under the labels it had (container_label_*, image)
        assert value(srv.samples(), "container_oom_events_total", name="survivor", container_label_team="a") == 1
    assert sum(int(e["kills"]) for e in oom_events(cg, "survivor")) == 1  # type: ignore[call-overload]


def test_oom_without_agent_is_counted_when_it_starts(cg: Env) -> None:
    r = cg.run("run", "--name", "alone", "--memory", "64M", "--", *ALLOC)
    assert r.returncode == 137
    assert [e["source"] for e in oom_events(cg, "alone")] == ["exit"]
    with agent(cg) as srv:
        assert value(srv.samples(), "container_oom_events_total", name="alone") == 1


def test_events_follow_shows_start_oom_and_exit(cg: Env) -> None:
    f = cg.popen("events", "--follow", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert cg.run("run", "--name", "evx", "--memory", "64M", "--", *ALLOC).returncode == 137
        kinds: list[str] = []
        deadline = time.monotonic() + 10
        assert f.stdout is not None
        fd, buf = f.stdout.fileno(), b""   # raw fd: select() and a buffered reader do not mix
        while "exit" not in kinds and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                buf += os.read(fd, 65536)
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    ev = json.loads(ln)
                    assert ev["name"] == "evx"
                    kinds.append(ev["kind"])
        assert kinds == ["start", "oom_kill", "exit"]
    finally:
        f.terminate()
        f.wait(10)
        for p in (f.stdout, f.stderr):
            if p is not None:
                p.close()
    text = cg.run("events", "evx", check=True).stdout
    assert "oom_kill" in text and "exit_code=137" in text


def test_events_show_limit_changes(cg: Env) -> None:
    assert cg.run("run", "-d", "--name", "upd", "--cpus", "0.5", "--", "sleep", "1000").returncode == 0
    assert cg.run("update", "upd", "--cpus", "0.25").returncode == 0
    evs = [json.loads(ln) for ln in cg.run("events", "--json", "upd", check=True).stdout.splitlines()]
    assert [e["kind"] for e in evs] == ["start", "update"]
    assert evs[1]["resources"]["cpu_quota"] == 25000
    end(cg, "upd")


# cAdvisor series whose names promtool's lint rejects (a counter without `_total`)
CADVISOR_LINT_EXCEPTIONS = frozenset({"container_memory_failcnt"})


def test_exposition_passes_promtool_lint(cg: Env) -> None:
    assert cg.run("run", "-d", "--name", "lint", "--cpus", "0.5", "--memory", "64M", "--pids-limit", "20",
                  "--", "sleep", "1000").returncode == 0
    with agent(cg, "--watch-cgroup", cg.parent, "--per-cpu") as srv:
        text = srv.text()
    s = parse(text)
    assert value(s, "container_memory_usage_bytes", name="lint") is not None
    assert value(s, "container_cpu_usage_seconds_total", name="lint", cpu="cpu00") is not None
    assert value(s, "container_cpu_usage_seconds_total", name="lint", cpu="total") is None   # never both
    # cAdvisor's names win over the lint where they disagree (dashboards query them as they are);
    # every other finding, and any on cgagent_*, fails
    assert [f for f in promtool_check_metrics(text) if f.split()[0] not in CADVISOR_LINT_EXCEPTIONS] == []
    end(cg, "lint")


def test_broken_web_config_is_one_line_and_nonzero(cg: Env, tmp_path: object) -> None:
    bad = os.path.join(str(tmp_path), "web.yml")
    with open(bad, "w") as f:
        f.write("tls_server_config:\n  cert_file: [oops\n")
    r = cg.run("serve", "--listen", "127.0.0.1:0", "--web.config.file", bad, timeout=30)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("cgagent: error:"), r.stderr
