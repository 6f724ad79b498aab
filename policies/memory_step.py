"""A policy's `restart-with-more-memory`: the workload's memory raised by the policy's step, up to its
ceiling, in answer to OOM kills. Two callers apply it through the runtime: the workload's supervisor
before a restart (so that the next run is the one that gets it) and the agent's policy controller
(live, or remembered for the next run). The runtime layer: it imports cgagent.runtime, and the
supervisor imports it, so it stays out of policies.controller, which the agent drives.
"""

from __future__ import annotations

from typing import Any

from cgagent import events
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.state import Record, Store
from policies import carry
from policies.loader import catalog
from policies.model import Policy


def step_up(store: Store, host: Host, policy: Policy, name: str, rec: Record | None, start_res: dict[str, Any],
            kills: object, seq: int | None, applied: str) -> None:
    """restart-with-more-memory: raise the workload's memory by the policy's step, up to its ceiling.
    With `seq`, the change is made only if nobody answered those kills yet (see runtime.update)."""
    from cgagent.runtime.control import answer_oom, update

    assert policy.oom is not None
    step, ceiling = policy.oom.step, policy.oom.ceiling
    assert step is not None and ceiling is not None
    res = Resources.from_dict(rec.resources if rec is not None else start_res)
    cur = res.memory
    if cur is None or cur < 0:
        return   # no memory limit of its own: the OOM came from elsewhere, raising nothing helps
    new = min(cur + step, ceiling)
    if new <= cur:
        events.append(store.root, "policy", name, policy=policy.name, action="memory_at_ceiling", memory=cur,
                      ceiling=ceiling, kills=kills)
        return
    change: dict[str, object] = {"memory": new}
    if res.memory_swap is not None and res.memory_swap >= 0:
        change["memory_swap"] = res.memory_swap + (new - cur)   # keep the same swap allowance
    if applied != "next-run":
        try:
            if seq is None:
                update(store, host, name, change)
            elif not answer_oom(store, host, name, change, seq):
                return   # answered already
        except CgagentError:   # stopped or removed meanwhile
            applied = "next-run"
    carry.remember(store, name, policy.name, new)
    # "live": the running cgroup has the new limit; "restart": the supervisor's next run of it has
    # (the cgroup or scope it reuses, or the record a new scope is made from); "next-run": the next
    # `run --policy --name` does
    events.append(store.root, "policy", name, policy=policy.name, action="memory_step_up", from_memory=cur,
                  to_memory=new, applied=applied, restart=getattr(rec, "restart", None) or "no", kills=kills)


def answer_oom_before_restart(store: Store, host: Host, name: str, policy_name: str, seq: int) -> None:
    """The supervisor, before a restart: answer the OOM kills up to `seq` as the policy says."""
    ld = catalog([]).by_name.get(policy_name)
    if ld is None or ld.policy is None or ld.policy.oom is None or ld.policy.oom.action == "stop":
        return
    rec = store.load(name)
    step_up(store, host, ld.policy, name, rec, {}, None, seq, "restart")


