"""Label quality and confidence quality, as plain functions over lists and numpy arrays.

Three families:

- label quality against gold: ``classification_report`` (one label per item) and ``multilabel_report``
  (a set of options per item);
- confidence quality, given ``correct`` (was the label right) and ``confidence`` (the score it was given):
  ``auroc_errors``, ``aurc`` / ``risk_coverage_curve``, ``ece`` / ``reliability_bins`` (equal-mass bins),
  ``brier``, ``error_recall_at_budget``;
- uncertainty: ``bootstrap_ci`` resamples whole groups (dialogues), because turns of one dialogue are
  correlated; ``confidence_report`` bundles everything with intervals.

Undefined values (AUROC with a single class, recall with no errors) are NaN; malformed input raises
``ValueError``. Ties in confidence never depend on the labels: they are broken by input order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "aurc",
    "auroc_errors",
    "bootstrap_ci",
    "bootstrap_many",
    "brier",
    "classification_report",
    "confidence_report",
    "ece",
    "error_recall_at_budget",
    "multilabel_report",
    "reliability_bins",
    "risk_coverage_curve",
]


# --------------------------------------------------------------------------------------------- label quality

def _labels_for(observed: set[str], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return sorted(observed)
    unknown = observed - set(labels)
    if unknown:
        raise ValueError(f"labels not among the given options: {sorted(unknown)}")
    return list(labels)


def _per_option(labels: list[str], precision: np.ndarray, recall: np.ndarray, f1: np.ndarray,
                support: np.ndarray) -> dict[str, dict[str, Any]]:
    return {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }


def _ratio(num: np.ndarray, den: np.ndarray, undefined: float = 0.0) -> np.ndarray:
    """``num / den`` elementwise, ``undefined`` where ``den`` is 0 (scikit-learn's ``zero_division``)."""
    out = np.full(np.shape(num), undefined, dtype=float)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_report(y_true: Sequence[str], y_pred: Sequence[str],
                          labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro/micro F1, Cohen's kappa, per-option scores and the confusion matrix.

    ``labels`` fixes the option order (default: every label seen, sorted); a label outside it raises.
    Macro F1 averages over the options that occur in gold or prediction; an option that occurs in
    neither is listed with zeros but does not pull the average down. Per-option precision (recall) is 0
    when the option is never predicted (never in gold). ``confusion["matrix"][i][j]`` counts items with gold
    ``labels[i]`` predicted as ``labels[j]``. Computed from the confusion matrix in numpy, as scikit-learn
    defines these scores (the tests check them against it); an evaluation does not load scikit-learn.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels against {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no items")
    order = _labels_for(set(y_true) | set(y_pred), labels)
    index = {label: j for j, label in enumerate(order)}
    k = len(order)
    codes = np.array([index[t] * k + index[p] for t, p in zip(y_true, y_pred, strict=True)])
    cm = np.bincount(codes, minlength=k * k).reshape(k, k)
    tp, gold, predicted = np.diag(cm).astype(float), cm.sum(axis=1).astype(float), cm.sum(axis=0).astype(float)
    present = gold + predicted > 0
    n = len(y_true)
    pe = float(gold @ predicted) / n**2
    return {
        "n": n,
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(np.mean(2 * tp[present] / (gold + predicted)[present])),
        "micro_f1": float(tp.sum() / n),
        "cohen_kappa": math.nan if present.sum() < 2 else float((tp.sum() / n - pe) / (1 - pe)),
        "per_option": _per_option(order, _ratio(tp, predicted), _ratio(tp, gold), _ratio(2 * tp, gold + predicted),
                                  gold),
        "confusion": {"labels": order, "matrix": cm.tolist()},
    }


def multilabel_report(y_true: Sequence[Collection[str]], y_pred: Sequence[Collection[str]],
                      labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Exact match, mean Jaccard, micro/macro F1 and per-option scores for set-valued labels.

    Each item is a collection of option names. Jaccard of two empty sets counts as 1 (full agreement).
    Macro F1 averages over options that occur in gold or prediction. ``per_option[o]["confusion"]`` holds
    the option's 2×2 counts ``tp``, ``fp``, ``fn``, ``tn`` over items. In numpy, as scikit-learn defines them.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold label sets against {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no items")
    truth_sets = [set(s) for s in y_true]
    pred_sets = [set(s) for s in y_pred]
    order = _labels_for(set().union(*truth_sets, *pred_sets), labels)
    index = {label: j for j, label in enumerate(order)}
    truth = np.zeros((len(truth_sets), len(order)), dtype=bool)
    pred = np.zeros_like(truth)
    for row, (ts, ps) in enumerate(zip(truth_sets, pred_sets, strict=True)):
        truth[row, [index[o] for o in ts]] = True
        pred[row, [index[o] for o in ps]] = True
    tp, fp = (truth & pred).sum(axis=0).astype(float), (~truth & pred).sum(axis=0).astype(float)
    fn, tn = (truth & ~pred).sum(axis=0).astype(float), (~truth & ~pred).sum(axis=0).astype(float)
    per_option = _per_option(order, _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn),
                             tp + fn)
    for j, label in enumerate(order):
        per_option[label]["confusion"] = {"tp": int(tp[j]), "fp": int(fp[j]), "fn": int(fn[j]), "tn": int(tn[j])}
    present = tp + fp + fn > 0
    union = (truth | pred).sum(axis=1)
    denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "n": len(truth_sets),
        "exact_match": float(np.mean([t == p for t, p in zip(truth_sets, pred_sets, strict=True)])),
        "jaccard": float(np.mean(_ratio((truth & pred).sum(axis=1), union, undefined=1.0))),
        "macro_f1": float(np.mean(2 * tp[present] / (2 * tp + fp + fn)[present])) if present.any() else math.nan,
        "micro_f1": float(2 * tp.sum() / denominator) if denominator else 0.0,
        "per_option": per_option,
    }


# ---------------------------------------------------------------------------------------- confidence quality

def _arrays(correct: ArrayLike, confidence: ArrayLike,
            probability: bool = False) -> tuple[np.ndarray, np.ndarray]:
    ok = np.asarray(correct).astype(bool).ravel()
    conf = np.asarray(confidence, dtype=float).ravel()
    if ok.shape != conf.shape:
        raise ValueError(f"{ok.size} correctness flags against {conf.size} confidences")
    if ok.size == 0:
        raise ValueError("no items")
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidence contains NaN or infinite values")
    if probability and (conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidence must lie in [0, 1]")
    return ok, conf


def auroc_errors(correct: ArrayLike, confidence: ArrayLike) -> float:
    """How well low confidence finds errors: AUROC with errors as positives and ``1 - confidence`` as score.

    0.5 is chance, 1.0 ranks every error below every correct label. NaN when all labels are right or all
    are wrong.
    """
    ok, conf = _arrays(correct, confidence)
    return _auroc(ok, conf)


def _auroc(ok: np.ndarray, conf: np.ndarray) -> float:
    """``auroc_errors`` on checked arrays: the Mann–Whitney statistic with tied scores at their mean rank (what
    scikit-learn's ``roc_auc_score`` computes), in numpy, as it runs once per bootstrap resample."""
    errors = ~ok
    n_errors = int(errors.sum())
    if n_errors in (0, ok.size):
        return math.nan
    _, tie, counts = np.unique(-conf, return_inverse=True, return_counts=True)  # the least confident ranks last
    mean_rank = (np.cumsum(counts) - (counts - 1) / 2.0)[tie.ravel()]
    n_right = ok.size - n_errors
    return float((mean_rank[errors].sum() - n_errors * (n_errors + 1) / 2.0) / (n_errors * n_right))


def _descending_blocks(ok: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by confidence (high first) and return, per block of tied values: value, size, errors."""
    order = np.argsort(-conf, kind="stable")
    values, starts, sizes = np.unique(-conf[order], return_index=True, return_counts=True)
    errors = np.add.reduceat((~ok[order]).astype(float), starts)
    return -values, sizes, errors


def risk_coverage_curve(correct: ArrayLike, confidence: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and risk (error rate among accepted) when accepting everything at or above each threshold.

    One point per distinct confidence value, from the strictest threshold (lowest coverage) to the most
    lenient (coverage 1, risk = overall error rate).
    """
    ok, conf = _arrays(correct, confidence)
    _, sizes, errors = _descending_blocks(ok, conf)
    accepted = np.cumsum(sizes)
    return accepted / ok.size, np.cumsum(errors) / accepted


def aurc(correct: ArrayLike, confidence: ArrayLike) -> float:
    """Area under the risk–coverage curve (Geifman & El-Yaniv): mean over k = 1..N of the error rate among
    the k most confident items. Lower is better.

    Tied confidences get the expected value over their orderings: inside a block of m tied items with e
    errors, the first j of them carry j·e/m errors. Without ties this is the usual per-item AURC.
    """
    ok, conf = _arrays(correct, confidence)
    _, sizes, errors = _descending_blocks(ok, conf)
    return _aurc_of_blocks(sizes, errors)


def _aurc_of_blocks(sizes: np.ndarray, errors: np.ndarray) -> float:
    """AURC from the blocks of tied confidence, most confident first: sizes and errors per block."""
    n = int(sizes.sum())
    block = np.repeat(np.arange(sizes.size), sizes)
    within = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
    errors_before = np.repeat(np.cumsum(errors) - errors, sizes)
    cum_errors = errors_before + within * errors[block] / sizes[block]
    return float(np.mean(cum_errors / np.arange(1, n + 1)))


def reliability_bins(correct: ArrayLike, confidence: ArrayLike,
                     n_bins: int = 10) -> list[tuple[float, float, int]]:
    """Equal-mass reliability diagram: ``(mean confidence, accuracy, count)`` per bin, low to high.

    Items are sorted by confidence (ties in input order) and cut into ``min(n_bins, N)`` bins whose sizes
    differ by at most one.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    ok, conf = _arrays(correct, confidence, probability=True)
    order = np.argsort(conf, kind="stable")
    bins = np.array_split(order, min(n_bins, ok.size))
    return [(float(conf[b].mean()), float(ok[b].mean()), int(b.size)) for b in bins]


def ece(correct: ArrayLike, confidence: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error, equal-mass bins: sum over bins of share × |accuracy − mean confidence|."""
    bins = reliability_bins(correct, confidence, n_bins)
    total = sum(count for _, _, count in bins)
    return float(sum(count / total * abs(acc - conf) for conf, acc, count in bins))


def brier(correct: ArrayLike, confidence: ArrayLike) -> float:
    """Brier score: mean squared difference between confidence and correctness (0 is perfect)."""
    ok, conf = _arrays(correct, confidence, probability=True)
    return float(np.mean((conf - ok) ** 2))


def error_recall_at_budget(correct: ArrayLike, confidence: ArrayLike, budget: float) -> dict[str, float]:
    """What reviewing the ``budget`` share of lowest-confidence items buys.

    ``n_flagged = floor(budget × N)`` items are flagged, lowest confidence first, ties in input order.
    Returns ``error_recall`` (share of all wrong labels that are flagged; NaN without errors),
    ``residual_error_rate`` (error rate among the unflagged; NaN when everything is flagged), ``n_flagged``.
    """
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"budget must lie in [0, 1], got {budget}")
    ok, conf = _arrays(correct, confidence)
    n_flagged = int(math.floor(budget * ok.size + 1e-9))
    wrong = ~ok[np.argsort(conf, kind="stable")]
    total_errors = int(wrong.sum())
    flagged_errors = int(wrong[:n_flagged].sum())
    rest = ok.size - n_flagged
    return {
        "budget": float(budget),
        "n_flagged": n_flagged,
        "error_recall": flagged_errors / total_errors if total_errors else math.nan,
        "residual_error_rate": (total_errors - flagged_errors) / rest if rest else math.nan,
    }


# ------------------------------------------------------------------------------------------------ bootstrap

def bootstrap_ci(metric: Callable[[np.ndarray], float], groups: Sequence[str] | np.ndarray,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile ``1 − alpha`` interval of ``metric``, resampling whole groups.

    ``groups[i]`` is the group (dialogue id) of item ``i``; ``metric(indices)`` evaluates the metric on the
    items at ``indices`` (repeats allowed). Each replicate draws as many groups as there are, with
    replacement, and takes all items of every drawn group. Replicates where the metric is NaN are skipped;
    if all are, the interval is ``(nan, nan)``. Deterministic for a given ``seed``.
    """
    return bootstrap_many(lambda idx: {"m": metric(idx)}, groups, n_boot=n_boot, alpha=alpha, seed=seed)["m"]


def bootstrap_many(metrics: Callable[[np.ndarray], Mapping[str, float]], groups: Sequence[str] | np.ndarray,
                   n_boot: int = 1000, alpha: float = 0.05,
                   seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """``bootstrap_ci`` for several metrics computed together (``metrics(indices)`` returns them by name) on the
    same resamples: one call per replicate instead of one per metric and replicate. The resamples are those
    ``bootstrap_ci`` draws for the same groups and seed, so each metric's interval is the same as there."""
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    if codes.size == 0:
        raise ValueError("no items")
    point = {k: float(v) for k, v in metrics(np.arange(codes.size)).items()}
    members = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed)
    values = np.empty((n_boot, len(point)))
    for b in range(n_boot):
        drawn = rng.integers(0, sizes.size, size=sizes.size)
        lengths = sizes[drawn]
        # positions start[g], start[g]+1, ... for every drawn group g, concatenated
        offsets = np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths)
        replicate = metrics(members[offsets + np.arange(lengths.sum())])
        values[b] = [replicate[k] for k in point]
    out = {}
    for j, key in enumerate(point):
        kept = values[:, j][~np.isnan(values[:, j])]
        if kept.size == 0:
            out[key] = (point[key], math.nan, math.nan)
            continue
        low, high = np.quantile(kept, [alpha / 2, 1 - alpha / 2])
        out[key] = (point[key], float(low), float(high))
    return out


def _confidence_values(ok: np.ndarray, conf: np.ndarray, budgets: Sequence[float],
                       n_bins: int) -> dict[str, float]:
    """Every bootstrapped number of ``confidence_report`` from one sort of the items (as the public functions
    define them: ties in input order, equal-mass bins), for one replicate."""
    n = ok.size
    order = np.argsort(conf, kind="stable")  # least confident first, ties in input order
    conf_up, wrong_up = conf[order], ~ok[order]
    values, starts, counts = np.unique(conf_up, return_index=True, return_counts=True)
    block_errors = np.add.reduceat(wrong_up.astype(float), starts)
    n_errors = float(block_errors.sum())
    out = {"accuracy": float(ok.mean()), "brier": float(np.mean((conf - ok) ** 2))}
    if n_errors in (0.0, float(n)):
        out["auroc"] = math.nan
    else:  # Mann–Whitney: the errors' mean ranks when the least confident ranks highest
        rank_down = n + 1 - (np.cumsum(counts) - (counts - 1) / 2.0)
        out["auroc"] = float((block_errors @ rank_down - n_errors * (n_errors + 1) / 2.0) / (n_errors * (n - n_errors)))
    out["aurc"] = _aurc_of_blocks(counts[::-1], block_errors[::-1])
    k = min(n_bins, n)  # equal-mass bins as np.array_split cuts them: the first n % k hold one more
    bin_sizes = np.full(k, n // k) + (np.arange(k) < n % k)
    bin_starts = np.cumsum(bin_sizes) - bin_sizes
    bin_conf = np.add.reduceat(conf_up, bin_starts) / bin_sizes
    bin_acc = 1.0 - np.add.reduceat(wrong_up.astype(float), bin_starts) / bin_sizes
    out["ece"] = float(np.sum(bin_sizes / n * np.abs(bin_acc - bin_conf)))
    flagged_errors = np.concatenate(([0.0], np.cumsum(wrong_up)))
    for budget in budgets:
        n_flagged = int(math.floor(budget * n + 1e-9))
        caught = float(flagged_errors[n_flagged])
        out[f"recall@{budget}"] = caught / n_errors if n_errors else math.nan
        out[f"residual@{budget}"] = (n_errors - caught) / (n - n_flagged) if n > n_flagged else math.nan
    return out


def confidence_report(correct: ArrayLike, confidence: ArrayLike, groups: Sequence[str] | np.ndarray,
                      budgets: Sequence[float] = (0.1, 0.2, 0.3), n_boot: int = 1000, alpha: float = 0.05,
                      n_bins: int = 10, seed: int = 0) -> dict[str, Any]:
    """Every confidence-quality number, each as ``{"value", "low", "high"}`` with a group bootstrap interval.

    Keys: ``n``, ``n_groups``, ``accuracy``, ``auroc``, ``aurc``, ``ece``, ``brier``, ``reliability``
    (equal-mass bins, no interval) and ``budgets`` (per budget: ``n_flagged``, ``error_recall`` and
    ``residual_error_rate`` with intervals). Intervals are percentile intervals; ECE is biased upward on
    small samples and more so on resamples, so its interval can sit just above its value.
    """
    ok, conf = _arrays(correct, confidence, probability=True)
    group_arr = np.asarray(groups)
    if group_arr.size != ok.size:
        raise ValueError(f"{group_arr.size} group ids against {ok.size} items")
    for budget in budgets:
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"budget must lie in [0, 1], got {budget}")
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    boot = bootstrap_many(lambda idx: _confidence_values(ok[idx], conf[idx], budgets, n_bins), group_arr,
                          n_boot=n_boot, alpha=alpha, seed=seed)

    def interval(key: str) -> dict[str, float]:
        point, low, high = boot[key]
        return {"value": point, "low": low, "high": high}

    return {
        "n": int(ok.size),
        "n_groups": int(np.unique(group_arr).size),
        "accuracy": interval("accuracy"),
        "auroc": interval("auroc"),
        "aurc": interval("aurc"),
        "ece": interval("ece"),
        "brier": interval("brier"),
        "reliability": [{"mean_confidence": m, "accuracy": a, "count": k}
                        for m, a, k in reliability_bins(ok, conf, n_bins)],
        "budgets": [{"budget": float(b), "n_flagged": int(math.floor(b * ok.size + 1e-9)),
                     "error_recall": interval(f"recall@{b}"), "residual_error_rate": interval(f"residual@{b}")}
                    for b in budgets],
    }
