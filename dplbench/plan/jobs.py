"""A job: one method trained (or loaded) and evaluated. Its id is the hash of its resolved work.

A job is (method, train data, evaluations, seed, workers, resolved `MethodConfig`, and the sweep
or ablation it belongs to). The id hashes all of that and nothing else (not the suite or protocol
name), so the same work has the same id in every suite and `--resume` can find it; a sweep trial or
ablation variant whose config equals a plain run's is still its own job, so no run's rows are
ever shadowed by another's. An evaluation job (xd, dg) names the training job whose
prompts it loads (`source`) and never trains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dpl.methods.config import MethodConfig, to_dict


@dataclass(frozen=True)
class TrainData:
    dataset: str
    shots: int | None  # None: the full train split (long-tail subsets start from it)
    seed: int
    subsample: str = "all"  # all | base | novel
    imbalance: float | None = None


@dataclass(frozen=True)
class EvalTarget:
    dataset: str
    subsample: str = "all"
    split: str = "test"


@dataclass(frozen=True)
class Job:
    suite: str
    protocol: str
    method: str
    seed: int
    config: MethodConfig
    train: TrainData
    evals: tuple[EvalTarget, ...]
    workers: int = 1
    source: str | None = None  # evaluation job: id of the training job whose prompts it loads
    params: dict[str, Any] = field(default_factory=dict)  # sweep / ablation labels

    @property
    def id(self) -> str:
        work = {
            "method": self.method,
            "seed": self.seed,
            "config": to_dict(self.config),
            "train": asdict(self.train),
            "evals": [asdict(e) for e in self.evals],
            "workers": self.workers,
            "source": self.source,
        }
        if self.params:  # sweep / ablation context (absent for plain runs: their ids stay)
            work["params"] = self.params
        blob = json.dumps(work, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def trains(self) -> bool:
        """Whether this job trains (an evaluation job, or zsclip, does not)."""
        return self.source is None and self.method != "zsclip" and self.epochs > 0

    @property
    def epochs(self) -> int:
        return self.config.optim.epochs

    def describe(self) -> dict[str, Any]:
        """The job as plain JSON-ready data (the `config` column of its result rows)."""
        d = asdict(self)
        d["config"] = to_dict(self.config)
        d["id"] = self.id
        return d
