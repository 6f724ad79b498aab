"""Acceptance: every PromQL expression in the shipped Grafana dashboards and Prometheus rules returns
data from a real Prometheus (rules loaded) scraping a real `cgagent serve` that watches a throttled
workload, an OOM-killed one and one whose policy raises its CPU quota. Real kernel, real cgroups (the
`cg` fixture), real Prometheus.

Dashboard expressions are evaluated as Grafana would send them, under two selections of the template
variables: everything (the default "All") and concrete values (this agent's instance, the three
workloads). Alert expressions are evaluated with their thresholds turned into `bool` comparisons
(so a healthy workload still returns a 0 sample), and as written for the alerts this scene must
trigger; Prometheus' own alert state is checked too.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from typing import Any

import yaml

from cgagent import host as hostmod
from tests.conftest import ROOT, Env
from tests.exporter_helpers import agent, end, parse
from tests.prom import JOB, PromServer

RULES = os.path.join(ROOT, "deploy", "prometheus", "cgagent.rules.yml")
DASHBOARDS = sorted(glob.glob(os.path.join(ROOT, "grafana", "dashboards", "*.json")))

# Two spinning processes: they use up a 0.2-CPU quota in half a period even when other load on the
# machine slows each of them down, so throttling and use-near-the-limit hold under contention too.
BUSY = ["sh", "-c", "while :; do :; done & while :; do :; done"]
# A policy whose throttling response acts within seconds and stops at 0.4 CPU (the built-ins wait
# longer or climb to 4 CPUs, which would load the machine the other workloads are measured on).
STEPPER = """name: stepper
description: 0.2 CPU, a tenth more after 1 s of throttling, up to 0.4.
limits:
  cpus: 0.2
restart: "no"
throttling:
  threshold: 0.05
  for: 1s
  step: 0.1
  ceiling: 0.4
  idle_for: 5m
  idle_usage: 0.05
"""
# Blocks on a fifo until the test has seen its OOM counter scraped at 0, then touches 200 MiB under
# a 64 MiB limit: the kernel's OOM killer ends it (exit 137). Without the gate the kill can happen
# before the first scrape, and a counter born at 1 has no increase for increase() to see.
GATED_ALLOC = ["sh", "-c", 'read _ < "$0" && exec python3 -c "b = b\'x\' * (200 << 20)"']

# Grafana's built-in intervals, as it would fill them for a 1-hour view of a 1-second scrape.
BUILTINS = {"__rate_interval": "2m", "__interval": "15s", "__range": "1h"}
PSI = "container_pressure_"


# --- walking the files

def dashboard_exprs(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every query of a dashboard: panel targets (rows included), annotations and
    template variables."""
    out: list[tuple[str, str]] = []

    def panels(ps: list[dict[str, Any]]) -> None:
        for p in ps:
            panels(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))

    panels(d.get("panels", []))
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f"annotation {a['name']!r}", a["expr"]))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
            out.append((f"variable ${v['name']}", q))
    return out


def rules() -> list[dict[str, Any]]:
    with open(RULES) as f:
        return [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $name and ${name} (longest names first, so $__range_ms would not eat $__range)."""
    for k in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + k + "}", values[k]).replace("$" + k, values[k])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.+),\s*(?P<label>[a-zA-Z_]\w*)\s*\)\s*$", re.S)


def as_promql(expr: str) -> tuple[str, str | None]:
    """Grafana's label_values(series, label) is the series query plus a label to read."""
    m = LABEL_VALUES.match(expr)
    return (m.group("expr"), m.group("label")) if m else (expr, None)


COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)")


def without_thresholds(expr: str) -> str:
    """Every comparison outside label matchers and strings becomes a `bool` comparison, so series
    below a threshold come back as 0 instead of being dropped."""
    out: list[str] = []
    depth, quote, i = 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
            out.append(c)
        elif c == "{":
            depth += 1
            out.append(c)
        elif c == "}":
            depth -= 1
            out.append(c)
        elif depth == 0 and (m := COMPARISON.match(expr, i)):
            op = m.group(1)
            out.append(op)
            i += len(op)
            if not re.match(r"\s*bool\b", expr[i:]):
                out.append(" bool")
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def test_without_thresholds_keeps_matchers_and_marks_every_comparison() -> None:
    assert (without_thresholds('a{x!="1", y=~"a>b"} > 0.9 and b < 2 or c == bool 1')
            == 'a{x!="1", y=~"a>b"} > bool 0.9 and b < bool 2 or c == bool 1')
    assert without_thresholds("(x offset 10m == 1)") == "(x offset 10m == bool 1)"


def test_substitute_and_label_values() -> None:
    assert substitute('rate(x{a=~"$a"}[$__rate_interval]) ${a}', {"a": "1", "__rate_interval": "2m"}) \
        == 'rate(x{a=~"1"}[2m]) 1'
    assert as_promql('label_values(up{job=~"$job"}, instance)') == ('up{job=~"$job"}', "instance")
    assert as_promql("sum(up)") == ("sum(up)", None)


# --- the scene

def _alert_states(prom: PromServer, alert: str) -> dict[str, str]:
    return {a["labels"].get("name", ""): a["state"] for a in prom.alerts() if a["labels"]["alertname"] == alert}


def test_every_dashboard_and_rule_expression_returns_data(cg: Env, prometheus: Any, tmp_path: Any) -> None:
    assert DASHBOARDS, "no dashboards under grafana/dashboards"
    cg.favour_cpu()   # on a loaded machine `busy` must still use its quota, or CgagentCPUThrottlingHigh cannot match
    r = cg.run("run", "-d", "--name", "busy", "--cpus", "0.2", "--memory", "256M", "--pids-limit", "64",
               "--", *BUSY)
    assert r.returncode == 0, r.stderr
    # a workload under a policy with a throttling response: the controller in `serve` raises its quota
    policy_dir = os.path.join(str(tmp_path), "policies.d")
    os.mkdir(policy_dir)
    with open(os.path.join(policy_dir, "stepper.yaml"), "w") as f:
        f.write(STEPPER)
    r = cg.run("run", "-d", "--name", "pol", "--policy", "stepper", "--policy-dir", policy_dir, "--", *BUSY)
    assert r.returncode == 0, r.stderr
    gate = os.path.join(str(tmp_path), "go")
    os.mkfifo(gate)
    oom = cg.popen("run", "--name", "oom", "--memory", "64M", "--", *GATED_ALLOC, gate,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with agent(cg, "--policy-dir", policy_dir) as a:
            prom: PromServer = prometheus([a.listen], rule_files=[RULES])
            # rate() over 5m divides by the whole window, so with under 5 minutes of data CPU
            # use-to-limit reads low: this second Prometheus evaluates the same rules with every window
            # scaled down 15x (5m -> 20s), to check what the alerts say about this scene.
            fast: PromServer = prometheus([a.listen], rule_files=[_scaled_rules(str(tmp_path))])
            prom.wait_target_health("up")
            # both workloads scraped, the OOM counter at 0, before the kill
            prom.wait_for('container_oom_events_total{name="oom"} == 0', timeout=60)
            prom.wait_for('container_cpu_cfs_throttled_periods_total{name="busy"} > 0', timeout=60)
            with open(gate, "w") as g:
                g.write("go\n")
            _out, err = oom.communicate(timeout=60)
            assert oom.returncode == 137, f"the OOM workload was not OOM-killed: rc {oom.returncode} {err}"
            prom.wait_for('container_oom_events_total{name="oom"} == 1', timeout=30)
            # the recording rules chain (usage -> ratio to limit) has been evaluated on data with rates
            prom.wait_for('workload:container_cpu_usage:ratio_limit_rate5m{name="busy"} > 0', timeout=60)
            prom.wait_for('ALERTS{alertname="CgagentOOMKill", name="oom", alertstate="firing"}', timeout=30)
            # two samples of the policy counter, or increase() has nothing to compare
            prom.wait_for('count_over_time(cgagent_policy_actions_total{policy="stepper", action="cpu_step_up"}'
                          '[5m]) >= 2', timeout=60)
            exposition = a.text()
            failures = _walk(prom, a.listen, exposition)
            assert not failures, "expressions without data:\n" + "\n".join(failures)
            assert all(r["health"] == "ok" for g in prom.rules() for r in g["rules"]), prom.rules()

            # `for: 15m` stays in the scaled rules: pending is as far as CPUThrottlingHigh gets here,
            # and shows that its expression matched the throttled workload (`pol`, throttled at its
            # policy's ceiling, may match too) and not the OOM-killed one.
            fast.wait_for('ALERTS{alertname="CgagentCPUThrottlingHigh", name="busy"}', timeout=90)
            states = _alert_states(fast, "CgagentCPUThrottlingHigh")
            assert states.get("busy") == "pending" and "oom" not in states, states
            assert _alert_states(prom, "CgagentOOMKill") == {"oom": "firing"}
            assert "busy" not in _alert_states(prom, "CgagentMemoryNearLimit")
            assert "busy" not in _alert_states(fast, "CgagentMemoryNearLimit")
    finally:
        if oom.poll() is None:
            oom.kill()
            oom.wait()
        for pipe in (oom.stdout, oom.stderr):
            if pipe is not None:
                pipe.close()
    end(cg, "busy")
    end(cg, "pol")
    assert cg.run("rm", "oom").returncode == 0


def test_psi_panels_return_data_from_a_cgroup_v2_tree(tmp_path: Any, prometheus: Any) -> None:
    """This machine is cgroup v1, where the kernel has no per-cgroup PSI and the PSI panels are empty
    (asserted above). Their queries are checked here against the exporter reading a cgroup v2 tree
    (tests/fixtures/v2, copied so the pressure totals can grow between scrapes), served over HTTP and
    scraped by a real Prometheus."""
    from exporters.registry import Exporter, Options
    from exporters.web import MetricsServer
    from tests.test_exporter_values import FIXTURE, v2_host, v2_store

    mount = tmp_path / "cgroup"
    shutil.copytree(FIXTURE, mount)
    store = v2_store(tmp_path / "state", mount)
    server = MetricsServer(Exporter(Options(host=v2_host(mount), state_dir=store.root, watch=["/system.slice"],
                                            process_metrics=False)), listen="127.0.0.1:0")
    server.start()
    try:
        prom: PromServer = prometheus([f"127.0.0.1:{server.port}"])
        first = prom.wait_for('container_pressure_cpu_waiting_seconds_total{name="web"}', timeout=30)
        for resource in ("cpu", "memory", "io"):   # more stall time, as a busy cgroup would report
            f = mount / "cgagent" / "web" / f"{resource}.pressure"
            f.write_text(re.sub(r"total=(\d+)", lambda m: f"total={int(m.group(1)) + 250000}", f.read_text()))
        prom.wait_for('container_pressure_cpu_waiting_seconds_total{name="web"}',
                      lambda r: bool(r) and r[0]["value"][1] != first[0]["value"][1], timeout=30)
        with open(os.path.join(ROOT, "grafana", "dashboards", "cgagent-workload.json")) as f:
            exprs = [(w, e) for w, e in dashboard_exprs(json.load(f)) if PSI in e]
        assert len(exprs) == 6
        sel = {**BUILTINS, "job": JOB, "instance": ".+", "workload": "web"}
        for where, raw in exprs:
            res = prom.query(substitute(raw, sel))
            assert res and float(res[0]["value"][1]) > 0, f"{where}: {res}"
    finally:
        server.shutdown()


def _scaled_rules(d: str) -> str:
    """The shipped rules with every range and offset 15x shorter, for a test that lasts a minute."""
    with open(RULES) as f:
        text = f.read()
    text = re.sub(r"\[(\d+)m\]", lambda m: f"[{int(m.group(1)) * 4}s]", text)
    text = re.sub(r"offset (\d+)m", lambda m: f"offset {int(m.group(1)) * 4}s", text)
    assert "[5m]" not in text and "offset 10m" not in text
    path = os.path.join(d, "cgagent-scaled.rules.yml")
    with open(path, "w") as f:
        f.write(text)
    return path


def _walk(prom: PromServer, instance: str, exposition: str) -> list[str]:
    v2 = hostmod.detect().is_v2
    has_psi = any(name.startswith(PSI) for name, _labels in parse(exposition))
    # cgroup v1 has no pressure files: the agent exports no PSI, and the PSI panels are empty by design
    assert has_psi == v2, f"PSI exported: {has_psi}, cgroup v2 host: {v2}"
    selections = {
        "all": {"job": ".+", "instance": ".+", "workload": ".+"},
        # as Grafana renders a multi-value selection for Prometheus: regex-escaped, joined with |
        "picked": {"job": JOB, "instance": re.sub(r"([.])", r"\\\\\1", instance),
                   "workload": "(busy|oom|pol)"},
    }
    failures: list[str] = []
    checked = 0
    for path in DASHBOARDS:
        with open(path) as f:
            d = json.load(f)
        for where, raw in dashboard_exprs(d):
            for sel_name, sel in selections.items():
                expr, label = as_promql(substitute(raw, {**BUILTINS, **sel}))
                res = prom.query(expr)
                checked += 1
                ctx = f"{os.path.basename(path)} {where} [{sel_name}]: {expr}"
                if PSI in expr and not v2:
                    if res:
                        failures.append(f"{ctx}: data on a cgroup v1 host?")
                    continue
                if not res:
                    failures.append(ctx)
                elif label and not any(s["metric"].get(label) for s in res):
                    failures.append(f"{ctx}: no series has label {label}")
    for rule in rules():
        expr = rule["expr"]
        name = rule.get("record") or rule["alert"]
        checked += 1
        if "record" in rule:
            if not prom.query(expr):
                failures.append(f"rule {name}: {expr}")
            continue
        if not prom.query(without_thresholds(expr)):
            failures.append(f"alert {name} without thresholds: {without_thresholds(expr)}")
        # As written, on this Prometheus: the OOM-killed workload trips OOMKill. CPU throttling is
        # checked on the scaled rules (see above); memory near its limit has no workload here (busy
        # uses ~0.1% of 256M, `oom` is gone): empty by design.
        res = prom.query(expr)
        if name == "CgagentOOMKill" and {s["metric"].get("name") for s in res} != {"oom"}:
            failures.append(f"alert {name} as written does not match only oom: {res}")
        if name == "CgagentMemoryNearLimit" and res:
            failures.append(f"alert {name} matches: {res}")
    assert checked > 40, f"only {checked} expressions walked"
    return failures
