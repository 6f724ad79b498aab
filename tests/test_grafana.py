"""The committed Grafana dashboards are exactly what grafana/generate.py produces, and they fit the
provisioning files shipped beside them. (That every query returns data from a real Prometheus
scraping a real agent is tests/test_dashboards_live.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

GRAFANA = os.path.join(ROOT, "grafana")
DASHBOARDS = os.path.join(GRAFANA, "dashboards")
pytest.importorskip("grafana_foundation_sdk", reason="dev dependency: pip install -e '.[dev]'")


def _committed() -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(DASHBOARDS)):
        if name.endswith(".json"):
            with open(os.path.join(DASHBOARDS, name), "rb") as f:
                out[name] = f.read()
    return out


def _load(name: str) -> dict[str, Any]:
    with open(os.path.join(DASHBOARDS, name)) as f:
        d: dict[str, Any] = json.load(f)
    return d


def test_regenerating_gives_the_committed_json_byte_for_byte(tmp_path: Any) -> None:
    # run as users do (`python -m grafana.generate`), into a scratch directory
    r = subprocess.run([sys.executable, "-m", "grafana.generate", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    fresh = {n: open(os.path.join(tmp_path, n), "rb").read() for n in sorted(os.listdir(tmp_path))}
    committed = _committed()
    assert sorted(fresh) == sorted(committed) == ["cgagent-fleet.json", "cgagent-workload.json"]
    for name, data in fresh.items():
        assert data == committed[name], f"{name} is stale: run `python -m grafana.generate` and commit it"


def _targets(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in d["panels"] for t in p.get("targets", [])]


def test_every_query_uses_the_datasource_variable_and_imports_anywhere() -> None:
    # no fixed uid: the `datasource` variable (type prometheus) selects it, and __inputs makes Grafana's
    # import dialog ask for one (its answer replaces ${DS_PROMETHEUS})
    with open(os.path.join(GRAFANA, "provisioning", "datasources", "cgagent.yaml")) as f:
        prov = yaml.safe_load(f)
    assert prov["apiVersion"] == 1
    [ds] = prov["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy" and ds["url"].startswith("http")
    for name in _committed():
        d = _load(name)
        [var] = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
        assert (var["name"], var["query"], var["current"]["value"]) == ("datasource", "prometheus", "${DS_PROMETHEUS}")
        assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
        assert d["__inputs"][0]["type"] == "datasource" and d["__inputs"][0]["pluginId"] == "prometheus"
        refs = [p["datasource"] for p in d["panels"] if p["type"] != "row"]
        refs += [t["datasource"] for t in _targets(d)]
        refs += [a["datasource"] for a in d["annotations"]["list"]]
        refs += [v["datasource"] for v in d["templating"]["list"] if v["type"] != "datasource"]
        assert refs and all(r == {"type": "prometheus", "uid": "${datasource}"} for r in refs), name
        assert ds["uid"] not in json.dumps(d), f"{name} names the provisioned datasource's uid"


def test_dashboard_provider_loads_json_files_from_a_directory() -> None:
    with open(os.path.join(GRAFANA, "provisioning", "dashboards", "cgagent.yaml")) as f:
        prov = yaml.safe_load(f)
    assert prov["apiVersion"] == 1
    [p] = prov["providers"]
    assert p["type"] == "file" and os.path.isabs(p["options"]["path"])


def test_dashboards_have_the_required_shape() -> None:
    fleet, detail = _load("cgagent-fleet.json"), _load("cgagent-workload.json")
    for d in (fleet, detail):
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)) and 0 not in ids, "Grafana needs unique panel ids"
        assert [v["name"] for v in d["templating"]["list"]] == ["datasource", "job", "instance", "workload"]
        [oom] = d["annotations"]["list"]
        assert "container_oom_events_total" in oom["expr"] and oom["titleFormat"]
        assert all(t["expr"] and t["refId"] for t in _targets(d))
    titles = {p["title"] for p in fleet["panels"]}
    assert {"Most throttled workloads", "Memory nearest its limit", "Workloads by state", "OOM kills"} <= titles
    titles = {p["title"] for p in detail["panels"]}
    assert {"CPU use vs limit", "Throttled %", "Memory vs limit", "OOM kills", "CPU pressure"} <= titles
    exprs = " ".join(t["expr"] for t in _targets(detail))
    for metric in ("container_spec_cpu_quota", "container_spec_memory_limit_bytes",
                   "container_memory_working_set_bytes", "container_pressure_memory_waiting_seconds_total"):
        assert metric in exprs
