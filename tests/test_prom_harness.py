"""The Prometheus harness itself: a real Prometheus scrapes a prometheus_client endpoint in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.prom import JOB, PromServer, promtool_check_metrics


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Counter]]:
    reg = CollectorRegistry()
    c = Counter("harness_probe", "Probe counter for the harness self-test", ["kind"], registry=reg)
    c.labels(kind="a").inc(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        yield f"127.0.0.1:{server.server_port}", c
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_prometheus_scrapes_inprocess_endpoint(prometheus: Callable[..., PromServer],
                                               endpoint: tuple[str, Counter]) -> None:
    target, counter = endpoint
    prom = prometheus([target])
    res = prom.wait_for('harness_probe_total{kind="a"}')
    assert res[0]["metric"]["job"] == JOB
    assert float(res[0]["value"][1]) == 3.0
    ts = prom.targets()
    assert [t["health"] for t in ts] == ["up"]
    assert ts[0]["scrapeUrl"] == f"http://{target}/metrics"
    # a later change is seen by a later scrape
    counter.labels(kind="a").inc(2)
    prom.wait_for('harness_probe_total{kind="a"} == 5')


def test_query_error_raises(prometheus: Callable[..., PromServer]) -> None:
    prom = prometheus(["127.0.0.1:1"])
    with pytest.raises(RuntimeError, match="bad_data"):
        prom.query("rate(")


def test_stop_ends_process(prometheus: Callable[..., PromServer]) -> None:
    prom = prometheus(["127.0.0.1:1"])
    prom.stop()
    assert prom.proc.returncode is not None


def test_promtool_check_metrics() -> None:
    assert promtool_check_metrics("# HELP a_total x\n# TYPE a_total counter\na_total 1\n") == []
    findings = promtool_check_metrics("# HELP foo_seconds x\n# TYPE foo_seconds counter\nfoo_seconds 1\n")
    assert any('"_total" suffix' in f for f in findings), findings
    assert promtool_check_metrics("garbage{\n")
