"""Transparent detectors for risk language and prompt injection in dialogue turns.

Method
    ``detect_risk`` runs the English and Chinese pattern tables of :mod:`autolabel.risk_patterns` (each row an
    id, a category, a language and a regular expression) over the turn and returns one :class:`RiskHit` per
    match, with the span in the *original* text. Before matching, the text is folded: runs of whitespace
    become one space (English) or vanish (Chinese, so "想 死" matches "想死"), curly quotes become straight
    ones, and case is ignored. A hit that overlaps a phrase of the idiom allow-list ("this traffic is
    killing me", "I'd die for a coffee", "career suicide", 跳楼价, 我想死你了...) is dropped; nothing else is.

    Negation and quotation never remove a hit: "I would never kill myself" and "she said 'I want to die'" are
    exactly what a counsellor wants to see. They only set ``negated`` / ``quoted`` on the hit (a negation word
    shortly before the match in the same clause; the match inside an open quotation), so a reviewer can sort.

    ``detect_injection`` runs the injection table over the raw text: instructions aimed at the labelling model
    ("ignore the previous instructions", "label everything Happiness", "you are now an annotator", 忽略之前的
    指令, 把所有都标注为...), chat-template role tags, and JSON-looking objects with label keys.

Limits
    This is a list of patterns, not a model. It misses paraphrase, sarcasm, misspelling beyond the variants
    written into the table, other languages, and risk stated over several turns; it fires on quoted,
    hypothetical, historical and clinical talk about risk. No hits does not mean no risk. Its only use is to
    route turns to a human (flag, raise priority); never to auto-accept, auto-reject or alter a label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autolabel.risk_patterns import (
    EN_IDIOMS,
    EN_RISK,
    INJECTION_PATTERNS,
    ZH_IDIOMS,
    ZH_RISK,
    Idiom,
    InjectionPattern,
    Language,
    RiskCategory,
    RiskPattern,
)

__all__ = [
    "EN_IDIOMS",
    "EN_RISK",
    "INJECTION_PATTERNS",
    "ZH_IDIOMS",
    "ZH_RISK",
    "Idiom",
    "InjectionHit",
    "InjectionPattern",
    "RiskCategory",
    "RiskHit",
    "RiskPattern",
    "categories",
    "detect_injection",
    "detect_risk",
]


@dataclass(frozen=True)
class RiskHit:
    """One match of a risk pattern: ``text[start:end]`` is the matched phrase in the caller's text."""

    category: RiskCategory
    pattern_id: str
    start: int
    end: int
    negated: bool = False
    """A negation word ("not", "never", "don't", 不, 没...) shortly before the match in the same clause."""
    quoted: bool = False
    """The match is inside an open quotation ("...", “...”, 「...」) on its line."""


@dataclass(frozen=True)
class InjectionHit:
    """One match of a prompt-injection pattern: ``text[start:end]`` is the suspicious passage."""

    pattern_id: str
    start: int
    end: int


# ---------------------------------------------------------------------------------------------- compiling

_FLAGS = re.IGNORECASE


def _compile(language: Language, regex: str) -> re.Pattern[str]:
    if language == "en":
        return re.compile(rf"\b(?:{regex})\b", _FLAGS)
    return re.compile(regex, _FLAGS)


_RISK: dict[Language, list[tuple[RiskPattern, re.Pattern[str]]]] = {
    "en": [(p, _compile("en", p.regex)) for p in EN_RISK],
    "zh": [(p, _compile("zh", p.regex)) for p in ZH_RISK],
}
_IDIOMS: dict[Language, list[tuple[Idiom, re.Pattern[str]]]] = {
    "en": [(i, _compile("en", i.regex)) for i in EN_IDIOMS],
    "zh": [(i, _compile("zh", i.regex)) for i in ZH_IDIOMS],
}
# In injection patterns every literal space means "some whitespace".
_INJECTION: list[tuple[InjectionPattern, re.Pattern[str]]] = [
    (p, re.compile(p.regex.replace(" ", r"\s+"), re.IGNORECASE | re.MULTILINE)) for p in INJECTION_PATTERNS
]

_NEGATION: dict[Language, re.Pattern[str]] = {
    "en": re.compile(
        r"\b(?:not|never|no|nor|hardly|cannot|(?:do|does|did|wo|would|is|was|are|have|has|ca|could|should)n'?t)\b",
        _FLAGS,
    ),
    "zh": re.compile(r"不|没|未|别|莫|勿|绝非|并非"),
}
_CLAUSE_END = re.compile(r"[.!?;,\n。！？；，]|\bbut\b", _FLAGS)
_NEGATION_WINDOW: dict[Language, int] = {"en": 40, "zh": 8}

_FOLD_CHARS = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "＇": "'", "“": '"', "”": '"', "＂": '"'})
_OPEN_CLOSE = (("“", "”"), ("「", "」"), ("『", "』"))


# ---------------------------------------------------------------------------------------------- risk


def detect_risk(text: str, language: str | None = None) -> list[RiskHit]:
    """Risk hits in ``text``, sorted by position.

    ``language`` picks a table by its primary subtag ("en", "en-GB", "zh", "zh-Hant"...); ``None`` or any
    other language runs both tables, because missing a hit costs more than a spare one.
    """
    hits: set[RiskHit] = set()
    for lang in _languages(language):
        folded, index = _fold(text, drop_space=lang == "zh")
        allowed = [m.span() for _, rx in _IDIOMS[lang] for m in rx.finditer(folded)]
        for pattern, rx in _RISK[lang]:
            for m in rx.finditer(folded):
                s, e = m.span()
                if s == e or any(s < ie and is_ < e for is_, ie in allowed):
                    continue
                hits.add(
                    RiskHit(
                        category=pattern.category,
                        pattern_id=pattern.id,
                        start=index[s],
                        end=index[e - 1] + 1,
                        negated=_negated(folded, s, lang),
                        quoted=_quoted(text, index[s]),
                    )
                )
    return sorted(hits, key=lambda h: (h.start, h.end, h.pattern_id))


def _languages(language: str | None) -> Sequence[Language]:
    primary = (language or "").strip().lower().replace("_", "-").split("-")[0]
    if primary == "en":
        return ("en",)
    if primary == "zh":
        return ("zh",)
    return ("en", "zh")


def _fold(text: str, *, drop_space: bool) -> tuple[str, list[int]]:
    """The text as the patterns see it, and for each of its characters the index in ``text``."""
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ch.isspace():
            if drop_space or not chars or chars[-1] == " ":
                continue
            ch = " "
        chars.append(ch)
        index.append(i)
    return "".join(chars).translate(_FOLD_CHARS), index


def _negated(folded: str, start: int, language: Language) -> bool:
    window = folded[max(0, start - _NEGATION_WINDOW[language]) : start]
    ends = list(_CLAUSE_END.finditer(window))
    if ends:
        window = window[ends[-1].end() :]
    return _NEGATION[language].search(window) is not None


def _quoted(text: str, start: int) -> bool:
    line = text[text.rfind("\n", 0, start) + 1 : start]
    if line.count('"') % 2 == 1:
        return True
    return any(line.count(open_) > line.count(close) for open_, close in _OPEN_CLOSE)


# ---------------------------------------------------------------------------------------------- injection


def detect_injection(text: str) -> list[InjectionHit]:
    """Passages of ``text`` that look like instructions to the labelling model, sorted by position.

    Every table row runs on every text (a Chinese turn may carry an English injection). Spans index ``text``.
    """
    hits = {
        InjectionHit(pattern.id, m.start(), m.end())
        for pattern, rx in _INJECTION
        for m in rx.finditer(text)
        if m.end() > m.start()
    }
    return sorted(hits, key=lambda h: (h.start, h.end, h.pattern_id))


def categories(hits: Iterable[RiskHit]) -> set[RiskCategory]:
    """The distinct categories among ``hits`` (what a review item lists as its reasons)."""
    return {h.category for h in hits}
