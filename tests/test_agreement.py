"""Agreement statistics against hand arithmetic, scikit-learn and published worked examples."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score

from autolabel.quality.agreement import (
    cohen_kappa,
    fleiss_kappa,
    fleiss_kappa_from_ratings,
    krippendorff_alpha,
    masi_distance,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers × 12 units,
# nominal values, None = missing. Published alpha = 0.743.
_K2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}
K2011_UNITS = [list(unit) for unit in zip(*_K2011.values(), strict=True)]

# Wikipedia "Fleiss' kappa" worked example: 10 items, 14 raters, 5 categories; P̄ = 0.378, P_e = 0.213,
# kappa = 0.210.
WIKI_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_cohen_kappa_by_hand():
    # a = x x y y, b = x y y y: p_o = 3/4; a has x:1/2 y:1/2, b has x:1/4 y:3/4
    # p_e = 1/2·1/4 + 1/2·3/4 = 1/2; kappa = (3/4 − 1/2) / (1 − 1/2) = 0.5
    assert cohen_kappa(list("xxyy"), list("xyyy")) == pytest.approx(0.5)


def test_cohen_kappa_matches_sklearn():
    a = list("abcabcaabbcc")
    b = list("abcacbabbbcc")
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_cohen_kappa_undefined_when_one_label_throughout():
    # p_e = 1, kappa = 0/0
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))


def test_cohen_kappa_rejects_ragged():
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


def test_fleiss_kappa_wikipedia_example():
    assert fleiss_kappa(WIKI_TABLE) == pytest.approx(0.20993, abs=1e-5)


def test_fleiss_kappa_by_hand():
    # 2 items, 2 raters. Item 1: both "a" -> P_1 = (4 − 2)/(2·1) = 1. Item 2: a, b -> P_2 = (1+1−2)/2 = 0.
    # P̄ = 0.5; p_a = 3/4, p_b = 1/4; P_e = 9/16 + 1/16 = 10/16; kappa = (8/16 − 10/16)/(6/16) = −1/3
    assert fleiss_kappa([[2, 0], [1, 1]]) == pytest.approx(-1 / 3)
    assert fleiss_kappa_from_ratings([["a", "a"], ["a", "b"]]) == pytest.approx(-1 / 3)


def test_fleiss_from_ratings_equals_table():
    ratings = []
    for row in WIKI_TABLE:
        ratings.append([str(j) for j, count in enumerate(row) for _ in range(count)])
    assert fleiss_kappa_from_ratings(ratings) == pytest.approx(fleiss_kappa(WIKI_TABLE))


def test_fleiss_kappa_perfect_and_degenerate():
    assert fleiss_kappa_from_ratings([["a", "a", "a"], ["b", "b", "b"]]) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa_from_ratings([["a", "a"], ["a", "a"]]))


def test_fleiss_kappa_rejects_unequal_raters():
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa_from_ratings([["a", "a"], ["a", "b", "b"]])
    with pytest.raises(ValueError, match="two ratings"):
        fleiss_kappa([[1, 0], [0, 1]])


def test_krippendorff_alpha_textbook_example_with_missing():
    assert krippendorff_alpha(K2011_UNITS) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_by_hand():
    # Units (2 coders): (a,a), (a,b), (b,b). n = 6 pairable values: a×3, b×3.
    # D_o = 1/6 · [0 + (1+1)/(2−1) + 0] = 2/6
    # D_e = (3·3 + 3·3) / (6·5) = 18/30
    # alpha = 1 − (2/6)/(18/30) = 1 − 5/9 = 4/9
    assert krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)


def test_krippendorff_alpha_skips_unpairable_units_and_handles_edge_cases():
    base = [["a", "a"], ["a", "b"], ["b", "b"]]
    assert krippendorff_alpha(base + [["a", None, None], [None, None]]) == pytest.approx(4 / 9)
    assert math.isnan(krippendorff_alpha([["a", None], [None, "b"]]))  # nothing pairable
    assert math.isnan(krippendorff_alpha([["a", "a"], ["a", "a"]]))  # no variation: D_e = 0
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)


def test_masi_distance_cases():
    assert masi_distance({"a"}, {"a"}) == 0.0
    assert masi_distance(set(), set()) == 0.0
    # subset: J = 1/2, M = 0.67 -> 1 − 0.335
    assert masi_distance({"a"}, {"a", "b"}) == pytest.approx(1 - 0.5 * 0.67)
    # overlap: J = 1/3, M = 0.33 -> 1 − 0.11
    assert masi_distance({"a", "b"}, {"b", "c"}) == pytest.approx(1 - 0.33 / 3)
    assert masi_distance({"a"}, {"b"}) == 1.0
    assert masi_distance(set(), {"a"}) == 1.0


def test_krippendorff_alpha_masi_by_hand():
    # Units: ({a},{a}), ({a},{a,b}), ({b},{b}). Values: {a}×3, {a,b}×1, {b}×2; n = 6.
    # d({a},{a,b}) = 1 − 0.5·0.67 = 0.665, d({b},{a,b}) = 0.665, d({a},{b}) = 1.
    # D_o = 1/6 · [2·0.665 / 1] = 0.2216667
    # D_e = 2·(3·1·0.665 + 2·1·0.665 + 3·2·1) / (6·5) = 2·(1.995 + 1.33 + 6)/30 = 18.65/30 = 0.6216667
    # alpha = 1 − 0.2216667/0.6216667 = 0.6434316
    units = [[{"a"}, {"a"}], [{"a"}, {"a", "b"}], [{"b"}, {"b"}]]
    assert krippendorff_alpha(units, distance="masi") == pytest.approx(1 - (1.33 / 6) / (18.65 / 30))


def test_krippendorff_alpha_masi_rejects_single_labels():
    with pytest.raises(ValueError, match="set-valued"):
        krippendorff_alpha([["a", "b"]], distance="masi")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.sampled_from("abc")), min_size=2, max_size=4),
                min_size=1, max_size=12))
def test_masi_on_singletons_equals_nominal(units):
    # MASI between singletons is 0 when equal and 1 otherwise: exactly the nominal distance.
    as_sets = [[None if v is None else {v} for v in unit] for unit in units]
    nominal = krippendorff_alpha(units)
    masi = krippendorff_alpha(as_sets, distance="masi")
    assert (math.isnan(nominal) and math.isnan(masi)) or masi == pytest.approx(nominal)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abc")), min_size=2, max_size=30))
def test_alpha_for_two_coders_is_small_sample_corrected_scotts_pi(pairs):
    # Two coders, no missing, N units, n = 2N values. Each disagreeing unit contributes 2 ordered pairs
    # with m_u − 1 = 1, so D_o = 2·#disagreeing / n; D_e = sum_{c != k} n_c n_k / (n (n − 1)), hence
    # alpha = 1 − (n − 1)·2·#disagreeing / sum_{c != k} n_c n_k, with sum_{c != k} n_c n_k = n² − sum_c n_c².
    n = 2 * len(pairs)
    disagree_values = 2 * sum(a != b for a, b in pairs)
    counts = {c: sum((a == c) + (b == c) for a, b in pairs) for c in "abc"}
    expected_pairs = n * n - sum(v * v for v in counts.values())
    alpha = krippendorff_alpha([list(p) for p in pairs])
    if expected_pairs == 0:
        assert math.isnan(alpha)
    else:
        assert alpha == pytest.approx(1 - (n - 1) * disagree_values / expected_pairs)
