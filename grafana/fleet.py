"""Fleet overview: which workloads, on which hosts, are throttled the most and closest to their memory
limit, OOM kills (also as annotations on every graph), and how many workloads are in each state."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import dashboard as model

from grafana.common import (
    BY,
    CPU_LIMIT,
    FLEET_UID,
    HOST,
    LEGEND,
    MEMORY_RATIO,
    TAGS,
    WORKLOAD,
    cpu_used,
    oom_annotation,
    throttled_ratio,
    variables,
)
from grafana.panels import big, graph, top

TOP = 10


def build() -> dash.Dashboard:
    d = (dash.Dashboard("cgagent / Fleet").uid(FLEET_UID).tags(TAGS).editable()
         .description("Every workload cgagent exports, across hosts: throttling, memory headroom, OOM kills.")
         .time("now-6h", "now").refresh("30s").tooltip(model.DashboardCursorSync.CROSSHAIR)
         .annotation(oom_annotation())
         .link(dash.DashboardLink("cgagent dashboards").type(model.DashboardLinkType.DASHBOARDS).tags(TAGS)
               .as_dropdown(True).include_vars(True).keep_time(True)))
    for v in variables():
        d = d.with_variable(v)

    d = d.with_row(dash.Row("Fleet"))
    d = d.with_panel(big("Workloads by state", "Workloads in the agents' state directories.",
                         [(f"sum by (state) (cgagent_workloads{{{HOST}}})", "{{state}}")], span=9))
    d = d.with_panel(big("Agents up", "Scrape targets answering, of all targets of the selected jobs.",
                         [(f"sum(up{{{HOST}}})", "up"), (f"count(up{{{HOST}}})", "targets")], span=5))
    d = d.with_panel(big("OOM kills in range", "Processes the OOM killer killed in the selected time range.",
                         [(f"sum(increase(container_oom_events_total{{{WORKLOAD}}}[$__range]))", "OOM kills")],
                         span=5))
    d = d.with_panel(big("Scrape errors in range", "cgroup reads that failed during scrapes (a cgroup removed "
                         "mid-read counts here).",
                         [(f"sum(increase(cgagent_scrape_errors_total{{{HOST}}}[$__range]))", "errors")], span=5))

    d = d.with_row(dash.Row("CPU"))
    d = d.with_panel(top("Most throttled workloads",
                         "Share of CFS periods in the time range in which the workload used up its quota "
                         "and had to wait for the next period.",
                         f"sort_desc(topk({TOP}, {throttled_ratio('$__range')}))"))
    d = d.with_panel(top("CPU use against its limit",
                         "Average CPU use over the time range as a share of the CPU limit (quota / period). "
                         "Workloads without a CPU limit are not listed.",
                         f"sort_desc(topk({TOP}, {cpu_used('$__range')} / {CPU_LIMIT}))"))
    d = d.with_panel(graph("Throttled share of CFS periods",
                           "Throttling over time, for the workloads throttled the most at each point.",
                           [(f"topk({TOP}, {throttled_ratio('$__rate_interval')})", LEGEND)], "percentunit"))
    d = d.with_panel(graph("CPU use", "CPU cores used per workload.",
                           [(cpu_used("$__rate_interval"), LEGEND)], "short"))

    d = d.with_panel(graph("Policy actions", "What the policy controller did (CPU quota and memory limit steps, "
                           "OOM stops) per interval, by policy and action.",
                           [(f"sum by (instance, policy, action) (increase(cgagent_policy_actions_total{{{HOST}}}"
                             "[$__rate_interval]))", "{{policy}} {{action}} ({{instance}})")],
                           "none", span=24, bars=True))

    d = d.with_row(dash.Row("Memory"))
    d = d.with_panel(top("Memory nearest its limit",
                         "Working set (usage minus inactive page cache) as a share of the memory limit, now. "
                         "Workloads without a memory limit are not listed.",
                         f"sort_desc(topk({TOP}, {MEMORY_RATIO}))"))
    d = d.with_panel(graph("OOM kills", "Processes killed by the OOM killer per interval.",
                           [(f"sum by ({BY}) (increase(container_oom_events_total{{{WORKLOAD}}}"
                             "[$__rate_interval]))", LEGEND)], "none", bars=True, height=9))
    d = d.with_panel(graph("Working set", "Working set per workload.",
                           [(f"sum by ({BY}) (container_memory_working_set_bytes{{{WORKLOAD}}})", LEGEND)],
                           "bytes", span=24))
    return d
