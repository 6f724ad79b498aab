"""The run request from a JSON mapping (POST /v1/workloads): the same fields, checks and defaults as
`cgagent run`'s options, in the same order of steps as cgagent/cli/app.py's run().

The option table of issue 14 (cgagent/cli/options.py) is to build this from one definition for both
front doors; until then this is the mapping's door, kept in step with app.run by test_agent's
run tests (the same workload, run both ways)."""

from __future__ import annotations

from typing import Any

from cgagent.errors import CgagentError
from cgagent.host import Host

# field -> its JSON type; the names are `cgagent run`'s long options with '_' for '-'
LIMIT_FIELDS = ("cpus", "cpu_shares", "cpu_weight", "cpu_period", "memory", "memory_swap", "pids_limit",
                "cpuset_cpus", "cpuset_mems")
_STR = (*LIMIT_FIELDS, "name", "cgroup_parent", "cgroup_driver", "rootfs", "hostname", "net", "user", "workdir",
        "root", "restart", "policy")
_BOOL = ("detach", "rm", "read_only", "init", "userns")
_LIST = ("cmd", "volume", "publish", "env", "cap_add", "cap_drop", "security_opt", "device", "device_cgroup_rule",
         "policy_dir")
# the caller's context, which a host workload inherits on the direct path: its environment and directory
CONTEXT_FIELDS = {"environ": "object", "cwd": "string"}
RUN_FIELDS: dict[str, str] = {**{k: "string" for k in _STR}, **{k: "boolean" for k in _BOOL},
                              **{k: "array" for k in _LIST}, **CONTEXT_FIELDS}
_ISO = {"rootfs": "rootfs", "read_only": "read_only", "volume": "volumes", "hostname": "hostname", "net": "net",
        "publish": "publish", "init": "init", "userns": "userns", "env": "env", "user": "user",
        "workdir": "workdir", "cap_add": "cap_add", "cap_drop": "cap_drop", "security_opt": "security_opt",
        "root": "root", "device": "devices"}


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
        ok = {"string": isinstance(v, str), "boolean": isinstance(v, bool),
              "integer": isinstance(v, int) and not isinstance(v, bool),
              "array": isinstance(v, list) and all(isinstance(i, str) for i in v),
              "object": isinstance(v, dict) and all(isinstance(i, str) and "=" not in i and "\0" not in i + j
                                                    and isinstance(j, str) for i, j in v.items())}[kind]
        if not ok:
            raise CgagentError(f"field {k!r} of the {what} must be " + {
                "array": "an array of strings", "object": "an object of strings (NAME: value)"}.get(kind, f"a {kind}"),
                "see the API's openapi.json")
        out[k] = v
    return out


def limits(fields: dict[str, Any]) -> dict[str, Any]:
    """The limit fields -> validated ResourceSpec values (as the CLI's options)."""
    from cgagent.spec import from_options

    values: dict[str, Any] = from_options({k: fields.get(k) for k in LIMIT_FIELDS}).values()
    return values


def request(body: Any, host: Host, state_root: str) -> Any:
    """-> cgagent.runtime.RunRequest, validated as `cgagent run` validates its options."""
    f = check_fields(body, RUN_FIELDS, "run request")
    if not f.get("cmd"):
        raise CgagentError("the run request has no command", "give \"cmd\": [\"program\", \"arg\", ...]")
    from cgagent.cli.options import split_image
    from cgagent.devrules import with_rules
    from cgagent.isolation.spec import for_run
    from cgagent.limits import plan
    from cgagent.runtime import RunRequest

    values = limits(f)
    restart, name = f.get("restart"), f.get("name")
    if f.get("policy") is not None:
        from policies.runopts import resolve

        values, policy_restart = resolve(f["policy"], f.get("policy_dir"), values, state_root, name)
        if restart is None and not f.get("rm"):
            restart = policy_restart
    resources = plan(values, host)
    image, cmd = split_image(list(f["cmd"]))
    cmd, name, isolation = for_run(image, cmd, {v: f[k] for k, v in _ISO.items() if f.get(k)}, name)
    resources = with_rules(resources, isolation, f.get("device_cgroup_rule"))
    return RunRequest(cmd=cmd, resources=resources, name=name, parent=f.get("cgroup_parent") or "/cgagent",
                      driver=f.get("cgroup_driver"), detach=bool(f.get("detach")), auto_remove=bool(f.get("rm")),
                      isolation=isolation, policy=f.get("policy"), restart=restart or "no")
