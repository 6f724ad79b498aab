"""The full typer CLI: every command, help texts, tables and --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
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
                                            help="cgroupfs or systemd (default: systemd when it is init). "
                                            "systemd: a transient scope cgagent-NAME.scope; limits are unit "
                                            "properties, so they survive daemon-reload.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# Later commands always use the driver a workload was created with (its record says which);
# given here, it selects/asserts that driver. No envvar: a run default must not break `stop`.
DriverOf = Annotated[str | None, typer.Option("--cgroup-driver", help="cgroupfs or systemd: only workloads "
                                              "created with this driver (each keeps the driver it was run with).")]


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


def _check_driver(store: Any, names: list[str], driver: str | None) -> None:
    """--cgroup-driver on a command for existing workloads: each must have been created with it."""
    if driver is None:
        return
    from cgagent.runtime import DRIVERS

    if driver not in DRIVERS:
        raise CgagentError(f"unknown cgroup driver {driver!r}", "use --cgroup-driver cgroupfs or systemd")
    for n in names:
        rec = store.load(n)
        if rec.driver != driver:
            raise CgagentError(f"workload {n!r} runs under the {rec.driver} driver, not {driver}",
                               "drop --cgroup-driver: each workload keeps the driver it was run with")


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
        help="Parent cgroup: an absolute path (default /cgagent) or a systemd slice, the same place under either "
             "driver (/a/b = a-b.slice, which lives in a.slice/a-b.slice; /cgagent = cgagent.slice); or "
             "nested[:sub] under cgagent's own cgroup (cgroupfs driver).")] = None,
    cgroup_driver: Driver = None,
    state_dir: StateDir = None,
    rootfs: Annotated[str | None, typer.Option("--rootfs", help="Run in this root directory (isolated).")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Mount the root filesystem read-only.")] = False,
    volume: Annotated[list[str] | None, typer.Option(
        "--volume", "-v", help="Bind mount HOST:CTR[:OPTS], OPTS ro,dev: read-only; device nodes usable "
        "(volumes are nodev by default).")] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", help="Hostname inside (default: the name).")] = None,
    net: Annotated[str | None, typer.Option(
        "--net", "--network", help="bridge (default; env CGAGENT_DEFAULT_NET), none (lo only), host, "
        "container:NAME, or a network's name (`cgagent network ls`).")] = None,
    publish: Annotated[list[str] | None, typer.Option(
        "--publish", "-p",
        help="\\[IP:]HOSTPORT:CTRPORT\\[/tcp|udp] on a bridge network (repeatable); 127.0.0.1: the host only.")] = None,
    init: Annotated[bool, typer.Option("--init", help="Run tini as PID 1 (reaps, forwards signals).")] = False,
    userns: Annotated[bool, typer.Option("--userns", help="Map root inside to host uid/gid 100000+ (a user "
                                         "namespace; image layers are mounted idmapped).")] = False,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Set KEY=VALUE inside (repeatable).")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="USER[:GROUP] or UID[:GID] inside.")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w", help="Working directory inside.")] = None,
    cap_add: Annotated[list[str] | None, typer.Option("--cap-add", help="Add a capability (or ALL).")] = None,
    cap_drop: Annotated[list[str] | None, typer.Option("--cap-drop", help="Drop a capability (or ALL).")] = None,
    security_opt: Annotated[list[str] | None, typer.Option(
        "--security-opt", help="seccomp=unconfined turns the default seccomp filter off.")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help=options.HELP["device"])] = None,
    device_cgroup_rule: Annotated[list[str] | None, typer.Option(
        "--device-cgroup-rule", help=options.HELP["device_cgroup_rule"])] = None,
    root: Annotated[str | None, typer.Option(
        "--root", help="Image store root (default $CGAGENT_ROOT or /var/lib/cgagent).")] = None,
    restart: Annotated[str | None, typer.Option(
        "--restart", help="no (default), on-failure[:N] or always: the supervisor restarts it, with backoff.",
        show_default=False)] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Start from this policy's limits (options given "
                                               "here override them); `cgagent serve` applies its behaviour.")] = None,
    policy_dir: Annotated[list[str] | None, typer.Option(
        "--policy-dir", help="Also look for policies in this directory (repeatable).")] = None,
    preserve_fds: Annotated[int, typer.Option(
        "--preserve-fds", help=options.PRESERVE_FDS_HELP, show_default=False)] = 0,
) -> None:
    """Run CMD in its own cgroup with limits; with IMAGE before --, isolated in its own namespaces on an
    overlay of the image. Foreground runs pass its exit code through.

    Example: cgagent run --cpus 0.5 --memory 256M --name web -- python3 -m http.server

    Example: cgagent run --rm --hostname box busybox:latest -- sh -c 'hostname; ps'
    """
    from cgagent.launch import preserve_fds as preserve_fds_count
    from cgagent.limits import plan
    from cgagent.runtime import RunRequest, run_detached, run_foreground

    h = _host()
    values = _limits(cpus=cpus, cpu_shares=cpu_shares, cpu_weight=cpu_weight, cpu_period=cpu_period,
                     memory=memory, memory_swap=memory_swap, pids_limit=pids_limit,
                     cpuset_cpus=cpuset_cpus, cpuset_mems=cpuset_mems)
    if policy is not None:
        from policies.runopts import resolve

        values, policy_restart = resolve(policy, policy_dir, values, state_dir, name)
        if restart is None and not rm:
            restart = policy_restart   # the policy's, unless --restart (or --rm, which excludes it) is given
    resources = plan(values, h)
    from cgagent.cli.options import split_image
    from cgagent.isolation.spec import for_run

    image, cmd = split_image(cmd)
    iso = {"rootfs": rootfs, "read_only": read_only, "volumes": volume, "hostname": hostname, "net": net,
           "publish": publish,
           "init": init, "userns": userns, "env": env, "user": user, "workdir": workdir, "cap_add": cap_add,
           "cap_drop": cap_drop,
           "security_opt": security_opt, "root": root, "devices": device}
    cmd, name, isolation = for_run(image, cmd, {k: v for k, v in iso.items() if v}, name)
    from cgagent.devrules import with_rules

    resources = with_rules(resources, isolation, device_cgroup_rule)
    req = RunRequest(cmd=cmd, resources=resources, name=name, parent=cgroup_parent or "/cgagent",
                     driver=cgroup_driver, detach=detach, auto_remove=rm, isolation=isolation, policy=policy,
                     restart=restart or "no", preserve_fds=preserve_fds_count(preserve_fds))
    store = _store(state_dir)
    if detach:
        print(run_detached(req, h, store))
        raise typer.Exit(0)
    raise typer.Exit(run_foreground(req, h, store))


@app.command()
def ps(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Show exited workloads too.")] = False,
    as_json: Json = False,
    cgroup_driver: DriverOf = None,
    state_dir: StateDir = None,
) -> None:
    """List workloads: status from the kernel, limits, OOM kills (the kernel's counter)."""
    from cgagent.cli import views

    _check_driver(None, [], cgroup_driver)
    rows = [r for r in views.ps_rows(_host(), _store(state_dir), all_)
            if cgroup_driver is None or r.get("driver") == cgroup_driver]
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        views.print_table(rows, ["name", "status", "pid", "cpus", "memory", "pids_limit", "oom_kills",
                                 "exit_code", "created", "command"])


@app.command()
def inspect(
    names: Annotated[list[str], typer.Argument(help="Workloads to show.")],
    state_dir: StateDir = None,
) -> None:
    """Print workloads' records as a JSON list, each with live_status (what the kernel says now)."""
    from cgagent.api.views import record_view

    store, h = _store(state_dir), _host()
    print(json.dumps([record_view(store, h, n) for n in names], indent=1, sort_keys=True))


@app.command()
def stats(
    name: Annotated[list[str] | None, typer.Argument(help="Workloads to show (default: all running).")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Sampling interval for rates, seconds.")] = 0.5,
    as_json: Json = False,
    cgroup_driver: DriverOf = None,
    state_dir: StateDir = None,
) -> None:
    """Usage against limits: CPU %, throttled %, memory, PIDs, OOM kills."""
    from cgagent.cli import views

    store, h = _store(state_dir), _host()
    names = name or []
    _check_driver(store, names, cgroup_driver)
    if cgroup_driver and not names:
        from cgagent.runtime import live_status

        names = [r.name for r in store.all() if r.driver == cgroup_driver and live_status(h, r) == "running"]
        if not names:
            return
    views.stats(h, store, names, watch, interval, as_json)


@app.command()
def update(
    name: Annotated[str, typer.Argument(help="The workload to change.")],
    cpus: Cpus = None, cpu_shares: Shares = None, cpu_weight: Weight = None, cpu_period: Period = None,
    memory: Memory = None, memory_swap: Swap = None, pids_limit: Pids = None,
    cpuset_cpus: CpusetCpus = None, cpuset_mems: CpusetMems = None,
    cgroup_driver: DriverOf = None,
    state_dir: StateDir = None,
) -> None:
    """Change a running workload's limits live. Example: cgagent update web --cpus 0.2"""
    from cgagent.runtime import update as do_update

    _check_driver(_store(state_dir), [name], cgroup_driver)

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
    cgroup_driver: DriverOf = None,
    state_dir: StateDir = None,
) -> None:
    """SIGTERM the workload, SIGKILL what is left after --time seconds."""
    from cgagent.runtime import stop as do_stop

    raise typer.Exit(_each(names, cgroup_driver, state_dir, lambda store, h, n: do_stop(store, h, n, time_)))


@app.command()
def rm(
    names: Annotated[list[str], typer.Argument(help="Workloads to remove.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Kill it first if it is running.")] = False,
    cgroup_driver: DriverOf = None,
    state_dir: StateDir = None,
) -> None:
    """Remove workloads: their cgroup and their record. Goes on past a name that fails (one line each,
    exit 1 or the failure's code). With -f, also a damaged or deleted record's leftovers (see prune)."""
    from cgagent.runtime import remove

    raise typer.Exit(_each(names, cgroup_driver, state_dir, lambda store, h, n: remove(store, h, n, force)))


def _each(names: list[str], driver: str | None, state_dir: str | None, act: Callable[[Any, Any, str], None]) -> int:
    """Apply `act` to each named workload in turn, printing each name as it is done; a name that
    fails is reported in one line and the rest are still done (as docker does). -> exit code."""
    from cgagent.cli.errors import full_or_read_only, report

    store, h = _store(state_dir), _host()
    code = 0
    for n in names:
        try:
            try:
                _check_driver(store, [n], driver)
                act(store, h, n)
            except OSError as e:
                raise full_or_read_only(e) or e from None
        except CgagentError as e:
            code = report(e)
            continue
        print(n, flush=True)
    return code


@app.command()
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only list what would be removed.")] = False,
    root: Annotated[str | None, typer.Option(
        "--root", help="Image store root whose overlay dirs to check (default $CGAGENT_ROOT or /var/lib/cgagent).")
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Remove what workloads left without a valid record: damaged records, orphaned cgroups (their
    processes are killed), overlay dirs, network attachments, temp files and stop flags. Only what
    cgagent's own state says it made, and only under cgagent's cgroup parents; workloads with a
    valid record are never touched (remove those with `cgagent rm`). Not interactive.

    Example: cgagent prune --dry-run; cgagent prune
    """
    from cgagent import prune as pr
    from cgagent.runtime import require_root

    store, h = _store(state_dir), _host()
    if dry_run:
        for it in pr.find(store, h, image_root=root):
            print(f"would remove {it.line()}", flush=True)
        return
    require_root("cgagent prune")
    with store.lock():
        items = pr.find(store, h, image_root=root)
        for it in items:
            print(it.line(), flush=True)
        failed = pr.remove(store, items)
    for line in failed:
        print(f"cgagent: error: could not remove {line}", file=sys.stderr)
    if failed:
        raise typer.Exit(1)


@app.command()
def doctor(as_json: Json = False) -> None:
    """What this host offers: cgroup mode, usable controllers, init system, and the fix for gaps."""
    from cgagent.cli import views

    views.doctor(_host(), as_json)


from cgagent.cli.image_cmds import image_app, images  # noqa: E402

app.add_typer(image_app, name="image")

from cgagent.cli.exec_cmd import exec_  # noqa: E402

app.command("exec", context_settings={"allow_interspersed_args": False})(exec_)

from cgagent.cli.logs_cmd import logs  # noqa: E402

app.command("logs")(logs)

from cgagent.cli.network_cmds import network_app  # noqa: E402

app.add_typer(network_app, name="network")
app.command("images")(images)

from cgagent.cli.policy_cmds import policy_app  # noqa: E402

app.add_typer(policy_app, name="policy")


@app.command()
def serve(
    listen: Annotated[str | None, typer.Option("--listen", help="HOST:PORT to serve /metrics and /healthz on "
                                               "(default 127.0.0.1:9730).")] = None,
    web_config_file: Annotated[str | None, typer.Option(
        "--web.config.file", help="TLS / client-certificate / basic-auth config (Prometheus exporter-toolkit format).")
    ] = None,
    watch_cgroup: Annotated[list[str] | None, typer.Option(
        "--watch-cgroup", help="Also export this cgroup and all below it (e.g. /system.slice); repeatable.")] = None,
    per_cpu: Annotated[bool, typer.Option("--per-cpu", help="Export per-CPU usage series too (cgroup v1).")] = False,
    state_dir: StateDir = None,
    policy_dir: Annotated[list[str] | None, typer.Option(
        "--policy-dir", help="Also read policies from this directory (repeatable; after the built-ins and "
        "/etc/cgagent/policies.d).")] = None,
    api_socket: Annotated[str | None, typer.Option(
        "--api-socket", envvar="CGAGENT_API_SOCKET", help="Serve the local API on this unix socket (default "
        "STATE_DIR/agent.sock, mode 0600).")] = None,
    api_group: Annotated[str | None, typer.Option(
        "--api-group", envvar="CGAGENT_API_GROUP", help="Let this group's members call the API too (the socket "
        "becomes 0660 and theirs; membership is root-equivalent, as the docker group's).")] = None,
) -> None:
    """Serve Prometheus metrics of every workload (and --watch-cgroup trees); log OOM kills as they happen;
    apply the workloads' policies (throttling and OOM responses) live; serve the local API (run, ps,
    inspect, update, stop, rm, logs, events) that the CLI uses when the agent runs.

    Example: cgagent serve --watch-cgroup /system.slice   # then scrape http://127.0.0.1:9730/metrics

    Example: curl --unix-socket /run/cgagent/agent.sock http://x/v1/ps
    """
    from cgagent.network.workload import startup_prune
    from exporters.serve import serve as do_serve
    from exporters.web import DEFAULT_LISTEN

    startup_prune()   # connections of workloads that died while no agent ran
    raise typer.Exit(do_serve(listen or DEFAULT_LISTEN, web_config_file, watch_cgroup or [], per_cpu,
                              state_dir, policy_dir, api_socket, api_group))


@app.command()
def events(
    name: Annotated[str | None, typer.Argument(help="Only this workload's events.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")] = False,
    as_json: Json = False,
    state_dir: StateDir = None,
) -> None:
    """Show the durable events log: workload start/exit, OOM kills, limit changes."""
    from cgagent.cli import eventlog

    eventlog.show(_store(state_dir).root, name, follow, as_json)


@app.command()
def version() -> None:
    """Print the version."""
    from cgagent import __version__

    print(__version__)


def main(argv: list[str]) -> int:
    from typer._click import exceptions as click_exc  # typer >= 0.29 vendors click (pyproject pins it)

    try:
        rv = app(args=argv, prog_name="cgagent", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except CgagentError as e:
        from cgagent.cli.errors import report

        return report(e)
    except OSError as e:
        from cgagent.cli.errors import full_or_read_only, report

        err = full_or_read_only(e)
        if err is None:
            raise
        return report(err)
    except click_exc.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "cgagent"
        print(f"cgagent: error: {e.format_message()} (see `{cmd} --help`)", file=sys.stderr)
        return 2
    except typer.Abort:
        return 130
    except KeyboardInterrupt:
        return 130


