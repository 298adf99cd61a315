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
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from autolabel.quality.agreement import cohen_kappa

__all__ = [
    "aurc",
    "auroc_errors",
    "bootstrap_ci",
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


def classification_report(y_true: Sequence[str], y_pred: Sequence[str],
                          labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro/micro F1, Cohen's kappa, per-option scores and the confusion matrix.

    ``labels`` fixes the option order (default: every label seen, sorted); a label outside it raises.
    Macro F1 averages over the options that occur in gold or prediction; an option that occurs in
    neither is listed with zeros but does not pull the average down. Per-option precision (recall) is 0
    when the option is never predicted (never in gold). ``confusion["matrix"][i][j]`` counts items with gold
    ``labels[i]`` predicted as ``labels[j]``.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels against {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no items")
    # scikit-learn is imported where it is used: a run imports this module (``evaluate.load_routing``) and
    # never computes these
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    order = _labels_for(set(y_true) | set(y_pred), labels)
    truth, pred = list(y_true), list(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=order, zero_division=0.0)
    return {
        "n": len(truth),
        "accuracy": float(accuracy_score(truth, pred)),
        "macro_f1": float(f1_score(truth, pred, labels=order, average="macro", zero_division=np.nan)),
        "micro_f1": float(f1_score(truth, pred, labels=order, average="micro", zero_division=0.0)),
        "cohen_kappa": cohen_kappa(truth, pred),
        "per_option": _per_option(order, precision, recall, f1, support),
        "confusion": {"labels": order, "matrix": _confusion(truth, pred, order)},
    }


def _confusion(truth: list[str], pred: list[str], order: list[str]) -> list[list[int]]:
    if len(order) == 1:  # scikit-learn warns about a 1×1 matrix; with one option it is just the count
        return [[len(truth)]]
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(truth, pred, labels=order).tolist()


def multilabel_report(y_true: Sequence[Collection[str]], y_pred: Sequence[Collection[str]],
                      labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Exact match, mean Jaccard, micro/macro F1 and per-option scores for set-valued labels.

    Each item is a collection of option names. Jaccard of two empty sets counts as 1 (full agreement).
    Macro F1 averages over options that occur in gold or prediction. ``per_option[o]["confusion"]`` holds
    the option's 2×2 counts ``tp``, ``fp``, ``fn``, ``tn`` over items.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold label sets against {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no items")
    truth_sets = [set(s) for s in y_true]
    pred_sets = [set(s) for s in y_pred]
    order = _labels_for(set().union(*truth_sets, *pred_sets), labels)
    from sklearn.metrics import f1_score, jaccard_score, multilabel_confusion_matrix, precision_recall_fscore_support
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer(classes=order)
    truth = binarizer.fit_transform(truth_sets)
    pred = binarizer.transform(pred_sets)
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, zero_division=0.0)
    per_option = _per_option(order, precision, recall, f1, support)
    for label, ((tn, fp), (fn, tp)) in zip(order, multilabel_confusion_matrix(truth, pred), strict=True):
        per_option[label]["confusion"] = {"tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn)}
    return {
        "n": len(truth_sets),
        "exact_match": float(np.mean([t == p for t, p in zip(truth_sets, pred_sets, strict=True)])),
        "jaccard": float(jaccard_score(truth, pred, average="samples", zero_division=1.0)),
        "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=np.nan)),
        "micro_f1": float(f1_score(truth, pred, average="micro", zero_division=0.0)),
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
    if ok.all() or not ok.any():
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(~ok, 1.0 - conf))


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
    block = np.repeat(np.arange(sizes.size), sizes)
    within = np.arange(ok.size) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
    errors_before = np.repeat(np.cumsum(errors) - errors, sizes)
    cum_errors = errors_before + within * errors[block] / sizes[block]
    return float(np.mean(cum_errors / np.arange(1, ok.size + 1)))


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
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    if codes.size == 0:
        raise ValueError("no items")
    point = float(metric(np.arange(codes.size)))
    members = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, sizes.size, size=sizes.size)
        lengths = sizes[drawn]
        # positions start[g], start[g]+1, ... for every drawn group g, concatenated
        offsets = np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths)
        values[b] = metric(members[offsets + np.arange(lengths.sum())])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return point, math.nan, math.nan
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)


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

    def interval(fn: Callable[[np.ndarray], float]) -> dict[str, float]:
        point, low, high = bootstrap_ci(fn, group_arr, n_boot=n_boot, alpha=alpha, seed=seed)
        return {"value": point, "low": low, "high": high}

    def on(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray], float]:
        return lambda idx: fn(ok[idx], conf[idx])

    def budget_entry(budget: float) -> dict[str, Any]:
        def part(key: str) -> Callable[[np.ndarray, np.ndarray], float]:
            return lambda c, s: float(error_recall_at_budget(c, s, budget)[key])
        return {
            "budget": float(budget),
            "n_flagged": error_recall_at_budget(ok, conf, budget)["n_flagged"],
            "error_recall": interval(on(part("error_recall"))),
            "residual_error_rate": interval(on(part("residual_error_rate"))),
        }

    return {
        "n": int(ok.size),
        "n_groups": int(np.unique(group_arr).size),
        "accuracy": interval(lambda idx: float(ok[idx].mean())),
        "auroc": interval(on(auroc_errors)),
        "aurc": interval(on(aurc)),
        "ece": interval(on(lambda c, s: ece(c, s, n_bins))),
        "brier": interval(on(brier)),
        "reliability": [{"mean_confidence": m, "accuracy": a, "count": k}
                        for m, a, k in reliability_bins(ok, conf, n_bins)],
        "budgets": [budget_entry(b) for b in budgets],
    }
