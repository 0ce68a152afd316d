"""Statistics of a result (docs/method.md#statistics): intervals, seed-level paired tests, tests against a
threshold, multiple-comparison correction, power. Pure functions of numbers; the tests are scipy's and
statsmodels'.

A claim about an attack, a rule or a defense is about a *new* federated run, so the run (the seed) is the
unit of inference and prompts are a second, crossed factor. Per-prompt verdicts are 0/1 arrays, one per
seed, aligned by prompt: ``ref[s][i]`` and ``arm[s][i]`` are the two arms' verdicts on the same prompt ``i``
in seed ``s``. Each seed gives one paired effect (the arm's rate minus the reference's on that seed's
prompts); the test and the interval rest on those per-seed effects (Student-t, seeds - 1 degrees of
freedom). The exact McNemar test inside each seed stays as a description of that one run.

    t = paired_test(ref, arm)           # ref, arm: lists of per-seed 0/1 arrays over the same prompts
    t.effect, t.effect_ci95, t.p        # mean over seeds (points), Student-t 95% interval, paired t over seeds
    threshold_p(t, 5.0, "greater")      # one-sided: is the effect above 5 points?
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_RESAMPLES = 4000
MIN_SEEDS = 5  # fewer seeds give no verdict on a claim (docs/method.md#statistics)
SEED_METHODS = ("t", "meta")
SEED_LEVEL = "seeds"  # PairedTest.level: inference over seeds, about a new run
WITHIN_RUN = "within this run"  # one seed: a description of that run, not of a new one


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
    """Mean over seeds with a 95% interval: Student-t over the seeds' values when there are several; with
    one seed and per-prompt values (``scale`` multiplies them, 100 for percentages) a bootstrap over that
    run's prompts, labelled "within this run" (it says nothing of a new run); no interval otherwise."""
    n_prompts = len(per_prompt[0]) if per_prompt else None
    mean = float(np.mean(per_seed))
    if len(per_seed) > 1:
        return Summary(mean, t_interval(per_seed), len(per_seed), n_prompts, "t over seeds")
    if per_prompt:
        low, high = bootstrap_interval(np.asarray(per_prompt[0], dtype=float) * scale)
        return Summary(mean, (low, high), 1, n_prompts, f"{WITHIN_RUN}: bootstrap over prompts")
    return Summary(mean, None, 1, n_prompts, "one value")


@dataclass(frozen=True)
class SeedTest:
    """A mean of per-seed effects and its seed-level inference."""

    effect: float  # mean over seeds
    effect_ci95: tuple[float, float]
    p: float  # two-sided, effect = 0
    se: float  # standard error of the mean effect
    df: float  # degrees of freedom of its t distribution (inf: normal)
    sd: float | None  # between-seed standard deviation of the per-seed effects (None for one seed)
    n_seeds: int
    method: str


def _t_test(effect: float, se: float, df: float, n: int, sd: float | None, method: str) -> SeedTest:
    if se == 0:  # every prompt of every seed moved the same way
        return SeedTest(effect, (effect, effect), 1.0 if effect == 0 else 0.0, 0.0, df, sd, n, method)
    crit = sps.t.ppf(1 - ALPHA / 2, df)
    p = float(2 * sps.t.sf(abs(effect) / se, df))
    return SeedTest(effect, (effect - crit * se, effect + crit * se), p, se, df, sd, n, method)


def seed_test(effects: list[float], within_var: list[float] | None = None, method: str = "t") -> SeedTest:
    """Seed-level inference on ``effects`` (one paired effect per seed, at least 2).

    ``t``: the paired t over seeds (one-sample t of the per-seed effects, seeds - 1 degrees of freedom);
    where every seed gave the same effect (no spread to estimate) its standard error is the prompt sampling
    error alone (``within_var``: each per-seed effect's variance within its seed). ``meta``: random-effects
    meta-analysis of the per-seed effects with their within-seed variances (DerSimonian-Laird between-seed
    variance) and the Hartung-Knapp-Sidik-Jonkman correction, never narrower than the plain random-effects
    interval, t with seeds - 1 degrees of freedom (statsmodels' ``combine_effects``)."""
    if method not in SEED_METHODS:
        raise ValueError(f"seed-level method must be one of {SEED_METHODS}, got {method!r}")
    values = np.asarray(effects, dtype=float)
    n = len(values)
    if n < 2:
        raise ValueError(f"a seed-level test needs at least 2 seeds, got {n}")
    sd = float(values.std(ddof=1))
    within = np.zeros(n) if within_var is None else np.asarray(within_var, dtype=float)
    if method == "meta" and within.min() > 0:
        from statsmodels.stats.meta_analysis import combine_effects

        with np.errstate(all="ignore"):
            res = combine_effects(values, within, method_re="chi2", use_t=True)
        se = float(max(res.sd_eff_w_re_hksj, res.sd_eff_w_re))  # HKSJ, not narrower than the plain RE interval
        if math.isfinite(se):
            return _t_test(float(res.mean_effect_re), se, n - 1, n, sd,
                           "random-effects meta-analysis over seeds (DerSimonian-Laird), Hartung-Knapp t")
    se = sd / math.sqrt(n) if sd > 0 else math.sqrt(within.sum()) / n
    return _t_test(float(values.mean()), se, n - 1, n, sd, f"paired t over seeds (df = {n - 1})")


@dataclass(frozen=True)
class PairedTest:
    """Two arms on the same prompts, seed by seed. With several seeds ``p``, ``effect_ci95`` and ``level`` =
    "seeds" are the seed-level inference (about a new run); with one, ``level`` = "within this run": the exact
    McNemar p and a bootstrap over that run's prompts."""

    p: float
    effect: float  # mean over seeds of (arm - reference), in the verdicts' unit times ``scale``
    effect_ci95: tuple[float, float]
    discordant: tuple[int, int]  # (reference 1 and arm 0, reference 0 and arm 1), summed over seeds
    n_pairs: int
    level: str = SEED_LEVEL
    n_seeds: int = 1
    per_seed: tuple[float, ...] = ()  # each seed's paired effect
    per_seed_p: tuple[float, ...] = ()  # each seed's exact McNemar p (a description of that run)
    se: float = 0.0
    df: float = math.inf
    sd: float | None = None  # between-seed SD of the per-seed effects
    method: str = ""


def mcnemar_p(b: int, c: int) -> float:
    """Exact McNemar p on ``b`` and ``c`` discordant pairs (1.0 without any)."""
    return float(mcnemar([[0, b], [c, 0]], exact=True).pvalue) if b + c else 1.0


def paired_test(ref: list[np.ndarray], arm: list[np.ndarray], scale: float = 100.0, seed: int = 0,
                method: str = "t") -> PairedTest:
    """Paired comparison of two arms' 0/1 verdicts on the same prompts, seed by seed (module docstring):
    per seed the paired effect and the exact McNemar p; over seeds ``seed_test`` (``method``). One seed: the
    exact McNemar p and a paired bootstrap over its prompts, ``level`` "within this run"."""
    if not ref or len(ref) != len(arm) or any(len(r) != len(a) for r, a in zip(ref, arm)):
        raise ValueError("paired_test needs the same seeds and prompts in both arms")
    ref = [np.asarray(r, dtype=int) for r in ref]
    arm = [np.asarray(a, dtype=int) for a in arm]
    bs = [int(((r == 1) & (a == 0)).sum()) for r, a in zip(ref, arm)]
    cs = [int(((r == 0) & (a == 1)).sum()) for r, a in zip(ref, arm)]
    diffs = [(a - r).astype(float) * scale for r, a in zip(ref, arm)]
    effects = [float(d.mean()) for d in diffs]
    per_seed_p = tuple(mcnemar_p(b, c) for b, c in zip(bs, cs))
    common = dict(discordant=(sum(bs), sum(cs)), n_pairs=sum(len(d) for d in diffs), n_seeds=len(diffs),
                  per_seed=tuple(effects), per_seed_p=per_seed_p)
    if len(diffs) == 1:
        d = diffs[0]
        low, high = bootstrap_interval(d, seed)
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
        return PairedTest(per_seed_p[0], effects[0], (low, high), level=WITHIN_RUN, se=se, sd=None,
                          method="exact McNemar within the run; bootstrap over its prompts", **common)
    within = [float(d.var(ddof=1) / len(d)) if len(d) > 1 else 0.0 for d in diffs]
    t = seed_test(effects, within, method)
    return PairedTest(t.p, t.effect, t.effect_ci95, level=SEED_LEVEL, se=t.se, df=t.df, sd=t.sd, method=t.method,
                      **common)


def contrast_test(verdicts: list[list[np.ndarray]], weights: list[float], scale: float = 100.0,
                  method: str = "t") -> SeedTest:
    """Seed-level inference on a contrast of several arms' verdicts on the same prompts: per seed the
    weighted sum of the arms' rates (``weights``, e.g. (1, -0.5, -0.5): the first arm above the midpoint of
    the other two), over seeds ``seed_test``. ``verdicts[k][s]``: arm k's 0/1 array in seed s."""
    if len(verdicts) != len(weights) or len({len(v) for v in verdicts}) != 1:
        raise ValueError("contrast_test needs one weight per arm and the same seeds in every arm")
    values, within = [], []
    for per_arm in zip(*verdicts):
        if len({len(a) for a in per_arm}) != 1:
            raise ValueError("contrast_test needs the same prompts in every arm of a seed")
        v = sum(w * np.asarray(a, dtype=float) for w, a in zip(weights, per_arm)) * scale
        values.append(float(v.mean()))
        within.append(float(v.var(ddof=1) / len(v)) if len(v) > 1 else 0.0)
    return seed_test(values, within, method)


def threshold_p(effect: float, se: float, df: float, threshold: float, alternative: str) -> float:
    """One-sided p at the seed level that the mean effect is ``alternative`` ("greater" or "less") than
    ``threshold``, from a test's ``effect``, ``se`` and ``df``."""
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be greater or less, got {alternative!r}")
    gap = effect - threshold if alternative == "greater" else threshold - effect
    if se == 0:
        return 0.0 if gap > 0 else 1.0
    return float(sps.t.sf(gap / se, df))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error across the comparisons of a family)."""
    if not pvalues:
        return []
    return [float(p) for p in multipletests(pvalues, alpha=ALPHA, method="holm")[1]]


@dataclass(frozen=True)
class SeedPower:
    n_seeds: int
    sd: float  # between-seed SD of the per-seed effects
    detectable: float  # smallest effect (same unit as sd) a paired t over n_seeds detects with POWER
    seeds_needed: int | None  # seeds for POWER at the observed effect (None: no effect, or over 1000)


def seed_power(per_seed: list[float], power: float = POWER, alpha: float = ALPHA) -> SeedPower | None:
    """Power of the seed-level paired t from a comparison's own per-seed effects (statsmodels'
    ``TTestPower``): the smallest effect it detects with ``power`` at its number of seeds, and the seeds it
    would need to detect the effect it saw. None for fewer than 2 seeds or no spread."""
    values = np.asarray(per_seed, dtype=float)
    if len(values) < 2 or values.std(ddof=1) == 0:
        return None
    sd, analysis = float(values.std(ddof=1)), TTestPower()
    d = analysis.solve_power(effect_size=None, nobs=len(values), alpha=alpha, power=power)
    observed = abs(float(values.mean())) / sd

    def enough(n: int) -> bool:
        achieved = float(analysis.power(effect_size=observed, nobs=n, alpha=alpha))
        if not math.isfinite(achieved):  # scipy's noncentral t gives nan far in its tail: there, power is ~1
            achieved = 1.0 if observed * math.sqrt(n) > 5 else 0.0
        return achieved >= power

    needed = None  # the fewest seeds (2 to 1000) with the power asked, by bisection (power grows with seeds)
    if observed > 0 and enough(1000):
        low, high = 2, 1000
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if enough(mid) else (mid + 1, high)
        needed = low
    return SeedPower(len(values), sd, float(d) * sd, needed)
