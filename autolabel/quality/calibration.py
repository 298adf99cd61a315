"""Turning confidence signals into calibrated probabilities, and certifying an auto-accept threshold.

- ``Calibrator`` / ``fit_calibrator``: a small model fitted on gold or reviewed items that maps named
  signals (``logprob``, ``sample_agreement``, ``critic_agree``, ``knn_agreement``, ``verbalized``, ...) to the
  probability that the label is correct. Isotonic regression for a single signal, logistic regression for
  any number. It serialises to plain JSON (``to_dict``/``from_dict``) so it can live in a database row.
- ``certify_threshold``: fixed-sequence testing with the one-sided Clopper–Pearson bound (DESIGN.md,
  Confidence). With probability at least ``1 − delta`` over the calibration sample, the error rate among
  items auto-accepted at the returned threshold is at most ``alpha``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CalibrationMethod",
    "Calibrator",
    "ThresholdResult",
    "certify_threshold",
    "fit_calibrator",
]

Features = Mapping[str, ArrayLike | float | None] | np.ndarray


class CalibrationMethod(str, Enum):
    """How a calibrator is fitted. ``auto`` is isotonic for one signal and logistic otherwise."""

    AUTO = "auto"
    ISOTONIC = "isotonic"
    LOGISTIC = "logistic"


class _Model(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Isotonic:
    """Monotone step-and-ramp map of one signal: linear interpolation between the fitted knots, clipped
    at the ends. A missing signal (NaN) gets the training base rate."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    base_rate: float

    @classmethod
    def fit(cls, x: np.ndarray, correct: np.ndarray) -> _Isotonic:
        if x.shape[1] != 1:
            raise ValueError(f"isotonic calibration takes exactly one signal, got {x.shape[1]}")
        col = x[:, 0]
        seen = ~np.isnan(col)
        if not seen.any():
            raise ValueError("isotonic calibration: the signal is missing on every item")
        from sklearn.isotonic import IsotonicRegression  # scikit-learn loads when a calibrator is fitted, not on import

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(col[seen], correct[seen].astype(float))
        return cls(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)),
                   float(correct.mean()))

    def predict(self, x: np.ndarray) -> np.ndarray:
        col = x[:, 0]
        out = np.interp(col, self.x, self.y)
        return np.where(np.isnan(col), self.base_rate, out)

    def params(self) -> dict[str, Any]:
        return {"x": list(self.x), "y": list(self.y), "base_rate": self.base_rate}

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> _Isotonic:
        if len(p["x"]) != len(p["y"]) or not p["x"]:
            raise ValueError("isotonic calibrator: x and y must be non-empty and of equal length")
        return cls(tuple(map(float, p["x"])), tuple(map(float, p["y"])), float(p["base_rate"]))


@dataclass(frozen=True)
class _Logistic:
    """L2-regularised logistic regression on standardised signals plus one missing-indicator per signal.

    A missing signal is imputed with its training mean (0 after standardising) and its indicator set to 1.
    A signal missing on every training item gets mean 0, scale 1 and no weight.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    missing_coef: tuple[float, ...]
    intercept: float

    @staticmethod
    def _design(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
        missing = np.isnan(x)
        z = (np.where(missing, mean, x) - mean) / scale
        return np.hstack([z, missing.astype(float)])

    @classmethod
    def fit(cls, x: np.ndarray, correct: np.ndarray) -> _Logistic:
        seen = ~np.isnan(x)
        count = seen.sum(axis=0)
        filled = np.where(seen, x, 0.0)
        mean = np.divide(filled.sum(axis=0), count, out=np.zeros(x.shape[1]), where=count > 0)
        var = np.divide(np.where(seen, (x - mean) ** 2, 0.0).sum(axis=0), count,
                        out=np.zeros(x.shape[1]), where=count > 0)
        scale = np.where(var > 0, np.sqrt(var), 1.0)
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0, max_iter=1000)
        model.fit(cls._design(x, mean, scale), correct.astype(int))
        k = x.shape[1]
        coef = model.coef_[0]
        return cls(tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, coef[:k])),
                   tuple(map(float, coef[k:])), float(model.intercept_[0]))

    def predict(self, x: np.ndarray) -> np.ndarray:
        design = self._design(x, np.asarray(self.mean), np.asarray(self.scale))
        logit = design @ np.asarray(self.coef + self.missing_coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-logit))

    def params(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> _Logistic:
        keys = ("mean", "scale", "coef", "missing_coef")
        mean, scale, coef, missing = (tuple(map(float, p[k])) for k in keys)
        if not len(mean) == len(scale) == len(coef) == len(missing):
            raise ValueError("logistic calibrator: mean, scale, coef and missing_coef differ in length")
        return cls(mean, scale, coef, missing, float(p["intercept"]))


_MODELS: dict[CalibrationMethod, type[_Isotonic] | type[_Logistic]] = {
    CalibrationMethod.ISOTONIC: _Isotonic,
    CalibrationMethod.LOGISTIC: _Logistic,
}


def _matrix(features: Features, names: tuple[str, ...] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Features as a float matrix (items × signals) with column names. ``None`` values become NaN; a
    signal that is absent from a mapping, or ``None``, is NaN throughout."""
    if isinstance(features, np.ndarray):
        x = np.asarray(features, dtype=float)
        x = x.reshape(-1, 1) if x.ndim == 1 else x
        if names is None or len(names) != x.shape[1]:
            raise ValueError("a feature matrix needs one name per column")
        return x, names
    if names is None:
        names = tuple(features)
    if not names:
        raise ValueError("no signals given")
    given = {name: np.atleast_1d(np.asarray(features[name], dtype=float)).ravel()
             for name in names if features.get(name) is not None}
    lengths = {col.size for col in given.values()}
    if len(lengths) > 1:
        raise ValueError(f"signals have different lengths: {sorted(lengths)}")
    width = lengths.pop() if lengths else 1
    columns = [given.get(name, np.full(width, np.nan)) for name in names]
    return np.column_stack(columns), names


@dataclass(frozen=True)
class Calibrator:
    """Maps named confidence signals to the probability that a label is correct.

    Build one with ``Calibrator.fit`` / ``fit_calibrator``; score with ``predict``; store with ``to_dict``
    (plain lists and floats, JSON-ready) and load with ``from_dict``.
    """

    method: CalibrationMethod
    features: tuple[str, ...]
    model: _Model
    n_train: int

    @classmethod
    def fit(cls, features: Features, correct: ArrayLike, method: CalibrationMethod | str = "auto",
            names: tuple[str, ...] | None = None) -> Calibrator:
        """Fit on gold items: ``features`` maps signal name → values (or is an items × signals matrix with
        ``names``), ``correct[i]`` says whether item ``i``'s label was right.

        Raises ``ValueError`` unless both right and wrong labels are present (nothing to calibrate
        against otherwise), or when ``isotonic`` is asked for with more than one signal.
        """
        x, names = _matrix(features, names)
        ok = np.asarray(correct).astype(bool).ravel()
        if ok.size != x.shape[0]:
            raise ValueError(f"{x.shape[0]} items of signals against {ok.size} correctness flags")
        if ok.all() or not ok.any():
            raise ValueError("calibration needs both correct and incorrect labels")
        chosen = CalibrationMethod(method)
        if chosen is CalibrationMethod.AUTO:
            chosen = CalibrationMethod.ISOTONIC if len(names) == 1 else CalibrationMethod.LOGISTIC
        return cls(chosen, names, _MODELS[chosen].fit(x, ok), int(ok.size))

    def predict(self, features: Features) -> np.ndarray:
        """Calibrated probabilities, one per item. ``features`` is a mapping from signal name to values (a
        scalar for one item; missing names or ``None`` count as missing) or a matrix in ``self.features``
        column order."""
        x, _ = _matrix(features, self.features)
        return np.clip(self.model.predict(x), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method.value, "features": list(self.features), "n_train": self.n_train,
                "params": self.model.params()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        method = CalibrationMethod(data["method"])
        if method is CalibrationMethod.AUTO:
            raise ValueError("a stored calibrator names its concrete method")
        return cls(method, tuple(data["features"]), _MODELS[method].from_params(data["params"]),
                   int(data["n_train"]))


def fit_calibrator(signals: Mapping[str, ArrayLike], correct: ArrayLike,
                   method: CalibrationMethod | str = "auto") -> Calibrator:
    """Fit a ``Calibrator`` on named signals; ``auto`` means isotonic for one signal, logistic otherwise."""
    return Calibrator.fit(signals, correct, method)


@dataclass(frozen=True)
class ThresholdResult:
    """Outcome of ``certify_threshold``; ``n``, ``k`` and ``upper_bound`` belong to the reported threshold
    (or, when none was certified, to the candidate that decided it)."""

    threshold: float | None
    alpha: float
    delta: float
    n: int
    k: int
    upper_bound: float
    coverage: float
    reason: str

    def accepts(self, confidence: ArrayLike) -> np.ndarray:
        """Which items may be auto-accepted: confidence ≥ threshold; none at all when threshold is None."""
        conf = np.asarray(confidence, dtype=float)
        if self.threshold is None:
            return np.zeros(conf.shape, dtype=bool)
        return conf >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clopper_pearson_upper(k: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """One-sided (1 − delta) upper bound on an error rate from k errors in n: BetaInv(1 − delta; k+1, n−k)."""
    from scipy.stats import beta  # SciPy loads when a threshold is certified, not on import

    upper = np.ones(k.shape)
    some_right = k < n
    upper[some_right] = beta.ppf(1.0 - delta, k[some_right] + 1, n[some_right] - k[some_right])
    return upper


def certify_threshold(confidence: ArrayLike, correct: ArrayLike, alpha: float = 0.1, delta: float = 0.05,
                      min_n: int = 30) -> ThresholdResult:
    """Lowest auto-accept threshold whose error rate is certified ≤ ``alpha`` with confidence ``1 − delta``.

    Fixed-sequence testing: the candidates are the distinct confidence values from high (strict) to low
    (lenient). For each, take the items with confidence ≥ t, their errors k out of n, and the one-sided
    Clopper–Pearson bound U = BetaInv(1 − delta; k + 1, n − k) (U = 1 when k == n). Candidates with
    n < ``min_n`` are not tested (which ones those are depends only on the confidences, so the sequence
    stays fixed); from the first tested candidate on, the threshold is lowered while U ≤ alpha and the
    first failure stops the search — no later candidate is looked at. With probability ≥ 1 − delta the
    error rate among items at or above the returned threshold is ≤ alpha.

    ``threshold`` is None when nothing is certified — reason "too little calibration data" (n < min_n
    above every threshold) or "no threshold meets alpha" — and then routing must flag every item
    (``ThresholdResult.accepts`` returns all False).
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < delta < 1.0:
        raise ValueError(f"alpha and delta must lie in (0, 1), got alpha={alpha}, delta={delta}")
    if min_n < 1:
        raise ValueError("min_n must be at least 1")
    conf = np.asarray(confidence, dtype=float).ravel()
    ok = np.asarray(correct).astype(bool).ravel()
    if conf.shape != ok.shape:
        raise ValueError(f"{conf.size} confidences against {ok.size} correctness flags")
    if np.isnan(conf).any():
        raise ValueError("confidence contains NaN")
    total = conf.size
    order = np.argsort(-conf, kind="stable")
    values, starts, sizes = np.unique(-conf[order], return_index=True, return_counts=True)
    thresholds = -values
    n = np.cumsum(sizes)
    k = np.cumsum(np.add.reduceat((~ok[order]).astype(int), starts)) if total else n
    upper = _clopper_pearson_upper(k, n, delta)

    def result(i: int | None, threshold: float | None, reason: str) -> ThresholdResult:
        if i is None:  # no data at all
            return ThresholdResult(threshold, alpha, delta, 0, 0, 1.0, 0.0, reason)
        return ThresholdResult(threshold, alpha, delta, int(n[i]), int(k[i]), float(upper[i]),
                               float(n[i] / total) if threshold is not None else 0.0, reason)

    testable = np.flatnonzero(n >= min_n)
    if testable.size == 0:
        whole = thresholds.size - 1 if total else None  # report the whole sample's n, k and U
        return result(whole, None, f"too little calibration data: n < {min_n} above every threshold")
    first = int(testable[0])
    if upper[first] > alpha:
        detail = f"({thresholds[first]:.4g}, n={n[first]}) has U={upper[first]:.4g} > {alpha}"
        return result(first, None, f"no threshold meets alpha: the strictest testable one {detail}")
    fails = np.flatnonzero(upper[first:] > alpha)
    if fails.size == 0:
        last = thresholds.size - 1
        return result(last, float(thresholds[last]), "every threshold meets alpha, down to the most lenient")
    stop = first + int(fails[0])
    return result(stop - 1, float(thresholds[stop - 1]),
                  f"next threshold {thresholds[stop]:.4g} fails: U={upper[stop]:.4g} > {alpha} (n={n[stop]})")
