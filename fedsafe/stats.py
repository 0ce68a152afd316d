"""Statistics of a result (docs/method.md#statistics): intervals, paired tests, multiple-comparison
correction, power. Pure functions of numbers; the tests are scipy's and statsmodels'.

Per-prompt verdicts are 0/1 arrays, one per seed, aligned by prompt: ``ref[s][i]`` and ``arm[s][i]`` are
the two arms' verdicts on the same prompt ``i`` in seed ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class Summary:
    mean: float
    ci95: tuple[float, float] | None
    n_seeds: int
    n_prompts: int | None
    method: str


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """95% Student-t interval of the mean of ``values`` (None for fewer than 2 values)."""
    if len(values) < 2:
        return None
    if np.std(values) == 0:
        return (float(values[0]), float(values[0]))
    low, high = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    return float(low), float(high)


def bootstrap_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` (one seed's per-prompt values)."""
    values = np.asarray(values, dtype=float)
    if values.min() == values.max():
        return float(values[0]), float(values[0])
    res = sps.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=BOOTSTRAP_RESAMPLES,
                        method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(per_seed: list[float], per_prompt: list[np.ndarray] | None = None, scale: float = 1.0) -> Summary:
    """Mean over seeds with a 95% interval: Student-t over the seeds' values when there are several; a
    per-prompt bootstrap when there is one seed and per-prompt values (``scale`` multiplies them, 100 for
    percentages); no interval otherwise."""
    n_prompts = len(per_prompt[0]) if per_prompt else None
    mean = float(np.mean(per_seed))
    if len(per_seed) > 1:
        return Summary(mean, t_interval(per_seed), len(per_seed), n_prompts, "t over seeds")
    if per_prompt:
        low, high = bootstrap_interval(np.asarray(per_prompt[0], dtype=float) * scale)
        return Summary(mean, (low, high), 1, n_prompts, "bootstrap over prompts")
    return Summary(mean, None, 1, n_prompts, "one value")


@dataclass(frozen=True)
class PairedTest:
    p: float  # exact McNemar on the discordant pairs summed over seeds
    effect: float  # mean over seeds of (arm - reference), in the verdicts' unit times ``scale``
    effect_ci95: tuple[float, float]  # paired bootstrap over prompts within each seed
    discordant: tuple[int, int]  # (reference 1 and arm 0, reference 0 and arm 1), summed over seeds
    n_pairs: int


def paired_test(ref: list[np.ndarray], arm: list[np.ndarray], scale: float = 100.0, seed: int = 0) -> PairedTest:
    """Paired comparison of two arms' 0/1 verdicts on the same prompts, seed by seed.

    The p-value is the exact McNemar test on the discordant pairs summed over seeds (under the null each
    discordant pair is equally likely to go either way, in every seed, so the sum is binomial: a stratified
    sign test). The effect is the mean over seeds of the difference in rates; its interval a paired
    bootstrap that resamples prompts within each seed."""
    if len(ref) != len(arm) or any(len(r) != len(a) for r, a in zip(ref, arm)):
        raise ValueError("paired_test needs the same seeds and prompts in both arms")
    ref = [np.asarray(r, dtype=int) for r in ref]
    arm = [np.asarray(a, dtype=int) for a in arm]
    b = int(sum(((r == 1) & (a == 0)).sum() for r, a in zip(ref, arm)))
    c = int(sum(((r == 0) & (a == 1)).sum() for r, a in zip(ref, arm)))
    p = float(mcnemar([[0, b], [c, 0]], exact=True).pvalue) if b + c else 1.0
    diffs = [(a - r).astype(float) * scale for r, a in zip(ref, arm)]
    effect = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    boot = np.zeros(BOOTSTRAP_RESAMPLES)
    for d in diffs:
        idx = rng.integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))
        boot += d[idx].mean(axis=1)
    boot /= len(diffs)
    low, high = np.percentile(boot, [2.5, 97.5])
    return PairedTest(p, effect, (float(low), float(high)), (b, c), sum(len(d) for d in diffs))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error across the arms compared)."""
    if not pvalues:
        return []
    return [float(p) for p in multipletests(pvalues, alpha=ALPHA, method="holm")[1]]


def min_detectable_difference(n: int, rate: float, power: float = 0.8) -> float:
    """Smallest difference in percentage points from ``rate`` (a percentage) that a two-sided test at
    alpha 0.05 detects with ``power`` on ``n`` prompts per arm (Cohen's h, normal approximation; unpaired,
    so pairing can only make it smaller)."""
    h = NormalIndPower().solve_power(effect_size=None, nobs1=n, alpha=ALPHA, power=power, ratio=1.0)
    p0 = min(max(rate / 100.0, 1e-6), 1 - 1e-6)
    phi = 2 * math.asin(math.sqrt(p0))
    up = math.sin(min(phi + h, math.pi) / 2) ** 2 - p0
    down = p0 - math.sin(max(phi - h, 0.0) / 2) ** 2
    return 100.0 * min(up, down) if up > 0 and down > 0 else 100.0 * max(up, down)
