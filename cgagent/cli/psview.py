"""`ps` output for scripts and people: -q, --filter, --format, --json or a table. The rows come from
cgagent.api.views.ps_rows (direct path) or the agent's /v1/ps (thin client): both print here.
No typer and no runtime here: the thin client imports it."""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Any

from cgagent.errors import CgagentError

COLS = ["name", "status", "pid", "cpus", "memory", "pids_limit", "oom_kills", "exit_code", "created", "command"]
STATUSES = ("created", "running", "paused", "restarting", "exited", "damaged", "orphaned")
_FILTER_FIX = "use --filter name=PART, status=running|exited|paused|... or label=KEY[=VALUE] (repeatable)"


def parse_filters(specs: list[str]) -> dict[str, list[str]]:
    """["name=web", "status=running", ...] -> values by key; a bad one is the user's error, before anything prints."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or key not in ("name", "status", "label") or not value:
            raise CgagentError(f"--filter {spec!r} is not a filter", _FILTER_FIX)
        if key == "status" and value not in STATUSES:
            raise CgagentError(f"--filter {spec!r}: no workload has status {value!r}",
                               f"use one of {', '.join(STATUSES)}")
        out.setdefault(key, []).append(value)
    return out


def matches(row: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    """As docker ps: values of one key are alternatives (name, status), except labels, which must all
    match; different keys must all match. name matches a part of the name."""
    if "name" in filters and not any(v in str(row.get("name", "")) for v in filters["name"]):
        return False
    if "status" in filters and row.get("status") not in filters["status"]:
        return False
    labels = row.get("labels") or {}
    for want in filters.get("label", []):
        key, eq, value = want.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def template_data(row: dict[str, Any]) -> dict[str, Any]:
    """The row under Go-style names as well ({{.Name}}, {{.PidsLimit}}) and its own ({{.pids_limit}})."""
    camel = {"".join(w.capitalize() for w in k.split("_")): v for k, v in row.items()}
    return {**camel, **row}


def show(rows: list[dict[str, Any]], *, quiet: bool = False, filters: list[str] | None = None,
         fmt: str | None = None, as_json: bool = False) -> None:
    from cgagent.cli.gotemplate import render

    if sum((quiet, fmt is not None, as_json)) > 1:
        raise CgagentError("-q, --format and --json each choose the output", "give only one of them")
    want = parse_filters(filters or [])
    rows = [r for r in rows if matches(r, want)]
    if quiet:
        lines = [str(r["name"]) for r in rows]
    elif fmt is not None:
        what = "ps --json's rows, e.g. --format '{{.Name}} {{.Status}} {{.Pid}}'"
        lines = [render(fmt, template_data(r), what) for r in rows]   # all first: a bad template prints nothing
    elif as_json:
        lines = [json.dumps(rows, indent=1)]
    else:
        from cgagent.cli.views import print_table

        print_table([_human(r) for r in rows], COLS)
        return
    for line in lines:
        print(line)


def _human(row: dict[str, Any]) -> dict[str, Any]:
    """--json's machine units as a person reads them: 0.5, 64.0MiB, local time."""
    from cgagent.units import format_bytes

    d = dict(row)
    if isinstance(row.get("cpus"), (int, float)):
        d["cpus"] = f"{row['cpus']:g}"
    if isinstance(row.get("memory"), int):
        d["memory"] = format_bytes(row["memory"])
    created = row.get("created")
    if isinstance(created, str) and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", created):
        t = calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
        d["created"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return d
