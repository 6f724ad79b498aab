"""Panel shapes the dashboards use: one look per kind (graph, stat, top-N bars), so both dashboards
read alike."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common as cm

from grafana.common import DATASOURCE, LEGEND, RATIO_THRESHOLDS, query, thresholds

Target = tuple[str, str]   # (expr, legend)


def legend() -> cb.VizLegendOptions:
    return (cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE).placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True).calcs(["mean", "max", "lastNotNull"]))


def tooltip() -> cb.VizTooltipOptions:
    return cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)


def graph(title: str, help_text: str, targets: list[Target], unit: str, span: int = 12,
          bars: bool = False, height: int = 8) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(help_text).datasource(DATASOURCE).unit(unit)
         .height(height).span(span).legend(legend()).tooltip(tooltip()))
    for i, (expr, leg) in enumerate(targets):
        p = p.with_target(query(expr, leg, ref=chr(ord("A") + i)))
    if bars:
        return p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80)
    return p.fill_opacity(10)


def big(title: str, help_text: str, targets: list[Target], unit: str = "none", span: int = 6,
        height: int = 5) -> stat.Panel:
    p = (stat.Panel().title(title).description(help_text).datasource(DATASOURCE).unit(unit)
         .graph_mode(cm.BigValueGraphMode.NONE).color_mode(cm.BigValueColorMode.VALUE)
         .text_mode(cm.BigValueTextMode.VALUE_AND_NAME).height(height).span(span)
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    for i, (expr, leg) in enumerate(targets):
        p = p.with_target(query(expr, leg, ref=chr(ord("A") + i), instant=True))
    return p


def top(title: str, help_text: str, expr: str, span: int = 12) -> bargauge.Panel:
    """A ranked list of ratios (0..1), largest first."""
    return (bargauge.Panel().title(title).description(help_text).datasource(DATASOURCE)
            .with_target(query(expr, LEGEND, instant=True))
            .unit("percentunit").min(0).max(1).thresholds(thresholds(*RATIO_THRESHOLDS))
            .display_mode(cm.BarGaugeDisplayMode.GRADIENT).orientation(cm.VizOrientation.HORIZONTAL)
            .show_unfilled(True).height(9).span(span)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
