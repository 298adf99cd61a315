"""Reversible pseudonymisation of dialogue text before it is sent to a remote endpoint.

``Redactor.redact`` replaces personal details with placeholders (``[NAME_1]``, ``[PHONE_1]``, ``[EMAIL_1]``,
``[ADDRESS_1]``); one Redactor gives the same original string the same placeholder every time, so use one
per dialogue and the placeholders agree across its turns. ``restore`` / ``restore_obj`` put the originals
back into the model's answer (raw text, JSON text, or parsed JSON). The mapping never leaves the process.

What it catches (rules, no model)
    * e-mail addresses;
    * phone numbers: international (+1 415 555 0100, +86 138-1234-5678, +44 20 7946 0958), North American
      ((415) 555-0100, 415-555-0100, 415.555.0100), local 555-0100, Chinese mobiles (13812345678,
      138 1234 5678) and landlines with area code (020-12345678, (0755) 1234567);
    * street addresses: "123 Main Street, Apt 4" (a number, capitalised words, a street suffix, optional unit
      and "City, ST 12345"), "PO Box 12"; Chinese 省/市/区 + 路/街/巷… + 号 (+ 栋/单元/室),
      小区/花园… + 栋/室;
    * names, English: after a title (Mr., Mrs., Ms., Dr., Miss, Prof., Aunt, Uncle...), in "my name is X",
      "call me X", "I'm X." (only before punctuation or the end, X capitalised and not a common word), and any
      capitalised word from a bundled list of common first names (with a following capitalised surname); words
      that are also ordinary English (May, Will, Grace, Hope, Joy, Mark, Bill...) only after a title or in a
      self-introduction;
    * names, Chinese: 我叫X / 我的名字是X / 名叫X / 叫做X, 我是X before punctuation (X starting with a common
      surname), 叫 + surname + one or two characters, 小X / 老X and X先生 / X女士 / X老师 / X医生 ... with X
      one of ~100 common surnames (only the surname part is replaced: 王老师 → [NAME_1]老师);
    * every name the caller registers (``Redactor(names=[...])``, e.g. from the dialogue's metadata), and
      every name of two or more characters found once by the rules above, wherever it occurs later in any
      text the Redactor sees. Call ``prime(all_turns)`` first to learn names from the whole dialogue
      before redacting.

What it does not catch
    Names in lower case or not in the list and without a cue ("sarah said", "Zephyr said"), Chinese given
    names without a cue or surname, nicknames, ages, dates, schools, employers, cities and districts on
    their own, ID/account numbers, URLs and handles, and anything in another script. Short numbers are
    left alone, and over-redaction is possible (a capitalised word after a first name is taken as the
    surname). It is a heuristic that lowers exposure; it is not anonymisation. If the input itself
    contains a placeholder such as "[NAME_1]", ``restore`` cannot tell it from one of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

__all__ = ["EntityKind", "Redactor"]


class EntityKind(str, Enum):
    """The kinds of detail replaced, in the order they win when two candidates overlap."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    ADDRESS = "ADDRESS"
    NAME = "NAME"


_PRIORITY = {kind: rank for rank, kind in enumerate(EntityKind)}

FIRST_NAMES: frozenset[str] = frozenset(
    """
    Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Betty Margaret
    Sandra Ashley Kimberly Emily Donna Michelle Dorothy Carol Amanda Melissa Deborah Stephanie Rebecca
    Sharon Laura Cynthia Kathleen Amy Angela Shirley Anna Brenda Pamela Emma Nicole Helen Samantha
    Katherine Christine Debra Rachel Carolyn Janet Catherine Maria Heather Diane Ruth Julie Olivia Joyce
    Virginia Victoria Kelly Lauren Christina Joan Evelyn Judith Megan Andrea Cheryl Hannah Jacqueline
    Martha Gloria Teresa Ann Anne Sara Madison Frances Kathryn Janice Jean Abigail Alice Julia Judy
    Sophia Denise Doris Marilyn Danielle Beverly Isabella Theresa Diana Natalie Brittany Charlotte Marie
    Kayla Alexis Lori Chloe Mia Ava Ella Zoe Sophie Harper Aria Layla Nora Riley Zoey Leah Audrey Claire
    Lucy Stella Aurora Penelope Camila Scarlett Madeline Caroline Naomi Elena Allison Gabriella Sadie
    Emilia Kaitlyn Vanessa Monica Erica Erin Tiffany Tina Wendy Vicky Yvonne Tracy Stacy Rosa Fiona
    Jenny Jane Jess Kate Katie Beth Becky Amelia Isabel Eva Lucia Ellie Molly Sofia Carmen Ana Priya
    Anjali Aisha Fatima Mei Ling Yuki Sakura James John Robert Michael William David Richard Joseph
    Thomas Charles Christopher Daniel Matthew Anthony Donald Steven Paul Andrew Joshua Kenneth Kevin
    Brian George Timothy Ronald Edward Jason Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen
    Larry Justin Scott Brandon Benjamin Samuel Gregory Alexander Patrick Raymond Dennis Jerry Tyler
    Aaron Jose Adam Nathan Henry Douglas Zachary Peter Kyle Ethan Walter Noah Jeremy Keith Roger Terry
    Gerald Harold Sean Austin Carl Arthur Lawrence Dylan Jesse Jordan Bryan Billy Joe Bruce Gabriel
    Logan Albert Willie Alan Juan Wayne Elijah Randy Roy Vincent Ralph Eugene Russell Bobby Mason Philip
    Louis Liam Oliver Lucas Aiden Owen Caleb Luke Isaac Levi Sebastian Mateo Leo Julian Hudson Lincoln
    Asher Carter Wyatt Grayson Ezra Connor Hunter Colton Landon Adrian Nolan Evan Cameron Jayden Xavier
    Dominic Josiah Ian Carson Eli Tony Tom Tommy Jim Jimmy Mike Dave Chris Steve Matt Dan Danny Ben Sam
    Nick Alex Andy Tim Josh Greg Jake Jon Ken Ted Fred Harry Charlie Eddie Kenny Marcus Martin Victor
    Travis Shawn Derek Jared Bradley Chad Cody Craig Curtis Dustin Edwin Howard Jeff Joel Johnny Leonard
    Mario Marvin Mitchell Nathaniel Neil Oscar Phillip Rick Ricky Rodney Shane Stanley Todd Troy Wesley
    Alfred Carlos Luis Miguel Jorge Pedro Diego Rahul Raj Amit Arjun Mohammed Muhammad Ahmed Omar Ali
    Hassan Yusuf Wei Ming Jing Xin Lei Jun Fang Ying Hui Yan Kenji Hiroshi
    """.split()
)
"""Capitalised words redacted wherever they occur. Ordinary English words are kept out on purpose."""

AMBIGUOUS_NAMES: frozenset[str] = frozenset(
    """
    May Will Grace Hope Joy Mark Bill Faith Summer Autumn April June August Rose Lily Daisy Ivy Violet
    Hazel Amber Ruby Pearl Crystal Dawn Eve Iris Jade Jasmine Melody Destiny Harmony Chase Drew Frank
    Gene Guy Jack Max Miles Pat Penny Rich Rob Sandy Sky Sunny Wade Art Bob Brook Cliff Dean Holly Ray
    Ross Christian Angel Norman Sue Lee
    """.split()
)
"""Names that are also ordinary words: replaced only after a title or in a self-introduction."""

_COMMON_WORDS: frozenset[str] = frozenset(
    """
    a an the and but or so i you he she we they it this that what why how when where who yes no not hi
    hello hey thanks thank please sorry fine ok okay here there back home done good great tired ready
    sure new just really very also still always never afraid scared sad happy angry alone lonely lost
    confused stressed worried anxious depressed better worse well sick ill busy free late early glad
    grateful pregnant married single divorced gay straight trans american british english chinese
    canadian australian mexican indian japanese korean french german italian spanish irish african asian
    european latino latina hispanic black white christian catholic muslim jewish buddhist hindu atheist
    mormon protestant monday tuesday wednesday thursday friday saturday sunday january february march
    april may june july august september october november december today tomorrow yesterday mom dad mum
    mother father god jesus christmas easter in on at to from with about going trying feeling doing
    being getting here right wrong nobody somebody someone nothing everything honestly actually maybe
    """.split()
)

_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
    "姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
_COMPOUND_SURNAMES = "欧阳 司马 上官 诸葛 东方 皇甫 尉迟 公孙 慕容 令狐 长孙 宇文 司徒 夏侯 端木".split()
# Words that start or end with a surname character but are not names: 小于 "less than", 高中 "high school".
_ZH_NOT_NAMES = frozenset(
    """小于 小孔 小龙虾 小白兔 小方块 小石头 小金库 小马驹 老毛病 老黄历 老马识途 老于世故 老汤
    高中 高一 高二 高三 高考 高校 高级 江湖 金融 方向 石油 马上 万一 于是 黄金 白天 许多 曾经
    程度 程序 毛病 任何 任务 周末 周围 历史 课程 疗程 过程 工程 流程 全程 日程 行程 孙子 孙女
    向来 严重 严格 上周 下周 本周 这周 每周 一周""".split()
)
_ZH_TITLES = "先生 女士 小姐 老师 医生 大夫 阿姨 叔叔 同学 太太 教授 律师 经理 主任 护士 师傅".split()
# Characters that end a name after 叫 and never occur inside one here.
_ZH_PARTICLES = set("是在了的和跟与也就都还很说吧呢啊吗呀我你他她们这那今年岁从对给被把让有来去住")

_CJK = "\u4e00-\u9fff"
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{2,5}){2,5}"  # +1 415 555 0100, +86 138-1234-5678
    r"|(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # (415) 555-0100, 415-555-0100
    r"|(?:\(0\d{2,3}\)|0\d{2,3})[ -]?(?:\d{7,8}|\d{3,4}[ -]\d{4})"  # 020-12345678
    r"|1[3-9]\d(?:[ -]?\d{4}){2}"  # 13812345678, 138 1234 5678
    r"|\d{3}[-.]\d{4}"  # 555-0100
    r")(?![0-9A-Za-z])"
)
_EN_SUFFIX = (
    r"(?:(?:Street|Avenue|Road|Lane|Boulevard|Drive|Court|Place|Terrace|Parkway|Highway|Circle|Square|Way|Alley"
    r"|Crescent)\b|(?:St|Ave|Rd|Ln|Blvd|Dr|Ct|Pl|Ter|Pkwy|Hwy|Cir|Sq)\b\.?)"
)
_ADDRESS_EN = re.compile(
    r"\b\d{1,6}[A-Za-z]?"
    r"(?:(?:\s+(?:[A-Z][A-Za-z'-]*|\d+(?:st|nd|rd|th)|[NSEW]\.?)){1,4}\s+(?i:" + _EN_SUFFIX + r")"
    r"|\s+[a-z]+\s+(?:street|avenue|ave|boulevard|blvd)\b)"
    r"(?:,?\s*(?i:apt|apartment|unit|suite|ste|flat|room|rm)\b\.?\s*#?\s*\d+[A-Za-z]?|,?\s*#\s*\d+[A-Za-z]?)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)*,?\s+[A-Z]{2}\s+\d{5}(?:-\d{4})?)?"
    r"|\bP\.?\s?O\.?\s+Box\s+\d+"
)
_ZH_P = rf"(?:(?![我你他她它们在住是的了就也都把被给对于从到去说个这那哪吗呢吧啊呀址])[{_CJK}])"
_ZH_N = r"[0-9０-９一二三四五六七八九十百千零〇两]"
_ZH_UNIT = rf"(?:{_ZH_N}+(?:号楼|栋|幢|座|单元|楼|层|室|房|户))"
_ADDRESS_ZH = re.compile(
    rf"(?:{_ZH_P}{{2,6}}?(?:省|自治区))?(?:{_ZH_P}{{1,6}}?市)?(?:{_ZH_P}{{1,6}}?(?:区|县|镇|乡))?"
    rf"(?:{_ZH_P}|{_ZH_N}){{1,10}}?(?:大道|大街|路|街|巷|胡同|道)(?:{_ZH_N}+弄)?{_ZH_N}+号(?:院)?{_ZH_UNIT}*"
    rf"|{_ZH_P}{{2,8}}?(?:小区|花园|公寓|大厦|新村|家园|苑){_ZH_UNIT}+"
)

_CAP = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_SURNAME_EN = re.compile(r"\s+([A-Z](?:[a-z]+|'[A-Z][a-z]+|[a-z]*[A-Z][a-z]+)(?:-[A-Z][a-z]+)?)\b")
_TITLE = re.compile(
    r"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|Miss|Mister|Madam|Professor|Aunt|Auntie|Uncle|Coach|Officer|Nurse|Pastor|Rev)\.?"
    rf"\s+({_CAP}(?:\s+{_CAP})?)"
)
_INTRO = re.compile(
    rf"\b(?:[Mm]y name is|[Mm]y name['’]s|[Cc]all me|[Ii]['’]m called|[Ii] am called)"
    rf"\s+({_CAP}(?:\s+{_CAP})?)"
)
_INTRO_LOWER = re.compile(r"\b[Mm]y name(?: is|['’]s)\s+([a-z]{2,})\b")
_IM = re.compile(rf"\b[Ii](?:['’]m| am)\s+({_CAP})(?=\s*(?:[.,!?;:]|$))")
_CAPWORD = re.compile(r"\b[A-Z][a-z]+\b")

_SURNAME_ZH = "(?:" + "|".join(_COMPOUND_SURNAMES) + f"|[{_SURNAMES}])"
_ZH_INTRO = re.compile(r"(?:我叫|我的名字是|我的名字叫|我名字叫|我名叫|本人叫|名叫|叫做|我是)")
_ZH_FAMILIAR = re.compile(rf"(?<=[小老]){_SURNAME_ZH}")
_ZH_TITLE = re.compile("|".join(_ZH_TITLES))
_ASCII_NAME = re.compile(r"\s*([A-Z][a-z]+)")
_ZH_BARE, _ZH_GIVEN2 = re.compile(f"[{_CJK}]{{1,3}}"), re.compile(f"[{_CJK}]{{2}}")
_ZH_PUNCT = re.compile(r"[，。！？、；：,.!?;:\s…—~～（）()\"“”]|$")

_PLACEHOLDER = re.compile(
    r"\[\s*(NAME|PHONE|EMAIL|ADDRESS)[\s_-]*(\d+)\s*\]|\b(NAME|PHONE|EMAIL|ADDRESS)_(\d+)\b", re.IGNORECASE
)
_E, _P, _A = EntityKind.EMAIL, EntityKind.PHONE, EntityKind.ADDRESS
_RULES = ((_EMAIL, _E), (_PHONE, _P), (_ADDRESS_EN, _A), (_ADDRESS_ZH, _A))
_Add = Callable[..., None]


class Redactor:
    """Replaces personal details with stable placeholders and puts them back. One instance per dialogue."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._forward: dict[tuple[EntityKind, str], str] = {}
        self._backward: dict[str, str] = {}
        self._counts: dict[EntityKind, int] = dict.fromkeys(EntityKind, 0)
        self._names: dict[str, bool] = {}  # name -> match ignoring case
        self._names_rx: re.Pattern[str] | None = None
        self.register(names)

    def register(self, names: Iterable[str]) -> None:
        """Add names to replace wherever they occur (case-insensitively unless the name is a common word).

        Multi-word names add their parts; a Chinese name adds a two-character given name (张小明 → 小明).
        """
        for raw in names:
            name = " ".join(raw.split())
            if not name:
                continue
            if any(ch in name for ch in '"\\') or any(ord(ch) < 32 for ch in name):
                raise ValueError(f"a name cannot contain quotes, backslashes or control characters: {raw!r}")
            self._learn(name, ignore_case=not _is_common_or_ambiguous(name))

    def prime(self, texts: Iterable[str]) -> None:
        """Learn the names the rules find in ``texts`` (e.g. every turn of a dialogue) without redacting."""
        for text in texts:
            self._find_names(text)

    def _learn(self, name: str, *, ignore_case: bool = False) -> None:
        parts = [name]
        if " " in name:
            parts += [p for p in name.split(" ") if len(p) > 1 and not _is_common_or_ambiguous(p)]
        elif surname := re.match(_SURNAME_ZH, name):
            parts += [name[surname.end() :]] if _ZH_GIVEN2.fullmatch(name, surname.end()) else []
        for part in parts:
            if part not in self._names or (ignore_case and not self._names[part]):
                self._names[part] = ignore_case
                self._names_rx = None

    def _known_names(self) -> re.Pattern[str] | None:
        if self._names_rx is None and self._names:
            longest_first = sorted(self._names.items(), key=lambda item: -len(item[0]))
            self._names_rx = re.compile("|".join(_name_regex(name, ic) for name, ic in longest_first))
        return self._names_rx

    def _find_names(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []

        def add(start: int, end: int, *, learn: bool = True) -> None:
            spans.append((start, end))
            name = text[start:end]
            if learn and len(name) > 1 and not _is_common_or_ambiguous(name):
                self._learn(name, ignore_case=name.islower())

        for m in _TITLE.finditer(text):
            _add_capitalised(m, add)
        for m in [*_INTRO.finditer(text), *_INTRO_LOWER.finditer(text)]:
            if not _is_common(m.group(1).split()[0]):
                _add_capitalised(m, add)
        for m in _IM.finditer(text):
            if not _is_common(m.group(1)):
                add(*m.span(1))
        for m in _CAPWORD.finditer(text):
            if m.group() in FIRST_NAMES:
                end = m.end()
                surname = _SURNAME_EN.match(text, end)
                if surname and not _is_common_or_ambiguous(surname.group(1)):
                    end = surname.end(1)
                add(m.start(), end)
        self._find_chinese_names(text, add)
        known = self._known_names()
        if known is not None:
            spans += [m.span() for m in known.finditer(text)]
        return spans

    def _find_chinese_names(self, text: str, add: _Add) -> None:
        for m in _ZH_INTRO.finditer(text):
            pos, cue = m.end(), m.group()
            ascii_name = _ASCII_NAME.match(text, pos)
            if ascii_name and not _is_common(ascii_name.group(1)):
                add(*ascii_name.span(1))
                continue
            end = _surname_name_end(text, pos)
            if cue == "我是":
                if end and 2 <= end - pos <= 3 and _ZH_PUNCT.match(text, end) and not _zh_excluded(text, pos):
                    add(pos, end)
            elif end and not _zh_excluded(text, pos):
                add(pos, end)
            elif cue not in ("名叫", "叫做"):
                bare = _ZH_BARE.match(text, pos)
                if bare and _ZH_PUNCT.match(text, bare.end()) and not set(bare.group()) & _ZH_PARTICLES:
                    add(*bare.span())
        for m in re.finditer("叫", text):
            end = _surname_name_end(text, m.end())
            if end and not _zh_excluded(text, m.end()):
                add(m.end(), end)
        for m in _ZH_FAMILIAR.finditer(text):
            if not _zh_excluded(text, m.start() - 1):
                add(*m.span(), learn=False)
        for m in _ZH_TITLE.finditer(text):
            t = m.start()
            for length in (4, 3, 2, 1):
                start = t - length
                candidate = text[max(start, 0) : t]
                if start < 0 or not re.fullmatch(f"[{_CJK}]+", candidate):
                    continue
                surname = re.match(_SURNAME_ZH, candidate)
                given = candidate[surname.end() :] if surname else ""
                if not surname or len(given) > 2 or set(given) & _ZH_PARTICLES or _zh_excluded(text, start):
                    continue
                add(start, t, learn=length > 1)
                break

    def redact(self, text: str) -> str:
        """``text`` with every detected detail replaced by its placeholder."""
        candidates = [(*m.span(), kind) for rx, kind in _RULES for m in rx.finditer(text)]
        candidates += [(s, e, EntityKind.NAME) for s, e in self._find_names(text)]
        out: list[str] = []
        pos = 0
        for start, end, kind in sorted(candidates, key=lambda c: (c[0], c[0] - c[1], _PRIORITY[c[2]])):
            if start < pos or start == end:
                continue
            out += [text[pos:start], self._placeholder(kind, text[start:end])]
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def restore(self, text: str) -> str:
        """``text`` with every known placeholder (also "[ NAME 1 ]", "name_1", inside JSON) replaced back."""

        def original(m: re.Match[str]) -> str:
            kind, number = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            return self._backward.get(f"[{kind.upper()}_{int(number)}]", m.group())

        return _PLACEHOLDER.sub(original, text)

    def restore_obj(self, obj: Any) -> Any:
        """``obj`` with :meth:`restore` applied to every string inside dicts (keys too), lists and tuples."""
        if isinstance(obj, str):
            return self.restore(obj)
        if isinstance(obj, dict):
            return {self.restore_obj(k): self.restore_obj(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            restored = [self.restore_obj(v) for v in obj]
            return restored if isinstance(obj, list) else tuple(restored)
        return obj

    @classmethod
    def restoring(cls, mapping: dict[str, str]) -> Redactor:
        """A Redactor that puts back the placeholders of ``mapping`` (a part of another one's :attr:`mapping`): what
        restores the model's output where only some turns of a dialogue are at hand."""
        r = cls()
        r._backward.update(mapping)
        return r

    @property
    def mapping(self) -> dict[str, str]:
        """Placeholder → original, for every placeholder handed out so far (a copy)."""
        return dict(self._backward)

    def _placeholder(self, kind: EntityKind, original: str) -> str:
        key = (kind, original)
        if key not in self._forward:
            self._counts[kind] += 1
            placeholder = f"[{kind.value}_{self._counts[kind]}]"
            self._forward[key] = placeholder
            self._backward[placeholder] = original
        return self._forward[key]


def _name_regex(name: str, ignore_case: bool) -> str:
    body = f"(?i:{re.escape(name)})" if ignore_case else re.escape(name)
    return rf"(?<![A-Za-z0-9_]){body}(?![A-Za-z0-9_])" if name.isascii() else body


def _is_common(word: str) -> bool:
    return word.lower() in _COMMON_WORDS


def _is_common_or_ambiguous(word: str) -> bool:
    return _is_common(word) or word in AMBIGUOUS_NAMES


def _add_capitalised(m: re.Match[str], add: _Add) -> None:
    """Add group 1 of a title/intro match, dropping a trailing second word that is a common word."""
    words = m.group(1).split()
    common_second = len(words) > 1 and _is_common(words[1])
    add(m.start(1), m.start(1) + len(words[0]) if common_second else m.end(1))


def _surname_name_end(text: str, pos: int) -> int | None:
    """End of surname + one or two given-name characters starting at ``pos``, or None."""
    surname = re.compile(_SURNAME_ZH).match(text, pos)
    if not surname:
        return None
    best: int | None = None
    for given in (2, 1):
        end = surname.end() + given
        chunk = text[surname.end() : end]
        if len(chunk) < given or not re.fullmatch(f"[{_CJK}]+", chunk) or set(chunk) & _ZH_PARTICLES:
            continue
        if end == len(text) or not re.match(f"[{_CJK}]", text[end]) or text[end] in _ZH_PARTICLES:
            return end
        best = best or end
    return best


def _zh_excluded(text: str, start: int) -> bool:
    """Whether a candidate name at ``start`` is part of an ordinary word (小于, 高中, 历史...)."""
    starts = (start, start - 1) if start > 0 else (start,)
    return any(text.startswith(w, s) for w in _ZH_NOT_NAMES for s in starts)
