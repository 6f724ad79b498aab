"""Exporter benchmark: scrape time, agent CPU and RSS at 10, 100 and 1000 cgroups, beside the floor
(the same files read with plain os.open/os.read in one loop).

The cgroups are made under this process's own cgroups (`nested:cgagent-bench-<pid>`, one directory per
v1 hierarchy or one on v2) and removed at the end, also on failure or Ctrl-C. The agent is the real
`cgagent serve` in a subprocess, scraped over HTTP; `render` is the same scrape in-process, without HTTP.

Columns: files = cgroup files one steady-state scrape reads; floor = those files read with
os.open/os.read/os.close in one loop; render = one scrape in-process (discovery + collectors + text);
http = GET /metrics of `cgagent serve` (what Prometheus sees); cpu = the agent's CPU time per HTTP
scrape; idle cpu = its CPU use between scrapes (no sampling loop: ~0); rss/peak = VmRSS/VmHWM.

Run: .venv/bin/python -m bench.exporter [--sizes 10,100,1000] [--scrapes 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

from cgagent import host as hostmod
from cgagent.cgroups import fs
from cgagent.host import Host
from exporters.registry import Exporter, Options

TARGET_MS = 100.0
TARGET_RSS_MB = 60.0
READ_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parent_dirs(h: Host, sub: str) -> list[str]:
    if h.is_v2:
        return [os.path.normpath(f"{h.v2_mount}/{h.own_cgroup.get('', '/')}/{sub}")]
    return sorted({os.path.normpath(f"{h.v1_mounts[c]}/{h.own_cgroup.get(c, '/')}/{sub}")
                   for c in READ_CONTROLLERS if c in h.v1_mounts})


@contextlib.contextmanager
def cgroups(h: Host, sub: str, n: int) -> Iterator[None]:
    parents = parent_dirs(h, sub)
    try:
        for p in parents:
            os.makedirs(p, exist_ok=True)
            for i in range(n):
                os.makedirs(f"{p}/c{i:04d}", exist_ok=True)
        yield
    finally:
        for p in parents:
            fs.rmdir_tree(p)


def read_files_recorded(exp: Exporter) -> list[str]:
    """Every file a steady-state scrape reads, in order (fs.read is the one place cgroup files are
    opened). The first scrape is not it: limits are read once, then again only when written."""
    exp.render()
    seen: list[str] = []
    orig = fs.read

    def rec(path: str) -> str:
        seen.append(path)
        return orig(path)

    fs.read = rec
    try:
        exp.render()
    finally:
        fs.read = orig
    return seen


def floor_ms(paths: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.read(fd, 65536)
            finally:
                os.close(fd)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def start_agent(watch: str, state_dir: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "cgagent", "serve", "--listen", "127.0.0.1:0",
                             "--watch-cgroup", watch, "--state-dir", state_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(https?://\S+/metrics)", line)
    if not m:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"cgagent serve did not start: {line!r}")
    return proc, m.group(1)


def scrape(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t, len(body)


def run_size(h: Host, n: int, scrapes: int) -> dict[str, float]:
    sub = f"cgagent-bench-{os.getpid()}"
    watch = f"nested:{sub}"
    with cgroups(h, sub, n), tempfile.TemporaryDirectory(prefix="cgagent-bench-") as state:
        exp = Exporter(Options(host=h, state_dir=state, watch=[watch]))
        paths = read_files_recorded(exp)
        render = []
        for _ in range(scrapes):
            t = time.perf_counter()
            exp.render()
            render.append(time.perf_counter() - t)
        floor = floor_ms(paths, scrapes)
        proc, url = start_agent(watch, state)
        try:
            scrape(url)  # warm: imports, first discovery
            cpu0, http, size = proc_cpu_s(proc.pid), [], 0
            for _ in range(scrapes):
                dt, size = scrape(url)
                http.append(dt)
            cpu_per_scrape = (proc_cpu_s(proc.pid) - cpu0) / scrapes
            idle0 = proc_cpu_s(proc.pid)
            time.sleep(2.0)   # measuring idle CPU: nothing to wait for but time itself
            idle = (proc_cpu_s(proc.pid) - idle0) / 2.0
            rss, hwm = proc_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"cgroups": n, "files": len(paths), "floor_ms": floor,
            "render_ms": statistics.median(render) * 1000, "http_ms": statistics.median(http) * 1000,
            "cpu_ms": cpu_per_scrape * 1000, "idle_cpu_pct": idle * 100, "rss_mb": rss, "hwm_mb": hwm,
            "bytes": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.exporter", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--scrapes", type=int, default=20)
    args, _rest = ap.parse_known_args(argv)   # `python -m bench exporter` passes its own arguments
    if os.geteuid() != 0:
        print("bench.exporter: needs root (it creates cgroups)", file=sys.stderr)
        return 2
    h = hostmod.detect()
    print(f"exporter benchmark: cgroup {h.mode}, {os.cpu_count()} CPUs, {args.scrapes} scrapes per size")
    print(f"load average {os.getloadavg()[0]:.2f} (the floor and the agent share the CPUs with it)")
    print(f"{'cgroups':>7} {'files':>6} {'floor ms':>9} {'render ms':>10} {'x floor':>8} {'http ms':>8} {'x floor':>8} "
          f"{'cpu ms/scrape':>13} {'idle cpu %':>10} {'rss MB':>7} {'peak MB':>8} {'KiB':>6}")
    ok = True
    for n in (int(s) for s in args.sizes.split(",")):
        r = run_size(h, n, args.scrapes)
        ratio = r["http_ms"] / r["floor_ms"] if r["floor_ms"] else float("nan")
        rratio = r["render_ms"] / r["floor_ms"] if r["floor_ms"] else float("nan")
        print(f"{n:>7} {r['files']:>6.0f} {r['floor_ms']:>9.1f} {r['render_ms']:>10.1f} {rratio:>8.2f} "
              f"{r['http_ms']:>8.1f} {ratio:>8.2f} {r['cpu_ms']:>13.1f} {r['idle_cpu_pct']:>10.2f} {r['rss_mb']:>7.1f} "
              f"{r['hwm_mb']:>8.1f} {r['bytes'] / 1024:>6.0f}", flush=True)
        if n >= 1000:
            ok = ok and r["http_ms"] <= TARGET_MS and r["hwm_mb"] <= TARGET_RSS_MB
    print(f"targets at 1000 cgroups: <= {TARGET_MS:.0f} ms per scrape, RSS <= {TARGET_RSS_MB:.0f} MB: "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
