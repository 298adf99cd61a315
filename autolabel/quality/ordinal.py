"""Ordinal agreement: how close ratings on a scale are, not only whether they are equal.

For a rating field (``scale: {1: ..., 5: ...}``) or an ``ordinal: true`` choice field, a near miss (4 for 5) is
better than a far one (1 for 5). ``ordinal_quality`` reports, for a run's labels against gold, with 95% bootstrap
intervals that resample whole dialogues (``metrics.bootstrap_ci``, as the other label metrics):

- ``exact``: share of labels equal to gold;
- ``within_one``: share at most one scale step from gold;
- ``mae``: mean absolute difference in scale steps;
- ``qwk``: Cohen's kappa with quadratic weights ``(i - j)^2 / (K - 1)^2`` over the field's K points;
- ``icc``: intraclass correlation ICC(A,1) — two-way, absolute agreement, single rater (McGraw & Wong 1996;
  Shrout & Fleiss' ICC(2,1)) — of model and gold as two raters.

``krippendorff_alpha_ordinal`` is Krippendorff's alpha at the ordinal level (the metric of reviewer agreement on
ratings): the distance of two values grows with how many pooled values lie between them. All functions are pure;
undefined statistics (no variation) are NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autolabel.quality import metrics
from autolabel.tasks import LabelField

__all__ = ["icc_a1", "krippendorff_alpha_ordinal", "ordinal_quality", "ordinal_stats", "quadratic_weighted_kappa"]

KEYS = ("exact", "within_one", "mae", "qwk", "icc")


def quadratic_weighted_kappa(a: Sequence[float], b: Sequence[float], points: Sequence[float]) -> float:
    """Cohen's kappa of two raters with quadratic disagreement weights over the ordered ``points``."""
    return _qwk(np.asarray(a, float), np.asarray(b, float), np.asarray(sorted(points), float))


def _qwk(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> float:
    k = points.size
    if a.size == 0 or k < 2:
        return math.nan
    ia, ib = np.searchsorted(points, a), np.searchsorted(points, b)
    observed = np.bincount(ia * k + ib, minlength=k * k).reshape(k, k).astype(float)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / a.size
    steps = np.arange(k, dtype=float)
    weights = (steps[:, None] - steps[None, :]) ** 2 / (k - 1) ** 2
    denominator = float((weights * expected).sum())
    if denominator == 0.0:
        return math.nan
    return 1.0 - float((weights * observed).sum()) / denominator


def icc_a1(ratings: np.ndarray | Sequence[Sequence[float]]) -> float:
    """ICC(A,1) of an items × raters matrix (two-way, absolute agreement, single rater)::

        ICC = (MSR - MSE) / (MSR + (k - 1) MSE + k/n (MSC - MSE))

    with the mean squares of rows (items), columns (raters) and error. NaN with fewer than two items or no
    variation at all."""
    x = np.asarray(ratings, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError("icc_a1: ratings must be an items × raters matrix with two or more raters")
    n, k = x.shape
    if n < 2:
        return math.nan
    grand = x.mean()
    ssr = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ssc = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    sse = float(((x - grand) ** 2).sum()) - ssr - ssc
    msr, msc, mse = ssr / (n - 1), ssc / (k - 1), sse / ((n - 1) * (k - 1))
    denominator = msr + (k - 1) * mse + k / n * (msc - mse)
    if denominator <= 0.0 or math.isclose(denominator, 0.0, abs_tol=1e-12):
        return math.nan
    return (msr - mse) / denominator


def ordinal_stats(gold: np.ndarray, predicted: np.ndarray,
                  points: np.ndarray) -> Callable[[np.ndarray], dict[str, float]]:
    """The ``KEYS`` statistics of the items at given indices (repeats allowed): fast enough to bootstrap."""
    step = float(np.min(np.diff(points))) if points.size > 1 else 1.0

    def stats(idx: np.ndarray) -> dict[str, float]:
        g, p = gold[idx], predicted[idx]
        diff = np.abs(g - p) / step
        return {"exact": float((diff == 0).mean()), "within_one": float((diff <= 1).mean()),
                "mae": float(diff.mean()), "qwk": _qwk(g, p, points),
                "icc": icc_a1(np.column_stack([g, p]))}
    return stats


def ordinal_quality(field: LabelField, gold: Sequence[str], predicted: Sequence[str], groups: Sequence[str],
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Ordinal agreement of ``predicted`` with ``gold`` (option names of one ordinal field, item by item;
    ``groups`` the dialogue of each item), each statistic with its bootstrap interval by dialogue."""
    if not field.ordinal or field.multi:
        raise ValueError(f"{field.name} is not a single-choice ordinal field")
    g = np.array([_rank(field, v) for v in gold], dtype=float)
    p = np.array([_rank(field, v) for v in predicted], dtype=float)
    points = np.array(sorted(r for o in field.options if (r := field.rank(o.name)) is not None), dtype=float)
    stats = ordinal_stats(g, p, points)
    report: dict[str, Any] = {"n": int(g.size), "points": points.tolist(), **stats(np.arange(g.size))}
    report["intervals"] = {}
    for key in KEYS:
        def metric(idx: np.ndarray, key: str = key) -> float:
            return stats(idx)[key]
        _, low, high = metrics.bootstrap_ci(metric, np.asarray(groups), n_boot=n_boot, seed=seed)
        report["intervals"][key] = {"value": report[key], "low": low, "high": high}
    report["method"] = {"mae": "mean absolute difference in scale steps",
                        "qwk": "Cohen's kappa, quadratic weights over the field's points",
                        "icc": "ICC(A,1): two-way, absolute agreement, single rater (model and gold as raters)"}
    return report


def _rank(field: LabelField, name: str) -> float:
    rank = field.rank(name)
    if rank is None:
        raise ValueError(f"{name!r} is not a point of {field.name}")
    return rank


def krippendorff_alpha_ordinal(units: Sequence[Sequence[float | None]]) -> float:
    """Krippendorff's alpha at the ordinal level over units × raters numeric ranks (``None``: no rating).

    From the coincidence matrix ``o`` of pairable values (units with two or more ratings) and its marginals
    ``n_c``, the ordinal distance of values ``c <= k`` is ``(sum_{g=c..k} n_g - (n_c + n_k) / 2) ** 2``;
    ``alpha = 1 - D_o / D_e`` with ``D_o = sum o_ck d_ck / n`` and ``D_e = sum n_c n_k d_ck / (n (n - 1))``.
    NaN when nothing is pairable or all values are equal."""
    pairable = [[v for v in unit if v is not None] for unit in units]
    pairable = [u for u in pairable if len(u) >= 2]
    if not pairable:
        return math.nan
    values = sorted({v for u in pairable for v in u})
    index = {v: i for i, v in enumerate(values)}
    m = len(values)
    coincidence = np.zeros((m, m))
    for unit in pairable:
        counts = Counter(index[v] for v in unit)
        vec = np.zeros(m)
        for i, c in counts.items():
            vec[i] = c
        coincidence += (np.outer(vec, vec) - np.diag(vec)) / (len(unit) - 1)
    marginals = coincidence.sum(axis=1)
    n = marginals.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(marginals)])
    lo, hi = np.minimum.outer(np.arange(m), np.arange(m)), np.maximum.outer(np.arange(m), np.arange(m))
    between = cumulative[hi + 1] - cumulative[lo]
    delta = (between - (marginals[lo] + marginals[hi]) / 2) ** 2
    observed = float((coincidence * delta).sum()) / n
    expected = float((np.outer(marginals, marginals) * delta).sum()) / (n * (n - 1))
    if expected == 0.0:
        return math.nan
    return 1.0 - observed / expected
