"""`cgagent run` without typer, rich or pydantic on the path: a launcher must start fast.

The parser is generated from cgagent.runflags.OPTIONS, as the typer command is. It takes the plain
forms (`--opt value`, `--opt=value`, flags, then `-- CMD` or `IMAGE [CMD]`: runflags.split_image);
anything else (--help, unknown options, clustered short flags) returns None and the full typer CLI
takes over, which reports usage errors.
"""

from __future__ import annotations

from cgagent.runflags import BY_FLAG, split_image

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any


class Parsed:
    """A run's argv, parsed (a plain class: a dataclass's generated code costs start-up time)."""

    __slots__ = ("cmd", "image", "values")

    def __init__(self, values: dict[str, Any] | None = None, cmd: list[str] | None = None,
                 image: str | None = None) -> None:
        self.values = values or {}   # option name -> raw value, as cgagent.runflags.build takes them
        self.cmd = cmd or []
        self.image = image


def parse(argv: list[str]) -> Parsed | None:
    out = Parsed()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--" or not a.startswith("-") or a == "-":
            out.image, out.cmd = split_image(argv[i:])   # `--` ends the options, and says: a host command
            return out if out.cmd or out.image else None
        if _cluster(a, out.values):   # -it, -dit: short flags together, as click takes them
            i += 1
            continue
        key, eq, val = a.partition("=")
        opt = BY_FLAG.get(key)
        if opt is None or (eq and (opt.kind == "flag" or not key.startswith("--"))):
            return None   # unknown, `--flag=x`, or `-m=1G` (click reads that as the value "=1G")
        if opt.kind == "flag":
            out.values[opt.name] = True
        else:
            if not eq:  # `--opt value` rather than `--opt=value`
                if i + 1 >= len(argv):
                    return None
                i += 1
                val = argv[i]
            if opt.kind == "list":
                out.values.setdefault(opt.name, []).append(val)
            else:
                out.values[opt.name] = val
        i += 1
    return None


def _cluster(a: str, values: dict[str, Any]) -> bool:
    """`-dit` as `-d -i -t` when every letter is a short flag (a letter taking a value: typer decides)."""
    if a[:2] == "--" or len(a) < 3:
        return False
    opts = [o for c in a[1:] if (o := BY_FLAG.get("-" + c)) is not None and o.kind == "flag"]
    if len(opts) != len(a) - 1:
        return False
    for o in opts:
        values[o.name] = True
    return True


def main(argv: list[str]) -> int | None:
    parsed = parse(argv)
    if parsed is None:
        return None
    from cgagent.errors import CgagentError

    try:
        return execute(parsed)
    except CgagentError as e:
        from cgagent.errors import report, run_code

        return run_code(report(e))


def execute(p: Parsed) -> int:
    """Build the request from the table (the typer command comes here too) and launch it."""
    from cgagent import host as hostmod
    from cgagent.runflags import build, with_env
    from cgagent.runtime import run_detached, run_foreground
    from cgagent.state import Store

    h = hostmod.detect()
    req = build(p.values, p.cmd, h, p.image)
    store = Store(with_env(p.values).get("state_dir"))
    if req.detach:
        print(run_detached(req, h, store))
        return 0
    return run_foreground(req, h, store)
