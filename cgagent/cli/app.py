"""The full typer CLI: every command, help texts, tables and --json."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from cgagent.cli import options
from cgagent.errors import CgagentError

app = typer.Typer(
    name="cgagent",
    help="Run workloads under cgroup limits (cgroup v1/v2) and export what the kernel reports to Prometheus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

StateDir = Annotated[str | None, typer.Option("--state-dir", envvar="CGAGENT_STATE_DIR",
                                              help="Where records live (default /run/cgagent).")]
Driver = Annotated[str | None, typer.Option("--cgroup-driver", envvar="CGAGENT_CGROUP_DRIVER",
                                            help="cgroupfs or systemd (default: systemd when it is init).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _opt(field: str, *names: str) -> Any:
    return typer.Option(*names, help=options.HELP[field], show_default=False)


Cpus = Annotated[str | None, _opt("cpus", "--cpus")]
Shares = Annotated[str | None, _opt("cpu_shares", "--cpu-shares", "-c")]
Weight = Annotated[str | None, _opt("cpu_weight", "--cpu-weight")]
Period = Annotated[str | None, _opt("cpu_period", "--cpu-period")]
Memory = Annotated[str | None, _opt("memory", "--memory", "-m")]
Swap = Annotated[str | None, _opt("memory_swap", "--memory-swap")]
Pids = Annotated[str | None, _opt("pids_limit", "--pids-limit")]
CpusetCpus = Annotated[str | None, _opt("cpuset_cpus", "--cpuset-cpus")]
CpusetMems = Annotated[str | None, _opt("cpuset_mems", "--cpuset-mems")]


def _limits(**kw: str | None) -> dict[str, Any]:
    """Options -> validated ResourceSpec values (the pydantic spec; host checks come in plan())."""
    from cgagent.spec import from_options

    values: dict[str, Any] = from_options(kw).values()
    return values


def _store(state_dir: str | None) -> Any:
    from cgagent.state import Store

    return Store(state_dir)


def _host() -> Any:
    from cgagent import host

    return host.detect()


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    cmd: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
    cpus: Cpus = None, cpu_shares: Shares = None, cpu_weight: Weight = None, cpu_period: Period = None,
    memory: Memory = None, memory_swap: Swap = None, pids_limit: Pids = None,
    cpuset_cpus: CpusetCpus = None, cpuset_mems: CpusetMems = None,
    name: Annotated[str | None, typer.Option("--name", help="Workload name (default: generated).")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background under a supervisor.")] = False,
    rm: Annotated[bool, typer.Option("--rm", help="Remove the record when the workload exits.")] = False,
    cgroup_parent: Annotated[str | None, typer.Option(
        "--cgroup-parent", envvar="CGAGENT_CGROUP_PARENT",
        help="Parent cgroup: an absolute path (default /cgagent), or nested[:sub] under cgagent's own cgroup.")] = None,
    cgroup_driver: Driver = None,
    state_dir: StateDir = None,
) -> None:
    """Run CMD in its own cgroup with limits. Foreground runs pass its exit code through.

    Example: cgagent run --cpus 0.5 --memory 256M --name web -- python3 -m http.server
    """
    from cgagent.limits import plan
    from cgagent.runtime import RunRequest, run_detached, run_foreground

    h = _host()
    resources = plan(_limits(cpus=cpus, cpu_shares=cpu_shares, cpu_weight=cpu_weight, cpu_period=cpu_period,
                             memory=memory, memory_swap=memory_swap, pids_limit=pids_limit,
                             cpuset_cpus=cpuset_cpus, cpuset_mems=cpuset_mems), h)
    req = RunRequest(cmd=cmd, resources=resources, name=name, parent=cgroup_parent or "/cgagent",
                     driver=cgroup_driver, detach=detach, auto_remove=rm)
    store = _store(state_dir)
    if detach:
        print(run_detached(req, h, store))
        raise typer.Exit(0)
    raise typer.Exit(run_foreground(req, h, store))


@app.command()
def ps(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Show exited workloads too.")] = False,
    as_json: Json = False,
    state_dir: StateDir = None,
) -> None:
    """List workloads: status from the kernel, limits, OOM kills (the kernel's counter)."""
    from cgagent.cli import views

    rows = views.ps_rows(_host(), _store(state_dir), all_)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        views.print_table(rows, ["name", "status", "pid", "cpus", "memory", "pids_limit", "oom_kills",
                                 "exit_code", "created", "command"])


@app.command()
def stats(
    name: Annotated[list[str] | None, typer.Argument(help="Workloads to show (default: all running).")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Sampling interval for rates, seconds.")] = 0.5,
    as_json: Json = False,
    state_dir: StateDir = None,
) -> None:
    """Usage against limits: CPU %, throttled %, memory, PIDs, OOM kills."""
    from cgagent.cli import views

    views.stats(_host(), _store(state_dir), name or [], watch, interval, as_json)


@app.command()
def update(
    name: Annotated[str, typer.Argument(help="The workload to change.")],
    cpus: Cpus = None, cpu_shares: Shares = None, cpu_weight: Weight = None, cpu_period: Period = None,
    memory: Memory = None, memory_swap: Swap = None, pids_limit: Pids = None,
    cpuset_cpus: CpusetCpus = None, cpuset_mems: CpusetMems = None,
    state_dir: StateDir = None,
) -> None:
    """Change a running workload's limits live. Example: cgagent update web --cpus 0.2"""
    from cgagent.runtime import update as do_update

    values = _limits(cpus=cpus, cpu_shares=cpu_shares, cpu_weight=cpu_weight, cpu_period=cpu_period,
                     memory=memory, memory_swap=memory_swap, pids_limit=pids_limit,
                     cpuset_cpus=cpuset_cpus, cpuset_mems=cpuset_mems)
    if not values:
        raise CgagentError("no limit given", "add at least one, e.g. --cpus 0.2")
    rec = do_update(_store(state_dir), _host(), name, values)
    print(f"{rec.name}: {json.dumps(rec.resources)}")


@app.command()
def stop(
    names: Annotated[list[str], typer.Argument(help="Workloads to stop.")],
    time_: Annotated[float, typer.Option("--time", "-t", help="Seconds to wait after SIGTERM before SIGKILL.")] = 10,
    state_dir: StateDir = None,
) -> None:
    """SIGTERM the workload, SIGKILL what is left after --time seconds."""
    from cgagent.runtime import stop as do_stop

    store, h = _store(state_dir), _host()
    for n in names:
        do_stop(store, h, n, time_)
        print(n)


@app.command()
def rm(
    names: Annotated[list[str], typer.Argument(help="Workloads to remove.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Kill it first if it is running.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Remove workloads: their cgroup and their record."""
    from cgagent.runtime import remove

    store, h = _store(state_dir), _host()
    for n in names:
        remove(store, h, n, force)
        print(n)


@app.command()
def doctor(as_json: Json = False) -> None:
    """What this host offers: cgroup mode, usable controllers, init system, and the fix for gaps."""
    from cgagent.cli import views

    views.doctor(_host(), as_json)


@app.command()
def version() -> None:
    """Print the version."""
    from cgagent import __version__

    print(__version__)


def main(argv: list[str]) -> int:
    try:  # typer >= 0.25 vendors click
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as click_exc  # type: ignore[no-redef]

    try:
        rv = app(args=argv, prog_name="cgagent", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except CgagentError as e:
        from cgagent.cli.errors import report

        return report(e)
    except click_exc.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "cgagent"
        print(f"cgagent: error: {e.format_message()} (see `{cmd} --help`)", file=sys.stderr)
        return 2
    except typer.Abort:
        return 130
    except KeyboardInterrupt:
        return 130


