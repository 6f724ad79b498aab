"""`cgagent serve`'s node_exporter-style flags, defined once here.

FLAGS is the one table of the fixed flags (--web.listen-address with --listen as an alias,
--web.telemetry-path, --log.level, --version); `ServeCommand` adds `--collector.NAME/--no-collector.NAME`
for every collector of exporters.registry.COLLECTORS when serve's options are parsed or its help is shown,
so a new collector gets its toggle without an edit here, and no other command pays for importing the
collectors (prometheus_client alone is ~150 ms).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from cgagent.errors import CgagentError

LOG_LEVELS = ("debug", "info", "warn", "error")
DEFAULT_TELEMETRY_PATH = "/metrics"
_META = "cgagent.collectors"   # ctx.meta key: collector name -> enabled


@dataclass(frozen=True)
class Flag:
    """One `serve` flag, as the table defines it for the typer command and for the agent."""

    name: str                  # the serve() parameter
    decls: tuple[str, ...]     # first = node_exporter's spelling; the rest are aliases
    kind: type
    default: Any
    help: str


FLAGS = (
    Flag("listen", ("--web.listen-address", "--listen"), str, None,
         "HOST:PORT to serve metrics and /healthz on (default 127.0.0.1:9730; :9730 for all addresses)."),
    Flag("telemetry_path", ("--web.telemetry-path",), str, DEFAULT_TELEMETRY_PATH,
         "Path under which to expose metrics."),
    Flag("log_level", ("--log.level",), str, "info",
         "Only log messages with this severity or above: " + ", ".join(LOG_LEVELS) + "."),
)


def version_printer(template: str) -> Callable[[bool], None]:
    """An eager --version option's callback: print `template` with the version, and exit."""

    def show(value: bool) -> None:
        if value:
            from cgagent import __version__

            print(template.format(__version__))
            raise typer.Exit(0)

    return show


def add_flags(fn: Any) -> Any:
    """Put FLAGS and --version into `fn`'s signature, where it has **kwargs (typer reads a command's
    parameters from its signature)."""
    kw = inspect.Parameter.KEYWORD_ONLY
    generated = [inspect.Parameter(f.name, kw, default=f.default,
                                   annotation=Annotated[f.kind | None, typer.Option(*f.decls, help=f.help)])
                 for f in FLAGS]
    generated.append(inspect.Parameter(
        "version", kw, default=False, annotation=Annotated[bool, typer.Option(
            "--version", help="Print the version and exit.", is_eager=True,
            callback=version_printer("cgagent, version {}"))]))
    sig = inspect.signature(fn, eval_str=True)
    params = [q for p in sig.parameters.values()
              for q in (generated if p.kind is inspect.Parameter.VAR_KEYWORD else [p])]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


def check(telemetry_path: str, log_level: str, api_socket: str | None = None) -> None:
    """One line for a bad value, before anything is bound."""
    if api_socket is not None and not api_socket.startswith("/"):   # the clients' cwd is not ours
        raise CgagentError(f"invalid --api-socket {api_socket!r}",
                           "use an absolute path, e.g. /run/cgagent/agent.sock")
    if log_level not in LOG_LEVELS:
        raise CgagentError(f"invalid --log.level {log_level!r}", "use one of " + ", ".join(LOG_LEVELS))
    if not telemetry_path.startswith("/") or telemetry_path in ("/", "/healthz") or any(
            c in telemetry_path for c in "?# \t\r\n"):
        raise CgagentError(f"invalid --web.telemetry-path {telemetry_path!r}",
                           "use an absolute URL path other than / and /healthz, e.g. /metrics")


def _collector_option(name: str, default: bool) -> Any:
    # typer's own Option builder (typer is pinned in pyproject), not a copy of it
    from typer.main import _get_param
    from typer.models import ParamMeta

    def store(ctx: typer.Context, value: bool) -> None:
        ctx.meta.setdefault(_META, {})[name] = value

    return _get_param(ParamMeta(name=f"collector_{name}", annotation=bool, default=typer.Option(
        default, f"--collector.{name}/--no-collector.{name}", expose_value=False, callback=store,
        show_default=False, help=f"The {name} collector (default: {'on' if default else 'off'}).")))


class ServeCommand(TyperCommand):
    """serve's command: its fixed options plus one toggle per registered collector."""

    _collectors: list[Any] | None = None

    def get_params(self, ctx: Any) -> list[Any]:
        base, n = super().get_params(ctx), len(self.params)
        return [*base[:n], *collector_options(), *base[n:]]   # --help stays last


def collector_options() -> list[Any]:
    if ServeCommand._collectors is None:
        from exporters.registry import COLLECTORS

        # a collector class may say `enabled_by_default = False` (node_exporter's opt-in collectors)
        ServeCommand._collectors = [_collector_option(n, bool(getattr(f, "enabled_by_default", True)))
                                    for n, f in COLLECTORS.items()]
    return ServeCommand._collectors


def enabled_collectors(ctx: typer.Context) -> list[str]:
    """The collectors to run, in the registry's order (click sets them in the command line's)."""
    from exporters.registry import COLLECTORS

    chosen: dict[str, bool] = ctx.meta.get(_META, {})
    return [n for n in COLLECTORS if chosen.get(n)]
