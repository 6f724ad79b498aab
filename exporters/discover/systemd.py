"""systemd units: a service or scope is a workload named by its unit (`system.slice/foo.service` ->
`foo.service`); a slice only groups others. A unit with cgroups below it (user@.service's app.slice,
a delegated service's own tree) is a parent: its children carry the `container` label instead, so
sum(...{container!=""}) counts each CPU second once."""

from __future__ import annotations

from exporters.discover.meta import CONTAINER, NOT_A_CONTAINER, Meta

WORKLOAD_UNITS = (".service", ".scope")


def meta(last: str, leaf: bool) -> Meta | None:
    if last.endswith(".slice"):
        return Meta(last, container=NOT_A_CONTAINER)
    if last.endswith(WORKLOAD_UNITS):
        return Meta(last, container=CONTAINER if leaf else NOT_A_CONTAINER)
    return None
