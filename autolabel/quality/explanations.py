"""Is an explanation the model's own? The rules a run flags turns by (``explanation_copied:<field>``, in the
graph's ``finalize``) and ``benchmarks/bench_explanations.py`` measures with.

An explanation **repeats the turn** when the longest common substring of the two (case-folded, whitespace collapsed)
is at least 60% of the explanation's characters, or their word-token Jaccard similarity is at least 0.8; it **is an
example's** when its Jaccard similarity with one of the spec's example explanations is at least 0.8 (a small model
copies the prompt's example answer); two explanations are **the same** when equal once normalised or at Jaccard
0.8 or more (a generic sentence given for every turn).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

COPY_LCS = 0.6
COPY_JACCARD = 0.8
SAME_JACCARD = 0.8
NOT_EXPLANATIONS = ("evidence",)
"""Text fields that are meant to quote the turn (``explain: {evidence: true}``)."""


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


def tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def jaccard(a: str, b: str) -> float:
    ta, tb = tokens(a), tokens(b)
    return len(ta & tb) / len(ta | tb) if ta | tb else 0.0


def lcs_share(explanation: str, turn: str) -> float:
    """The longest common substring of the two as a share of the explanation's characters."""
    a, b = norm(explanation), norm(turn)
    if not a:
        return 0.0
    m = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return m.size / len(a)


def copied(explanation: str, turn: str) -> bool:
    """Does ``explanation`` repeat ``turn``?"""
    return lcs_share(explanation, turn) >= COPY_LCS or jaccard(explanation, turn) >= COPY_JACCARD


def same(a: str, b: str) -> bool:
    """Are two explanations the same (equal once normalised, or nearly the same words)?"""
    return norm(a) == norm(b) or jaccard(a, b) >= SAME_JACCARD


def from_example(explanation: str, examples: Iterable[str]) -> bool:
    return any(jaccard(explanation, x) >= SAME_JACCARD for x in examples)


def copy_problem(explanation: str, turn: str, examples: Iterable[str] = ()) -> str | None:
    """What is wrong with ``explanation`` of ``turn`` ("repeats the turn", "is an example's explanation"), or None."""
    if not explanation.strip():
        return None
    if copied(explanation, turn):
        return "repeats the turn"
    if from_example(explanation, examples):
        return "is an example's explanation"
    return None
