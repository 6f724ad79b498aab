"""Issue 14's acceptance "the same CLI test suite passes with the agent running and without it", inside
`make test` at the cost of a curated set rather than a second suite.

The CLI tests below run again in one pytest subprocess with CGAGENT_TEST_AGENT=1: the `cg` fixture
(tests/conftest.py) then starts an agent on each test's state dir, so that every CLI call the test
makes goes through the agent's API (cgagent/cli/thin.py), and fails the test if that agent cannot
launch, dies or leaves its socket. Each test here is one of them and passes, fails or skips as it did
in that run, with its own message. The set covers each command the thin client handles (run attached
and detached, ps, inspect, update, stop, rm, logs -f, events), exit codes and forwarded signals,
one-line errors, isolated workloads with images and volumes, restarts, OOM events, damaged records
(rm -f of one goes to the direct path), and runs under `nsenter --net`, which the agent must leave to
the direct path. Whole files run so by hand: `CGAGENT_TEST_AGENT=1 pytest tests/test_run.py ...`."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CURATED = (
    "tests/test_run.py::test_exit_code_passes_through_and_cgroup_is_removed",
    "tests/test_run.py::test_sigterm_is_forwarded",
    "tests/test_run.py::test_missing_command_exits_127",
    "tests/test_run.py::test_bad_input_one_line_nothing_created[--memory -5M]",
    "tests/test_run.py::test_name_in_use",
    "tests/test_run.py::test_update_changes_quota_live",
    "tests/test_run.py::test_stop_terminates_then_kills",
    "tests/test_run.py::test_sigkill_of_foreground_cli_leaves_a_managed_workload",
    "tests/test_isolation.py::test_exit_code_passes_through",
    "tests/test_isolation.py::test_volumes_and_read_only_root",
    "tests/test_isolation.py::test_rm_f_cleans_up_after_the_cli_is_killed",
    "tests/test_exec.py::test_exec_into_a_host_workload_joins_its_cgroup",
    "tests/test_run_grammar.py::test_an_image_named_as_a_host_command_runs_in_the_image",
    "tests/test_run_grammar.py::test_run_exit_codes_in_an_image",
    "tests/test_supervisor.py::test_on_failure_restarts_n_times_with_doubling_backoff",
    "tests/test_supervisor.py::test_logs_and_restart_errors_are_one_line",
    "tests/test_supervisor.py::test_stop_says_when_it_had_to_kill",
    "tests/test_supervisor.py::test_oom_event_names_the_victim_the_kernel_reported",
    "tests/test_state.py::test_a_damaged_record_is_named_and_does_not_hide_the_others[truncated]",
    "tests/test_state.py::test_events_command_survives_bad_lines",
    "tests/faults/test_damaged_state.py::test_rm_goes_on_past_names_that_fail",
    "tests/faults/test_damaged_state.py::test_an_image_workload_with_a_damaged_record_leaves_no_overlay",
    "tests/test_network_run.py::test_run_bridge_workloads_reach_each_other_by_name_and_published_port",
    # the agent's forked run process must hold none of the agent's fds (nor the caller's leaked one)
    "tests/security/test_fds.py::test_workdir_through_a_leaked_fd_is_refused",
    "tests/security/test_fds.py::test_run_foreground_does_not_inherit_fds[isolated]",
    "tests/security/test_fds.py::test_run_detached_does_not_inherit_fds[host]",
    "tests/security/test_fds.py::test_a_workload_holds_only_its_stdio[foreground-host]",
    "tests/security/test_fds.py::test_a_workload_holds_only_its_stdio[foreground-isolated]",
    "tests/security/test_fds.py::test_a_workload_holds_only_its_stdio[detached-host]",
    "tests/security/test_fds.py::test_a_workload_holds_only_its_stdio[detached-isolated]",
    "tests/security/test_names.py::test_rm_f_of_a_name_that_is_a_path_is_refused_and_kills_nothing[dot]",
    "tests/security/test_names.py::test_rm_f_of_a_name_that_is_a_path_is_refused_and_kills_nothing[up]",
    # the zygote's workload is in a session of its own too; a restart the setup refuses is one line
    "tests/security/test_terminal.py::test_run_without_a_tty_cannot_type_into_the_callers_terminal",
    "tests/security/test_volumes.py::test_a_volume_path_the_workload_made_a_symlink_is_refused_at_its_restart",
    # ps -q/--filter/--format and logs --tail through the thin client
    "tests/test_scripting.py::test_ps_for_scripts",
    "tests/test_scripting.py::test_logs_tail",
)

TIMEOUT = 600   # the set takes ~1-2 min on a loaded 2-CPU machine; a hang must not stall the suite


def _nodeid(case: ET.Element) -> str:
    return case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """nodeid -> (passed|failed|skipped, message) from one agent-mode run of CURATED."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups (CI runs as root)")
    d = tmp_path_factory.mktemp("agent-mode")
    xml = d / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={d / 'tmp'}",
           f"--junitxml={xml}", *CURATED]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, CGAGENT_TEST_AGENT="1"),
                             capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout or "")
        pytest.fail(f"the agent-mode run did not finish within {TIMEOUT}s:\n{out[-3000:]}")
    if not xml.exists():
        pytest.fail(f"the agent-mode run wrote no results (exit {res.returncode}):\n"
                    f"{res.stdout[-3000:]}{res.stderr[-2000:]}")
    got: dict[str, tuple[str, str]] = {}
    for case in ET.parse(xml).iter("testcase"):
        nodeid = _nodeid(case)
        outcome, message = got.get(nodeid, ("passed", ""))
        for child in case:
            # a teardown error (the agent died, left its socket) comes as an <error> of the same case
            if child.tag in ("failure", "error"):
                outcome, message = "failed", message + (child.get("message") or "") + "\n" + (child.text or "")
            elif child.tag == "skipped" and outcome == "passed":
                outcome, message = "skipped", child.get("message") or ""
        got[nodeid] = (outcome, message)
    return got


@pytest.mark.parametrize("nodeid", CURATED)
def test_cli_test_passes_through_the_agent(outcomes: dict[str, tuple[str, str]], nodeid: str) -> None:
    outcome, message = outcomes.get(nodeid, ("missing", "not in the agent-mode run's results (renamed?)"))
    if outcome == "skipped":
        pytest.skip(f"skipped in agent mode: {message}")
    assert outcome == "passed", f"{nodeid} with CGAGENT_TEST_AGENT=1: {outcome}\n{message[-4000:]}"
