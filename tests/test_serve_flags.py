"""`cgagent serve`'s node_exporter-style flags, each with an effect: --web.listen-address (and its alias
--listen), --web.telemetry-path, --collector.NAME / --no-collector.NAME (one per registered collector),
--log.level, --version. Real agent processes on loopback, real cgroups for the collector series."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import ROOT, Env
from tests.exporter_helpers import end, parse


class Served:
    """A `cgagent serve` with the given flags: the URL it prints, and its stderr once stopped."""

    def __init__(self, cg: Env, *args: str) -> None:
        self.stderr = ""
        self.proc = cg.popen("serve", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()   # printed once it listens
        m = re.search(r"scrape (https?://[^/\s]+)(/\S*)", line)
        if not m:
            self.stop()
            raise AssertionError(f"cgagent serve did not start: {line!r} {self.stderr}")
        self.base, self.path = m.group(1), m.group(2)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()   # our own child, by PID
        _out, self.stderr = self.proc.communicate(timeout=30)


@contextmanager
def served(cg: Env, *args: str) -> Iterator[Served]:
    s = Served(cg, *args)
    try:
        yield s
    finally:
        s.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("flag", ["--web.listen-address", "--listen"])
def test_listen_address_and_its_alias_are_used(cg: Env, flag: str) -> None:
    port = _free_port()
    with served(cg, flag, f"127.0.0.1:{port}") as s:
        assert s.base == f"http://127.0.0.1:{port}"
        status, body = s.get("/metrics")
        assert status == 200 and "cgagent_scrape_duration_seconds" in body


def test_telemetry_path_moves_the_metrics(cg: Env) -> None:
    with served(cg, "--listen", "127.0.0.1:0", "--web.telemetry-path", "/cadvisor/metrics") as s:
        assert s.path == "/cadvisor/metrics"
        status, body = s.get("/cadvisor/metrics")
        assert status == 200 and "cgagent_scrape_duration_seconds" in body
        assert s.get("/metrics")[0] == 404
        assert 'href="/cadvisor/metrics"' in s.get("/")[1]
        assert s.get("/healthz") == (200, "ok\n")


def _series(text: str, name: str, workload: str) -> bool:
    return any(n == name and ("name", workload) in ls for (n, ls) in parse(text))


def test_collector_toggles_add_and_remove_their_series(cg: Env) -> None:
    r = cg.run("run", "-d", "--name", "tog", "--memory", "64M", "--", "sleep", "600")
    assert r.returncode == 0, r.stderr
    try:
        with served(cg, "--listen", "127.0.0.1:0") as s:        # defaults: every collector on
            text = s.get("/metrics")[1]
        assert _series(text, "container_memory_usage_bytes", "tog")
        assert _series(text, "container_cpu_usage_seconds_total", "tog")
        with served(cg, "--listen", "127.0.0.1:0", "--no-collector.memory", "--collector.cpuacct") as s:
            text = s.get("/metrics")[1]
        assert not _series(text, "container_memory_usage_bytes", "tog")
        assert _series(text, "container_cpu_usage_seconds_total", "tog")
        assert 'collector="memory"' not in text and 'collector="cpuacct"' in text
    finally:
        end(cg, "tog")


def test_every_registered_collector_has_its_toggle() -> None:
    from cgagent.cli.serveflags import collector_options
    from exporters.registry import COLLECTORS

    opts = {o for p in collector_options() for o in (*p.opts, *p.secondary_opts)}
    assert opts == {f"--{no}collector.{n}" for n in COLLECTORS for no in ("", "no-")}


@pytest.mark.parametrize("level", ["debug", "info"])
def test_log_level_filters(cg: Env, level: str) -> None:
    with served(cg, "--listen", "127.0.0.1:0", "--log.level", level) as s:
        assert s.get("/metrics")[0] == 200
    debug = [ln for ln in s.stderr.splitlines() if ln.startswith("cgagent: debug: scrape from 127.0.0.1")]
    assert bool(debug) == (level == "debug"), s.stderr


def test_version_is_printed_without_starting(cg: Env) -> None:
    from cgagent import __version__

    r = cg.run("serve", "--version", timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"cgagent, version {__version__}\n", "")


@pytest.mark.parametrize(("args", "line"), [
    (["--log.level", "loud"], "cgagent: error: invalid --log.level 'loud': use one of debug, info, warn, error"),
    (["--web.telemetry-path", "metrics"], "cgagent: error: invalid --web.telemetry-path 'metrics': use an "
     "absolute URL path other than / and /healthz, e.g. /metrics"),
    (["--api-socket", "agent.sock"], "cgagent: error: invalid --api-socket 'agent.sock': use an absolute path, "
     "e.g. /run/cgagent/agent.sock"),
])
def test_bad_flag_values_are_one_line(cg: Env, args: list[str], line: str) -> None:
    r = cg.run("serve", "--listen", "127.0.0.1:0", *args, timeout=30)
    assert (r.returncode, r.stderr) == (2, line + "\n")


def test_unknown_collector_is_a_usage_error(cg: Env) -> None:
    r = cg.run("serve", "--no-collector.nosuch", timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("cgagent: error: No such option: --no-collector.nosuch")


def test_other_commands_do_not_import_the_collectors() -> None:
    # the toggles come from the registry only when serve's options are parsed: `cgagent ps` stays fast
    code = "import sys, cgagent.cli.app; print('exporters.registry' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert r.stdout.strip() == "False"
