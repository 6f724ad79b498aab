"""Workload detail: one workload (or a few) against its limits: CPU use vs quota, throttling, memory
and working set vs the limit, OOM kills and pressure stall information."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import dashboard as model

from grafana.common import (
    BY,
    CPU_LIMIT,
    LEGEND,
    MEMORY_RATIO,
    RATIO_THRESHOLDS,
    TAGS,
    WORKLOAD,
    WORKLOAD_UID,
    cpu_used,
    oom_annotation,
    thresholds,
    throttled_ratio,
    variables,
)
from grafana.panels import big, graph

RATE = "[$__rate_interval]"


def _rate(metric: str, extra: str = "") -> str:
    return f"sum by ({BY}) (rate({metric}{{{extra}{WORKLOAD}}}{RATE}))"


def _gauge(metric: str) -> str:
    return f"sum by ({BY}) ({metric}{{{WORKLOAD}}})"


def build() -> dash.Dashboard:
    d = (dash.Dashboard("cgagent / Workload").uid(WORKLOAD_UID).tags(TAGS).editable()
         .description("One workload against its limits: CPU, throttling, memory, OOM kills, pressure.")
         .time("now-1h", "now").refresh("30s").tooltip(model.DashboardCursorSync.TOOLTIP)
         .annotation(oom_annotation())
         .link(dash.DashboardLink("cgagent dashboards").type(model.DashboardLinkType.DASHBOARDS).tags(TAGS)
               .as_dropdown(True).include_vars(True).keep_time(True)))
    for v in variables():
        d = d.with_variable(v)

    d = d.with_row(dash.Row("CPU"))
    d = d.with_panel(graph("CPU use vs limit", "Cores used, and the limit (CFS quota / period; absent when "
                           "unlimited).",
                           [(cpu_used("$__rate_interval"), "{{name}} used ({{instance}})"),
                            (CPU_LIMIT, "{{name}} limit ({{instance}})")], "short", span=12))
    d = d.with_panel(graph("Throttled %", "Share of CFS periods in which the workload used up its quota.",
                           [(throttled_ratio("$__rate_interval"), LEGEND)], "percentunit", span=6))
    d = d.with_panel(graph("Throttled time", "Time the workload's threads spent waiting for the next CFS period, "
                           "per second.",
                           [(_rate("container_cpu_cfs_throttled_seconds_total"), LEGEND)], "s", span=6))
    d = d.with_panel(graph("User and system CPU", "Cores used in user and in kernel mode.",
                           [(_rate("container_cpu_user_seconds_total"), "{{name}} user ({{instance}})"),
                            (_rate("container_cpu_system_seconds_total"), "{{name}} system ({{instance}})")],
                           "short", span=12))
    d = d.with_panel(graph("Threads", "Tasks in the cgroup, and its pids limit.",
                           [(_gauge("container_threads"), "{{name}} threads ({{instance}})"),
                            (_gauge("container_threads_max"), "{{name}} limit ({{instance}})")], "none", span=12))

    d = d.with_row(dash.Row("Memory"))
    d = d.with_panel(graph("Memory vs limit", "Usage (all charged memory), working set (usage minus inactive "
                           "page cache: what the OOM killer looks at), RSS, page cache, peak, and the limit.",
                           [(_gauge("container_memory_usage_bytes"), "{{name}} usage ({{instance}})"),
                            (_gauge("container_memory_working_set_bytes"), "{{name}} working set ({{instance}})"),
                            (_gauge("container_memory_rss"), "{{name}} rss ({{instance}})"),
                            (_gauge("container_memory_cache"), "{{name}} cache ({{instance}})"),
                            (_gauge("container_memory_max_usage_bytes"), "{{name}} peak ({{instance}})"),
                            (_gauge("container_spec_memory_limit_bytes"), "{{name}} limit ({{instance}})")],
                           "bytes", span=16, height=9))
    d = d.with_panel(big("Working set / limit", "Working set as a share of the memory limit, now.",
                         [(MEMORY_RATIO, LEGEND)], unit="percentunit", span=8, height=9)
                     .min(0).max(1).thresholds(thresholds(*RATIO_THRESHOLDS)))
    d = d.with_panel(graph("OOM kills", "Processes killed by the OOM killer per interval (also marked on every "
                           "graph).",
                           [(f"sum by ({BY}) (increase(container_oom_events_total{{{WORKLOAD}}}{RATE}))", LEGEND)],
                           "none", span=8, bars=True))
    d = d.with_panel(big("OOM kills, all time", "Kept per workload name across agent restarts and `cgagent rm`.",
                         [(f"max by ({BY}) (container_oom_events_total{{{WORKLOAD}}})", LEGEND)], span=8, height=8))
    d = d.with_panel(graph("Memory limit hits", "Times usage reached the limit per second (v1 memory.failcnt, "
                           "v2 memory.events max): reclaim ran, an OOM kill may follow.",
                           [(_rate("container_memory_failcnt"), LEGEND)], "none", span=8))

    d = d.with_row(dash.Row("Pressure (PSI, cgroup v2)"))
    for res in ("cpu", "memory", "io"):
        d = d.with_panel(graph(f"{res.upper() if res != 'memory' else 'Memory'} pressure",
                               f"Share of time some tasks waited for {res} (some) and all tasks stalled (full). "
                               "cgroup v2 only.",
                               [(_rate(f"container_pressure_{res}_waiting_seconds_total"),
                                 "{{name}} some ({{instance}})"),
                                (_rate(f"container_pressure_{res}_stalled_seconds_total"),
                                 "{{name}} full ({{instance}})")], "percentunit", span=8))
    return d
