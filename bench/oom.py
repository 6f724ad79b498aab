"""OOM latency: from the kernel's kill to the `oom_kill` line in the events log, and to the count in
`/metrics`, with `cgagent serve` running, per cgroup driver (cgroupfs here; systemd inside a real
systemd 252 in namespaces, tests/systemd_ns.py). 50 kills per driver.

The kill time is the kernel's own: the timestamp of its "Killed process" record in /dev/kmsg (the
victim's cgroup from the "oom-kill:" record before it), put on CLOCK_MONOTONIC by writing a calibration record to
/dev/kmsg. The events line time is the event's own `time`; the /metrics time is the start of the
first scrape that shows the new count (a scraper polls /metrics back to back, so this includes up
to one scrape's duration). The kills are spaced 0.6 s apart: the kernel prints at most 10 "oom-kill:"
records per 5 s.

    python3 bench/oom.py [--kills 50]    (make bench runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

HERE = os.path.abspath(__file__)
KILLS = 50


def _kmsg_offset() -> float:
    """kmsg timestamp (s) - CLOCK_MONOTONIC (s), from a record we write and read back."""
    tag = f"cgagent-bench-calib-{os.getpid()}-{time.monotonic_ns()}"
    fd = os.open("/dev/kmsg", os.O_RDWR | os.O_NONBLOCK)
    try:
        os.lseek(fd, 0, os.SEEK_END)
        t0 = time.monotonic()
        os.write(fd, f"{tag}\n".encode())
        t1 = time.monotonic()
        while True:
            rec = os.read(fd, 8192).decode(errors="replace")
            if tag in rec:
                return int(rec.split(";", 1)[0].split(",")[2]) / 1e6 - (t0 + t1) / 2
    finally:
        os.close(fd)


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Kmsg:
    """The kernel's "oom-kill:" records (timestamp on CLOCK_MONOTONIC, task_memcg) while it runs; read
    by the host-side process (inside systemd's namespaces /dev/kmsg is not the kernel's)."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.records: list[tuple[float, str]] = []
        self._victims: dict[str, str] = {}
        self.offset = _kmsg_offset()
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            select.select([self.fd], [], [], 0.2)
            while True:
                try:
                    rec = os.read(self.fd, 8192).decode(errors="replace")
                except BlockingIOError:
                    break
                except BrokenPipeError:   # records overwritten before we read them: go on
                    continue
                head, _, text = rec.partition(";")
                if text.startswith("oom-kill:"):
                    # names the cgroup and the victim; printed before the kill (after a task dump
                    # that a serial console makes slow): the time is the "Killed process" line's
                    fields = dict(f.split("=", 1) for f in text.split(":", 1)[1].split(",") if "=" in f)
                    self._victims[fields.get("pid", "")] = fields.get("task_memcg", "")
                elif "Killed process " in text:
                    pid = text.split("Killed process ", 1)[1].split(" ", 1)[0]
                    if pid in self._victims:
                        self.records.append((int(head.split(",")[2]) / 1e6, self._victims.pop(pid)))

    def kills_of(self, cgroup: str) -> list[float]:
        self._stop.set()
        self._th.join()
        off = (self.offset + _kmsg_offset()) / 2
        os.close(self.fd)
        return [t - off for t, memcg in self.records if memcg.endswith(cgroup)]


def inner(driver: str, kills: int) -> dict[str, object]:
    """Runs where the CLI should run (CGAGENT_STATE_DIR etc. set): kills, and the CLOCK_MONOTONIC
    times of their events lines and of the scrapes that first showed them."""
    state = os.environ["CGAGENT_STATE_DIR"]
    cli = [sys.executable, "-m", "cgagent"]
    serve = subprocess.Popen([*cli, "serve", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert serve.stdout is not None
    m = re.search(r"(https?://\S+)/metrics", serve.stdout.readline())
    assert m, "serve did not start"
    url = m.group(1)
    name = f"oombench{os.getpid()}"
    seen: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        last = 0
        pat = re.compile(r'cgagent_oom_kills_total\{name="' + name + r'"\} (\S+)')
        while not stop.is_set():
            t = time.monotonic()
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
                got = pat.search(r.read().decode())
            n = int(float(got.group(1))) if got else 0
            seen.extend([t] * (n - last))
            last = max(last, n)

    th = threading.Thread(target=scraper, daemon=True)
    th.start()
    script = f"for i in $(seq {kills}); do python3 -c 'x = bytearray(200 << 20)'; sleep 0.6; done; exec sleep 1000"
    cgroup = ""
    try:
        r = subprocess.run([*cli, "run", "-d", "--name", name, "--cgroup-driver", driver, "--memory", "32M", "--",
                            "sh", "-c", script], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with open(f"{state}/workloads/{name}.json") as f:
            cgroup = json.load(f)["cgroup"]
        deadline = time.monotonic() + kills * 3 + 30
        while len(seen) < kills and time.monotonic() < deadline:
            time.sleep(0.1)   # the scraper thread counts; nothing here is timed by this wait
    finally:
        stop.set()
        rt_mono = time.time() - time.monotonic()
        logged: list[float] = []
        with open(f"{state}/events.jsonl") as f:
            for line in f:
                ev = json.loads(line)
                if ev.get("kind") == "oom_kill" and ev.get("name") == name:
                    logged += [ev["time"] - rt_mono] * int(ev["kills"])
        subprocess.run([*cli, "rm", "-f", name], capture_output=True)
        serve.terminate()
        serve.wait(30)
    out = {"driver": driver, "cgroup": cgroup, "logged": logged, "seen": seen}
    print(json.dumps(out), flush=True)
    return out


def _result(kmsg: Kmsg, out: dict[str, Any]) -> None:
    k = kmsg.kills_of(out["cgroup"])
    logged, seen = out["logged"], out["seen"]
    n = min(len(k), len(logged), len(seen))
    ev_ms = [1e3 * (logged[i] - k[i]) for i in range(n)]
    me_ms = [1e3 * (seen[i] - k[i]) for i in range(n)]
    if not n:
        print(f"{out['driver']:<9} no kills matched (kernel {len(k)}, events {len(logged)}, scrapes {len(seen)})")
        return
    print(f"{out['driver']:<9} kills {n:>3}   kill -> events line  p50 {statistics.median(ev_ms):6.2f} ms  "
          f"p99 {_pct(ev_ms, 99):6.2f} ms   kill -> /metrics  p50 {statistics.median(me_ms):6.2f} ms  "
          f"p99 {_pct(me_ms, 99):6.2f} ms")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=KILLS)
    ap.add_argument("--inner", default=None, help="driver: measure here (internal)")
    args = ap.parse_args(sys.argv[1:] if argv is None and __name__ == "__main__" else argv or [])
    if args.inner:
        inner(args.inner, args.kills)
        return
    if os.geteuid() != 0:
        print("skipped: needs root")
        return
    with tempfile.TemporaryDirectory(prefix="cgagent-bench-oom-") as tmp:
        env = dict(os.environ, CGAGENT_STATE_DIR=f"{tmp}/state", CGAGENT_DEFAULT_NET="none",
                   CGAGENT_CGROUP_PARENT=f"nested:cgagent-bench-oom-{os.getpid()}")
        kmsg = Kmsg()
        r = subprocess.run([sys.executable, HERE, "--inner", "cgroupfs", "--kills", str(args.kills)], env=env,
                           capture_output=True, text=True, timeout=args.kills * 5 + 120)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        _result(kmsg, json.loads(r.stdout.strip().splitlines()[-1]))
    try:
        from tests.systemd_ns import CLI, SYSTEMD, SystemdNamespace
    except ImportError:
        return
    if not os.access(SYSTEMD, os.X_OK):
        print("systemd: skipped (not installed)")
        return
    ns = SystemdNamespace("/var/tmp/cgagent-bench-oom-systemd")
    try:
        ns.start()
        cli = CLI(ns)
        kmsg = Kmsg()
        r2 = ns.run([sys.executable, HERE, "--inner", "systemd", "--kills", str(args.kills)],
                    env={**cli.env, "CGAGENT_DEFAULT_NET": "none"}, timeout=args.kills * 5 + 120)
        if r2.returncode != 0:
            raise RuntimeError(r2.stderr[-2000:])
        _result(kmsg, json.loads(r2.stdout.strip().splitlines()[-1]))
    finally:
        ns.stop()


if __name__ == "__main__":
    main()
