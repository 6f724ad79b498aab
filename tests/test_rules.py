"""The Prometheus rules pass `promtool check rules` and their unit tests (`promtool test rules`,
tests/promtool/*.yml: throttling only with use near the limit, OOM kills including a counter born
at 1, memory near its limit), and the example scrape configs pass `promtool check config`."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.prom import PROMTOOL

PROM_DIR = os.path.join(ROOT, "deploy", "prometheus")
RULES = os.path.join(PROM_DIR, "cgagent.rules.yml")
UNIT_TESTS = sorted(glob.glob(os.path.join(ROOT, "tests", "promtool", "*.yml")))


def _promtool(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_promtool_check_rules() -> None:
    r = _promtool("check", "rules", RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 8 rules found" in r.stdout


def test_rules_have_the_promised_alerts_with_runbooks() -> None:
    with open(RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert set(alerts) == {"CgagentCPUThrottlingHigh", "CgagentOOMKill", "CgagentMemoryNearLimit"}
    for name, rule in alerts.items():
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        assert f"RUNBOOK.md#{name.lower()}" in ann["runbook"], name
    # the noise cut: throttling alone is not enough, use near the limit is required too
    throttling = alerts["CgagentCPUThrottlingHigh"]["expr"]
    assert "throttled_periods" in throttling and "\nand\n" in throttling and "ratio_limit" in throttling
    assert "increase(container_oom_events_total" in alerts["CgagentOOMKill"]["expr"]
    with open(os.path.join(PROM_DIR, "RUNBOOK.md")) as f:
        runbook = f.read().lower()
    for name in alerts:
        assert f"## {name.lower()}" in runbook, f"RUNBOOK.md has no section for {name}"


@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=os.path.basename)
def test_promtool_unit_tests(unit_test: str) -> None:
    # rule_files in the test file are relative to it
    r = _promtool("test", "rules", os.path.basename(unit_test), cwd=os.path.dirname(unit_test))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_unit_tests_exist() -> None:
    assert UNIT_TESTS, "no promtool unit tests under tests/promtool"


@pytest.mark.parametrize("config", ["prometheus-static.yml", "prometheus-file-sd.yml"])
def test_example_scrape_configs_are_valid(config: str) -> None:
    r = _promtool("check", "config", config, cwd=PROM_DIR)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout


def test_file_sd_targets_are_valid() -> None:
    with open(os.path.join(PROM_DIR, "targets", "cgagent.yml")) as f:
        groups = yaml.safe_load(f)
    assert groups and all(g["targets"] and all(":" in t for t in g["targets"]) for g in groups)
    assert all(isinstance(v, str) for g in groups for v in g.get("labels", {}).values())


def test_kubernetes_scrape_config_is_valid() -> None:
    r = _promtool("check", "config", "prometheus-kubernetes.yml", cwd=PROM_DIR)
    if "field kubernetes_sd_configs not found" in r.stdout + r.stderr:
        pytest.skip("this promtool was built without Kubernetes service discovery (Debian's prometheus "
                    "package drops it); the config is checked where promtool has it")
    assert r.returncode == 0, r.stdout + r.stderr


JOB = "cadvisor"   # the job name the README's scrape config and deploy/prometheus/*.yml set (cAdvisor's)
GUARD = f'and on (job, instance) cgagent_build_info{{job="{JOB}"}}'


def test_every_selector_names_our_job_and_every_rule_keeps_only_cgagent_targets() -> None:
    # a Prometheus that also scrapes cAdvisor/kubelets has the same series names under other jobs, or
    # (a standalone cAdvisor kept beside us) under ours: only targets exporting cgagent_build_info count
    import re

    with open(RULES) as f:
        exprs = [r["expr"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
    raw = [(m.group(1), m.group(2) or "") for e in exprs
           for m in re.finditer(r"(?<![\w:])(container_\w+|up|cgagent_build_info)\b(\{[^}]*\})?", e)]
    assert raw
    assert [name for name, sel in raw if f'job="{JOB}"' not in sel] == []
    reading_raw = [e for e in exprs if re.search(r"(?<![\w:])container_\w+", e)]
    assert reading_raw and [e for e in reading_raw if " ".join(e.split()).count(GUARD) != 1] == []


def test_scrape_configs_and_readme_use_the_rules_job() -> None:
    for config in ("prometheus-static.yml", "prometheus-file-sd.yml", "prometheus-kubernetes.yml"):
        with open(os.path.join(PROM_DIR, config)) as f:
            assert [j["job_name"] for j in yaml.safe_load(f)["scrape_configs"]] == [JOB], config
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert f"job_name: {JOB}" in readme and f"cadvisorSelector: 'job=\"{JOB}\"'" in readme
