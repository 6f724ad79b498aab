"""Parents cgagent created (directories, slices, subtree_control bits) go with their last workload:
each create remembers what it made on the way, and every removal prunes what nobody uses any more.
Callers hold the store lock."""

from __future__ import annotations

from cgagent.cgroups import parents
from cgagent.cgroups.parents import Made
from cgagent.state import Store


def remember_parents(store: Store, made: Made) -> None:
    parents.remember(store, made)


def prune_parents(store: Store) -> None:
    parents.prune(store)
