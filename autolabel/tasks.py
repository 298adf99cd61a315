"""Task specs: load, validate against ``schemas/task.schema.json``, and derive the output JSON Schemas.

A spec is data. Everything the graph asks of the model (which fields, which options, in which order) and everything
the validator checks comes from here, so any scheme works without code changes.

Three kinds of label field share one shape, so the graph, validation, confidence, routing and review need nothing
special for any of them: a field's ``options`` are what the model may answer, one code each.

- **choices**: ``options: [change, neutral, sustain]`` (names only) or option objects with descriptions;
- **sub-codes**: an option with ``children`` (question -> open / closed); the answer names a leaf, or the parent too
  where ``allow_parent`` is set; ``parent_of`` and ``parent_level`` give the upper level;
- **ratings**: ``scale: {1: anchor, ..., 5: anchor}``; each point becomes one option (name ``"3"``, code ``R3``,
  the anchor as its description), ``ordinal`` is set and ``rank`` gives a point's number.

Explanations: a turn's answer writes its text fields before its labels (the spec's ``texts``, or one generated
``explanation``). ``explain: {evidence: true, rule: true}`` puts two generated fields first — ``evidence``, a short
quote of the turn, and ``rule``, the option description it matches — so that the explanation is not the place the
turn gets copied to, and is grounded in the options (``benchmarks/bench_explanations.py`` measures the effect).

``option_key`` is the one rule by which gold values, example labels and reviewers' answers find their option:
trimmed, case-insensitive, aliases included, a rating point as a number or text (``4``, ``"4"``, ``4.0``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from autolabel.errors import TaskSpecError
from autolabel.taskcheck import Problem as Problem  # re-exported: what spec_problems returns
from autolabel.taskcheck import find_problems, find_warnings
from autolabel.taskcheck import option_key as option_key  # re-exported: the one matching rule

Scope = Literal["turn", "session"]
Localized = str | dict[str, str]
VERDICTS = ("agree", "revise", "unsure")


def schema_path(name: str) -> Any:
    """A traversable for a file shipped in ``schemas/`` (inside the wheel as ``autolabel.schemas``)."""
    return resources.files("autolabel.schemas").joinpath(name)


def load_schema(name: str) -> dict[str, Any]:
    return json.loads(schema_path(name).read_text(encoding="utf-8"))


def localize(value: Localized | None, language: str, default: str = "") -> str:
    """Pick the text for ``language`` from a plain string or a {lang: text} mapping (English as fallback)."""
    if value is None:
        return default
    if isinstance(value, str):
        return value
    return value.get(language) or value.get("en") or next(iter(value.values()), default)


def point_code(point: int) -> str:
    """The code of a rating point: ``R3`` for 3, ``RM2`` for -2 (codes start with a letter, so their token
    probability is read like any option's)."""
    return f"R{point}" if point >= 0 else f"RM{-point}"


class Option(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    code: str = ""
    description: Localized | None = None
    aliases: tuple[str, ...] = ()
    parent: str | None = None
    """The name of the option this one is a sub-code of (None for a top-level option)."""
    point: int | None = None
    """The scale point of a rating field's option."""


class LabelField(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    scope: Scope
    roles: tuple[str, ...] | None = None
    multi: bool = False
    max_selected: int | None = None
    description: Localized | None = None
    options: tuple[Option, ...]
    """What the model may answer: leaves of sub-codes (and their parents with ``allow_parent``), or scale points."""
    top: tuple[Option, ...] = ()
    """The top-level options in spec order (parents of sub-codes and options without children); empty when the
    field has no sub-codes."""
    allow_parent: bool = False
    scale: tuple[int, ...] | None = None
    """A rating field's points, low to high."""
    ordinal: bool = False
    """The options are ordered low to high (always for a rating field)."""
    gold: str | None = None

    def code_of(self, name: str) -> str:
        return self._by_name[name].code

    def name_of(self, code: str) -> str:
        return self._by_code[code].name

    @cached_property
    def _by_code(self) -> dict[str, Option]:
        return {o.code: o for o in self.options}

    @cached_property
    def _by_name(self) -> dict[str, Option]:
        out: dict[str, Option] = {}
        for o in self.options:
            out[o.name] = o
            for alias in o.aliases:
                out.setdefault(alias, o)
        return out

    @cached_property
    def _by_key(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, o in self._by_name.items():
            key = option_key(k)
            if key is not None:
                out.setdefault(key, o.name)
        return out

    def option_name(self, value: Any) -> str | None:
        """The option a single value names (``option_key`` matching: any case, aliases, rating points as numbers)."""
        key = option_key(value)
        return None if key is None else self._by_key.get(key)

    def normalize(self, value: Any) -> str | list[str] | None:
        """Map a gold, example or review value (names or aliases, any case) onto option names; None when nothing
        maps. A multi-label field gives a sorted list; a single field the first value that maps."""
        names = value if isinstance(value, list | tuple) else [value]
        out = [n for v in names if (n := self.option_name(v)) is not None]
        if not out:
            return None
        return sorted(set(out)) if self.multi else out[0]

    # -- sub-codes and ratings ------------------------------------------------------------------------------
    @property
    def has_children(self) -> bool:
        return bool(self.top)

    def parent_of(self, name: str) -> str:
        """The top-level option an answer belongs to: a leaf's parent, or the name itself."""
        o = self._by_name.get(name)
        return o.parent if o is not None and o.parent else name

    def parent_level(self) -> LabelField:
        """The same field one level up: its options are the top-level ones (for two-level evaluation)."""
        if not self.top:
            return self
        return self.model_copy(update={"options": self.top, "top": (), "allow_parent": False})

    def rank(self, name: str) -> float | None:
        """An ordinal answer's position: a rating's point, else the option's index; None when not ordinal."""
        if not self.ordinal:
            return None
        o = self._by_name.get(name)
        if o is None:
            return None
        return float(o.point) if o.point is not None else float(self.options.index(o))

    def value_schema(self) -> dict[str, Any]:
        codes = [o.code for o in self.options]
        if not self.multi:
            return {"type": "string", "enum": codes}
        return {"type": "array", "items": {"type": "string", "enum": codes}, "minItems": 1,
                "maxItems": self.max_selected or len(codes), "uniqueItems": True}


class TextField(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    scope: Scope
    roles: tuple[str, ...] | None = None
    description: Localized | None = None
    max_chars: int = 600
    gold: str | None = None

    def value_schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": self.max_chars}


class Role(BaseModel):
    model_config = ConfigDict(frozen=True)
    speakers: tuple[str, ...]
    description: Localized | None = None


class Example(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: str
    language: str | None = None
    context: tuple[dict[str, str], ...] = ()
    text: str
    labels: dict[str, str | list[str]]
    texts: dict[str, str] = Field(default_factory=dict)


class MetaKey(BaseModel):
    """A key of the input's dialogue or turn metadata that the prompt shows, with the label it is shown under."""

    model_config = ConfigDict(frozen=True)
    key: str
    label: Localized | None = None


class ContextSettings(BaseModel):
    model_config = ConfigDict(frozen=True)
    window: int = 4
    max_turn_chars: int = 2000
    dialogue_meta: tuple[MetaKey, ...] = ()
    """Dialogue metadata shown with every turn of it and with the session (e.g. the session's target behaviour)."""
    turn_meta: tuple[MetaKey, ...] = ()
    """Turn metadata shown with each turn of the window that has it."""


def meta_items(keys: tuple[MetaKey, ...], meta: dict[str, Any], language: str) -> list[tuple[str, str]]:
    """(label, value as text) for each named key present in ``meta`` (empty values left out), in spec order: what
    a prompt shows, as data, for ``context.dialogue_meta`` or ``context.turn_meta``."""
    out: list[tuple[str, str]] = []
    for k in keys:
        value = meta.get(k.key)
        if value is None or value == "" or value == [] or value == {}:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.append((localize(k.label, language, k.key), text))
    return out


@dataclass(frozen=True)
class RoleFields:
    """What one role's turns are asked for: free-text fields first (reason), then labels (decide)."""

    role: str
    texts: tuple[TextField, ...]
    labels: tuple[LabelField, ...]


EXPLANATION = TextField(name="explanation", scope="turn", max_chars=400,
                        description={"en": "one sentence: the evidence in the turn for the labels",
                                     "zh": "一句话：该轮次中支持标签的依据"})


EVIDENCE = TextField(name="evidence", scope="turn", max_chars=200,
                     description={"en": "the words of the target turn the labels rest on, quoted exactly: a short "
                                        "span of a few words, not the whole turn",
                                  "zh": "标签所依据的目标轮次原话，逐字引用：几个词的短片段，不要整轮照抄"})
RULE = TextField(name="rule", scope="turn", max_chars=300,
                 description={"en": "for each label, the option whose description the evidence matches and why, in "
                                    "your own words (do not repeat the turn)",
                              "zh": "对每个标签，说明依据符合哪个选项的描述及原因，用你自己的话（不要重复原话）"})


class ExplainSettings(BaseModel):
    """Grounds each turn's answer gives before its explanation and labels: a quote of the turn, and the option
    description it matches. Copying the turn then has a place of its own (the evidence), and the explanation that
    follows is asked in the annotator's own words."""

    model_config = ConfigDict(frozen=True)
    evidence: bool = False
    rule: bool = False

    def fields(self, texts: tuple[TextField, ...]) -> tuple[TextField, ...]:
        """The generated text fields to put before ``texts`` (a spec field of the same name is used instead)."""
        names = {t.name for t in texts}
        return tuple(t for t, on in ((EVIDENCE, self.evidence), (RULE, self.rule)) if on and t.name not in names)


class TaskSpec(BaseModel):
    """A validated task spec. Build with :func:`load_task`."""

    model_config = ConfigDict(frozen=True)
    name: str
    version: str
    description: Localized | None = None
    languages: tuple[str, ...] = ("en",)
    roles: dict[str, Role]
    labels: tuple[LabelField, ...]
    texts: tuple[TextField, ...] = ()
    guidelines: Localized | None = None
    examples: tuple[Example, ...] = ()
    context: ContextSettings = ContextSettings()
    explain: ExplainSettings = ExplainSettings()
    source: str = ""
    spec_hash: str = ""

    # -- roles -------------------------------------------------------------------------------------------
    @cached_property
    def _speaker_roles(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for role, r in self.roles.items():
            for s in r.speakers:
                out.setdefault(s.casefold(), role)
        return out

    def role_of(self, speaker: str) -> str | None:
        """The role a raw speaker name plays, or None when the spec does not know it."""
        return self._speaker_roles.get(speaker.strip().casefold())

    def fields_for(self, role: str | None, texts: bool = True) -> RoleFields | None:
        """The turn fields a role is labeled with, or None when nothing applies to that role; its labels alone when
        ``texts`` is False (a model asked for labels only)."""
        if role is None:
            return None
        labels = tuple(f for f in self.labels if f.scope == "turn" and (f.roles is None or role in f.roles))
        if not labels:
            return None
        if not texts:
            return RoleFields(role, (), labels)
        fields = tuple(f for f in self.texts if f.scope == "turn" and (f.roles is None or role in f.roles))
        fields = fields or (EXPLANATION,)
        return RoleFields(role, (*self.explain.fields(fields), *fields), labels)

    def session_fields(self, texts: bool = True) -> RoleFields | None:
        """The session's fields (its labels alone when ``texts`` is False), or None when nothing is asked of it."""
        labels = tuple(f for f in self.labels if f.scope == "session")
        fields = tuple(f for f in self.texts if f.scope == "session") if texts else ()
        if not labels and not fields:
            return None
        return RoleFields("session", fields, labels)

    def label(self, name: str) -> LabelField:
        for f in self.labels:
            if f.name == name:
                return f
        raise KeyError(name)

    # -- schemas -----------------------------------------------------------------------------------------
    def output_schema(self, fields: RoleFields) -> dict[str, Any]:
        """The JSON Schema of one labeling answer: texts first, then label codes."""
        props: dict[str, Any] = {t.name: t.value_schema() for t in fields.texts}
        props.update({f.name: f.value_schema() for f in fields.labels})
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    def labels_schema(self, fields: RoleFields) -> dict[str, Any]:
        props = {f.name: f.value_schema() for f in fields.labels}
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    def critique_schema(self, fields: RoleFields) -> dict[str, Any]:
        """The critic's answer: reason first, then verdict, then revised labels (null unless revising). A "revise"
        must carry valid revised labels (``if``/``then``)."""
        labels = self.labels_schema(fields)
        return {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "minLength": 1, "maxLength": 600},
                "verdict": {"type": "string", "enum": list(VERDICTS)},
                "revised": {"anyOf": [labels, {"type": "null"}]},
            },
            "required": ["reason", "verdict", "revised"],
            "additionalProperties": False,
            "if": {"properties": {"verdict": {"const": "revise"}}, "required": ["verdict"]},
            "then": {"properties": {"revised": labels}, "required": ["revised"]},
        }

    def decode(self, fields: RoleFields, answer: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Split a validated answer into (labels as option names, texts). A multi-label answer is sorted like
        ``LabelField.normalize`` sorts a review's, so the same labels in another order are the same record."""
        labels: dict[str, Any] = {}
        for f in fields.labels:
            v = answer[f.name]
            labels[f.name] = sorted({f.name_of(c) for c in v}) if f.multi else f.name_of(v)
        texts = {t.name: answer[t.name] for t in fields.texts if t.name in answer}
        return labels, texts

    def encode(self, fields: RoleFields, labels: dict[str, Any]) -> dict[str, Any]:
        """Option names back to codes (for examples shown to the model)."""
        out: dict[str, Any] = {}
        for f in fields.labels:
            v = labels.get(f.name)
            if v is None:
                continue
            out[f.name] = [f.code_of(n) for n in v] if f.multi else f.code_of(v)
        return out


def _assign_codes(label: dict[str, Any]) -> None:
    """Give every option of a field a short code (A, B, ... Z, AA, ...) unless the spec set one."""
    used = {o["code"] for o in label["options"] if o.get("code")}
    n = 0
    for opt in label["options"]:
        if opt.get("code"):
            continue
        while True:
            code = _letters(n)
            n += 1
            if code not in used:
                break
        opt["code"] = code
        used.add(code)


def _letters(n: int) -> str:
    s = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        s = chr(65 + r) + s
    return s


def version_text(value: Any) -> str:
    """A spec's version as text: ``1`` -> ``"1"``, ``1.2`` -> ``"1.2"`` (quote a version such as ``"1.10"`` in
    YAML: unquoted it is the number 1.1)."""
    return value if isinstance(value, str) else str(value)


def _desugar(raw: dict[str, Any]) -> dict[str, Any]:
    """A valid spec with its short forms written out: the version as text, option names as option objects,
    sub-codes flattened into the answerable options (``top`` keeps the upper level), a scale as one option per
    point, metadata keys as objects."""
    raw = json.loads(json.dumps(raw))
    raw["version"] = version_text(raw["version"])
    for label in raw.get("labels", []):
        if "scale" in label:
            points = sorted((int(p), anchor) for p, anchor in label.pop("scale").items())
            label["options"] = [{"name": str(p), "code": point_code(p), "point": p}
                                | ({"description": anchor} if anchor else {}) for p, anchor in points]
            label["scale"], label["ordinal"] = [p for p, _ in points], True
            continue
        options: list[dict[str, Any]] = []
        top: list[dict[str, Any]] = []
        for o in label["options"]:
            o = {"name": o} if isinstance(o, str) else o
            children = o.pop("children", None)
            top.append(o)  # the same dict as in options when answerable: it gets its code there
            if not children or label.get("allow_parent"):
                options.append(o)
            for c in children or ():
                options.append({**({"name": c} if isinstance(c, str) else c), "parent": o["name"]})
        label["options"] = options
        _assign_codes(label)
        if len(top) != len(options):
            label["top"] = top
    context = raw.get("context") or {}
    for key in ("dialogue_meta", "turn_meta"):
        if key in context:
            context[key] = [{"key": k} if isinstance(k, str) else k for k in context[key]]
    return raw


def _json_keys(value: Any) -> Any:
    """Mapping keys as text, as in JSON (YAML reads ``3: anchor`` in a scale with the number 3 as key)."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: _json_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_keys(v) for v in value]
    return value


def spec_problems(raw: Any, text: str | None = None) -> list[Problem]:
    """Every problem of a raw spec — against the JSON Schema and in meaning — in plain words, each with its JSON
    path, and its line when the spec's ``text`` is given. Empty when the spec is valid."""
    return find_problems(_json_keys(raw), load_schema("task.schema.json"), text)


def check_spec(raw: Any) -> list[str]:
    """Every problem of a raw spec, each with its JSON path. Empty when the spec is valid."""
    return [str(p) for p in spec_problems(raw)]


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's (in PyYAML's wheels): ~9x faster


def _yaml(text: str) -> Any:
    """``yaml.safe_load``, with libyaml's parser when PyYAML has it."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskSpecError(str(path), f"cannot read: {e}") from e


def _syntax(path: Path, text: str) -> tuple[Any, str, int | None]:
    """(the spec's data, "", None), or (None, what is wrong with its syntax, the line)."""
    try:
        return (json.loads(text) if path.suffix == ".json" else _yaml(text)), "", None
    except json.JSONDecodeError as e:
        return None, f"not valid JSON: {e.msg} (column {e.colno})", e.lineno
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        return None, f"not valid YAML: {what}", None if mark is None else mark.line + 1


def _parse(path: Path, text: str) -> Any:
    raw, problem, line = _syntax(path, text)
    if problem:
        raise TaskSpecError(str(path), problem + (f" (line {line})" if line else ""))
    return raw


def parse_spec(raw: Any, source: str, text: str | None = None) -> TaskSpec:
    """A validated ``TaskSpec`` from a raw spec; ``text`` (the file's) puts line numbers into the problems."""
    problems = spec_problems(raw, text)
    if problems:
        raise TaskSpecError(source, f"{len(problems)} problem(s): " + "; ".join(map(str, problems)),
                            [str(p) for p in problems])
    canonical = json.dumps(_json_keys(raw), sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]  # of the spec as written: short forms count
    spec = _desugar(json.loads(canonical))
    fields = {f["name"]: LabelField.model_validate(f) for f in spec["labels"]}
    for ex in spec.get("examples", []):  # example labels as option names, matched like gold, order kept
        ex["labels"] = {k: [fields[k].option_name(x) for x in v] if isinstance(v, list)
                        else fields[k].normalize(v) for k, v in ex["labels"].items()}
    return TaskSpec.model_validate({**spec, "source": source, "spec_hash": digest})


def builtin_tasks() -> dict[str, Any]:
    """Built-in spec name -> traversable file."""
    folder = schema_path("tasks")
    return {p.name.rsplit(".", 1)[0]: p for p in folder.iterdir() if p.name.endswith((".yaml", ".yml", ".json"))}


def builtin_demo(name: str) -> Any | None:
    """The bundled demo dialogues of a built-in spec (``schemas/tasks/<name>.demo.jsonl``), or None."""
    p = schema_path("tasks").joinpath(f"{name}.demo.jsonl")
    return p if p.is_file() else None


def list_tasks() -> Iterator[TaskSpec]:
    for name in sorted(builtin_tasks()):
        yield load_task(name)


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name (``psy-insight``), or a spec file (YAML or JSON) by path."""
    builtins = builtin_tasks()
    if isinstance(name_or_path, str) and name_or_path in builtins:
        text = builtins[name_or_path].read_text(encoding="utf-8")
        return parse_spec(_yaml(text), f"builtin:{name_or_path}", text)
    path = Path(name_or_path)
    if not path.exists():
        raise TaskSpecError(str(path), f"no such task file or built-in task (built-ins: {', '.join(sorted(builtins))})")
    text = _text(path)
    return parse_spec(_parse(path, text), str(path), text)


def task_file_problems(path: str | Path) -> list[Problem]:
    """Every problem of a spec file in plain words, with its JSON path and line; empty when valid."""
    path = Path(path)
    try:
        text = _text(path)
    except TaskSpecError as e:
        return [Problem("$", e.detail)]
    raw, problem, line = _syntax(path, text)
    return [Problem("$", problem, line)] if problem else spec_problems(raw, text)


def task_file_warnings(path: str | Path) -> list[Problem]:
    """What a spec file that loads probably did not mean (``taskcheck.find_warnings``); empty for a spec that does
    not parse."""
    path = Path(path)
    try:
        text = _text(path)
    except TaskSpecError:
        return []
    raw, problem, _ = _syntax(path, text)
    return [] if problem else find_warnings(_json_keys(raw), text)


def validate_task_file(path: str | Path) -> list[str]:
    """Every problem of a spec file with its JSON path and line; empty when valid."""
    return [str(p) for p in task_file_problems(path)]
