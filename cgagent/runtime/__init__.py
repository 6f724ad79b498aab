"""The runtime core: one entry per operation on a workload, for both front doors (the CLI, the agent).

  request     RunRequest, --restart, the cgroup driver, the root check
  parents     cgroup parents cgagent made, pruned with their last workload
  stopflag    "do not restart it again", beside the record
  starting    "a start is under way": the lock its starter holds while the record says created
  lifecycle   create / start / finish: the record first, the process placed before it runs
  supervisor  waiting, restarts, the detached double fork and its shim (cgagent.shim)
  control     stop / rm / update / a policy's OOM answer, and the views of ps and stats

A workload's live status and cgroup manager (cgagent.live) sit below the runtime, where the network
layer can read them. The isolation, network and cgroups layers never import this package.
"""

TYPE_CHECKING = False   # not typing's own (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.live import live_status, manager
    from cgagent.runtime.control import answer_oom, oom_kills, oom_victim, remove, stop, update
    from cgagent.runtime.lifecycle import create, discard, finish, start
    from cgagent.runtime.parents import prune_parents
    from cgagent.runtime.request import DRIVERS, RunRequest, parse_restart, require_root, select_driver
    from cgagent.runtime.stopflag import clear_stop, request_stop
    from cgagent.runtime.supervisor import run_detached, run_foreground, shim_main

# Each name is loaded from its module when first asked for: a run does not load `control` (stop,
# rm, update, the views), and a launch's start-up time is mostly imports.
_HOME = {"live_status": "cgagent.live", "manager": "cgagent.live"}
_HOME.update(dict.fromkeys(("answer_oom", "oom_kills", "oom_victim", "remove", "stop", "update"),
                           "cgagent.runtime.control"))
_HOME.update(dict.fromkeys(("create", "discard", "finish", "start"), "cgagent.runtime.lifecycle"))
_HOME.update(prune_parents="cgagent.runtime.parents")
_HOME.update(dict.fromkeys(("DRIVERS", "RunRequest", "parse_restart", "require_root", "select_driver"),
                           "cgagent.runtime.request"))
_HOME.update(dict.fromkeys(("clear_stop", "request_stop"), "cgagent.runtime.stopflag"))
_HOME.update(dict.fromkeys(("run_detached", "run_foreground", "shim_main"), "cgagent.runtime.supervisor"))

__all__ = ["DRIVERS", "RunRequest", "answer_oom", "clear_stop", "create", "discard", "finish", "live_status",
           "manager", "oom_kills", "oom_victim", "parse_restart", "prune_parents", "remove", "request_stop",
           "require_root", "run_detached", "run_foreground", "select_driver", "shim_main", "start", "stop",
           "update"]


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'cgagent.runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value   # asked once
    return value
