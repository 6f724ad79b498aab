"""Policies (issue 7): validation with every error at once (file, line, field, reason), the bad-file
corpus, built-ins, the search path, the `cgagent policy` commands, `cgagent run --policy` (real
cgroups), the fast run path's imports, and the throttling state machine on made-up samples."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from policies import loader
from policies.model import ThrottlingSpec, parse_duration
from policies.runopts import merge
from policies.throttle import Sample, Throttle
from tests.conftest import ROOT, Env

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "policies")
BAD = sorted(glob.glob(os.path.join(FIXTURES, "bad", "*.yaml")))
BUILTINS = ("guaranteed", "burstable", "best-effort", "batch", "latency-critical")


def expectation(path: str) -> tuple[str, str]:
    """First line of each corpus file: `# expect: FIELD: REASON-SUBSTRING`."""
    with open(path) as f:
        first = f.readline()
    assert first.startswith("# expect: "), f"{path}: first line must state the expected field and reason"
    field, _, reason = first.removeprefix("# expect: ").strip().partition(": ")
    return field, reason


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cgagent", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def typer_run(cg: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """The full typer CLI, bypassing the fast `run` path of cgagent.__main__."""
    code = "import sys\nfrom cgagent.cli.app import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=cg.env(), capture_output=True, text=True,
                          timeout=60)


# --- the corpus of bad files

def test_corpus_is_big_enough() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[os.path.basename(p) for p in BAD])
def test_bad_policy_is_refused_with_the_field_named(path: str) -> None:
    field, reason = expectation(path)
    ld = loader.load_file(path)
    assert not ld.ok and ld.policy is None
    hits = [p for p in ld.problems if p.field == field]
    assert hits, f"expected field {field!r}, got {[str(p) for p in ld.problems]}"
    assert any(reason in p.reason for p in hits), [str(p) for p in hits]
    for p in ld.problems:
        assert p.file == path and p.line >= 1 and p.reason


@pytest.mark.parametrize("path", BAD[:3] + BAD[-3:], ids=lambda p: os.path.basename(p))
def test_policy_check_cli_refuses_each_bad_file(path: str) -> None:
    field, _ = expectation(path)
    r = cli("policy", "check", path)
    assert r.returncode != 0
    assert f"{path}:" in r.stderr and f": {field}: " in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("cgagent: error: ")


# --- every error at once, on its line

MANY = """\
name: many-errors
limits:
  cpus: lots
  memory: 1Q
restart: sometimes
oom:
  action: restart-with-more-memory
  step: 64M
  ceiling: 1G
  extra: true
throttling:
  threshold: 1.5
  for: 10 parsecs
  step: -1
  floor: 2
  ceiling: 1
"""


def test_every_error_of_a_file_at_once_with_its_line() -> None:
    ld = loader.parse_text(MANY, "many.yaml")
    got = [(p.line, p.field) for p in ld.problems]
    assert got == [(3, "limits.cpus"), (4, "limits.memory"), (5, "restart"), (10, "oom.extra"),
                   (12, "throttling.threshold"), (13, "throttling.for"), (14, "throttling.step"),
                   (16, "throttling.ceiling")]
    assert all(p.file == "many.yaml" for p in ld.problems)
    assert "below the floor 2" in ld.problems[-1].reason


def test_check_cli_prints_every_problem_and_applies_nothing(tmp_path: Any) -> None:
    bad = os.path.join(str(tmp_path), "many.yaml")
    with open(bad, "w") as f:
        f.write(MANY)
    good = os.path.join(ROOT, "policies", "builtin", "burstable.yaml")
    r = cli("policy", "check", good, bad)
    assert r.returncode == 2
    assert f"{good}: ok (policy burstable)" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 9 and lines[0] == f"{bad}:3: limits.cpus: --cpus 'lots' is not a number: " \
        "give a decimal number, e.g. 0.5"
    assert lines[-1].startswith("cgagent: error: 8 problems in policy file")


def test_bad_policy_on_run_creates_nothing(cg: Env, tmp_path: Any) -> None:
    d = os.path.join(str(tmp_path), "pol")
    os.makedirs(d)
    with open(os.path.join(d, "many.yaml"), "w") as f:
        f.write(MANY)
    for call in (cg.run, typer_run):   # the fast path, then the typer CLI
        args = ("run", "--name", "never", "--policy", "many-errors", "--policy-dir", d, "--", "true")
        r = typer_run(cg, *args) if call is typer_run else cg.run(*args)
        assert r.returncode == 125, r.stderr   # run's own error (Docker's code)
        assert sum(ln.startswith(f"{d}/many.yaml:") for ln in r.stderr.splitlines()) == 8, r.stderr
    assert not os.path.exists(os.path.join(cg.state_dir, "workloads", "never.json"))
    assert not any(os.path.exists(os.path.join(root, "never")) for root in cg.roots)


# --- good files, built-ins, search path

def test_builtins_are_valid_and_documented() -> None:
    cat = loader.catalog()
    for name in BUILTINS:
        ld = cat.by_name[name]
        assert ld.ok and ld.builtin, ld.problems
        with open(ld.path) as f:
            head = f.readline()
        assert head.startswith(f"# {name}: "), "each built-in explains its values in a header comment"
    assert cat.get("burstable").throttling is not None
    assert cat.get("guaranteed").oom is not None and cat.get("guaranteed").oom.action == "stop"  # type: ignore[union-attr]


def test_policy_dir_overrides_builtin_by_name(tmp_path: Any) -> None:
    d1, d2 = (os.path.join(str(tmp_path), n) for n in ("a", "b"))
    for d, cpus in ((d1, 0.3), (d2, 0.4)):
        os.makedirs(d)
        with open(os.path.join(d, "mine.yaml"), "w") as f:   # file name differs from the policy name
            f.write(f"name: burstable\nlimits:\n  cpus: {cpus}\n")
    assert loader.find("burstable").limits.cpus == 0.5
    assert loader.find("burstable", [d1]).limits.cpus == 0.3
    assert loader.find("burstable", [d1, d2]).limits.cpus == 0.4


def test_unknown_policy_and_missing_dir_are_one_line_errors(tmp_path: Any) -> None:
    r = cli("policy", "show", "nope")
    assert r.returncode == 2 and r.stderr.startswith("cgagent: error: no policy named 'nope'")
    assert "burstable" in r.stderr
    r = cli("policy", "ls", "--policy-dir", os.path.join(str(tmp_path), "missing"))
    assert r.returncode == 2 and "is not a directory" in r.stderr and len(r.stderr.splitlines()) == 1


def test_policy_ls_and_show(tmp_path: Any) -> None:
    r = cli("policy", "ls", "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert set(BUILTINS) <= set(rows)
    assert rows["burstable"]["source"] == "builtin" and rows["burstable"]["policy"]["throttling"]["for"] == "30s"
    table = cli("policy", "ls").stdout
    assert all(n in table for n in BUILTINS)
    shown = cli("policy", "show", "latency-critical")
    assert shown.returncode == 0
    assert "threshold: 0.05" in shown.stdout and shown.stdout.startswith("# from ")
    again = loader.parse_text(shown.stdout.replace("# from", "#"), "shown.yaml")
    assert again.ok and again.policy == loader.find("latency-critical")   # show prints a valid policy
    # a bad file on the search path is reported by ls, which still lists the good ones
    d = os.path.join(str(tmp_path), "pol")
    os.makedirs(d)
    with open(os.path.join(d, "broken.yaml"), "w") as f:
        f.write("name: broken\nlimits: {cpus: -1}\n")
    r = cli("policy", "ls", "--policy-dir", d)
    assert r.returncode == 0 and "burstable" in r.stdout
    assert f"{d}/broken.yaml:2: limits.cpus:" in r.stderr


def test_restart_values() -> None:
    for text, want in (("no", "no"), ('"no"', "no"), ("always", "always"), ("on-failure", "on-failure"),
                       ("on-failure:5", "on-failure:5")):
        ld = loader.parse_text(f"name: r\nrestart: {text}\n", "r.yaml")
        assert ld.policy is not None and ld.policy.restart == want, ld.problems
    p = loader.parse_text("name: r\nrestart: on-failure:5\n", "r.yaml").policy
    assert p is not None and (p.restart_mode, p.restart_retries) == ("on-failure", 5)


def test_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m30s") == 90
    assert parse_duration("2h") == 7200
    assert parse_duration(15) == 15
    assert parse_duration("2.5") == 2.5
    for bad in ("", "5 minutes", "-1s", "0", True, "1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# --- run --policy

def test_flags_override_policy_limits() -> None:
    p = loader.find("batch")
    assert merge(p, {}) == {"cpus": 1.0, "cpu_shares": 512, "memory": 2 << 30}
    # --cpu-weight replaces the policy's cpu_shares (the kernel takes one of the two)
    assert merge(p, {"cpus": 0.3, "cpu_weight": 50}) == {"cpus": 0.3, "cpu_weight": 50, "memory": 2 << 30}
    assert merge(p, {}, learned_memory=3 << 30)["memory"] == 3 << 30
    assert merge(p, {"memory": 1 << 30}, learned_memory=3 << 30)["memory"] == 1 << 30


def _cgroup_value(rec: dict[str, Any], ctrl: str, name: str) -> str:
    with open(f"{rec['dirs'][ctrl]}/{name}") as f:
        return f.read().strip()


@pytest.mark.root
def test_run_with_policy_applies_its_limits_and_flags_override(cg: Env) -> None:
    for fast, name in ((True, "pol-fast"), (False, "pol-typer")):
        args: tuple[str, ...] = ("run", "-d", "--name", name, "--policy", "burstable", "--memory", "300M",
                                 "--", "sleep", "100000")
        r = cg.run(*args) if fast else typer_run(cg, *args)
        assert r.returncode == 0, r.stderr
        with open(f"{cg.state_dir}/workloads/{name}.json") as f:
            rec = json.load(f)
        assert rec["policy"] == "burstable" and rec["restart"] == "on-failure:3"   # the policy's restart
        assert rec["resources"]["cpu_quota"] == 50000 and rec["resources"]["memory"] == 300 << 20
        if "cpu" in rec["dirs"]:
            assert _cgroup_value(rec, "cpu", "cpu.cfs_quota_us") == "50000"
            assert _cgroup_value(rec, "memory", "memory.limit_in_bytes") == str(300 << 20)
        # --restart and --rm (which excludes restarts) win over the policy's restart
        args = ("run", "-d", "--name", f"{name}-no", "--policy", "burstable", "--restart", "no", "--", "sleep", "9999")
        r = cg.run(*args) if fast else typer_run(cg, *args)
        assert r.returncode == 0, r.stderr
        with open(f"{cg.state_dir}/workloads/{name}-no.json") as f:
            assert json.load(f)["restart"] == "no"
        args = ("run", "--rm", "--name", f"{name}-rm", "--policy", "burstable", "--", "true")
        r = cg.run(*args) if fast else typer_run(cg, *args)
        assert r.returncode == 0, r.stderr
    assert cg.run("rm", "-f", "pol-fast", "pol-typer", "pol-fast-no", "pol-typer-no").returncode == 0


def test_fast_path_imports_pydantic_only_with_a_policy() -> None:
    code = ("import sys\nfrom cgagent.cli import fastrun\n"
            "p = fastrun.parse(sys.argv[1:])\nassert p is not None, 'fast path refused'\n"
            "from cgagent.runflags import limit_values\nv = p.values\nlimit_values(v)\n"
            "if v.get('policy'):\n    from policies.runopts import resolve\n"
            "    resolve(v['policy'], v.get('policy_dir'), limit_values(v))\n"
            "print(v.get('policy'), v.get('policy_dir'), 'pydantic' in sys.modules)\n")
    plain = subprocess.run([sys.executable, "-c", code, "--cpus", "0.5", "--", "true"], capture_output=True,
                           text=True, check=True)
    assert plain.stdout.split() == ["None", "None", "False"]
    pol = subprocess.run([sys.executable, "-c", code, "--policy", "burstable", "--policy-dir", "/tmp",
                          "--policy-dir=/", "--", "true"], capture_output=True, text=True, check=True)
    assert pol.stdout.split() == ["burstable", "['/tmp',", "'/']", "True"]


# --- the throttling state machine (kernel-free)

SPEC = ThrottlingSpec.model_validate({"threshold": 0.25, "for": "3s", "step": 0.5, "ceiling": 2,
                                      "idle_for": "4s", "idle_usage": 0.5})


def feed(th: Throttle, samples: list[tuple[float, int, int, float]], current: float) -> list[tuple[float, str]]:
    """(t, periods, throttled, usage CPUs over the last interval) -> [(t, action)], applying each decision."""
    out, usage_ns, last_t = [], 0, None
    for t, periods, throttled, cpus in samples:
        if last_t is not None:
            usage_ns += int(cpus * (t - last_t) * 1e9)
        last_t = t
        d = th.observe(Sample(t, periods, throttled, usage_ns), current)
        if d is not None:
            out.append((t, d.action))
            current = d.to_cpus
    return out


def test_throttle_steps_up_only_after_for_seconds_and_stops_at_ceiling() -> None:
    th = Throttle(SPEC, floor=0.5, ceiling=2.0)
    samples = [(float(t), 10 * t, 9 * t, 0.5) for t in range(0, 20)]   # 90% of periods throttled
    acts = feed(th, samples, 0.5)
    assert acts == [(3.0, "cpu_step_up"), (6.0, "cpu_step_up"), (9.0, "cpu_step_up")]   # 0.5 -> 2.0, 3 steps


def test_throttle_below_threshold_or_interrupted_does_nothing() -> None:
    th = Throttle(SPEC, floor=0.5, ceiling=2.0)
    # 20% throttled: under the 25% threshold
    assert feed(th, [(float(t), 10 * t, 2 * t, 0.5) for t in range(10)], 0.5) == []
    # throttled for 2 s, then a clean second, then 2 s again: never 3 s in a row
    th = Throttle(SPEC, floor=0.5, ceiling=2.0)
    thr = [0, 9, 18, 18, 27, 36, 36]
    assert feed(th, [(float(t), 10 * t, thr[t], 0.5) for t in range(7)], 0.5) == []


def test_throttle_steps_down_when_idle_and_not_below_floor() -> None:
    th = Throttle(SPEC, floor=0.5, ceiling=2.0)
    samples = [(float(t), 10 * t, 0, 0.05) for t in range(0, 30)]   # no throttling, 0.05 CPUs used
    acts = feed(th, samples, 2.0)
    assert acts == [(4.0, "cpu_step_down"), (8.0, "cpu_step_down"), (12.0, "cpu_step_down")]  # 2 -> 0.5
    # busy enough that one step down would leave too little headroom: stay
    th = Throttle(SPEC, floor=0.5, ceiling=2.0)
    assert feed(th, [(float(t), 10 * t, 0, 0.8) for t in range(20)], 2.0) == []


# --- the controller's policy files and the actions counter (kernel-free)

def test_controller_rereads_policy_files_when_they_change(tmp_path: Any) -> None:
    from cgagent import host as hostmod
    from policies.controller import Controller

    d = os.path.join(str(tmp_path), "pol")
    os.makedirs(d)
    path = os.path.join(d, "mine.yaml")
    with open(path, "w") as f:
        f.write("name: mine\nlimits: {cpus: 0.5}\n")
    ctl = Controller(os.path.join(str(tmp_path), "state"), hostmod.detect(), [d])
    ctl.tick()
    assert ctl._policy("mine", "w") is not None and ctl._policy("mine", "w").limits.cpus == 0.5  # type: ignore[union-attr]
    with open(path, "w") as f:
        f.write("name: mine\nlimits: {cpus: 0.75}\n")
    os.utime(path, ns=(1, 10**18))   # a new mtime even within the file system's timestamp granularity
    ctl.tick()
    assert ctl._policy("mine", "w").limits.cpus == 0.75  # type: ignore[union-attr]
    os.unlink(path)
    ctl.tick()
    assert ctl._policy("mine", "w") is None


def test_policy_actions_counter_folds_the_events_log(tmp_path: Any) -> None:
    from cgagent import events
    from cgagent.state import Store
    from exporters.collectors import Scrape
    from exporters.collectors.policy import PolicyActions

    store = Store(os.path.join(str(tmp_path), "state"))
    store.ensure()
    col = PolicyActions()

    def counts() -> dict[tuple[str, str], float]:
        (fam,) = col.collect(Scrape(targets=[], records=[], store=store, oom=None))
        return {(ls.values["policy"], ls.values["action"]): v for ls, v in fam.samples}

    assert counts() == {}
    for action in ("cpu_step_up", "cpu_step_up", "cpu_step_down"):
        events.append(store.root, "policy", "w", policy="burstable", action=action)
    events.append(store.root, "update", "w", resources={})
    assert counts() == {("burstable", "cpu_step_up"): 2, ("burstable", "cpu_step_down"): 1}
    events.append(store.root, "policy", "v", policy="batch", action="memory_step_up")
    assert counts()[("batch", "memory_step_up")] == 1 and counts()[("burstable", "cpu_step_up")] == 2
    os.unlink(events.path(store.root))   # a new, shorter log: counted from its start
    events.append(store.root, "policy", "w", policy="burstable", action="oom_stop")
    assert counts() == {("burstable", "oom_stop"): 1}
