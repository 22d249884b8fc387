"""Before any job runs: the data its jobs read exists (or one line names the command that makes
it), and the few-shot / long-tail selections they need are made (cheap, driver side)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from dplbench.data.errors import DataError
from dplbench.data.fewshot import make_fewshot, selection_name
from dplbench.data.meta import FEWSHOT_DIR, SELECTION_FILE, load_meta
from dplbench.plan.jobs import Job

log = logging.getLogger(__name__)


def ensure_synthetic(data_root: str) -> None:
    """The smoke suite's data: made on first use (synth in CoOp layout, then converted)."""
    from dplbench.data.convert import convert
    from dplbench.data.synth import make_synthetic

    try:
        load_meta(data_root, "synthetic")
        return
    except DataError:
        pass
    raw = Path(data_root) / ".synthetic-coop"
    log.info("making the synthetic benchmark under %s", data_root)
    make_synthetic(raw)
    convert(raw, ["synthetic"], data_root, show_progress=False)
    shutil.rmtree(raw, ignore_errors=True)


def check_data(jobs: Sequence[Job], data_root: str, need_val: bool = False) -> None:
    """Every dataset a job reads is converted; else one line naming the command that makes it.
    need_val (sweeps): every training dataset has a validation split of its own (selection never
    reads test data; ImageNet's val is its test set, so it cannot be swept on)."""
    needed = sorted(
        {j.train.dataset for j in jobs if j.trains} | {e.dataset for j in jobs for e in j.evals}
    )
    missing = []
    for d in needed:
        try:
            load_meta(data_root, d)
        except DataError:
            missing.append(d)
    if missing:
        raise DataError(
            f"no shards for {', '.join(missing)} under {data_root}; make them with: "
            f"dplbench data convert --root $DATA --datasets {','.join(missing)} --out {data_root}"
        )
    if need_val:
        for d in sorted({j.train.dataset for j in jobs}):
            if "val" not in load_meta(data_root, d).splits:
                raise DataError(
                    f"{d} has no validation split; sweeps select on validation data only, so "
                    "leave it out (--datasets)"
                )


def ensure_selections(jobs: Sequence[Job], data_root: str) -> None:
    """Write the few-shot / long-tail sets the training jobs read, where missing."""
    wanted = set()
    for j in jobs:
        t = j.train
        if not (j.trains or any(e.split == "val" for e in j.evals)):
            continue
        if t.imbalance is not None:
            wanted.add((t.dataset, None, t.seed, t.imbalance))
        elif t.shots is not None:
            wanted.add((t.dataset, t.shots, t.seed, None))
    for dataset, shots, seed, imbalance in sorted(wanted, key=str):
        name = selection_name(shots, seed, imbalance)
        if (Path(data_root) / dataset / FEWSHOT_DIR / name / SELECTION_FILE).is_file():
            continue
        log.info("%s: making selection %s", dataset, name)
        if imbalance is not None:
            make_fewshot(data_root, [dataset], [], [seed], "base", imbalance, show_progress=False)
        else:
            make_fewshot(data_root, [dataset], [shots], [seed], show_progress=False)


def prepare(jobs: Sequence[Job], data_root: str, synthesize: bool, need_val: bool = False) -> None:
    """All of the above, in order: nothing runs on data that is not there."""
    if synthesize:
        ensure_synthetic(data_root)
    check_data(jobs, data_root, need_val)
    ensure_selections(jobs, data_root)
