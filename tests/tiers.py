"""Which test tiers ran: one summary block at the end of every pytest run (hooked from conftest.py).

Tiers: the host itself (this machine's cgroup layout), (a) a real systemd in namespaces
(tests/test_systemd_ns.py), (b) the cgroup v2 + systemd VM under qemu (tests/test_vm.py), (c) a set
of CLI tests run again with an agent serving each state dir (tests/test_agent_mode.py).
"""

from __future__ import annotations

from typing import Any

TIERS = (
    ("(a) systemd 252 in namespaces (cgroup v1)", ("tests/test_systemd_ns.py",)),
    ("(b) cgroup v2 + systemd VM (qemu)", ("tests/test_vm.py",)),
    ("(c) CLI tests through the agent (CGAGENT_TEST_AGENT=1)", ("tests/test_agent_mode.py",)),
)


def _tier(nodeid: str) -> str:
    for name, files in TIERS:
        if nodeid.split("::")[0] in files:
            return name
    return "host"


def _host_label() -> str:
    try:
        from cgagent import host

        h = host.detect()
        return f"host (cgroup {h.mode}, PID 1 {'systemd' if h.init_is_systemd else 'not systemd'})"
    except Exception:   # a broken import must not hide the test results
        return "host"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    counts: dict[str, dict[str, int]] = {}
    reasons: dict[str, str] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(rep, "nodeid", None)
            if not nodeid or (outcome == "passed" and getattr(rep, "when", "call") != "call"):
                continue
            tier = _tier(nodeid)
            counts.setdefault(tier, {}).setdefault(outcome, 0)
            counts[tier][outcome] += 1
            if outcome == "skipped" and isinstance(getattr(rep, "longrepr", None), tuple):
                reasons.setdefault(tier, str(rep.longrepr[2]).removeprefix("Skipped: "))
    tr = terminalreporter
    tr.section("cgagent test tiers", sep="-", bold=True)
    for name in ("host", *(n for n, _ in TIERS)):
        c = counts.get(name)
        label = _host_label() if name == "host" else name
        if not c:
            tr.write_line(f"  {label:58} not selected")
            continue
        ran = c.get("passed", 0) + c.get("failed", 0) + c.get("error", 0)
        parts = [f"{c[k]} {k}" for k in ("passed", "failed", "error", "skipped") if c.get(k)]
        state = "RAN" if ran else "SKIPPED"
        why = f" ({reasons[name]})" if not ran and name in reasons else ""
        tr.write_line(f"  {label:58} {state}: {', '.join(parts)}{why}")
