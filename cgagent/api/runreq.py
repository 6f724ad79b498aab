"""The run request from a JSON mapping (POST /v1/workloads): the fields are `cgagent run`'s options
(cgagent.runflags.OPTIONS, '_' for '-'), built by the same runflags.build as both CLI front doors, so a
value means the same, with the same default and message, wherever it comes from."""

from __future__ import annotations

import os
from typing import Any

from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.runflags import OPTIONS, build, limit_values, split_image

_JSON = {"flag": "boolean", "value": "string", "list": "array"}
# the CLI's own: where its records are (the agent has one store), fds only a direct run can pass, and
# the caller's terminal (-i/-t runs take the direct path: cgagent.cli.thin)
_NOT_IN_API = ("state_dir", "preserve_fds", "interactive", "tty")
LIMIT_FIELDS = tuple(o.name for o in OPTIONS if o.lands == "limit" and o.update)
LIMIT_TYPES = {o.name: _JSON[o.kind] for o in OPTIONS if o.name in LIMIT_FIELDS}   # per-device ones: arrays
# the caller's context, which a host workload inherits on the direct path: its environment and directory
CONTEXT_FIELDS = {"environ": "object", "cwd": "string"}
RUN_FIELDS: dict[str, str] = {**{o.name: _JSON[o.kind] for o in OPTIONS if o.name not in _NOT_IN_API},
                              "cmd": "array", **CONTEXT_FIELDS}


def _text(v: Any) -> bool:
    """A string the OS takes: no NUL, and no surrogate but the \\udc80-\\udcff that stand for raw
    bytes (as the CLI sends a name that is no UTF-8): os.chdir or environ would raise on "\\ud800"."""
    if not isinstance(v, str) or "\0" in v:
        return False
    try:
        os.fsencode(v)
    except UnicodeEncodeError:
        return False
    return True


def check_fields(body: Any, fields: dict[str, str], what: str) -> dict[str, Any]:
    """A JSON object whose keys are all in `fields`, each of its JSON type (strings for arrays' items);
    null means absent. Else CgagentError naming the first wrong field."""
    if not isinstance(body, dict):
        raise CgagentError(f"the {what} must be a JSON object", "send {\"field\": value, ...}")
    out: dict[str, Any] = {}
    for k, v in body.items():
        kind = fields.get(k)
        if kind is None:
            raise CgagentError(f"unknown field {k!r} in the {what}",
                               "the fields are " + ", ".join(sorted(fields)))
        if v is None:
            continue
        ok = {"string": _text(v), "boolean": isinstance(v, bool),
              "integer": isinstance(v, int) and not isinstance(v, bool),
              "array": isinstance(v, list) and all(_text(i) for i in v),
              "object": isinstance(v, dict) and all(_text(i) and i and "=" not in i and _text(j)
                                                    for i, j in v.items())}[kind]
        if not ok:
            raise CgagentError(f"field {k!r} of the {what} must be " + {
                "string": "a string (no NUL, no lone surrogate)",
                "array": "an array of strings (no NUL, no lone surrogate)",
                "object": "an object of strings (NAME: value)"}.get(kind, f"a {kind}"),
                "see the API's openapi.json")
        out[k] = v
    return out


def limits(fields: dict[str, Any]) -> dict[str, Any]:
    """The limit fields -> validated limit values (as `cgagent update`'s options)."""
    return limit_values({k: fields[k] for k in LIMIT_FIELDS if k in fields})


def request(body: Any, host: Host, state_root: str) -> Any:
    """-> cgagent.runtime.RunRequest, validated as `cgagent run` validates its options. Runs in the
    caller's context (environment, directory): env defaults are the caller's."""
    f = check_fields(body, RUN_FIELDS, "run request")
    if not f.get("cmd"):
        raise CgagentError("the run request has no command",
                           "give \"cmd\": [\"IMAGE\", \"arg\", ...], or [\"--\", \"program\", ...] on the host")
    image, cmd = split_image(list(f["cmd"]))
    values = {k: v for k, v in f.items() if k not in ("cmd", *CONTEXT_FIELDS)}
    return build({**values, "state_dir": state_root}, cmd, host, image)
