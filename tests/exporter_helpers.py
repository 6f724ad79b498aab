"""Helpers for the exporter tests: run `cgagent serve` as a subprocess and read its /metrics."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Env

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, labels), through prometheus_client's parser."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name
            # the parser names a counter's samples NAME_total; cAdvisor's container_memory_failcnt
            # has no suffix and Prometheus stores it as written: key it as it is exposed
            if fam.type == "counter" and name == f"{fam.name}_total" and f"\n{name}" not in f"\n{text}":
                name = fam.name
            out[(name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    """The one sample of `metric` whose labels include `labels` (None: no such sample)."""
    hits = [v for (n, ls), v in samples.items() if n == metric and set(labels.items()) <= ls]
    assert len(hits) <= 1, f"{metric}{labels} matches {len(hits)} samples"
    return hits[0] if hits else None


class Agent:
    """A running `cgagent serve`; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, cg: Env, *args: str, listen: str = "127.0.0.1:0", **popen: Any) -> None:
        self.args = args
        self.proc = cg.popen("serve", "--listen", listen, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             **popen)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()   # the agent prints its URL once it listens
        m = re.search(r"(https?://\S+)/metrics", line)
        if not m:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            raise AssertionError(f"cgagent serve did not start: {line!r} {err}")
        self.url = m.group(1)
        self.listen = self.url.split("//", 1)[1]

    def text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def samples(self) -> Samples:
        return parse(self.text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        return int(self.proc.returncode)


@contextlib.contextmanager
def agent(cg: Env, *args: str, listen: str = "127.0.0.1:0", **popen: Any) -> Iterator[Agent]:
    a = Agent(cg, *args, listen=listen, **popen)
    try:
        yield a
    finally:
        a.stop()


def poll(fn: object, timeout: float, interval: float = 0.02) -> object:
    """Call fn() until it returns something truthy or `timeout` passes; for kernel/scrape state that
    announces nothing (a counter reaching a value)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()  # type: ignore[operator]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(interval)


def end(cg: Env, name: str) -> None:
    """SIGKILL a detached workload's main process, wait for its supervisor to record the exit, rm it.
    (Not `rm -f`: that races the supervisor's own cleanup of the cgroup; see the exporter report.)"""
    import os
    import signal as sig

    from cgagent.state import Store

    store = Store(cg.state_dir)
    rec = store.load(name)
    if rec.status != "exited" and rec.pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, sig.SIGKILL)
    assert poll(lambda: store.load(name).status == "exited", 15), f"{name} did not exit"
    r = cg.run("rm", name)
    assert r.returncode == 0, r.stderr
