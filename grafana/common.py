"""What both dashboards share: the datasource variable, the variables, the OOM-kill annotation
and small panel helpers. Every PromQL expression is a plain string here so that the live test
(tests/test_dashboards_live.py) can evaluate exactly what Grafana would send."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.models import dashboard as model

# Every panel, target, annotation and variable queries the datasource the `datasource` variable selects,
# never a fixed uid: the dashboards import into any Grafana (the import dialog asks for DS_PROMETHEUS, see
# generate.IMPORT_INPUTS) and, provisioned, they pick the default or first Prometheus datasource, which the
# user can switch at the top of the dashboard.
DATASOURCE_VARIABLE = "datasource"
DATASOURCE_INPUT = "DS_PROMETHEUS"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")

FLEET_UID = "cgagent-fleet"
WORKLOAD_UID = "cgagent-workload"
TAGS = ["cgagent"]

# Label matchers every workload query carries. `name` is the workload (or the last component of a
# watched cgroup's path); `instance` is the agent's scrape address.
HOST = 'job=~"$job", instance=~"$instance"'
WORKLOAD = f'{HOST}, name=~"$workload"'
BY = "instance, name"


def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def _label_variable(name: str, label: str, query_text: str, help_text: str) -> dash.QueryVariable:
    # All = ".+": a regex that also matches values which appear after the dashboard was loaded.
    return (dash.QueryVariable(name).label(label).description(help_text).datasource(DATASOURCE)
            .query(query_text).refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
            .multi(True).include_all(True).all_value(".+")
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"])))


def datasource_variable() -> dash.DatasourceVariable:
    # on import, Grafana replaces ${DS_PROMETHEUS} with the datasource picked in the dialog; provisioned
    # (no import step), the value matches no datasource and Grafana falls back to the default one
    chosen = f"${{{DATASOURCE_INPUT}}}"
    return (dash.DatasourceVariable(DATASOURCE_VARIABLE).label("Data source").type("prometheus")
            .description("Prometheus that scrapes cgagent.")
            .current(model.VariableOption(selected=True, text=chosen, value=chosen)))


def variables() -> list[dash.QueryVariable | dash.DatasourceVariable]:
    return [
        datasource_variable(),
        _label_variable("job", "Job", "label_values(cgagent_build_info, job)",
                        "Prometheus job(s) scraping cgagent."),
        _label_variable("instance", "Instance", 'label_values(cgagent_build_info{job=~"$job"}, instance)',
                        "Agents (scrape addresses): one per host."),
        _label_variable("workload", "Workload",
                        f'label_values(container_cpu_usage_seconds_total{{{HOST}}}, name)',
                        "Workloads by name (watched cgroups: the last component of their path)."),
    ]


# Counted per workload name, kept across agent restarts and `cgagent rm`: an increase is a kill.
OOM_ANNOTATION_EXPR = (f"sum by ({BY}) (increase(container_oom_events_total{{{WORKLOAD}}}[$__rate_interval]))"
                       " > 0")


def oom_annotation() -> dash.AnnotationQuery:
    return (dash.AnnotationQuery().name("OOM kills").datasource(DATASOURCE).enable(True)
            .icon_color("red").expr(OOM_ANNOTATION_EXPR))


def annotation_extras() -> dict[str, object]:
    """Fields of a Prometheus annotation the SDK's model has no setter for (Grafana reads them from
    the annotation object): how each event is titled and tagged. The step is fixed because not every
    Grafana version expands variables in it; one minute matches $__rate_interval at a 15 s scrape."""
    return {"step": "60s", "titleFormat": "OOM kill: {{name}}",
            "textFormat": "{{instance}}: {{name}} had a process killed by the OOM killer",
            "tagKeys": "instance,name", "useValueForTime": False}


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=v, color=c) for v, c in steps]))


RATIO_THRESHOLDS = ((None, "green"), (0.5, "yellow"), (0.8, "red"))


# --- expressions both dashboards plot

def throttled_ratio(window: str) -> str:
    """Share of CFS periods in which the workload hit its quota (kubernetes-mixin's throttling ratio)."""
    return (f"sum by ({BY}) (rate(container_cpu_cfs_throttled_periods_total{{{WORKLOAD}}}[{window}]))"
            f" / sum by ({BY}) (rate(container_cpu_cfs_periods_total{{{WORKLOAD}}}[{window}]))")


def cpu_used(window: str) -> str:
    """CPU cores in use: the sum over `cpu`, the total or --per-cpu's series (never both, as cAdvisor)."""
    return f'sum by ({BY}) (rate(container_cpu_usage_seconds_total{{{WORKLOAD}}}[{window}]))'


# CPU limit in cores: CFS quota / period (both µs). Unlimited quota (absent or 0): no series.
CPU_LIMIT = (f"sum by ({BY}) ((container_spec_cpu_quota{{{WORKLOAD}}} > 0)"
             f" / container_spec_cpu_period{{{WORKLOAD}}})")

# Working set over the memory limit. Unlimited memory (limit absent or 0): no series, never +Inf.
MEMORY_RATIO = (f"sum by ({BY}) (container_memory_working_set_bytes{{{WORKLOAD}}})"
                f" / sum by ({BY}) (container_spec_memory_limit_bytes{{{WORKLOAD}}} > 0)")

LEGEND = "{{name}} ({{instance}})"
