"""Calibrators (isotonic, logistic) and the Clopper–Pearson certified threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from autolabel.quality.calibration import CalibrationMethod, Calibrator, certify_threshold, fit_calibrator
from autolabel.quality.metrics import auroc_errors, ece

# ------------------------------------------------------------------------------------------------ calibrator


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that claim conf but are right with probability conf**3."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    return conf, rng.random(n) < conf**3


def test_isotonic_calibration_lowers_ece_on_held_out_half():
    conf, correct = _overconfident(6000, seed=1)
    fit, test = slice(0, 3000), slice(3000, None)
    cal = fit_calibrator({"logprob": conf[fit]}, correct[fit])
    assert cal.method is CalibrationMethod.ISOTONIC
    raw = ece(correct[test], conf[test])
    calibrated = ece(correct[test], cal.predict({"logprob": conf[test]}))
    assert raw > 0.2  # E|c − c³| = 1/2 − 1/4 = 0.25
    assert calibrated < 0.05 and calibrated < raw / 4


def test_logistic_calibration_lowers_ece_on_held_out_half():
    conf, correct = _overconfident(6000, seed=2)
    fit, test = slice(0, 3000), slice(3000, None)
    cal = fit_calibrator({"logprob": np.log(conf[fit])}, correct[fit], method="logistic")
    assert cal.method is CalibrationMethod.LOGISTIC
    calibrated = ece(correct[test], cal.predict({"logprob": np.log(conf[test])}))
    assert calibrated < 0.05 and calibrated < ece(correct[test], conf[test]) / 4


def test_isotonic_matches_sklearn():
    conf, correct = _overconfident(500, seed=3)
    cal = fit_calibrator({"logprob": conf}, correct)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(conf, correct)
    probe = np.linspace(-0.5, 1.5, 101)  # includes points outside the training range (clipped)
    np.testing.assert_allclose(cal.predict({"logprob": probe}), iso.predict(probe), atol=1e-12)


def _two_signals(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    agreement = rng.random(n)
    critic = (rng.random(n) < 0.7).astype(float)
    p = 1 / (1 + np.exp(-(4 * agreement + 1.5 * critic - 2.5)))
    return {"sample_agreement": agreement, "critic_agree": critic}, rng.random(n) < p


def test_logistic_matches_sklearn_on_standardised_signals():
    signals, correct = _two_signals(800, seed=4)
    cal = fit_calibrator(signals, correct)
    assert cal.method is CalibrationMethod.LOGISTIC
    x = np.column_stack([signals["sample_agreement"], signals["critic_agree"]])
    ref = LogisticRegression(max_iter=1000).fit(StandardScaler().fit_transform(x), correct)
    expected = ref.predict_proba(StandardScaler().fit(x).transform(x))[:, 1]
    np.testing.assert_allclose(cal.predict(signals), expected, atol=1e-4)


def test_logistic_uses_both_signals_and_recovers_true_probabilities():
    signals, correct = _two_signals(4000, seed=5)
    cal = fit_calibrator(signals, correct)
    pred = cal.predict(signals)
    true_p = 1 / (1 + np.exp(-(4 * signals["sample_agreement"] + 1.5 * signals["critic_agree"] - 2.5)))
    assert np.abs(pred - true_p).max() < 0.08
    assert auroc_errors(correct, pred) > auroc_errors(correct, signals["sample_agreement"])


def test_missing_signals_are_handled():
    signals, correct = _two_signals(2000, seed=6)
    rng = np.random.default_rng(6)
    critic = signals["critic_agree"].copy()
    critic[rng.random(2000) < 0.3] = np.nan
    cal = fit_calibrator({"sample_agreement": signals["sample_agreement"], "critic_agree": critic}, correct)
    pred = cal.predict({"sample_agreement": signals["sample_agreement"], "critic_agree": critic})
    assert np.all((pred > 0) & (pred < 1))
    # one item given as scalars; a missing signal may be None or absent altogether
    one = cal.predict({"sample_agreement": 0.9, "critic_agree": None})
    assert one.shape == (1,)
    np.testing.assert_array_equal(one, cal.predict({"sample_agreement": [0.9]}))
    assert cal.predict({"sample_agreement": 0.9, "critic_agree": 1.0})[0] > one[0]
    # isotonic: a missing signal gets the training base rate
    iso = fit_calibrator({"logprob": signals["sample_agreement"]}, correct)
    assert iso.predict({"logprob": None})[0] == pytest.approx(correct.mean())


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_to_dict_round_trip_gives_identical_predictions(method):
    conf, correct = _overconfident(1000, seed=7)
    signals = {"logprob": conf} if method == "isotonic" else {"logprob": conf, "verbalized": conf**0.5}
    cal = fit_calibrator(signals, correct, method=method)
    stored = json.loads(json.dumps(cal.to_dict(), allow_nan=False))  # plain JSON, no pickle
    again = Calibrator.from_dict(stored)
    probe = {k: np.append(v[:200], np.nan) for k, v in signals.items()}
    np.testing.assert_array_equal(again.predict(probe), cal.predict(probe))
    assert again.to_dict() == cal.to_dict()
    assert stored["method"] == method and stored["n_train"] == 1000


def test_matrix_input_and_errors():
    conf, correct = _overconfident(300, seed=8)
    by_matrix = Calibrator.fit(conf.reshape(-1, 1), correct, names=("logprob",))
    by_mapping = fit_calibrator({"logprob": conf}, correct)
    np.testing.assert_array_equal(by_matrix.predict(conf.reshape(-1, 1)),
                                  by_mapping.predict({"logprob": conf}))
    with pytest.raises(ValueError, match="exactly one signal"):
        fit_calibrator({"a": conf, "b": conf}, correct, method="isotonic")
    with pytest.raises(ValueError, match="both correct and incorrect"):
        fit_calibrator({"a": conf}, np.ones(300, dtype=bool))
    with pytest.raises(ValueError, match="different lengths"):
        fit_calibrator({"a": conf, "b": conf[:10]}, correct)
    with pytest.raises(ValueError):
        fit_calibrator({"a": conf}, correct, method="spline")


# ------------------------------------------------------------------------------------- certified threshold


def test_certify_perfect_data_reaches_most_lenient_threshold():
    conf = np.linspace(0.5, 0.99, 40)
    res = certify_threshold(conf, np.ones(40, dtype=bool), alpha=0.1, delta=0.05)
    # k = 0: U = BetaInv(0.95; 1, n) = 1 − 0.05**(1/n); n = 30 -> 0.0950 ≤ 0.1, n = 40 -> 0.0722
    assert res.threshold == pytest.approx(0.5)
    assert (res.n, res.k, res.coverage) == (40, 0, 1.0)
    assert res.upper_bound == pytest.approx(1 - 0.05 ** (1 / 40))
    assert res.accepts(conf).all()


def test_certify_too_little_data():
    res = certify_threshold(np.linspace(0.5, 0.99, 29), np.ones(29, dtype=bool))
    assert res.threshold is None
    assert res.reason.startswith("too little calibration data: n < 30 above every threshold")
    assert (res.n, res.k, res.coverage) == (29, 0, 0.0)
    assert res.upper_bound == pytest.approx(1 - 0.05 ** (1 / 29))  # 0.098: would pass, but n < 30
    assert not res.accepts([0.99, 1.0]).any()  # nothing certified: every item is flagged
    assert certify_threshold([], []).threshold is None


def test_certify_no_threshold_meets_alpha():
    correct = np.arange(100) >= 20  # 20 % errors, all at one confidence
    res = certify_threshold(np.full(100, 0.9), correct, alpha=0.1)
    assert res.threshold is None and res.reason.startswith("no threshold meets alpha")
    assert (res.n, res.k) == (100, 20)
    assert res.upper_bound == pytest.approx(beta.ppf(0.95, 21, 80))


def test_certify_fixed_sequence_never_skips_ahead():
    # 50 right at .9:            n=50,  k=0  -> U = 1 − .05**(1/50) = .058   pass
    # + 10 wrong at .8:          n=60,  k=10 -> U ≈ .27                      fail -> stop here
    # + 200 right at .7:         n=260, k=10 -> U ≈ .064 would pass, but must not be looked at
    conf = np.r_[np.full(50, 0.9), np.full(10, 0.8), np.full(200, 0.7)]
    correct = np.r_[np.ones(50), np.zeros(10), np.ones(200)].astype(bool)
    assert beta.ppf(0.95, 11, 250) < 0.1  # the skipped candidate really would pass on its own
    res = certify_threshold(conf, correct)
    assert res.threshold == 0.9
    assert (res.n, res.k) == (50, 0) and res.coverage == pytest.approx(50 / 260)
    assert "0.8 fails" in res.reason


def test_certify_includes_ties_and_reports_bound():
    # 35 items at .95 (1 error) and 5 at .6 (all wrong)
    conf = np.r_[np.full(35, 0.95), np.full(5, 0.6)]
    correct = np.r_[np.zeros(1), np.ones(34), np.zeros(5)].astype(bool)
    res = certify_threshold(conf, correct, alpha=0.15)
    assert res.threshold == 0.95 and (res.n, res.k) == (35, 1)
    assert res.upper_bound == pytest.approx(beta.ppf(0.95, 2, 34))
    assert res.accepts([0.95, 0.94]).tolist() == [True, False]
    d = res.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"threshold", "alpha", "delta", "n", "k", "upper_bound", "coverage", "reason"}


def test_certified_threshold_holds_its_guarantee_over_repeated_draws():
    """Known truth: 12 equally likely confidence levels .55, .59, ..., .99; error rate at level c is 1 − c.

    Error rate among items with confidence ≥ the m-th highest level: .01 + .02 (m − 1) — ≤ .1 for the top
    5 levels (.09), > .1 from 6 on (.11). With alpha = .1, delta = .05 at most 5 % of calibration draws may
    yield a threshold whose realised error rate exceeds .1. A plug-in rule (lowest threshold whose
    *empirical* error ≤ alpha) breaks that, showing the check has teeth.
    """
    levels = np.round(np.linspace(0.55, 0.99, 12), 2)
    alpha, delta, reps, n_cal = 0.1, 0.05, 200, 1000
    fresh_rng = np.random.default_rng(12345)
    fresh_conf = fresh_rng.choice(levels, 400_000)
    fresh_wrong = fresh_rng.random(fresh_conf.size) < 1 - fresh_conf

    def realised(threshold: float) -> float:
        accepted = fresh_conf >= threshold
        exact = np.mean(1 - levels[levels >= threshold])
        assert fresh_wrong[accepted].mean() == pytest.approx(exact, abs=0.005)
        return float(fresh_wrong[accepted].mean())

    violations = certified = plug_in_violations = 0
    for seed in range(reps):
        rng = np.random.default_rng(seed)
        conf = rng.choice(levels, n_cal)
        correct = rng.random(n_cal) >= 1 - conf
        res = certify_threshold(conf, correct, alpha=alpha, delta=delta)
        if res.threshold is not None:
            certified += 1
            violations += realised(res.threshold) > alpha
        plug_in = [t for t in levels if (~correct[conf >= t]).mean() <= alpha]
        plug_in_violations += bool(plug_in) and realised(min(plug_in)) > alpha
    assert violations <= delta * reps
    assert certified >= 0.9 * reps  # not vacuous: it does certify something nearly always
    assert plug_in_violations > delta * reps
