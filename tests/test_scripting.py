"""Issue 13 items 5 and 6: output for scripts (ps -q/--filter/--format, --json in machine units,
logs --tail, stats --no-stream) and shell completion loaded in real bash, zsh and fish."""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Env

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def ok(cg: Env, *args: str) -> str:
    r = cg.run(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def one_line_error(cg: Env, *args: str) -> str:
    r = cg.run(*args)
    assert r.returncode != 0 and r.stdout == "", (args, r.stdout, r.stderr)
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_ps_for_scripts(cg: Env) -> None:
    ok(cg, "run", "-d", "--name", "web", "--cpus", "0.5", "--memory", "64M", "--", "sleep", "1000")
    ok(cg, "run", "-d", "--name", "worker", "--", "sleep", "1000")
    assert cg.run("run", "--name", "job", "--", "sh", "-c", "exit 3").returncode == 3
    try:
        rows = {r["name"]: r for r in json.loads(ok(cg, "ps", "-a", "--json"))}
        web = rows["web"]
        # machine units: CPUs and bytes as numbers, times in RFC 3339 UTC (as stats --json and inspect)
        assert web["cpus"] == 0.5 and web["memory"] == 64 << 20 and rows["worker"]["memory"] is None
        assert RFC3339_UTC.match(web["created"]), web["created"]
        created = calendar.timegm(time.strptime(web["created"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert abs(created - time.time()) < 3600
        assert isinstance(web["pid"], int) and web["labels"] == {}
        assert rows["job"]["exit_code"] == 3 and rows["job"]["status"] == "exited"
        # the table keeps the human units
        assert "64.0MiB" in ok(cg, "ps") and "0.5" in ok(cg, "ps")

        assert ok(cg, "ps", "-q") == "web\nworker\n"
        assert ok(cg, "ps", "-a", "--quiet") == "job\nweb\nworker\n"
        assert ok(cg, "ps", "-a", "-q", "--filter", "status=exited") == "job\n"
        assert ok(cg, "ps", "-q", "--filter", "name=or") == "worker\n"
        # values of one key are alternatives; different keys must all match
        assert ok(cg, "ps", "-a", "-q", "--filter", "name=job", "--filter", "name=web") == "job\nweb\n"
        assert ok(cg, "ps", "-a", "-q", "--filter", "name=job", "--filter", "status=running") == ""
        assert ok(cg, "ps", "-q", "--filter", "label=tier") == ""   # no workload has labels here
        assert ok(cg, "ps", "--format", "{{.Name}} {{.Status}} {{.Memory}}") == \
            f"web running {64 << 20}\nworker running <nil>\n"
        assert ok(cg, "ps", "-a", "--filter", "status=exited", "--format", "{{.name}}:{{.ExitCode}}") == "job:3\n"
        assert ok(cg, "ps", "--filter", "name=web", "--format", "{{json .Cpus}}") == "0.5\n"

        assert "--filter" in one_line_error(cg, "ps", "--filter", "colour=red")
        assert "status" in one_line_error(cg, "ps", "--filter", "status=sleepy")
        assert "Nope" in one_line_error(cg, "ps", "--format", "{{.Name}} {{.Nope}}")
        assert "only one" in one_line_error(cg, "ps", "-q", "--json")
    finally:
        ok(cg, "rm", "-f", "web", "worker", "job")


def test_logs_tail(cg: Env) -> None:
    ok(cg, "run", "-d", "--name", "lines", "--", "sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; printf last")
    try:
        assert ok(cg, "wait", "lines") == "0\n"
        assert ok(cg, "logs", "lines") == "line1\nline2\nline3\nline4\nline5\nlast"
        assert ok(cg, "logs", "--tail", "2", "lines") == "line5\nlast"
        assert ok(cg, "logs", "-n", "1", "lines") == "last"
        assert ok(cg, "logs", "--tail", "0", "lines") == ""
        assert ok(cg, "logs", "--tail", "all", "lines") == ok(cg, "logs", "lines")
        assert ok(cg, "logs", "--tail", "99", "-f", "lines") == ok(cg, "logs", "lines")   # ended: -f returns
        assert "--tail" in one_line_error(cg, "logs", "--tail", "-3", "lines")
        assert "--tail" in one_line_error(cg, "logs", "--tail", "x", "lines")
    finally:
        ok(cg, "rm", "-f", "lines")


def test_stats_no_stream_is_one_sample_in_machine_units(cg: Env) -> None:
    ok(cg, "run", "-d", "--name", "st", "--cpus", "0.5", "--memory", "64M", "--", "sleep", "1000")
    try:
        # --no-stream wins over --watch: one sample, then the command returns (no timeout needed)
        out = ok(cg, "stats", "--no-stream", "--watch", "--json", "st")
        assert len(out.splitlines()) == 1
        row = json.loads(out)[0]
        assert row["cpu_limit"] == 0.5 and row["memory_limit"] == 64 << 20 and isinstance(row["memory_usage"], int)
        assert "0.5" in ok(cg, "stats", "--no-stream", "st")
    finally:
        ok(cg, "rm", "-f", "st")


# --- completion: the scripts as the shells load them, asked what they would offer


def _shell_env(cg: Env) -> dict[str, str]:
    """PATH with this venv's `cgagent` script first: the completion scripts call `cgagent`."""
    bindir = os.path.dirname(sys.executable)
    if not os.access(os.path.join(bindir, "cgagent"), os.X_OK):
        pytest.skip(f"no cgagent console script next to {sys.executable} (make deps installs it)")
    return cg.env(PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", HOME=cg.state_dir)


def _shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {name})")
    return path


@pytest.fixture
def webapp(cg: Env) -> Iterator[Env]:
    """A test state dir with a workload to complete, and names that must not be offered."""
    ok(cg, "run", "-d", "--name", "webapp", "--", "sleep", "1000")
    yield cg
    ok(cg, "rm", "-f", "webapp")


def _complete(shell: str, cg: Env, script: str) -> list[str]:
    r = subprocess.run([_shell(shell), "-c", script], env=_shell_env(cg), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (shell, r.stdout, r.stderr)
    return r.stdout.split()


def test_bash_completion_completes_commands_options_and_workload_names(webapp: Env) -> None:
    cg = webapp
    load = 'source <(cgagent completion bash) && f=$(complete -p cgagent | sed "s/.* -F \\([^ ]*\\) .*/\\1/") && '

    def ask(*words: str) -> list[str]:
        arr = " ".join(f"'{w}'" for w in words)
        return _complete("bash", cg, load + f'COMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; '
                         '"$f" cgagent; printf "%s\\n" "${COMPREPLY[@]}"')

    assert ask("cgagent", "stop", "web") == ["webapp"]
    assert ask("cgagent", "logs", "-") and "--tail" in ask("cgagent", "logs", "--t")
    assert "completion" in ask("cgagent", "comp")
    assert ask("cgagent", "network", "rm", "brid") == ["bridge"]
    assert ask("cgagent", "ps", "--f") == ["--filter", "--format"]
    assert ask("cgagent", "completion", "z") == ["zsh"]


def test_zsh_completion_loads_and_completes_a_workload_name(webapp: Env) -> None:
    # compinit's real compdef registers the function; zsh then calls it with $words and $CURRENT set.
    # _arguments only exists inside a completion widget (a terminal): here it prints what it is given.
    script = ("autoload -U compinit && compinit -u -D && source <(cgagent completion zsh) && "
              "[[ $_comps[cgagent] == _cgagent_completion ]] && "
              "_arguments() { print -rl -- \"$@\" } && words=(cgagent inspect web) && CURRENT=3 && "
              "_cgagent_completion")
    out = " ".join(_complete("zsh", webapp, script))
    assert '"webapp"' in out and "worker" not in out


def test_fish_completion_completes_a_workload_name(webapp: Env) -> None:
    # complete -C asks fish's own completion machinery, as a Tab would
    out = _complete("fish", webapp, "cgagent completion fish | source; and complete -C 'cgagent rm we'")
    assert out == ["webapp"]


def test_completion_of_an_unknown_shell_is_one_line(cg: Env) -> None:
    assert "bash, zsh, fish" in one_line_error(cg, "completion", "tcsh")
    # click's documented way gives the bash script too
    r = subprocess.run([sys.executable, "-m", "cgagent"], env=cg.env(_CGAGENT_COMPLETE="bash_source"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "complete -o default -F _cgagent_completion cgagent" in r.stdout, r.stderr
