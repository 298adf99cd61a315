"""Agreement between annotators: Cohen's kappa, Fleiss' kappa, Krippendorff's alpha and the MASI distance.

All functions are pure. Undefined statistics (no variation at all, nothing pairable) come back as NaN rather
than raising, because they describe the data; malformed input (ragged tables, too few raters) raises
``ValueError``.

Layouts used here:

- ``fleiss_kappa(table)``: items × categories, ``table[i][j]`` = how many raters put item ``i`` in category
  ``j``; every row sums to the same number of raters.
- ``fleiss_kappa_from_ratings(ratings)`` and ``krippendorff_alpha(units)``: items (units) × raters, one label
  per rater; ``krippendorff_alpha`` accepts ``None`` for a missing rating and rows of different lengths.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Sequence
from enum import Enum
from typing import Any

import numpy as np

__all__ = [
    "Distance",
    "cohen_kappa",
    "fleiss_kappa",
    "fleiss_kappa_from_ratings",
    "krippendorff_alpha",
    "masi_distance",
    "nominal_distance",
]

# Passonneau (2006) monotonicity weights, as in NLTK's ``masi_distance``.
_MASI_SUBSET = 0.67
_MASI_OVERLAP = 0.33


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa between two raters who labelled the same items (``a[i]`` and ``b[i]`` for item ``i``).

    ``(p_o - p_e) / (1 - p_e)`` from the two raters' contingency table, in numpy (scikit-learn's
    ``cohen_kappa_score`` gives the same; an evaluation need not load it). NaN when chance agreement is 1 (both
    raters used one and the same label throughout), where kappa is 0/0.
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} labels against {len(b)}")
    if len(a) == 0:
        raise ValueError("cohen_kappa: no items")
    labels = sorted(set(a) | set(b), key=str)
    if len(labels) < 2:
        return math.nan
    index = {label: j for j, label in enumerate(labels)}
    k, n = len(labels), len(a)
    table = np.bincount([index[x] * k + index[y] for x, y in zip(a, b, strict=True)], minlength=k * k).reshape(k, k)
    observed = np.trace(table) / n
    chance = float(table.sum(axis=1) @ table.sum(axis=0)) / n**2
    return float((observed - chance) / (1 - chance))


def fleiss_kappa(table: Sequence[Sequence[int]] | np.ndarray) -> float:
    """Fleiss' kappa from an items × categories count table (Fleiss 1971).

    With ``n`` raters per item, ``N`` items and counts ``n_ij``::

        P_i  = (sum_j n_ij**2 - n) / (n (n - 1))      agreement on item i
        p_j  = sum_i n_ij / (N n)                      share of category j
        kappa = (mean(P_i) - sum_j p_j**2) / (1 - sum_j p_j**2)

    NaN when every rating falls in one category (expected agreement 1).
    """
    counts = np.asarray(table, dtype=float)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError("fleiss_kappa: table must be a non-empty items × categories matrix")
    if np.any(counts < 0):
        raise ValueError("fleiss_kappa: counts must be non-negative")
    per_item = counts.sum(axis=1)
    n = per_item[0]
    if not np.all(per_item == n):
        raise ValueError("fleiss_kappa: every item needs the same number of ratings")
    if n < 2:
        raise ValueError("fleiss_kappa: at least two ratings per item are needed")
    p_item = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_cat = counts.sum(axis=0) / counts.sum()
    p_bar = float(p_item.mean())
    p_e = float((p_cat**2).sum())
    if math.isclose(p_e, 1.0):
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def fleiss_kappa_from_ratings(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa from items × raters labels; every item must have the same number of ratings."""
    if not ratings:
        raise ValueError("fleiss_kappa_from_ratings: no items")
    categories = sorted({label for row in ratings for label in row}, key=str)
    index = {label: j for j, label in enumerate(categories)}
    table = np.zeros((len(ratings), len(categories)), dtype=int)
    for i, row in enumerate(ratings):
        for label in row:
            table[i, index[label]] += 1
    return fleiss_kappa(table)


def nominal_distance(a: Hashable, b: Hashable) -> float:
    """0 for equal labels, 1 otherwise."""
    return 0.0 if a == b else 1.0


def masi_distance(a: Collection[Hashable], b: Collection[Hashable]) -> float:
    """MASI distance between two label sets (Passonneau 2006): ``1 - Jaccard × M``.

    ``M`` is 1 when the sets are equal, 0.67 when one is a subset of the other, 0.33 when they only
    intersect and 0 when they are disjoint. Two equal sets (also two empty ones) are at distance 0.
    """
    sa, sb = frozenset(a), frozenset(b)
    if sa == sb:
        return 0.0
    common = len(sa & sb)
    jaccard = common / len(sa | sb)
    if sa <= sb or sb <= sa:
        monotonicity = _MASI_SUBSET
    elif common:
        monotonicity = _MASI_OVERLAP
    else:
        monotonicity = 0.0
    return 1.0 - jaccard * monotonicity


class Distance(str, Enum):
    """Distance between two ratings in Krippendorff's alpha."""

    NOMINAL = "nominal"
    MASI = "masi"


def _as_set(value: Any) -> frozenset[Hashable]:
    if isinstance(value, str) or not isinstance(value, Collection):
        raise ValueError(f"masi distance needs set-valued ratings, got {value!r}")
    return frozenset(value)


def _as_label(value: Any) -> Hashable:
    return value


# Per distance: how a rating is normalised into a hashable value, and the distance between two values.
_DISTANCES: dict[Distance, tuple[Callable[[Any], Hashable], Callable[[Any, Any], float]]] = {
    Distance.NOMINAL: (_as_label, nominal_distance),
    Distance.MASI: (_as_set, masi_distance),
}


def krippendorff_alpha(units: Sequence[Sequence[Any]], distance: Distance | str = Distance.NOMINAL) -> float:
    """Krippendorff's alpha over units × raters ratings; ``None`` marks a missing rating.

    ``distance="nominal"`` compares single labels; ``distance="masi"`` compares label sets (any collection
    of labels per rating; an empty set is a rating, ``None`` is not). Units with fewer than two ratings are
    not pairable and are left out. With ``n`` pairable values overall, ``m_u`` in unit ``u`` and the
    distance ``d``::

        D_o = 1/n · sum_u 1/(m_u - 1) · sum_{i != j in u} d(v_i, v_j)
        D_e = 1/(n (n - 1)) · sum_{i != j over all pairable values} d(v_i, v_j)
        alpha = 1 - D_o / D_e

    NaN when nothing is pairable or there is no variation at all (``D_e == 0``).
    """
    normalise, dist = _DISTANCES[Distance(distance)]
    unit_counts: list[Counter[Hashable]] = []
    for unit in units:
        present = [normalise(v) for v in unit if v is not None]
        if len(present) >= 2:
            unit_counts.append(Counter(present))
    if not unit_counts:
        return math.nan
    pooled: Counter[Hashable] = Counter()
    for counts in unit_counts:
        pooled.update(counts)
    values = list(pooled)
    index = {v: i for i, v in enumerate(values)}
    delta = np.array([[dist(a, b) for b in values] for a in values])
    n = sum(pooled.values())

    observed = 0.0
    for counts in unit_counts:
        vec = np.zeros(len(values))
        for v, c in counts.items():
            vec[index[v]] = c
        observed += float(vec @ delta @ vec) / (sum(counts.values()) - 1)
    observed /= n
    totals = np.array([pooled[v] for v in values], dtype=float)
    expected = float(totals @ delta @ totals) / (n * (n - 1))
    if expected == 0.0:
        return math.nan
    return 1.0 - observed / expected
