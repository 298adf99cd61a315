"""Label-quality and confidence-quality metrics: hand-computed cases and cross-checks with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    cohen_kappa_score,
    f1_score,
    jaccard_score,
    roc_auc_score,
)
from sklearn.preprocessing import MultiLabelBinarizer

from autolabel.quality.metrics import (
    _confidence_values,
    aurc,
    auroc_errors,
    bootstrap_ci,
    bootstrap_many,
    brier,
    classification_report,
    confidence_report,
    ece,
    error_recall_at_budget,
    multilabel_report,
    reliability_bins,
    risk_coverage_curve,
)

# ------------------------------------------------------------------------------------------- single label


def test_classification_report_by_hand():
    # gold a a b b c / pred a b b b a
    # a: tp 1, fp 1 (c→a), fn 1 (a→b)  -> P = R = F1 = 1/2
    # b: tp 2, fp 1 (a→b), fn 0        -> P = 2/3, R = 1, F1 = 2·(2/3)/(5/3) = 0.8
    # c: tp 0, fn 1                    -> 0, 0, 0
    # accuracy = micro F1 = 3/5; macro F1 = (0.5 + 0.8 + 0)/3
    # kappa: p_o = 0.6; gold a .4 b .4 c .2, pred a .4 b .6 c 0 -> p_e = .16 + .24 = .4; (0.6−0.4)/0.6 = 1/3
    rep = classification_report(list("aabbc"), list("abbba"))
    assert rep["n"] == 5
    assert rep["accuracy"] == pytest.approx(0.6)
    assert rep["micro_f1"] == pytest.approx(0.6)
    assert rep["macro_f1"] == pytest.approx(1.3 / 3)
    assert rep["cohen_kappa"] == pytest.approx(1 / 3)
    assert rep["per_option"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    b = {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert rep["per_option"]["b"] == pytest.approx(b)
    assert rep["per_option"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert rep["confusion"] == {"labels": ["a", "b", "c"], "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 0]]}


def test_classification_report_with_declared_options():
    # an option that occurs nowhere is listed, but does not drag macro F1 down
    rep = classification_report(list("aabbc"), list("abbba"), labels=["c", "b", "a", "d"])
    assert rep["confusion"]["labels"] == ["c", "b", "a", "d"]
    assert rep["confusion"]["matrix"][3] == [0, 0, 0, 0]
    assert rep["per_option"]["d"]["support"] == 0
    assert rep["macro_f1"] == pytest.approx(1.3 / 3)
    with pytest.raises(ValueError, match="not among"):
        classification_report(["a", "x"], ["a", "a"], labels=["a", "b"])


def test_classification_report_matches_sklearn():
    rng = np.random.default_rng(1)
    options = ["reflect", "question", "inform", "advise"]
    y_true = list(rng.choice(options, 300))
    y_pred = [t if rng.random() < 0.6 else str(rng.choice(options)) for t in y_true]
    rep = classification_report(y_true, y_pred)
    assert rep["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert rep["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert rep["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    assert rep["cohen_kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    assert sum(map(sum, rep["confusion"]["matrix"])) == 300


def test_classification_report_all_one_label():
    rep = classification_report(["a", "a"], ["a", "a"])
    assert rep["accuracy"] == 1.0 and rep["macro_f1"] == 1.0
    assert math.isnan(rep["cohen_kappa"])  # chance agreement is 1: kappa undefined


# -------------------------------------------------------------------------------------------- multi-label


def test_multilabel_report_by_hand():
    # gold {a,b} {a} {} {c} / pred {a} {a} {} {b}
    # exact: no yes yes no -> 0.5; Jaccard: 1/2, 1, 1 (both empty), 0 -> 2.5/4
    # a: tp 2, fp 0, fn 0, tn 2 -> 1, 1, 1
    # b: tp 0, fp 1 (item 4), fn 1 (item 1), tn 2 -> 0
    # c: tp 0, fp 0, fn 1, tn 3 -> 0
    # micro: tp 2, fp 1, fn 2 -> F1 = 2·2/(2·2 + 1 + 2) = 4/7; macro = (1 + 0 + 0)/3
    rep = multilabel_report([{"a", "b"}, {"a"}, set(), {"c"}], [{"a"}, ["a"], (), {"b"}])
    assert rep["exact_match"] == pytest.approx(0.5)
    assert rep["jaccard"] == pytest.approx(0.625)
    assert rep["micro_f1"] == pytest.approx(4 / 7)
    assert rep["macro_f1"] == pytest.approx(1 / 3)
    assert rep["per_option"]["a"]["f1"] == 1.0
    assert rep["per_option"]["b"]["confusion"] == {"tp": 0, "fp": 1, "fn": 1, "tn": 2}
    assert rep["per_option"]["c"]["confusion"] == {"tp": 0, "fp": 0, "fn": 1, "tn": 3}
    assert rep["per_option"]["c"]["support"] == 1


def test_multilabel_report_matches_sklearn():
    rng = np.random.default_rng(2)
    options = ["anxiety", "depression", "family", "work", "sleep"]
    y_true = [set(rng.choice(options, rng.integers(1, 4), replace=False)) for _ in range(200)]
    y_pred = [{o for o in t if rng.random() < 0.8} | {str(rng.choice(options))} for t in y_true]
    rep = multilabel_report(y_true, y_pred, labels=options)
    mlb = MultiLabelBinarizer(classes=options)
    t, p = mlb.fit_transform(y_true), mlb.transform(y_pred)
    assert rep["exact_match"] == pytest.approx(accuracy_score(t, p))
    assert rep["jaccard"] == pytest.approx(jaccard_score(t, p, average="samples"))
    assert rep["micro_f1"] == pytest.approx(f1_score(t, p, average="micro"))
    assert rep["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
    for j, option in enumerate(options):
        assert rep["per_option"][option]["f1"] == pytest.approx(f1_score(t[:, j], p[:, j]))


def test_multilabel_report_rejects_unknown_option():
    with pytest.raises(ValueError, match="not among"):
        multilabel_report([{"a"}], [{"zzz"}], labels=["a"])


# ------------------------------------------------------------------------------------- confidence quality

CORRECT = np.array([True, False, True, True])
CONF = np.array([0.9, 0.8, 0.7, 0.6])


def test_auroc_errors_by_hand_and_sklearn():
    # the one error has score 1 − 0.8 = 0.2; correct ones 0.1, 0.3, 0.4 -> it outranks 1 of 3 -> 1/3
    assert auroc_errors(CORRECT, CONF) == pytest.approx(1 / 3)
    rng = np.random.default_rng(3)
    conf = rng.random(500)
    correct = rng.random(500) < conf
    assert auroc_errors(correct, conf) == pytest.approx(roc_auc_score(~correct, 1 - conf))
    assert auroc_errors([True, True, False, False], [0.9, 0.8, 0.2, 0.1]) == 1.0


def test_auroc_errors_nan_with_one_class():
    assert math.isnan(auroc_errors([True, True], [0.2, 0.9]))
    assert math.isnan(auroc_errors([False, False], [0.2, 0.9]))


def test_risk_coverage_and_aurc_by_hand():
    # sorted by confidence: right, wrong, right, right
    # risk at k = 1..4: 0/1, 1/2, 1/3, 1/4 -> AURC = (0 + .5 + .3333 + .25)/4 = 0.2708333
    coverage, risk = risk_coverage_curve(CORRECT, CONF)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.25])
    assert aurc(CORRECT, CONF) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_aurc_ties_do_not_depend_on_order():
    # two tied items, one wrong: expected over orderings (0/1 + 1/1)/2 = 0.5 at k=1, 1/2 at k=2 -> 0.5
    assert aurc([True, False], [0.5, 0.5]) == pytest.approx(0.5)
    assert aurc([False, True], [0.5, 0.5]) == pytest.approx(0.5)
    # tied block collapses into one point of the curve
    coverage, risk = risk_coverage_curve([True, False, True], [0.9, 0.5, 0.5])
    np.testing.assert_allclose(coverage, [1 / 3, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 3])


def test_aurc_without_ties_is_the_per_item_mean():
    rng = np.random.default_rng(4)
    conf = rng.permutation(200) / 200
    correct = rng.random(200) < conf
    order = np.argsort(-conf)
    brute = np.mean(np.cumsum(~correct[order]) / np.arange(1, 201))
    assert aurc(correct, conf) == pytest.approx(brute)
    # a perfect ranking has the smallest possible AURC; reversing it the largest
    perfect = np.where(correct, 1.0, 0.0) + conf * 1e-3
    assert aurc(correct, perfect) < aurc(correct, conf) < aurc(correct, -perfect + 2)


def test_ece_and_reliability_equal_mass_by_hand():
    # sorted conf .2 .4 | .6 .8 with correct 0 1 | 1 1
    # bin 1: mean conf .3, acc .5 -> |.2|; bin 2: mean conf .7, acc 1 -> |.3|; ECE = .5·.2 + .5·.3 = .25
    correct, conf = [True, True, False, True], [0.6, 0.8, 0.2, 0.4]
    bins = reliability_bins(correct, conf, n_bins=2)
    assert [(round(m, 9), a, k) for m, a, k in bins] == [(0.3, 0.5, 2), (0.7, 1.0, 2)]
    assert ece(correct, conf, n_bins=2) == pytest.approx(0.25)
    # equal mass: 5 items in 2 bins -> 3 + 2; more bins than items -> one item per bin
    assert [k for _, _, k in reliability_bins([1, 1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5], 2)] == [3, 2]
    assert len(reliability_bins(correct, conf, n_bins=10)) == 4


def test_ece_of_calibrated_scores_is_small():
    rng = np.random.default_rng(5)
    conf = rng.random(20_000)
    assert ece(rng.random(20_000) < conf, conf) < 0.02
    assert ece(rng.random(20_000) < conf**3, conf) > 0.2


def test_brier_by_hand_and_sklearn():
    # (.6−1)² + (.8−1)² + (.2−0)² + (.4−1)² = .16 + .04 + .04 + .36 = .6 -> /4 = .15
    assert brier([True, True, False, True], [0.6, 0.8, 0.2, 0.4]) == pytest.approx(0.15)
    rng = np.random.default_rng(6)
    conf = rng.random(300)
    correct = rng.random(300) < conf
    assert brier(correct, conf) == pytest.approx(brier_score_loss(correct, conf))
    assert brier([True, True], [1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier([True], [1.5])


def test_error_recall_at_budget_by_hand():
    # 10 items; errors at confidence .1, .3, .65. Ascending: .1✗ .2 .3✗ .6 .65✗ .7 .8 .85 .9 .95
    correct = [True, False, True, False, True, True, True, True, True, False]
    conf = [0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.95, 0.85, 0.6, 0.65]
    # 20%: flag .1✗ .2 -> recall 1/3, residual 2 errors / 8
    assert error_recall_at_budget(correct, conf, 0.2) == pytest.approx(
        {"budget": 0.2, "n_flagged": 2, "error_recall": 1 / 3, "residual_error_rate": 0.25})
    # 30%: flag .1✗ .2 .3✗ -> recall 2/3, residual 1/7
    r30 = error_recall_at_budget(correct, conf, 0.3)
    assert (r30["n_flagged"], r30["error_recall"], r30["residual_error_rate"]) == (3, pytest.approx(2 / 3),
                                                                                    pytest.approx(1 / 7))
    r0 = error_recall_at_budget(correct, conf, 0.0)
    assert r0["error_recall"] == 0.0 and r0["residual_error_rate"] == pytest.approx(0.3)
    r1 = error_recall_at_budget(correct, conf, 1.0)
    assert r1["error_recall"] == 1.0 and math.isnan(r1["residual_error_rate"])


def test_error_recall_budget_rounding_and_ties():
    assert error_recall_at_budget([True] * 99 + [False], np.linspace(0, 1, 100), 0.29)["n_flagged"] == 29
    assert error_recall_at_budget([True] * 25, np.ones(25), 0.1)["n_flagged"] == 2  # floor(2.5)
    assert math.isnan(error_recall_at_budget([True] * 25, np.ones(25), 0.1)["error_recall"])
    # ties go by input order, never by correctness
    assert error_recall_at_budget([True, False], [0.5, 0.5], 0.5)["error_recall"] == 0.0
    assert error_recall_at_budget([False, True], [0.5, 0.5], 0.5)["error_recall"] == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=1, max_size=60))
def test_confidence_metric_invariants(items):
    correct = np.array([c for c, _ in items])
    conf = np.array([s for _, s in items])
    assert 0.0 <= ece(correct, conf) <= 1.0
    assert 0.0 <= brier(correct, conf) <= 1.0
    coverage, risk = risk_coverage_curve(correct, conf)
    assert coverage[-1] == 1.0 and risk[-1] == pytest.approx(1 - correct.mean())
    assert 0.0 <= aurc(correct, conf) <= 1.0
    recalls = [error_recall_at_budget(correct, conf, b)["error_recall"] for b in (0.1, 0.3, 0.6, 1.0)]
    if not correct.all():
        assert recalls == sorted(recalls) and recalls[-1] == 1.0


# ---------------------------------------------------------------------------------------------- bootstrap

GROUPS = np.repeat([f"d{i}" for i in range(20)], [1, 2, 3, 4, 5] * 4)  # 20 dialogues, 60 turns


def test_bootstrap_resamples_whole_groups():
    seen: list[np.ndarray] = []

    def distinct_groups(idx: np.ndarray) -> float:
        seen.append(idx)
        return float(len(set(GROUPS[idx])))

    point, low, high = bootstrap_ci(distinct_groups, GROUPS, n_boot=300, seed=1)
    assert point == 20.0
    # drawing 20 of 20 with replacement leaves out about a third of the groups
    assert high < 20.0 and low > 5.0
    sizes = {g: int((GROUPS == g).sum()) for g in np.unique(GROUPS)}
    for idx in seen[1:]:
        counts = np.bincount(idx, minlength=GROUPS.size)
        for g in np.unique(GROUPS[idx]):
            members = counts[GROUPS == g]
            assert members.min() == members.max() >= 1  # every item of a drawn group, equally often
        drawn = {g: counts[GROUPS == g][0] for g in np.unique(GROUPS[idx])}
        assert sum(drawn.values()) == 20  # as many group draws as there are groups
        assert idx.size == sum(k * sizes[g] for g, k in drawn.items())


def test_bootstrap_ci_contains_point_and_is_deterministic():
    rng = np.random.default_rng(7)
    values = rng.random(GROUPS.size)

    def mean(idx: np.ndarray) -> float:
        return float(values[idx].mean())

    point, low, high = bootstrap_ci(mean, GROUPS, n_boot=500, seed=3)
    assert point == pytest.approx(values.mean())
    assert low < point < high
    assert bootstrap_ci(mean, GROUPS, n_boot=500, seed=3) == (point, low, high)
    assert bootstrap_ci(mean, GROUPS, n_boot=500, seed=4) != (point, low, high)
    # wider interval at a smaller alpha
    _, low99, high99 = bootstrap_ci(mean, GROUPS, n_boot=500, alpha=0.01, seed=3)
    assert low99 <= low and high99 >= high


def test_bootstrap_skips_nan_replicates():
    def nan_without_first_group(idx: np.ndarray) -> float:
        return 1.0 if "d0" in set(GROUPS[idx]) else math.nan

    assert bootstrap_ci(nan_without_first_group, GROUPS, n_boot=200) == (1.0, 1.0, 1.0)
    point, low, high = bootstrap_ci(lambda idx: math.nan, GROUPS, n_boot=20)
    assert math.isnan(point) and math.isnan(low) and math.isnan(high)


def test_confidence_report_bundles_everything():
    rng = np.random.default_rng(8)
    groups = np.repeat([f"d{i}" for i in range(40)], 10)
    conf = rng.random(400)
    correct = rng.random(400) < conf
    rep = confidence_report(correct, conf, groups, budgets=(0.1, 0.2), n_boot=100)
    assert (rep["n"], rep["n_groups"]) == (400, 40)
    assert rep["auroc"]["value"] == pytest.approx(auroc_errors(correct, conf))
    assert rep["aurc"]["value"] == pytest.approx(aurc(correct, conf))
    assert rep["ece"]["value"] == pytest.approx(ece(correct, conf))
    assert rep["brier"]["value"] == pytest.approx(brier(correct, conf))
    assert rep["accuracy"]["value"] == pytest.approx(correct.mean())
    for key in ("accuracy", "auroc", "aurc", "brier"):
        assert rep[key]["low"] <= rep[key]["value"] <= rep[key]["high"], key
    # ECE is biased upward, more so on resamples: its percentile interval may sit just above the value
    assert rep["ece"]["low"] < rep["ece"]["high"] and rep["ece"]["high"] > rep["ece"]["value"]
    assert [b["budget"] for b in rep["budgets"]] == [0.1, 0.2]
    b20 = error_recall_at_budget(correct, conf, 0.2)
    assert rep["budgets"][1]["n_flagged"] == 80
    assert rep["budgets"][1]["error_recall"]["value"] == pytest.approx(b20["error_recall"])
    assert len(rep["reliability"]) == 10 and sum(b["count"] for b in rep["reliability"]) == 400
    with pytest.raises(ValueError, match="group ids"):
        confidence_report(correct, conf, groups[:-1])


@pytest.mark.parametrize("seed", range(12))
def test_one_pass_bootstrap_values_equal_the_public_functions(seed: int) -> None:
    """``confidence_report`` computes every replicate's numbers from one sort; they equal the public functions
    (ties in input order, equal-mass bins), and the numpy AUROC equals scikit-learn's with ties."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    correct = rng.random(n) < rng.uniform(0.2, 0.95)
    conf = np.round(rng.random(n), int(rng.integers(1, 3)))  # one or two decimals: many ties
    values = _confidence_values(correct, conf, (0.1, 0.2, 0.3), 10)
    assert values["accuracy"] == pytest.approx(correct.mean())
    assert values["brier"] == pytest.approx(brier(correct, conf))
    assert values["aurc"] == pytest.approx(aurc(correct, conf))
    assert values["ece"] == pytest.approx(ece(correct, conf))
    auroc = auroc_errors(correct, conf)
    if correct.all() or not correct.any():
        assert math.isnan(values["auroc"]) and math.isnan(auroc)
    else:
        assert values["auroc"] == pytest.approx(auroc) == pytest.approx(roc_auc_score(~correct, 1 - conf))
    for budget in (0.1, 0.2, 0.3):
        expected = error_recall_at_budget(correct, conf, budget)
        for key, name in (("recall", "error_recall"), ("residual", "residual_error_rate")):
            got, want = values[f"{key}@{budget}"], expected[name]
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)


def test_bootstrap_many_gives_each_metric_the_interval_bootstrap_ci_gives_it() -> None:
    rng = np.random.default_rng(3)
    correct, groups = rng.random(80) < 0.7, np.repeat([f"d{i}" for i in range(16)], 5)
    both = bootstrap_many(lambda idx: {"acc": float(correct[idx].mean()), "n": float(idx.size)}, groups,
                          n_boot=200, seed=5)
    assert both["acc"] == bootstrap_ci(lambda idx: float(correct[idx].mean()), groups, n_boot=200, seed=5)
    assert both["n"] == bootstrap_ci(lambda idx: float(idx.size), groups, n_boot=200, seed=5)
