"""Shell completion: `cgagent completion bash|zsh|fish` prints a script; the script asks
`_CGAGENT_COMPLETE=complete_SHELL cgagent` for the words, which typer/click answer from the
command tree, with workload, image and network names added here. Only the full CLI comes here:
`cgagent run` keeps its fast path (no typer), so completion costs it nothing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from cgagent.errors import CgagentError

COMPLETE_VAR = "_CGAGENT_COMPLETE"
SHELLS = ("bash", "zsh", "fish")

Complete = Callable[[Any, Any, str], list[str]]


def _state_dir(ctx: Any) -> str | None:
    while ctx is not None:   # --state-dir is an option of the command; its envvar is read by click too
        if ctx.params.get("state_dir"):
            return str(ctx.params["state_dir"])
        ctx = ctx.parent
    return os.environ.get("CGAGENT_STATE_DIR")


def _root(ctx: Any) -> str | None:
    return str(ctx.params["root"]) if ctx.params.get("root") else None


def workloads(ctx: Any, _param: Any, incomplete: str) -> list[str]:
    from cgagent.state import Store

    with contextlib.suppress(OSError, CgagentError):
        return [n for n in Store(_state_dir(ctx)).names() if n.startswith(incomplete)]
    return []


def images(ctx: Any, _param: Any, incomplete: str) -> list[str]:
    from cgagent.images.store import ImageStore

    with contextlib.suppress(OSError, CgagentError):
        names = sorted({n for img in ImageStore(_root(ctx)).all() for n in img.names})
        return [n for n in names if n.startswith(incomplete)]
    return []


def networks(ctx: Any, _param: Any, incomplete: str) -> list[str]:
    from cgagent.network import config

    with contextlib.suppress(OSError, CgagentError):
        names = {n.name for n in config.all_networks(_root(ctx))} | {config.DEFAULT_NETWORK, "none", "host"}
        return sorted(n for n in names if n.startswith(incomplete))
    return []


def run_words(ctx: Any, param: Any, incomplete: str) -> list[str]:
    """run's first word may be an image; after it (or after --), the shell's own file completion."""
    return images(ctx, param, incomplete) if not ctx.params.get(param.name) else []


def shells(_ctx: Any, _param: Any, incomplete: str) -> list[str]:
    return [s for s in SHELLS if s.startswith(incomplete)]


# (group, command or "*", parameter name) -> what completes it
VALUES: dict[tuple[str, str, str], Complete] = {
    ("", "*", "name"): workloads, ("", "*", "names"): workloads, ("", "run", "cmd"): run_words,
    ("", "run", "net"): networks, ("image", "rm", "refs"): images,
    ("network", "rm", "names"): networks, ("network", "connect", "network"): networks,
    ("", "completion", "shell"): shells,
}
NOT_WORKLOADS = {("", "completion")}


def _attach(cmd: Any, group: str = "") -> None:
    for name, sub in getattr(cmd, "commands", {}).items():
        if getattr(sub, "commands", None):
            _attach(sub, name)
            continue
        for p in sub.params:
            fn = VALUES.get((group, name, p.name)) or (
                VALUES.get((group, "*", p.name)) if (group, name) not in NOT_WORKLOADS else None)
            if fn is not None:
                p._custom_shell_complete = fn


def command(app: Any) -> Any:
    """The full CLI's (typer APP's) click command tree, with the name completions in place."""
    import typer.main

    cmd = typer.main.get_command(app)
    _attach(cmd)
    return cmd


def _classes() -> None:
    from typer._completion_classes import completion_init  # typer's bash/zsh/fish script templates

    completion_init()


def script(app: Any, shell: str) -> str:
    from typer._click.shell_completion import get_completion_class

    _classes()
    cls = get_completion_class(shell) if shell in SHELLS else None
    if cls is None:
        raise CgagentError(f"no completion for shell {shell!r}", f"use one of {', '.join(SHELLS)}")
    return str(cls(command(app), {}, "cgagent", COMPLETE_VAR).source())


def answer(app: Any, instruction: str) -> int:
    """What the scripts ask (complete_bash ...); click's documented spelling (bash_source, as
    `_CGAGENT_COMPLETE=bash_source cgagent`) is taken too: typer reads it the other way round."""
    from typer.completion import shell_complete

    first, _, rest = instruction.partition("_")
    if first in SHELLS:
        instruction = f"{rest}_{first}"
    _classes()
    return int(shell_complete(command(app), {}, "cgagent", COMPLETE_VAR, instruction))
