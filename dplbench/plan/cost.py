"""What a suite will cost, from this machine's measurements (pure: reads calibration files).

`dplbench bench model` measures every method (train step, eval throughput, peak memory, per model)
and saves the rows as the calibration of the device it ran on (bench/calibration.py):

    ~/.cache/dplbench/bench/<device>.json      ($DPLBENCH_CACHE instead of ~/.cache/dplbench)
    R/bench/<device>.json                       with --results R (the report's cost figure;
                                                `bench_dir` below: ResultsRoot.bench_dir())

The file's name in either folder is results/root.py's `calibration_file` (a leaf module: the one
owner of names under a results root).

From it, `--jobs-per-gpu auto` picks how many jobs share a GPU, and a dry run estimates a suite's
GPU-hours and wall time. Torch-free: a dry run plans without importing it.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dplbench import storage
from dplbench.data.datasets import DATASETS
from dplbench.plan.jobs import Job, estimated_train_samples
from dplbench.results.root import calibration_file

# Fraction of a GPU's memory that packed jobs may fill (the rest: allocator slack, fragmentation).
MEMORY_HEADROOM = 0.85
# Fused groups larger than this gain little on one GPU (and dilute failures): auto's ceiling.
MAX_FUSE = 16
# Start-up of one job (process, imports, model build) when no measurement says otherwise: what
# tools/bench/bench_runner.py measured for plain trials on a 2-core CPU machine.
DEFAULT_STARTUP_S = 5.0


def cache_dir() -> Path:
    return Path(os.environ.get("DPLBENCH_CACHE", Path.home() / ".cache" / "dplbench")) / "bench"


def device_key_of(name: str) -> str:
    """A file-name-safe device name: `nvidia-h200`, `cpu-x86_64-2cores`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cpu_name() -> str:
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def gpu_name() -> str | None:
    """This machine's first NVIDIA GPU as the driver names it (what torch.cuda.get_device_name
    says), read without torch; None without one."""
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    return None


@dataclass
class Calibration:
    device: str
    memory_mib: float | None  # the device's memory (GPUs)
    rows: list[dict[str, Any]]  # bench rows: model, method, train_ms, eval_img_s, peak_mib, ...
    source: str = ""

    def row(self, model: str, method: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["model"] == model and r["method"] == method), None)


def _read(path: str) -> Calibration:
    d = json.loads(storage.read_text(path))
    return Calibration(d["device"], d.get("memory_mib"), d["rows"], path)


def load(device: str | None = None, bench_dir: str | None = None) -> Calibration | None:
    """A device's calibration (default: this machine's, its GPU's if it has one) from the cache,
    else from `bench_dir` (R/bench/)."""
    device = device or device_key_of(gpu_name() or cpu_name())
    candidates = [calibration_file(cache_dir(), device)]
    if bench_dir:
        candidates.append(calibration_file(bench_dir, device))
    for path in candidates:
        if storage.exists(path):
            return _read(path)
    return None


def load_for(gpus: int, bench_dir: str | None) -> Calibration | None:
    """The calibration a run should plan with: with GPUs, a GPU's (this machine's, else any under
    the cache or R/bench/: a driver on a CPU head node plans for its GPU workers); without, this
    machine's CPU one."""
    if not gpus:
        return load(device_key_of(cpu_name()), bench_dir)
    mine = load(bench_dir=bench_dir)
    if mine is not None and mine.memory_mib:
        return mine
    found = load_all(str(cache_dir())) + (load_all(bench_dir) if bench_dir else [])
    return next((c for c in found if c.memory_mib), None)


def load_all(folder: str) -> list[Calibration]:
    """Every device's calibration saved in `folder` (R/bench/: the report's cost figure)."""
    return [_read(path) for path in storage.listdir(folder, "*.json")]


UNCALIBRATED = "the calibration has none of these methods/models: run `dplbench bench model`"


def largest_peak_mib(calib: Calibration, jobs: list[Job]) -> float | None:
    """The largest calibrated peak memory among the jobs' (model, method) pairs (None: none)."""
    peaks = [
        r["peak_mib"]
        for j in jobs
        if (r := calib.row(j.config.backbone.model, j.method)) and r.get("peak_mib")
    ]
    return max(peaks) if peaks else None


def auto_jobs_per_gpu(
    calib: Calibration | None, jobs: list[Job], cpus_per_gpu: float, cpus_per_job: float
) -> tuple[int, str]:
    """(jobs per GPU, why): as many as the largest job's measured peak memory fits in the GPU's
    memory (with headroom), at most as many as the CPU cores per GPU feed loaders."""
    if calib is None or not calib.memory_mib:
        return 1, "no GPU calibration of this machine: run `dplbench bench model` on it"
    peak = largest_peak_mib(calib, jobs)
    if peak is None:
        return 1, UNCALIBRATED
    by_memory = max(1, int(MEMORY_HEADROOM * calib.memory_mib // peak))
    by_cpu = max(1, int(cpus_per_gpu // max(cpus_per_job, 1e-9)))
    n = min(by_memory, by_cpu)
    return n, (
        f"{n} jobs per GPU: peak {peak:.0f} MiB of {calib.memory_mib:.0f} MiB allows "
        f"{by_memory}, {cpus_per_gpu:g} CPUs per GPU allow {by_cpu}"
    )


def _eval_samples(job: Job) -> int:
    total = 0
    for e in job.evals:
        spec = DATASETS.get(e.dataset)
        share = 1.0 if e.subsample == "all" else 0.5
        total += int(spec.test_size * share)
    return total


@dataclass
class Estimate:
    gpu_hours: float
    wall_hours: float
    covered: int  # jobs the calibration has numbers for
    jobs: int


def estimate(
    jobs: list[Job], calib: Calibration, slots: int, startup_s: float = DEFAULT_STARTUP_S
) -> Estimate:
    """GPU-hours and wall time of `jobs` on `slots` concurrent job places, from the measured
    per-sample train step (at the bench's batch) and eval throughput. Packed jobs are assumed
    not to slow each other, so with several jobs per GPU the wall time is a lower bound."""
    seconds, covered = [], 0
    for j in jobs:
        r = calib.row(j.config.backbone.model, j.method)
        if r is None:
            continue
        covered += 1
        train = 0.0
        if j.trains and r.get("train_ms"):
            per_sample = r["train_ms"] / 1000 / r.get("batch", 4)
            train = j.epochs * estimated_train_samples(j) * per_sample
        evaluate = _eval_samples(j) / r["eval_img_s"] if r.get("eval_img_s") else 0.0
        seconds.append(train + evaluate + startup_s)
    total = sum(seconds)
    return Estimate(total / 3600, total / max(slots, 1) / 3600, covered, len(jobs))


def auto_fuse(calib: Calibration | None, jobs: list[Job], gpus: int) -> tuple[int, str]:
    """(runs per fused group, why): as many as the GPU's memory holds at the largest job's
    calibrated peak (frozen weights counted once per run: an upper bound, since fused runs share
    them), at most MAX_FUSE; one without a GPU calibration."""
    if not gpus or calib is None or not calib.memory_mib:
        return 1, "no GPU calibration of this machine (dplbench bench model): one run per job"
    peak = largest_peak_mib(calib, jobs)
    if peak is None:
        return 1, UNCALIBRATED
    k = max(1, min(MAX_FUSE, int(MEMORY_HEADROOM * calib.memory_mib // peak)))
    return k, f"{k} runs per group: peak {peak:.0f} MiB of {calib.memory_mib:.0f} MiB"
