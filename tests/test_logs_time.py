"""`logs --since T` and `logs --timestamps` (issue 13 item 5): each line's time comes from the index the
supervisor's stamper writes beside the log; lines written before and after a known point in time."""

from __future__ import annotations

import datetime
import os
import re
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgagent.errors import CgagentError
from cgagent.logtime import parse_since, stamp
from tests.conftest import Env
from tests.isolated import wait_for
from tests.starve import starve

CLOCK_REALTIME_COARSE = 5   # linux/time.h; Python names it only on some builds
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{9})Z (.*)$")


def ok(cg: Env, *args: str) -> str:
    r = cg.run(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def parse(line: str) -> tuple[int, str]:
    m = STAMP.match(line)
    assert m, line
    dt = datetime.datetime.fromisoformat(m[1]).replace(tzinfo=datetime.UTC)
    return int(dt.timestamp()) * 10**9 + int(m[2]), m[3]


def rfc3339(t_ns: int) -> str:
    return stamp(t_ns).decode().strip()


@pytest.fixture
def split(cg: Env, tmp_path: Path) -> Iterator[tuple[Env, int]]:
    """A detached workload that wrote `before1..3`, then (after the time T this yields) `after1..2`
    and a last line without its newline, then exited. -> (cg, T)."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    os.mkfifo(ready)
    os.mkfifo(go)
    script = (f"echo before1; echo before2 >&2; echo before3; echo > {ready}; read x < {go}; "
              "echo after1; echo after2 >&2; printf tail")
    ok(cg, "run", "-d", "--name", "w", "--", "sh", "-c", script)
    try:
        with open(ready) as f:   # the before lines are all written once the workload opens this
            f.read()
        idx, log = Path(cg.state_dir) / "logs" / "w.idx", Path(cg.state_dir) / "logs" / "w.log"
        size = log.stat().st_size

        def stamped() -> bool:   # polling: the stamper's write is in another process's inotify loop
            raw = idx.read_bytes() if idx.exists() else b""
            return len(raw) >= 16 and struct.unpack("<QQ", raw[-16:])[0] >= size
        wait_for(stamped)
        t = time.time_ns()   # after every before line's write (their times are the log's mtime then)
        # the kernel stamps mtime from its coarse clock: the after lines must come after a tick past T
        while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) <= t:
            pass
        with open(go, "w") as f:
            f.write("x\n")
        assert ok(cg, "wait", "w") == "0\n"
        yield cg, t
    finally:
        cg.run("rm", "-f", "w")


def test_timestamps_are_rfc3339_utc_monotonic_and_split_at_t(split: tuple[Env, int]) -> None:
    cg, t = split
    out = ok(cg, "logs", "--timestamps", "w")
    assert out.endswith("tail\n")   # the last line is given its newline, as docker does
    rows = [parse(line) for line in out.splitlines()]
    texts = [text for _, text in rows]
    assert texts == ["before1", "before2", "before3", "after1", "after2", "tail"]
    times = [tt for tt, _ in rows]
    assert times == sorted(times)
    assert all(tt <= t for tt in times[:3]) and all(tt > t for tt in times[3:]), (times, t)
    assert ok(cg, "logs", "w") == "before1\nbefore2\nbefore3\nafter1\nafter2\ntail"   # raw, as written
    assert ok(cg, "logs", "-t", "--tail", "2", "w").splitlines()[0].endswith("Z after2")


def test_since_filters_by_rfc3339_unix_seconds_and_duration(split: tuple[Env, int]) -> None:
    cg, t = split
    after = "after1\nafter2\ntail"
    assert ok(cg, "logs", "--since", rfc3339(t + 1), "w") == after
    assert ok(cg, "logs", "--since", f"{(t + 1) // 10**9}.{(t + 1) % 10**9:09d}", "w") == after
    assert ok(cg, "logs", "--since", "1h", "w").startswith("before1\n")
    assert ok(cg, "logs", "--since", "2000-01-01T00:00:00+02:00", "w").startswith("before1\n")
    assert ok(cg, "logs", "--since", rfc3339(time.time_ns() + 10**9), "w") == ""
    assert ok(cg, "logs", "--since", rfc3339(t + 1), "--tail", "1", "w") == "tail"
    assert ok(cg, "logs", "--since", rfc3339(t + 1), "--tail", "all", "-t", "w").count("Z after") == 2
    r = cg.run("logs", "--since", "yesterday", "w")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "RFC 3339" in r.stderr, r.stderr


def test_follow_with_timestamps_streams_stamped_lines(cg: Env, tmp_path: Path) -> None:
    go = tmp_path / "go"
    os.mkfifo(go)
    ok(cg, "run", "-d", "--name", "f", "--", "sh", "-c", f"echo one; read x < {go}; echo two; echo three")
    try:
        p = cg.popen("logs", "-f", "--timestamps", "f", stdout=subprocess.PIPE)
        assert p.stdout is not None
        first = p.stdout.readline()
        with open(go, "w") as f:
            f.write("x\n")
        rest = p.stdout.read()
        assert p.wait(timeout=60) == 0
        rows = [parse(line) for line in (first + rest).splitlines()]
        assert [text for _, text in rows] == ["one", "two", "three"]
        assert [tt for tt, _ in rows] == sorted(tt for tt, _ in rows)
    finally:
        cg.run("rm", "-f", "f")


def test_the_stamper_ends_with_its_supervisor_and_rm_removes_the_index(cg: Env) -> None:
    ok(cg, "run", "-d", "--name", "s", "--", "sh", "-c", "echo hi")
    assert ok(cg, "wait", "s") == "0\n"
    idx = Path(cg.state_dir) / "logs" / "s.idx"
    assert idx.stat().st_size % 16 == 0 and idx.stat().st_size >= 16
    # polling: a process's exit after its parent's has no event here
    wait_for(lambda: _holder_of(idx) is None)
    ok(cg, "rm", "s")
    assert not idx.exists()


def test_parse_since_forms() -> None:
    now = 1_700_000_000 * 10**9
    assert parse_since("10m", now) == now - 600 * 10**9
    assert parse_since("1h30m", now) == now - 5400 * 10**9
    assert parse_since("1.5s", now) == now - 1_500_000_000
    assert parse_since("2024-05-01T10:00:00.000000123Z") == 1714557600 * 10**9 + 123
    assert parse_since("2024-05-01T12:00:00+02:00") == 1714557600 * 10**9
    assert parse_since("1714557600.5") == 1714557600 * 10**9 + 500_000_000
    assert stamp(1714557600 * 10**9 + 123) == b"2024-05-01T10:00:00.000000123Z "
    assert parse_since(None) is None


@pytest.mark.parametrize("value", ["9" * 400 + "h", "0001-01-01", "2024-13-01", "soon"])
def test_parse_since_out_of_range_is_one_line(value: str) -> None:
    """A value that matches a form but no clock (an overflowing duration, a local midnight of year 1,
    which is year 0 in UTC) raised OverflowError or ValueError: a traceback on the CLI, a 500 from
    the API."""
    with pytest.raises(CgagentError, match="is not a time"):
        parse_since(value)


def test_reader_gives_a_line_the_time_of_the_entry_that_covers_its_end(tmp_path: Path) -> None:
    """An entry made mid-line (the size ends inside a line) stamps only the lines ended by then;
    bytes no entry covers take the log's mtime; a last line without its newline gets one."""
    from cgagent.logtime import ENTRY, LogReader

    log, idx = tmp_path / "m.log", tmp_path / "m.idx"
    log.write_bytes(b"aa\nbb" + b"b\ncc\n" + b"dd")
    idx.write_bytes(ENTRY.pack(5, 10**18) + ENTRY.pack(10, 2 * 10**18))
    os.utime(log, ns=(3 * 10**18, 3 * 10**18))
    with open(log, "rb") as f:
        out = b"".join(LogReader(f, str(idx), True).chunks(final=True))
    assert out == (b"2001-09-09T01:46:40.000000000Z aa\n2033-05-18T03:33:20.000000000Z bbb\n"
                   b"2033-05-18T03:33:20.000000000Z cc\n2065-01-24T05:20:00.000000000Z dd\n")
    with open(log, "rb") as f:
        r = LogReader(f, str(idx), True)
        r.seek_since(10**18 + 1)   # the line that goes on past the first entry is kept whole
        assert b"".join(r.chunks(final=False)) == (b"2033-05-18T03:33:20.000000000Z bbb\n"
                                                   b"2033-05-18T03:33:20.000000000Z cc\n")


def _holder_of(path: Path) -> int | None:
    """The pid of a process with `path` open, if any."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return None


def test_a_stamper_without_an_inotify_instance_looks_once_a_second(tmp_path: Path) -> None:
    """Root's inotify instances are counted host-wide (128 by default): past ~120 detached workloads a
    stamper got none, ended, and left no index (every line took the log's last mtime). Now it looks at
    the log every POLL_SECONDS. The instance is taken away in a user namespace of the test's own
    (max_inotify_instances 0 there), not on the host: a child unshares it and plays the supervisor."""
    from cgagent.inotify import IN_MODIFY, Inotify
    from cgagent.logtime import ENTRY, start_stamper
    from cgagent.procs import close_all_but
    from cgagent.wakeup import ready_to_read

    log, idx = tmp_path / "p.log", tmp_path / "p.idx"
    log.write_bytes(b"")
    idx.write_bytes(b"")
    hold_r, hold_w = os.pipe()
    ready_r, ready_w = os.pipe()
    sup = os.fork()
    if sup == 0:   # the supervisor: it lives until the test closes hold_w
        try:
            # a supervisor has closed what it inherited (the shim's exec); pytest's own inotify
            # fds, left by earlier tests, would otherwise reach the stamper through the fork
            close_all_but({0, 1, 2, hold_r, ready_w})
            starve()
            start_stamper(str(log), str(idx))
            os.write(ready_w, b"x")
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(hold_r)
    os.close(ready_w)
    try:
        ready = os.read(ready_r, 1)
        os.close(ready_r)
        assert ready == b"x", "the supervisor could not make its user namespace"
        with Inotify() as ino:
            ino.add(str(idx), IN_MODIFY)

            def entries(n: int) -> list[tuple[int, int]]:
                """The index once it holds n entries (woken by its writes), or as it is after 10 s."""
                end = time.monotonic() + 10
                while idx.stat().st_size < n * ENTRY.size and time.monotonic() < end:
                    ready_to_read([ino.fd], end - time.monotonic())
                    ino.drain()
                raw = idx.read_bytes()
                return [ENTRY.unpack_from(raw, k) for k in range(0, len(raw), ENTRY.size)]

            with open(log, "ab", buffering=0) as f:
                f.write(b"one\n")
                assert entries(1) == [(4, log.stat().st_mtime_ns)]
                f.write(b"two\n")
                got = entries(2)
                assert got[1] == (8, log.stat().st_mtime_ns) and got[1][1] >= got[0][1]
        stamper = _holder_of(idx)
        assert stamper is not None and stamper not in (os.getpid(), sup)
        assert not any(os.readlink(f"/proc/{stamper}/fd/{fd}") == "anon_inode:inotify"
                       for fd in os.listdir(f"/proc/{stamper}/fd")), "the stamper had an inotify instance"
        pidfd = os.pidfd_open(stamper)
    finally:
        os.close(hold_w)
        os.waitpid(sup, 0)
    try:   # the supervisor gone, the stamper ends within a look
        assert ready_to_read([pidfd], 10) == [pidfd], "the stamper outlived its supervisor"
    finally:
        os.close(pidfd)

