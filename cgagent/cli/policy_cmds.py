"""`cgagent policy ls|show|check`: the policies of the search path, and validation of policy files."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

policy_app = typer.Typer(help="Resource policies: list, show and check them (built-ins, /etc/cgagent/policies.d, "
                         "--policy-dir).", no_args_is_help=True)

PolicyDirs = Annotated[list[str] | None, typer.Option(
    "--policy-dir", help="Also read policies from this directory (repeatable; later ones override by name).")]


def _warn_bad(cat: object) -> None:
    from policies.loader import Catalog

    assert isinstance(cat, Catalog)
    for ld in cat.bad:
        for p in ld.problems:
            print(f"cgagent: warning: {p}", file=sys.stderr)


@policy_app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    policy_dir: PolicyDirs = None,
) -> None:
    """List the policies of the search path (invalid files are reported on stderr)."""
    from policies.loader import catalog

    cat = catalog(policy_dir)
    rows = []
    for name in sorted(cat.by_name):
        ld = cat.by_name[name]
        if ld.policy is None:
            continue
        row = ld.policy.summary()
        row["source"] = "builtin" if ld.builtin else ld.path
        if as_json:
            row["policy"] = ld.policy.to_yaml_dict()
        rows.append(row)
    _warn_bad(cat)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    from cgagent.cli.views import print_table

    print_table(rows, ["name", "cpus", "memory", "shares", "restart", "oom", "throttling", "source"])


@policy_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The policy to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
    policy_dir: PolicyDirs = None,
) -> None:
    """Print a policy as it will be applied (YAML, values in base units), with the file it comes from."""
    from policies.loader import catalog

    cat = catalog(policy_dir)
    policy = cat.get(name)
    d = policy.to_yaml_dict()
    if as_json:
        print(json.dumps(d, indent=1))
        return
    import yaml

    print(f"# from {cat.by_name[name].path}")
    print(yaml.safe_dump(d, sort_keys=False, default_flow_style=False, width=1000), end="")


@policy_app.command("check")
def check(
    files: Annotated[list[str], typer.Argument(help="Policy files to validate.")],
) -> None:
    """Validate policy files: every problem of every file, each as FILE:LINE: FIELD: REASON; exit 2 if any.

    Example: cgagent policy check /etc/cgagent/policies.d/*.yaml
    """
    from policies.loader import PolicyFileError, load_file

    problems = []
    for f in files:
        ld = load_file(f)
        if ld.ok and ld.policy is not None:
            print(f"{f}: ok (policy {ld.policy.name})")
        problems.extend(ld.problems)
    if problems:
        raise PolicyFileError(problems)
