"""A workload's name becomes a cgroup path, a record's file name and a unit name: a name that is a
path must be refused before anything is looked for by it.

`rm -f NAME` goes on to what a damaged or deleted record left (tests/faults/test_damaged_state.py)
when NAME has no record, and used to do so with NAME as given: `rm -f .` found the cgroup parent
itself (`<parent>/.`) and killed every workload in it. The victim here is a workload of this test's
own, under the test's cgroup parent; through the agent (tests/test_agent_mode.py) the same request
is the API's DELETE."""

from __future__ import annotations

import pytest

from tests.isolated import Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures


@pytest.mark.parametrize("name", [".", "victim/..", "victim/.", "victim\n"], ids=["dot", "up", "slash-dot", "newline"])
def test_rm_f_of_a_name_that_is_a_path_is_refused_and_kills_nothing(box: Box, name: str) -> None:
    ok(box.run("run", "-d", "--name", "victim", "--", "sleep", "1000"))
    try:
        wait_for(lambda: any(w["name"] == "victim" and w["status"] == "running" for w in ps_json(box)))
        r = box.run("rm", "-f", name)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and "is not allowed" in lines[0], r
        assert "Traceback" not in r.stderr
        [victim] = [w for w in ps_json(box) if w["name"] == "victim"]
        assert victim["status"] == "running", victim
    finally:
        ok(box.run("rm", "-f", "victim"))
