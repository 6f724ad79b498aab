"""`cgagent run` without typer, rich or pydantic on the path: a launcher must start fast.

Handles the plain forms (limit options, --name, --detach, --rm, --cgroup-*, then the command).
Anything else (--help, unknown options) returns None and the full typer CLI takes over.
"""

from __future__ import annotations

import os
from typing import Any

from cgagent.cli import options


def parse(argv: list[str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {"limits": {}, "cmd": [], "iso": {}}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out["cmd"] = argv[i + 1:]
            return out
        if not a.startswith("-") or a == "-":
            out["image"], out["cmd"] = options.split_image(argv[i:])
            return out
        key, eq, val = a.partition("=")
        if key in options.FLAGS and not eq:
            out[options.FLAGS[key]] = True
            i += 1
            continue
        if key in options.ISO_FLAGS and not eq:
            out["iso"][options.ISO_FLAGS[key]] = True
            i += 1
            continue
        if not any(key in table for table in _VALUED):
            return None
        if not eq:  # `--opt value` rather than `--opt=value`
            if i + 1 >= len(argv):
                return None
            val = argv[i + 1]
            i += 1
        _keep(out, key, val)
        i += 1
    return out if out["cmd"] or out.get("image") else None


_VALUED = (options.LIMITS, options.VALUES, options.LISTS, options.ISO_VALUES, options.ISO_MULTI)


def _keep(out: dict[str, Any], key: str, val: str) -> None:
    """Store the value of a value-taking option where execute() looks for it."""
    if key in options.LIMITS:
        out["limits"][options.LIMITS[key]] = val
    elif key in options.VALUES:
        out[options.VALUES[key]] = val
    elif key in options.LISTS:
        out.setdefault(options.LISTS[key], []).append(val)
    elif key in options.ISO_VALUES:
        out["iso"][options.ISO_VALUES[key]] = val
    else:
        out["iso"].setdefault(options.ISO_MULTI[key], []).append(val)


def main(argv: list[str]) -> int | None:
    parsed = parse(argv)
    if parsed is None:
        return None
    from cgagent.errors import CgagentError

    try:
        return execute(parsed)
    except CgagentError as e:
        from cgagent.cli.errors import report

        return report(e)


def execute(p: dict[str, Any]) -> int:
    from cgagent import host as hostmod
    from cgagent.launch import preserve_fds
    from cgagent.limits import parse_fields, plan
    from cgagent.runtime import RunRequest, run_detached, run_foreground
    from cgagent.state import Store

    h = hostmod.detect()
    values = parse_fields(p["limits"])
    if p.get("policy") is not None:
        from policies.runopts import resolve  # pydantic: only when a policy is asked for

        values, policy_restart = resolve(p["policy"], p.get("policy_dirs"), values, p.get("state_dir"), p.get("name"))
        if not p.get("restart") and not p.get("auto_remove"):
            p["restart"] = policy_restart   # the policy's, unless --restart (or --rm, which excludes it) is given
    resources = plan(values, h)
    cmd, name, isolation = p["cmd"], p.get("name"), None
    from cgagent.isolation.spec import for_run

    cmd, name, isolation = for_run(p.get("image"), cmd, p["iso"], name)
    from cgagent.devrules import with_rules

    resources = with_rules(resources, isolation, p.get("device_rules"))
    req = RunRequest(cmd=cmd, resources=resources, name=name, isolation=isolation, policy=p.get("policy"),
                     parent=p.get("parent") or os.environ.get("CGAGENT_CGROUP_PARENT") or "/cgagent",
                     driver=p.get("driver") or os.environ.get("CGAGENT_CGROUP_DRIVER"),
                     detach=bool(p.get("detach")), auto_remove=bool(p.get("auto_remove")),
                     restart=p.get("restart") or "no", preserve_fds=preserve_fds(p.get("preserve_fds")))
    store = Store(p.get("state_dir"))
    if req.detach:
        print(run_detached(req, h, store))
        return 0
    return run_foreground(req, h, store)
