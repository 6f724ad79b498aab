"""The part of Go's text/template that `docker inspect --format` users type: {{.A.B}}, {{json .A}},
{{index .A "key"}}, {{.}} and text between them. No typer here: the thin client formats too."""

from __future__ import annotations

import json
import re
from typing import Any

from cgagent.errors import CgagentError

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_PATH = re.compile(r"^\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?$")
_FIX = "use Go-template paths of inspect's output, e.g. --format '{{.State.Pid}}' or '{{json .NetworkSettings}}'"


def render(template: str, data: Any, what: str = "inspect's output") -> str:
    """WHAT names the data in errors (its fields are what a template can name)."""
    out, pos = [], 0
    for m in _ACTION.finditer(template):
        out.append(template[pos:m.start()])
        out.append(_action(m.group(1), data, what))
        pos = m.end()
    rest = template[pos:]
    if "{{" in rest or "}}" in rest:
        raise CgagentError(f"--format {template!r} has an unclosed {{{{ or a stray }}}}", _FIX)
    return "".join(out) + rest


def _action(act: str, data: Any, what: str) -> str:
    words = _split(act)
    if len(words) == 1:
        return go_string(lookup(words[0], data, what))
    if words[0] == "json" and len(words) == 2:
        return json.dumps(lookup(words[1], data, what))
    if words[0] == "index" and len(words) >= 3:
        v = lookup(words[1], data, what)
        for key in words[2:]:
            v = _index(v, key, words[1])
        return go_string(v)
    raise CgagentError(f"--format: {{{{{act}}}}} is not supported", _FIX)


def _split(act: str) -> list[str]:
    """Words of an action; a "quoted key" (index's argument) is one word."""
    return re.findall(r'"(?:[^"\\]|\\.)*"|\S+', act)


def lookup(path: str, data: Any, what: str = "inspect's output") -> Any:
    if not _PATH.match(path):
        raise CgagentError(f"--format: {path!r} is not a field path", _FIX)
    v = data
    for part in path.split(".")[1:] if path != "." else []:
        if not isinstance(v, dict) or part not in v:
            raise CgagentError(f"--format: {path} names no field of {what} (no {part!r} there)",
                               f"use the fields of {what}")
        v = v[part]
    return v


def _index(v: Any, key: str, path: str) -> Any:
    if isinstance(v, dict) and key.startswith('"') and key.endswith('"'):
        k = json.loads(key)
        if k in v:
            return v[k]
    elif isinstance(v, list) and key.isdigit() and int(key) < len(v):
        return v[int(key)]
    raise CgagentError(f"--format: index {key} is not in {path}", _FIX)


def go_string(v: Any) -> str:
    """A value as Go's fmt prints it in a template: maps as map[k:v], lists as [a b], nil as <nil>."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_string(x)}" for k, x in sorted(v.items())) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_string(x) for x in v) + "]"
    return str(v)


def show_inspect(views: list[dict[str, Any]], fmt: str | None) -> None:
    """A JSON list (docker's shape), or with --format one rendered line per workload."""
    if fmt is None:
        print(json.dumps(views, indent=1))
        return
    lines = [render(fmt, v) for v in views]   # all first: a bad template prints nothing
    for line in lines:
        print(line)
