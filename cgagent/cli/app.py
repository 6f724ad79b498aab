"""The full typer CLI: every command, help texts, tables and --json."""

from __future__ import annotations

import inspect as pyinspect
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from cgagent.cli import options, serveflags
from cgagent.errors import CgagentError
from cgagent.procopts import STOP_TIME_HELP

app = typer.Typer(
    name="cgagent",
    help="Run workloads under cgroup limits (cgroup v1/v2) and export what the kernel reports to Prometheus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _top(version: Annotated[bool, typer.Option(
        "--version", callback=serveflags.version_printer("cgagent version {}"), is_eager=True,
        help="Print the version and exit (as `cgagent version`).")] = False) -> None:
    """The options before a command (typer takes them from this callback)."""


StateDir = Annotated[str | None, typer.Option("--state-dir", envvar="CGAGENT_STATE_DIR",
                                              help=options.STATE_DIR_HELP)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# Later commands always use the driver a workload was created with (its record says which);
# given here, it selects/asserts that driver. No envvar: a run default must not break `stop`.
DriverOf = Annotated[str | None, typer.Option("--cgroup-driver", help="cgroupfs or systemd: only workloads "
                                              "created with this driver (each keeps the driver it was run with).")]


def _table_options(*, update_only: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Put the options of cgagent.runflags.OPTIONS (all, or those `update` takes) where the command
    has **kwargs: typer reads a command's parameters from its signature."""
    from cgagent.runflags import OPTIONS

    types: dict[str, Any] = {"flag": bool, "value": str | None, "list": list[str] | None}
    kw = pyinspect.Parameter.KEYWORD_ONLY
    generated = [pyinspect.Parameter(o.name, kw, default=False if o.kind == "flag" else None,
                                     annotation=Annotated[types[o.kind], typer.Option(*o.flags, help=o.help_text(),
                                                                                       show_default=False)])
                 for o in OPTIONS if o.update or not update_only]

    def put(fn: Callable[..., None]) -> Callable[..., None]:
        sig = pyinspect.signature(fn, eval_str=True)
        params = [q for p in sig.parameters.values()
                  for q in (generated if p.kind is pyinspect.Parameter.VAR_KEYWORD else [p])]
        fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return fn
    return put


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


class _RunCommand(TyperCommand):
    """`run`, whose words must keep the `--` that ended its options (click drops it): `-- CMD` is a
    host command, `CMD` an image (cgagent.runflags.split_image)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[_DASHED] = _ended_by_dashes(self, ctx, args)
        return super().parse_args(ctx, args)


_DASHED = "cgagent.run.dashed"


def _ended_by_dashes(cmd: Any, ctx: Any, args: list[str]) -> bool:
    """Whether click's parser ends `args`' options at a `--` (not at a word, nor at a `--` given as an
    option's value: then what comes before it lacks that value, and does not parse on its own)."""
    from typer._click import exceptions as click_exc

    try:
        opts, rest, _order = cmd.make_parser(ctx).parse_args(args=list(args))
        n = len(args) - len(opts.get("cmd") or ()) - len(rest)   # the parser also fills the `cmd` argument
        if n == 0 or args[n - 1] != "--":
            return False
        cmd.make_parser(ctx).parse_args(args=list(args[:n - 1]))
    except click_exc.UsageError:
        return False   # super().parse_args says what is wrong
    return True


@app.command(cls=_RunCommand, context_settings={"allow_interspersed_args": False})
@_table_options(update_only=False)
def run(
    ctx: typer.Context,
    cmd: Annotated[list[str], typer.Argument(metavar="IMAGE [CMD] | -- CMD", help=(
        "An image and the command to run in it (default: the image's); or, after --, a command of the host "
        "(or of --rootfs)."))],
    **values: Any,
) -> None:
    """Run IMAGE's command (or CMD) isolated in its own namespaces on an overlay of the image, as
    `docker run IMAGE [CMD]` does; `run -- CMD` runs a command of the host (or of --rootfs) instead,
    with its limits only. A first word is never looked up on the host's PATH: it names an image.

    Exit codes, as Docker's: the workload's own; 125 when cgagent itself fails (usage, bad input);
    126 when the command cannot be executed; 127 when it is not found.

    Example: cgagent run --rm --hostname box busybox sh -c 'hostname; ps'

    Example: cgagent run --cpus 0.5 --memory 256M --name web -- python3 -m http.server
    """
    from cgagent.cli import fastrun

    image, cmd = options.split_image(["--", *cmd] if ctx.meta.get(_DASHED) else cmd)
    raise typer.Exit(fastrun.execute(fastrun.Parsed(values, cmd, image)))


@app.command()
def ps(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Show exited workloads too.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the names.")] = False,
    filter_: Annotated[list[str] | None, typer.Option(
        "--filter", help="name=PART, status=STATUS or label=KEY[=VALUE]; repeatable (the values of one key "
        "are alternatives, labels must all match).")] = None,
    format_: Annotated[str | None, typer.Option("--format", help="A Go template per workload over --json's "
                                                "fields, e.g. '{{.Name}} {{.Status}} {{.Memory}}'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (bytes, CPUs as numbers, RFC 3339 UTC "
                                          "times) instead of a table.")] = False,
    cgroup_driver: DriverOf = None,
    state_dir: StateDir = None,
) -> None:
    """List workloads: status from the kernel, limits, OOM kills (the kernel's counter).

    Example: cgagent ps -a --filter status=exited --format '{{.Name}} {{.ExitCode}}'
    """
    from cgagent.api.views import ps_rows
    from cgagent.cli import psview

    _check_driver(None, [], cgroup_driver)
    psview.parse_filters(filter_ or [])   # a bad filter is refused before the workloads are read
    rows = [r for r in ps_rows(_host(), _store(state_dir), all_)
            if cgroup_driver is None or r.get("driver") == cgroup_driver]
    psview.show(rows, quiet=quiet, filters=filter_, fmt=format_, as_json=as_json)


@app.command()
def inspect(
    names: Annotated[list[str], typer.Argument(help="Workloads to show.")],
    format_: Annotated[str | None, typer.Option("--format", "-f", help="A Go template per workload, e.g. "
                                                "'{{.State.Pid}}' or '{{json .NetworkSettings}}'.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Print workloads as a JSON list in docker inspect's shape (State, HostConfig with the limits the
    kernel holds now, NetworkSettings, Mounts, Config), plus Cgroups (path per hierarchy), Namespaces
    (inode per type, as lsns prints them) and Cgagent (the raw record).

    Example: cgagent inspect --format '{{.State.Pid}} {{.NetworkSettings.IPAddress}}' web
    """
    from cgagent.api.views import inspect_view
    from cgagent.cli.gotemplate import show_inspect

    store, h = _store(state_dir), _host()
    show_inspect([inspect_view(store, h, n) for n in names], format_)


@app.command()
def stats(
    name: Annotated[list[str] | None, typer.Argument(help="Workloads to show (default: all running).")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second until Ctrl-C.")] = False,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="One sample and exit (the default; as docker "
                                            "stats --no-stream, it overrides --watch).")] = False,
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
    views.stats(h, store, names, watch and not no_stream, interval, as_json)


@app.command()
@_table_options(update_only=True)
def update(
    name: Annotated[str, typer.Argument(help="The workload to change.")],
    cgroup_driver: DriverOf = None,
    state_dir: StateDir = None,
    **limits: Any,
) -> None:
    """Change a running workload's limits live. Example: cgagent update web --cpus 0.2"""
    from cgagent.runflags import limit_values
    from cgagent.runtime import update as do_update

    _check_driver(_store(state_dir), [name], cgroup_driver)

    values = limit_values(limits)
    if not values:
        raise CgagentError("no limit given", "add at least one, e.g. --cpus 0.2")
    rec = do_update(_store(state_dir), _host(), name, values)
    print(f"{rec.name}: {json.dumps(rec.resources)}")


@app.command()
def stop(
    names: Annotated[list[str], typer.Argument(help="Workloads to stop.")],
    time_: Annotated[float | None, typer.Option("--time", "-t", help=STOP_TIME_HELP)] = None,
    cgroup_driver: DriverOf = None,
    state_dir: StateDir = None,
) -> None:
    """Send the workload its stop signal (--stop-signal of run, default SIGTERM), SIGKILL what is left
    after --time seconds."""
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
    """cgagent.cli.each.each with --cgroup-driver checked for each name. -> exit code."""
    from cgagent.cli.each import each

    store, h = _store(state_dir), _host()

    def one(n: str) -> None:
        _check_driver(store, [n], driver)
        act(store, h, n)
    return each(names, one)


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
from cgagent.cli.attach_cmd import attach  # noqa: E402

app.command("attach")(attach)

from cgagent.cli.logs_cmd import logs  # noqa: E402

app.command("logs")(logs)

from cgagent.cli.network_cmds import network_app  # noqa: E402

app.add_typer(network_app, name="network")
app.command("images")(images)

from cgagent.cli.policy_cmds import policy_app  # noqa: E402

app.add_typer(policy_app, name="policy")


@app.command()
def pause(
    names: Annotated[list[str], typer.Argument(help="Workloads to pause.")],
    state_dir: StateDir = None,
) -> None:
    """Freeze every process of the workloads (cgroup freezer; systemd FreezeUnit): they keep their memory
    and use no CPU until `cgagent unpause`. `ps` shows them as paused; `stop` and `rm -f` still work.

    Example: cgagent pause web; cgagent ps; cgagent unpause web
    """
    from cgagent.runtime.pause import pause as do_pause

    raise typer.Exit(_each(names, None, state_dir, do_pause))


@app.command()
def unpause(
    names: Annotated[list[str], typer.Argument(help="Workloads to unpause.")],
    state_dir: StateDir = None,
) -> None:
    """Thaw paused workloads: their processes run on where they stopped. Example: cgagent unpause web"""
    from cgagent.runtime.pause import unpause as do_unpause

    raise typer.Exit(_each(names, None, state_dir, do_unpause))


@app.command(cls=serveflags.ServeCommand)
@serveflags.add_flags
def serve(
    ctx: typer.Context,
    web_config_file: Annotated[str | None, typer.Option(
        "--web.config.file", help="TLS / client-certificate / basic-auth config (Prometheus exporter-toolkit format).")
    ] = None,
    watch_cgroup: Annotated[list[str] | None, typer.Option(
        "--watch-cgroup", help="Also export this cgroup and all below it (e.g. /system.slice); repeatable.")] = None,
    discover: Annotated[bool, typer.Option("--discover", help="Export every cgroup of the host, named by its "
                                           "runtime (podman, docker, containerd, CRI-O, systemd): --watch-cgroup /.")
                        ] = False,
    per_cpu: Annotated[bool, typer.Option("--per-cpu", help="Export per-CPU usage series (cpu=\"cpu00\"...) "
                                          "instead of cpu=\"total\", as cAdvisor (cgroup v1).")] = False,
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
    **flags: Any,
) -> None:
    """Serve Prometheus metrics of every workload (and --watch-cgroup trees); log OOM kills as they happen;
    apply the workloads' policies (throttling and OOM responses) live; serve the local API (run, ps,
    inspect, update, stop, rm, logs, events) that the CLI uses when the agent runs.

    Flags as node_exporter's: --web.listen-address (alias --listen), --web.telemetry-path, --log.level,
    --version, and --collector.NAME / --no-collector.NAME for each collector.

    Example: cgagent serve --watch-cgroup /system.slice   # then scrape http://127.0.0.1:9730/metrics

    Example: cgagent serve --web.listen-address :9730 --no-collector.psi --log.level warn

    Example: curl --unix-socket /run/cgagent/agent.sock http://x/v1/ps
    """
    from cgagent.network.workload import startup_prune
    from exporters.serve import serve as do_serve
    from exporters.web import DEFAULT_LISTEN

    serveflags.check(flags["telemetry_path"], flags["log_level"], api_socket)
    startup_prune()   # connections of workloads that died while no agent ran
    watch = (watch_cgroup or []) + (["/"] if discover else [])
    raise typer.Exit(do_serve(flags["listen"] or DEFAULT_LISTEN, web_config_file, watch, per_cpu,
                              state_dir, policy_dir, api_socket, api_group,
                              telemetry_path=flags["telemetry_path"], log_level=flags["log_level"],
                              collectors=serveflags.enabled_collectors(ctx)))


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
def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.")],
) -> None:
    """Print the shell completion script: commands, options, workload, image and network names.

    Example: source <(cgagent completion bash)   # or in ~/.bashrc; zsh: source <(cgagent completion zsh)
    after compinit; fish: cgagent completion fish > ~/.config/fish/completions/cgagent.fish
    """
    from cgagent.cli.completion import script

    print(script(app, shell))


@app.command()
def version() -> None:
    """Print the version."""
    from cgagent import __version__

    print(__version__)


def main(argv: list[str]) -> int:
    import os

    from typer._click import exceptions as click_exc  # typer >= 0.29 vendors click (pyproject pins it)

    from cgagent.cli.completion import COMPLETE_VAR

    if instruction := os.environ.get(COMPLETE_VAR):   # the completion script asks for words
        from cgagent.cli.completion import answer

        return answer(app, instruction)

    from cgagent.errors import run_code

    def own(code: int) -> int:
        """cgagent's own failure: `run` and `exec` exit with Docker's codes (cgagent.errors.run_code)."""
        return run_code(code) if argv[:1] in (["run"], ["exec"]) else code

    try:
        rv = app(args=argv, prog_name="cgagent", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except CgagentError as e:
        from cgagent.cli.errors import report

        return own(report(e))
    except OSError as e:
        from cgagent.cli.errors import full_or_read_only, report

        err = full_or_read_only(e)
        if err is None:
            raise
        return own(report(err))
    except click_exc.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "cgagent"
        if isinstance(e, click_exc.NoSuchOption) and e.ctx is not None:
            from cgagent.cli.suggest import suggest

            e.possibilities = suggest(e.option_name, (o for p in e.ctx.command.params for o in p.opts))
        print(f"cgagent: error: {e.format_message()} (see `{cmd} --help`)", file=sys.stderr)
        return own(2)
    except typer.Abort:
        return 130
    except KeyboardInterrupt:
        return 130


from cgagent.cli.lifecycle_cmds import kill, port, restart, top, wait  # noqa: E402

for _cmd in (top, kill, wait, port, restart):
    app.command()(_cmd)
