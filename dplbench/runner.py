"""`dplbench run`: a suite's jobs, checked, prepared and executed in dependency order.

Checks first (unknown names, missing shards): a run that never started writes nothing. Then the
few-shot / long-tail selections the jobs need are made if missing (cheap, driver side), training
jobs run, then the evaluation jobs that load their checkpoints (xd, dg).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from dplbench import results
from dplbench.data.errors import DataError
from dplbench.data.fewshot import make_fewshot, selection_name
from dplbench.data.meta import FEWSHOT_DIR, SELECTION_FILE, load_meta
from dplbench.execution import ExecOptions, JobEvent, JobOutcome, run_jobs
from dplbench.suites import Job, Suite
from dplbench.train import RunSettings

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    suite: str
    run_id: str
    outcomes: list[JobOutcome] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)  # --resume: rows already there

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status != "done"]


def completed_job_ids(results_root: str) -> set[str]:
    if not results.has_rows(results_root):
        return set()
    table = results.query(results_root, "SELECT DISTINCT job_id FROM rows")
    return set(table.column("job_id").to_pylist())


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


def check_data(jobs: list[Job], data_root: str) -> None:
    """Every dataset a job reads is converted; else one line naming the command that makes it."""
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


def ensure_selections(jobs: list[Job], data_root: str) -> None:
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


def run_suite(
    suite: Suite,
    settings: RunSettings,
    opts: ExecOptions,
    on_event: JobEvent | None = None,
) -> RunSummary:
    settings = replace(settings, suite=suite.name)
    summary = RunSummary(suite.name, settings.run_id)
    jobs = list(suite.jobs)
    if opts.resume:
        done = completed_job_ids(settings.results)
        summary.skipped = [j for j in jobs if j.id in done]
        jobs = [j for j in jobs if j.id not in done]
    if suite.data.get("synthesize"):
        ensure_synthetic(settings.data)
    check_data(jobs, settings.data)
    ensure_selections(jobs, settings.data)
    training = [j for j in jobs if j.source is None]
    evaluation = [j for j in jobs if j.source is not None]
    summary.outcomes += run_jobs(training, settings, opts, on_event)
    failed_sources = {o.job.id for o in summary.outcomes if o.status != "done"}
    blocked = [j for j in evaluation if j.source in failed_sources]
    for j in blocked:
        summary.outcomes.append(JobOutcome(j, "failed", f"its training job {j.source} failed"))
        if on_event:
            on_event(j.id, "failed", {})
    runnable = [j for j in evaluation if j.source not in failed_sources]
    summary.outcomes += run_jobs(runnable, settings, opts, on_event)
    return summary
