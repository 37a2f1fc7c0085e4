"""Uncertainty of evaluation results: bootstrap intervals over prompts, across-seed intervals, front differences.

Pure functions of numbers (numpy, no models). The conventions every report states:

* **Over prompts** (one trained policy): a 95 % percentile bootstrap that resamples *prompts* with
  replacement (the samples of one prompt stay together: they share the prompt). The generator is seeded
  (:data:`BOOT_SEED`), so the same data give the same interval.
* **Paired** comparisons: the policies being compared were evaluated on the same prompts, so one bootstrap
  draw resamples the same prompts for every point (common random numbers); what cancels between points
  does not inflate the interval of their difference.
* **Across seeds** (several training runs): mean ± t_{0.975, n−1}·s/√n over the runs. Every run is evaluated
  on the same held-out prompts, so this interval is about retraining, conditional on those prompts.
* **Verdict**: :func:`verdict` — "above" when the whole interval of a difference is above 0, "below" when it
  is below 0, otherwise "within noise".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 2000
BOOT_SEED = 0

VERDICT_RULE = ("Verdict rule: a front is **above** (or **below**) another when the 95 % interval of the mean "
                "reward difference at matched KL lies entirely above (below) 0; otherwise the difference is "
                "**within noise**.")

# t_{0.975, df} for df = 1..30 (two-sided 95 %); beyond 30 the normal 1.96 is within 4 %.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# ------------------------------------------------------------------------------------------------ basics


def per_prompt(prompts: Sequence[str], values: Sequence[float]) -> tuple[list[str], np.ndarray]:
    """(prompts in first-appearance order, the mean value of each prompt's samples)."""
    sums: dict[str, list[float]] = {}
    for p, v in zip(prompts, values, strict=True):
        sums.setdefault(p, []).append(float(v))
    return list(sums), np.array([sum(v) / len(v) for v in sums.values()], dtype=np.float64)


def boot_indices(n: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """[n_boot, n] prompt indices drawn with replacement: the same draws for every quantity of one analysis."""
    if n < 1:
        raise ValueError("nothing to resample")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(draws, dtype=np.float64), [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_mean_ci(values: Sequence[float], level: float = LEVEL, n_boot: int = N_BOOT,
                      seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per prompt)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 1:
        return float(x[0]), float(x[0])
    return percentile_interval(x[boot_indices(x.size, n_boot, seed)].mean(axis=1), level)


def prompt_ci(prompts: Sequence[str], values: Sequence[float], **kw) -> tuple[float, float]:
    """Bootstrap interval over prompts of the mean over samples (equal samples per prompt: the same mean)."""
    return bootstrap_mean_ci(per_prompt(prompts, values)[1], **kw)


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the two-sided 95 % quantile of Student's t."""
    if df < 1:
        raise ValueError("an interval across runs needs at least 2 runs")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): mean ± t_{0.975, n−1}·s/√n over runs (e.g. training seeds); n = 1 gives a point."""
    x = [float(v) for v in values]
    m = sum(x) / len(x)
    if len(x) < 2:
        return m, m, m
    s = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))
    half = t_quantile(len(x) - 1) * s / math.sqrt(len(x))
    return m, m - half, m + half


def verdict(lo: float | None, hi: float | None) -> str:
    """"above" if the interval of a difference lies above 0, "below" if below, else "within noise"."""
    if lo is None or hi is None:
        return "no comparison"
    if lo > 0:
        return "above"
    if hi < 0:
        return "below"
    return "within noise"


# ------------------------------------------------------------------------------------------------ fronts


def pareto_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (KL, reward) points, sorted by KL: each has a higher reward than all at lower KL."""
    front: list[tuple[float, float]] = []
    for kl, r in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or r > front[-1][1]:
            front.append((kl, r))
    return front


def curve_value_at(points: list[tuple[float, float]], kl: float) -> float | None:
    """A sweep's value at a KL budget read along its points in order of KL (not their upper envelope): linear
    between neighbours, flat after the last point, None below the first.

    For a value that need not rise with KL and that nobody can pick η by (a gold reward the method never sees).
    """
    curve = by_kl(points)
    if not curve or kl < curve[0][0]:
        return None
    for (k0, r0), (k1, r1) in zip(curve, curve[1:], strict=False):
        if k0 <= kl <= k1:
            return r0 if k1 == k0 else r0 + (r1 - r0) * (kl - k0) / (k1 - k0)
    return curve[-1][1]


def front_reward_at(points: list[tuple[float, float]], kl: float) -> float | None:
    """The front's reward at a KL budget: linear between non-dominated points, flat after the last one.

    None below the smallest KL of the front (nothing there to compare with).
    """
    return curve_value_at(pareto_points(points), kl)


def by_kl(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return sorted(points, key=lambda p: p[0])


# How a series is read at another's KL: the points its value is interpolated between (curve_value_at), the
# upper envelope ("front") or every point in KL order ("curve").
CURVES = {"front": pareto_points, "curve": by_kl}


def paired_front_deltas(a_kl: np.ndarray, a_reward: np.ndarray, b_kl: np.ndarray, b_reward: np.ndarray,
                        matched: Sequence[int], level: float = LEVEL, n_boot: int = N_BOOT,
                        seed: int = BOOT_SEED, read: str = "front") -> dict:
    """Bootstrap intervals of Δ_j = front_a(KL of b_j) − reward of b_j and of their mean over ``matched`` j.

    ``a_kl``, ``a_reward``: [points of a, prompts] per-prompt means (``b_*`` likewise), every point on the
    same prompts in the same order. One draw resamples the prompts once for all points of both fronts;
    a's front is rebuilt from the resampled means and read at each resampled KL of b (``read``: a key of
    :data:`CURVES`, "front" for its upper envelope, "curve" for its points in KL order).
    Returns ``{"rows": [(lo, hi) | None per point of b], "mean": (lo, hi) | None}``.
    """
    n = a_kl.shape[1]
    if b_kl.shape[1] != n:
        raise ValueError("the two fronts were not evaluated on the same prompts")
    idx = boot_indices(n, n_boot, seed)
    make_curve = CURVES[read]

    def means(x: np.ndarray) -> np.ndarray:  # [points, n_boot]
        return np.stack([row[idx].mean(axis=1) for row in x]) if len(x) else np.zeros((0, n_boot))

    akl, ar, bkl, br = means(a_kl), means(a_reward), means(b_kl), means(b_reward)
    deltas = np.full((b_kl.shape[0], n_boot), np.nan)
    for t in range(n_boot):
        curve = make_curve(list(zip(akl[:, t].tolist(), ar[:, t].tolist(), strict=True)))  # once per draw
        for j in range(b_kl.shape[0]):
            ra = curve_value_at(curve, float(bkl[j, t]))
            if ra is not None:
                deltas[j, t] = ra - br[j, t]
    rows: list[tuple[float, float] | None] = []
    for j in range(b_kl.shape[0]):
        ok = deltas[j][~np.isnan(deltas[j])]
        rows.append(percentile_interval(ok, level) if ok.size >= n_boot // 2 else None)
    mean = None
    if matched:
        m = deltas[list(matched)]
        m = m[:, ~np.isnan(m).any(axis=0)]  # a draw counts if every matched point had a front value
        if m.shape[1] >= n_boot // 2:
            mean = percentile_interval(m.mean(axis=0), level)
    return {"rows": rows, "mean": mean}
