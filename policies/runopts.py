"""`cgagent run --policy NAME`: the policy's limits are the base, the options given on the command line win."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from policies.loader import find
from policies.model import Policy

# Options that replace a group of policy fields, not just their own (the kernel takes one of each pair).
_EXCLUSIVE = {"cpu_shares": ("cpu_weight",), "cpu_weight": ("cpu_shares",)}


def merge(policy: Policy, flags: dict[str, Any], learned_memory: int | None = None) -> dict[str, Any]:
    """Typed limit values (cgagent.limits field parsers' output) for plan(): policy, overridden by flags.

    `learned_memory`: the limit an earlier run of this workload was raised to after an OOM kill
    (policies.carry); it replaces the policy's memory unless --memory is given.
    """
    values = policy.limits.values()
    mem = values.get("memory")
    if learned_memory is not None and mem is not None and 0 <= mem < learned_memory:
        values["memory"] = learned_memory
        swap = values.get("memory_swap")
        if swap is not None and swap >= 0:
            values["memory_swap"] = swap + learned_memory - mem   # keep the same swap allowance
    for key in flags:
        for other in _EXCLUSIVE.get(key, ()):
            values.pop(other, None)
    values.update({k: v for k, v in flags.items() if v is not None})
    return values


def resolve(name: str, dirs: Iterable[str] | None, flags: dict[str, Any], state_dir: str | None = None,
            workload: str | None = None) -> tuple[dict[str, Any], str]:
    """Find the policy on the search path (every problem of its file if it is invalid) and merge;
    a named workload gets the memory an OOM kill of its earlier run taught the controller.
    -> (limit values for plan(), the policy's restart policy: used unless --restart or --rm is given)."""
    policy = find(name, dirs)
    learned = None
    if workload is not None and "memory" not in flags and policy.oom is not None:
        from cgagent.state import Store
        from policies.carry import recall

        learned = recall(Store(state_dir).root, workload, name)
    return merge(policy, flags, learned), policy.restart
