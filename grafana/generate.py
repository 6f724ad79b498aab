"""Write the dashboards as JSON: `python -m grafana.generate [OUT_DIR]` (default grafana/dashboards).

The output is deterministic (sorted keys, fixed indentation, trailing newline) so that the committed
files can be compared byte for byte with a fresh generation (tests/test_grafana.py)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from grafana import fleet, workload
from grafana.common import DATASOURCE_INPUT, annotation_extras

DASHBOARDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "cgagent-fleet.json": fleet.build,
    "cgagent-workload.json": workload.build,
}


# What Grafana's "Export for sharing externally" adds: the import dialog asks for a Prometheus datasource
# and substitutes it for ${DS_PROMETHEUS} (the datasource variable's initial value).
IMPORT_INPUTS = [{"name": DATASOURCE_INPUT, "label": "Prometheus", "description": "Prometheus that scrapes cgagent",
                  "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
IMPORT_REQUIRES = [{"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}]


def render(build: Callable[[], dash.Dashboard]) -> str:
    model: dict[str, Any] = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    # The SDK leaves panel ids unset (rows get 0); Grafana needs them unique within a dashboard.
    for i, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = i
    for a in model.get("annotations", {}).get("list", []):
        if a.get("expr"):
            a.update(annotation_extras())
    model["__inputs"] = IMPORT_INPUTS
    model["__requires"] = IMPORT_REQUIRES
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate(out_dir: str = DASHBOARDS_DIR) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, build in DASHBOARDS.items():
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(build))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    for path in generate(argv[0] if argv else DASHBOARDS_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
