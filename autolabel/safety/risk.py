"""Transparent detectors for risk language and prompt injection in dialogue turns.

Method
    ``detect_risk`` runs the English and Chinese pattern tables of :mod:`autolabel.safety.risk_patterns` (each row an
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

import bisect
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from autolabel.safety.risk_patterns import (
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

# Risk and idiom rows run case-sensitively on lowercased text, English rows with a trailing \b; their leading \b is
# checked by _matches. A pattern that starts with an assertion, or matches ignoring case, loses the regular expression
# engine's scan for its first characters, which makes a megabyte of text about five times slower to search.
_RISK: dict[Language, list[tuple[RiskPattern, re.Pattern[str]]]] = {
    "en": [(p, re.compile(rf"(?:{p.regex})\b")) for p in EN_RISK],
    "zh": [(p, re.compile(p.regex)) for p in ZH_RISK],
}
_IDIOMS: dict[Language, list[tuple[Idiom, re.Pattern[str]]]] = {
    "en": [(i, re.compile(rf"(?:{i.regex})\b")) for i in EN_IDIOMS],
    "zh": [(i, re.compile(i.regex)) for i in ZH_IDIOMS],
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

# One character for one: the folded text's positions stay those of the whitespace-folded text. "İ" is the only
# character whose lower case is two characters; "ſ" and "ı" are what case-insensitive matching would take for s, i.
_FOLD_CHARS = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "＇": "'", "“": '"', "”": '"', "＂": '"',
                             "İ": "i", "ſ": "s", "ı": "i"})
_OPEN_CLOSE = (("“", "”"), ("「", "」"), ("『", "』"))
_QUOTE_CHARS = ('"', *(c for pair in _OPEN_CLOSE for c in pair))
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # every Chinese row is made of these

IDIOM_REACH = 200
"""How far (in folded characters) from a hit an idiom is looked for: an idiom longer than this may be missed."""


# ---------------------------------------------------------------------------------------------- risk


def detect_risk(text: str, language: str | None = None) -> list[RiskHit]:
    """Risk hits in ``text``, sorted by position.

    ``language`` picks a table by its primary subtag ("en", "en-GB", "zh", "zh-Hant"...); ``None`` or any
    other language runs both tables, because missing a hit costs more than a spare one.

    The whole text is searched, however long, in time linear in its length: one scan of it per table row (the
    Chinese rows, made of Han characters only, not at all when it has none), then per hit only its neighbourhood
    (idioms within ``IDIOM_REACH`` characters, negation, quotation): 0.1-0.2 s for a megabyte of prose.
    """
    found: list[tuple[RiskPattern, int, int, bool]] = []
    for lang in _languages(language):
        if lang == "zh" and _HAN.search(text) is None:
            continue
        folded = _Folded(text, drop_space=lang == "zh")
        word_start = lang == "en"
        matches = [(p, span) for p, rx in _RISK[lang] for span in _matches(rx, folded.text, word_start=word_start)]
        if not matches:
            continue
        idioms = _Spans([span for lo, hi in _around([span for _, span in matches], IDIOM_REACH)
                         for _, rx in _IDIOMS[lang]
                         for span in _matches(rx, folded.text, word_start=word_start, pos=lo, endpos=hi)])
        found += [(p, folded.origin(s), folded.origin(e - 1) + 1, _negated(folded.text, s, lang))
                  for p, (s, e) in matches if not idioms.overlaps(s, e)]
    quoted = _quoted({start for _, start, _, _ in found}, text)
    hits = {RiskHit(category=p.category, pattern_id=p.id, start=start, end=end, negated=negated,
                    quoted=quoted[start]) for p, start, end, negated in found}
    return sorted(hits, key=lambda h: (h.start, h.end, h.pattern_id))


def _languages(language: str | None) -> Sequence[Language]:
    primary = (language or "").strip().lower().replace("_", "-").split("-")[0]
    if primary == "en":
        return ("en",)
    if primary == "zh":
        return ("zh",)
    return ("en", "zh")


class _Folded:
    """The text as the patterns see it: every run of whitespace one space (``drop_space``: none), none at the
    start; curly quotes straight; lower case. ``origin(i)`` is the index in the original text of folded ``i``."""

    def __init__(self, text: str, *, drop_space: bool) -> None:
        self.original, self.drop_space = text, drop_space
        folded = _SPACE.sub("" if drop_space else " ", text)
        if not drop_space and folded.startswith(" ") and text[:1].isspace():
            folded = folded[1:]
        self.text = folded.translate(_FOLD_CHARS).lower()
        self._breaks: list[int] | None = None
        self._shifts: list[int] = []

    def origin(self, i: int) -> int:
        if self._breaks is None:  # built on the first hit only: most texts have none
            self._breaks, self._shifts = [0], [0]
            shift = 0
            for m in _SPACE.finditer(self.original):
                a, b = m.span()
                kept = 0 if self.drop_space or a == 0 else 1  # the one space stands at the run's first character
                removed = b - a - kept
                if removed:
                    self._breaks.append(a - shift + kept)  # the folded position just after the run
                    shift += removed
                    self._shifts.append(shift)
        return i + self._shifts[bisect.bisect_right(self._breaks, i) - 1]


def _matches(rx: re.Pattern[str], text: str, *, word_start: bool, pos: int = 0,
             endpos: int | None = None) -> Iterator[tuple[int, int]]:
    r"""Spans of ``rx``'s non-empty matches as ``rx.finditer(text)`` finds them; with ``word_start`` only those
    that begin at a word boundary, exactly as if the pattern began with ``\b`` (a rejected match is retried one
    character later).

    ``pos``/``endpos``: only matches starting in ``text[pos:endpos]``. Each is then matched again at its start in
    the whole text, so what the window cut short or made up (a lookahead, ``\b`` or ``$`` at its end) is not
    taken; a match running past ``endpos`` may be missed."""
    end = len(text) if endpos is None else endpos
    while pos <= end and (m := rx.search(text, pos, end)) is not None:
        s = m.start()
        real = m if endpos is None else rx.match(text, s)
        if real is None or real.end() == s or (word_start and not _boundary(text, s)):
            pos = s + 1
            continue
        yield real.span()
        pos = real.end()


def _around(spans: list[tuple[int, int]], reach: int) -> list[tuple[int, int]]:
    """The spans widened by ``reach`` on both sides, overlapping ones merged, in order."""
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        lo, hi = max(0, s - reach), e + reach
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _boundary(text: str, i: int) -> bool:
    r"""``\b`` at ``i``: a word character on exactly one side."""
    return (i > 0 and _WORD.match(text, i - 1) is not None) != (_WORD.match(text, i) is not None)


class _Spans:
    """Spans (idiom matches) that answer "does any of you overlap [s, e)?" in logarithmic time."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        spans.sort()
        self.starts = [s for s, _ in spans]
        self.max_end = list(itertools.accumulate((e for _, e in spans), max))

    def overlaps(self, s: int, e: int) -> bool:
        k = bisect.bisect_left(self.starts, e)  # the spans starting before e
        return k > 0 and self.max_end[k - 1] > s


def _negated(folded: str, start: int, language: Language) -> bool:
    window = folded[max(0, start - _NEGATION_WINDOW[language]) : start]
    ends = list(_CLAUSE_END.finditer(window))
    if ends:
        window = window[ends[-1].end() :]
    return _NEGATION[language].search(window) is not None


def _quoted(starts: set[int], text: str) -> dict[int, bool]:
    """For each start, whether it is inside an open quotation ("...", “...”, 「...」) on its line.

    One pass over the text for all of them: the quote marks are counted from one start to the next, and the counts
    begin again at every line."""
    out: dict[int, bool] = {}
    pos, counts = 0, dict.fromkeys(_QUOTE_CHARS, 0)
    for start in sorted(starts):
        newline = text.rfind("\n", pos, start)
        if newline >= 0:
            pos, counts = newline + 1, dict.fromkeys(_QUOTE_CHARS, 0)
        segment = text[pos:start]
        for c in _QUOTE_CHARS:
            counts[c] += segment.count(c)
        pos = start
        out[start] = counts['"'] % 2 == 1 or any(counts[o] > counts[c] for o, c in _OPEN_CLOSE)
    return out


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
