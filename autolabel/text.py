"""Small text utilities: language detection, truncation for prompts, and delimiting dialogue text as data."""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_TAGS = re.compile(r"</?\s*(turn|turn_info|session_info|context|target|dialogue|examples?)\b[^>]*>", re.IGNORECASE)


def detect_language(texts: list[str], supported: tuple[str, ...] = ("en", "zh")) -> str:
    """``zh`` when a fifth or more of the letters are CJK ideographs, else ``en`` (only languages in ``supported``)."""
    sample = "".join(texts)[:20000]
    letters = sum(1 for ch in sample if ch.isalpha())
    cjk = len(_CJK.findall(sample))
    lang = "zh" if letters and cjk / letters >= 0.2 else "en"
    return lang if lang in supported else supported[0]


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """Keep the head and the tail of an over-long turn (with a marker); returns (text, truncated)."""
    if len(text) <= limit:
        return text, False
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]} […{len(text) - limit} characters omitted…] {text[-tail:]}", True


def as_data(text: str) -> str:
    """Dialogue text as inert data inside the prompt's tags: tag-like sequences are defused."""
    return _TAGS.sub(lambda m: m.group(0).replace("<", "‹").replace(">", "›"), text)
