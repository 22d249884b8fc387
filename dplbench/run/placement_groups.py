"""Placement groups that outlive their Train runs, and their removal by the driver (used by
run/launcher.py only)."""

from __future__ import annotations

import logging

from dplbench import storage
from dplbench.results.root import ResultsRoot

log = logging.getLogger(__name__)


def snapshot() -> set[str]:
    """The live placement groups of this driver's Ray job, before a launch."""
    return _live_groups_of_this_job()


def announce(pg_dir: str, job_id: str) -> None:
    """Leave this Train run's placement group id where the driver finds it.

    Why: when ASHA stops a trial (or a trial fails), Tune kills the trial actor and with it the
    Train controllers it owns and their workers, but not their placement groups (those live as long
    as the driver). Ray 2.60's own PlacementGroupCleaner removes them only if its State API call
    works, and it dies with "Found multiple active Ray instances" when another local Ray runs on the
    machine; the leaked group then holds its CPUs/GPUs and the next trial or `dplbench run` waits
    forever. So the driver removes the trial's groups itself (`release`)."""
    import ray.util

    pg = ray.util.get_current_placement_group()
    if pg is not None:
        storage.write(ResultsRoot.placement_group(pg_dir, job_id, pg.id.hex()), b"")


def release(pg_dir: str) -> int:
    """Remove the announced placement groups under `pg_dir` that still exist; returns how many."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    removed = 0
    for f in storage.listdir(pg_dir, "*-*"):
        pg = PlacementGroup(PlacementGroupID(bytes.fromhex(f.rsplit("-", 1)[1])))
        if placement_group_table(pg).get("state") not in (None, "REMOVED"):
            remove_placement_group(pg)
            removed += 1
    if removed:
        log.info("released %d placement groups of %s", removed, pg_dir)
    return removed


def _live_groups_of_this_job() -> set[str]:
    """Ids of the live placement groups of this driver's Ray job (a group id ends with its job
    id), so that other jobs sharing the cluster are never touched."""
    import ray
    from ray.util.placement_group import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return {
        k for k, v in placement_group_table().items() if v["state"] != "REMOVED" and k.endswith(job)
    }


def remove_leaked(before: set[str]) -> None:
    """Every trial has ended: a placement group this driver's job made meanwhile and still alive
    is a leak (a Train run killed between creating its group and announcing it)."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    leaked = _live_groups_of_this_job() - before
    for pg_id in leaked:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
    if leaked:
        log.info("removed %d leaked placement groups", len(leaked))
