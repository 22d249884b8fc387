"""Bootstrap intervals and paired tests over seeds and test samples (#29; docs/results.md §4).

A score here is a mean over seeds of accuracies over a test set, so two things make it noisy:
which seeds ran (training) and which samples the test set holds. One bootstrap replicate
resamples both, crossed: per dataset, the seeds of each method (with replacement) and the test
samples of each evaluated subsample (with replacement, the same draw for every seed: the seeds
were scored on the same samples, so their test-sample noise is shared, never independent).
Datasets are resampled separately (stratified, as rliable's stratified bootstrap does over tasks),
and an Average is recomputed from its datasets' replicates. A paired difference A − B uses the
same sample draws for both methods; their seeds are drawn independently (separate trainings).

The resampling and the percentile interval are `scipy.stats.bootstrap`'s: every index array
(seeds of one method on one dataset, samples of one subsample) is one of its independent
samples, and the statistic turns the resampled indices into scores. Where a part has no
per-sample outcomes it is resampled by seeds only; where one has one seed and no outcomes,
there is no interval (its noise cannot be estimated, and leaving it out would narrow it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
# Every interval draws from its own generator seeded alike: a cell's interval does not depend
# on which other cells the report holds, and reports are the same byte for byte.
SEED = 29
BATCH = 200  # resamples per vectorized call (bounds memory at BATCH x samples weights)


@dataclass(frozen=True)
class Part:
    """One method on one dataset: per subsample (base, novel, all) the per-seed accuracies in
    percent [S] and, where every seed has them, the per-sample outcomes [S, N] (1.0 right, 0.0
    wrong, NaN where a seed's job did not score that sample: a skipped corrupt image)."""

    accuracies: Mapping[str, np.ndarray]
    outcomes: Mapping[str, np.ndarray] = field(default_factory=dict)
    seed_ids: tuple[int, ...] = ()  # the seeds, in the order of the arrays' rows

    @property
    def seeds(self) -> int:
        return len(next(iter(self.accuracies.values())))


# A statistic's parts: dataset -> Part; `combine` maps {(dataset, subsample): scores [B]} to
# the statistic's values [k, B] (e.g. base, novel, HM of one dataset or of an average).
Parts = Mapping[str, Part]
Combine = Callable[[Mapping[tuple[str, str], np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """The point values [k], the 95% interval's ends [k] (None: nothing to resample), the
    paired test's two-sided p-values [k] (paired only), and the datasets resampled by seeds
    only (no per-sample outcomes)."""

    value: np.ndarray
    low: np.ndarray | None
    high: np.ndarray | None
    p: np.ndarray | None = None
    seeds_only: tuple[str, ...] = ()


def hm(base: np.ndarray, novel: np.ndarray) -> np.ndarray:
    """Harmonic mean 2BN/(B+N) elementwise, 0 where both are 0 (aggregate.harmonic_mean)."""
    total = base + novel
    return np.where(total > 0, 2 * base * novel / np.where(total > 0, total, 1), 0.0)


def b2n_combine(datasets: Sequence[str]) -> Combine:
    """Base, novel and HM: of one dataset, or of the Average (mean base and mean novel over the
    datasets, then their HM: docs/protocols.md §2)."""

    def combine(s: Mapping[tuple[str, str], np.ndarray]) -> np.ndarray:
        base = np.mean([s[(d, "base")] for d in datasets], axis=0)
        novel = np.mean([s[(d, "novel")] for d in datasets], axis=0)
        return np.stack([base, novel, hm(base, novel)])

    return combine


def accuracy_combine(datasets: Sequence[str], subsample: str = "all") -> Combine:
    """The accuracy of one dataset, or the mean over the datasets (an Average of targets)."""

    def combine(s: Mapping[tuple[str, str], np.ndarray]) -> np.ndarray:
        return np.mean([s[(d, subsample)] for d in datasets], axis=0)[None]

    return combine


def _codes(correct: np.ndarray) -> np.ndarray:
    """Outcomes [S, N] (0/1) -> one integer per sample whose bit s is seed s's outcome [N]: a
    drawn sample's outcomes for every seed in one gather (a third of the time of weights)."""
    dtype = np.min_scalar_type(2 ** correct.shape[0] - 1)
    bits = (correct > 0).astype(dtype) << np.arange(correct.shape[0], dtype=dtype)[:, None]
    return np.bitwise_or.reduce(bits, axis=0)


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Resampled indices [B, m] -> how often each of n items was drawn, over m: [B, n]."""
    rows = idx.shape[0]
    flat = (idx + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n) / idx.shape[1]


class _Resampling:
    """The index arrays handed to scipy.stats.bootstrap and how to score a replicate from them."""

    def __init__(self, sides: Sequence[Parts]) -> None:
        self.sides = sides
        self.arrays: list[np.ndarray] = []
        self.where: dict[tuple, int] = {}
        self.columns: dict[tuple[str, str], np.ndarray] = {}  # samples every side scored
        self.codes: dict[tuple[int, str, str], np.ndarray] = {}  # those samples' outcomes
        datasets = sorted({d for parts in sides for d in parts})
        self.seeds_only = tuple(d for d in datasets if not self._has_outcomes(d))
        # One seed and no outcomes: that part's noise cannot be estimated, and an interval
        # that left it out would be too narrow, so there is none.
        self.fixed = any(
            d in self.seeds_only and parts[d].seeds < 2 for parts in sides for d in parts
        )
        for d in datasets:
            if d in self.seeds_only:
                continue
            for sub in sides[0][d].accuracies:
                stacked = np.concatenate([parts[d].outcomes[sub] for parts in sides])
                keep = np.flatnonzero(~np.isnan(stacked).any(axis=0))
                self.columns[(d, sub)] = keep
                for i, parts in enumerate(sides):  # [N, S], contiguous for the products below
                    self.codes[(i, d, sub)] = _codes(parts[d].outcomes[sub][:, keep])
                self._add(("samples", d, sub), len(keep))
        for i, parts in enumerate(sides):
            for d, part in sorted(parts.items()):
                self._add(("seeds", i, d), part.seeds)

    def _has_outcomes(self, d: str) -> bool:
        parts = [p[d] for p in self.sides]
        return all(set(p.outcomes) == set(p.accuracies) for p in parts)

    def _add(self, key: tuple, n: int) -> None:
        if n >= 2:  # one seed or one sample: nothing to resample (scipy needs two)
            self.where[key] = len(self.arrays)
            self.arrays.append(np.arange(n))

    def scores(self, side: int, drawn: Sequence[np.ndarray] | None, cache: dict | None = None):
        """{(dataset, subsample): mean accuracy over the drawn seeds and samples [B]}; `drawn`
        None: the observed data (every seed and sample once). `cache`: this batch's seed
        weights."""
        cache = {} if cache is None else cache
        out = {}
        size = drawn[0].shape[0] if drawn else 1  # B: every score broadcast to the batch
        for d, part in self.sides[side].items():
            w_seed = self._draw(drawn, ("seeds", side, d), part.seeds, cache)  # [B, S]
            for sub, acc in part.accuracies.items():
                if (d, sub) in self.columns:
                    codes = self.codes[(side, d, sub)]  # [N]
                    key = ("samples", d, sub)
                    # The drawn samples' codes [B, N] (each sample once when nothing is drawn)
                    drawn_codes = (
                        codes[drawn[self.where[key]]]
                        if drawn and key in self.where
                        else codes[None]
                    )
                    bits = [(drawn_codes >> s) & 1 for s in range(part.seeds)]
                    per_seed = 100.0 * np.stack([b.mean(axis=1) for b in bits], axis=1)  # [B, S]
                else:
                    per_seed = np.asarray(acc, float)[None]  # [1, S]
                out[(d, sub)] = np.broadcast_to((w_seed * per_seed).sum(axis=1), (size,))
        return out

    def _draw(self, drawn, key: tuple, n: int, cache: dict) -> np.ndarray:
        if drawn is None or key not in self.where:
            return np.full((1, n), 1.0 / n)
        if key not in cache:
            cache[key] = _weights(drawn[self.where[key]], n)
        return cache[key]


def _bootstrap(sides: Sequence[Parts], statistic: Callable[[Sequence[dict]], np.ndarray]):
    resampling = _Resampling(sides)
    observed = statistic([resampling.scores(i, None) for i in range(len(sides))])[:, 0]
    if not resampling.arrays or resampling.fixed:
        return resampling, observed, None

    def replicate(*drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        batch, cache = [np.atleast_2d(a) for a in drawn], {}
        return statistic([resampling.scores(i, batch, cache) for i in range(len(sides))])

    res = stats.bootstrap(
        resampling.arrays, replicate, n_resamples=RESAMPLES, batch=BATCH, vectorized=True,
        confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(SEED),
    )  # fmt: skip
    return resampling, observed, res


def interval(parts: Parts, combine: Combine) -> Interval:
    """One method's values (`combine` of its parts) with their 95% bootstrap intervals."""
    resampling, value, res = _bootstrap([parts], lambda s: combine(s[0]))
    if res is None:
        return Interval(value, None, None, seeds_only=resampling.seeds_only)
    ci = res.confidence_interval
    return Interval(value, np.asarray(ci.low), np.asarray(ci.high), None, resampling.seeds_only)


def paired_interval(a: Parts, b: Parts, combine: Combine) -> Interval:
    """A − B with its 95% interval (the same resampled test samples for both) and the paired
    bootstrap test's two-sided p: twice the smaller share of replicates on either side of 0."""
    resampling, value, res = _bootstrap([a, b], lambda s: combine(s[0]) - combine(s[1]))
    if res is None:
        return Interval(value, None, None, None, resampling.seeds_only)
    dist = np.asarray(res.bootstrap_distribution).reshape(len(value), -1)  # [k, RESAMPLES]
    # A replicate where both score the same is a tie, whatever the float rounding of its
    # difference (which would otherwise move p by a replicate from one machine to another).
    dist = np.round(dist, 9)
    p = np.minimum(1.0, 2 * np.minimum((dist <= 0).mean(axis=1), (dist >= 0).mean(axis=1)))
    ci = res.confidence_interval
    return Interval(value, np.asarray(ci.low), np.asarray(ci.high), p, resampling.seeds_only)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """McNemar's exact test on two classifiers' outcomes over the same samples: under no
    difference, the samples only one gets right split 50/50 (a binomial test on them)."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def point(parts: Parts, combine: Combine) -> np.ndarray:
    """The values of `combine` on the observed data (no resampling) [k]."""
    return combine(_Resampling([parts]).scores(0, None))[:, 0]
