"""The write watch (exporters.writewatch) on a real inotify instance and real files: what it keeps,
and the kernel watches it holds, after the kernel's event queue overflowed."""

from __future__ import annotations

import os
from pathlib import Path

from exporters.targets import Target
from exporters.writewatch import WriteWatch


def kernel_watches(w: WriteWatch) -> int:
    """The watches the kernel holds for `w`'s inotify instance (one "inotify wd:" line each)."""
    assert w._ino is not None
    with open(f"/proc/self/fdinfo/{w._ino.fd}") as f:
        return sum(1 for ln in f if ln.startswith("inotify wd:"))


def test_a_lost_event_queue_leaves_no_watch_of_a_target_gone_since(tmp_path: Path) -> None:
    """After IN_Q_OVERFLOW every kept value is read again, and the watches start over: a target that
    leaves the live list afterwards (its files stay) takes its kernel watch with it."""
    files = {}
    targets = {}
    for n in ("a", "b", "c"):
        (tmp_path / n).mkdir()
        files[n] = tmp_path / n / "limit"
        files[n].write_text("0\n")
        targets[n] = Target(id=n, name=n, policy="", dirs={"": str(tmp_path / n)})
    w = WriteWatch()
    try:
        w.begin()
        for n, t in targets.items():
            w.watch(t, [str(files[n])])
            w.store(t, n)
        w.end(list(targets.values()))
        assert kernel_watches(w) == 3
        assert w.cached(targets["c"]) == "c"
        # alternating writes: the kernel merges an event only with an identical one queued last
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        fa, fb = os.open(files["a"], os.O_WRONLY), os.open(files["b"], os.O_WRONLY)
        try:
            for _ in range(limit // 2 + 1):
                os.write(fa, b"1")
                os.write(fb, b"2")
        finally:
            os.close(fa)
            os.close(fb)
        w.begin()
        assert w.cached(targets["c"]) is None, "no overflow: c was not written, yet its value was dropped"
        for n in ("a", "c"):   # b leaves the live list; its file stays
            w.watch(targets[n], [str(files[n])])
            w.store(targets[n], n)
        w.end([targets["a"], targets["c"]])
        assert kernel_watches(w) == 2, "b's watch outlived b"
        w.begin()
        assert w.cached(targets["a"]) == "a"
        files["a"].write_text("5\n")   # the new instance's watches report writes
        w.begin()
        assert w.cached(targets["a"]) is None
        assert w.cached(targets["c"]) == "c"
    finally:
        w.close()
