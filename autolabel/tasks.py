"""Task specs: load, validate against ``schemas/task.schema.json``, and derive the output JSON Schemas.

A spec is data. Everything the graph asks of the model (which fields, which options, in which order) and everything
the validator checks comes from here, so any scheme works without code changes.
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
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field

from autolabel.errors import TaskSpecError

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


class Option(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    code: str = ""
    description: Localized | None = None
    aliases: tuple[str, ...] = ()


class LabelField(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    scope: Scope
    roles: tuple[str, ...] | None = None
    multi: bool = False
    max_selected: int | None = None
    description: Localized | None = None
    options: tuple[Option, ...]
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

    def normalize(self, value: Any) -> str | list[str] | None:
        """Map a gold value (names or aliases, any case) onto option names; None when nothing maps."""
        names = value if isinstance(value, list) else [value]
        folded = {k.casefold(): o.name for k, o in self._by_name.items()}
        out = [folded[n.strip().casefold()] for n in names if isinstance(n, str) and n.strip().casefold() in folded]
        if not out:
            return None
        return sorted(set(out)) if self.multi else out[0]

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


class ContextSettings(BaseModel):
    model_config = ConfigDict(frozen=True)
    window: int = 4
    max_turn_chars: int = 2000


@dataclass(frozen=True)
class RoleFields:
    """What one role's turns are asked for: free-text fields first (reason), then labels (decide)."""

    role: str
    texts: tuple[TextField, ...]
    labels: tuple[LabelField, ...]


EXPLANATION = TextField(name="explanation", scope="turn", max_chars=400,
                        description={"en": "one sentence: the evidence in the turn for the labels",
                                     "zh": "一句话：该轮次中支持标签的依据"})


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

    def fields_for(self, role: str | None) -> RoleFields | None:
        """The turn fields a role is labeled with, or None when nothing applies to that role."""
        if role is None:
            return None
        labels = tuple(f for f in self.labels if f.scope == "turn" and (f.roles is None or role in f.roles))
        if not labels:
            return None
        texts = tuple(f for f in self.texts if f.scope == "turn" and (f.roles is None or role in f.roles))
        return RoleFields(role, texts or (EXPLANATION,), labels)

    def session_fields(self) -> RoleFields | None:
        labels = tuple(f for f in self.labels if f.scope == "session")
        texts = tuple(f for f in self.texts if f.scope == "session")
        if not labels and not texts:
            return None
        return RoleFields("session", texts, labels)

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
        """The critic's answer: reason first, then verdict, then revised labels (null unless revising)."""
        return {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "minLength": 1, "maxLength": 600},
                "verdict": {"type": "string", "enum": list(VERDICTS)},
                "revised": {"anyOf": [self.labels_schema(fields), {"type": "null"}]},
            },
            "required": ["reason", "verdict", "revised"],
            "additionalProperties": False,
        }

    def decode(self, fields: RoleFields, answer: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Split a validated answer into (labels as option names, texts)."""
        labels: dict[str, Any] = {}
        for f in fields.labels:
            v = answer[f.name]
            labels[f.name] = [f.name_of(c) for c in v] if f.multi else f.name_of(v)
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


def _assign_codes(raw: dict[str, Any]) -> None:
    """Give every option a short code (A, B, ... Z, AA, ...) unless the spec set one."""
    for label in raw.get("labels", []):
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


def _semantic_problems(raw: dict[str, Any]) -> list[str]:
    """Rules a JSON Schema cannot state: unique names, known roles, example values in the options."""
    problems: list[str] = []
    roles = set(raw.get("roles", {}))
    names: set[str] = set()
    for i, f in enumerate([*raw.get("labels", []), *raw.get("texts", [])]):
        kind = "labels" if i < len(raw.get("labels", [])) else "texts"
        j = i if kind == "labels" else i - len(raw.get("labels", []))
        if f["name"] in names:
            problems.append(f"$.{kind}[{j}].name: duplicate field name {f['name']!r}")
        names.add(f["name"])
        for r in f.get("roles") or []:
            if r not in roles:
                problems.append(f"$.{kind}[{j}].roles: unknown role {r!r} (roles: {sorted(roles)})")
        if f.get("roles") and f["scope"] == "session":
            problems.append(f"$.{kind}[{j}].roles: a session-scoped field takes no roles")
    for i, label in enumerate(raw.get("labels", [])):
        seen: set[str] = set()
        for k, o in enumerate(label["options"]):
            if o["name"] in seen:
                problems.append(f"$.labels[{i}].options[{k}].name: duplicate option {o['name']!r}")
            seen.add(o["name"])
    options = {f["name"]: {o["name"] for o in f["options"]} for f in raw.get("labels", [])}
    for i, ex in enumerate(raw.get("examples", [])):
        if ex["role"] not in roles:
            problems.append(f"$.examples[{i}].role: unknown role {ex['role']!r}")
        for field, value in ex["labels"].items():
            if field not in options:
                problems.append(f"$.examples[{i}].labels.{field}: no such label field")
                continue
            for v in value if isinstance(value, list) else [value]:
                if v not in options[field]:
                    problems.append(f"$.examples[{i}].labels.{field}: {v!r} is not an option")
    return problems


def check_spec(raw: Any) -> list[str]:
    """Every problem of a raw spec, each with its JSON path. Empty when the spec is valid."""
    validator = Draft202012Validator(load_schema("task.schema.json"))
    problems = [f"{e.json_path}: {e.message}" for e in sorted(validator.iter_errors(raw), key=lambda e: e.json_path)]
    if not problems:
        problems = _semantic_problems(raw)
    return problems


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's (in PyYAML's wheels): ~9x faster


def _yaml(text: str) -> Any:
    """``yaml.safe_load``, with libyaml's parser when PyYAML has it."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskSpecError(str(path), f"cannot read: {e}") from e
    try:
        return json.loads(text) if path.suffix == ".json" else _yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise TaskSpecError(str(path), f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e


def parse_spec(raw: Any, source: str) -> TaskSpec:
    problems = check_spec(raw)
    if problems:
        raise TaskSpecError(source, f"{len(problems)} problem(s): " + "; ".join(problems), problems)
    canonical = json.dumps(raw, sort_keys=True, ensure_ascii=False)
    raw = json.loads(canonical)
    _assign_codes(raw)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return TaskSpec.model_validate({**raw, "source": source, "spec_hash": digest})


def builtin_tasks() -> dict[str, Any]:
    """Built-in spec name -> traversable file."""
    folder = schema_path("tasks")
    return {p.name.rsplit(".", 1)[0]: p for p in folder.iterdir() if p.name.endswith((".yaml", ".yml", ".json"))}


def list_tasks() -> Iterator[TaskSpec]:
    for name in sorted(builtin_tasks()):
        yield load_task(name)


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name (``psy-insight``), or a spec file (YAML or JSON) by path."""
    builtins = builtin_tasks()
    if isinstance(name_or_path, str) and name_or_path in builtins:
        p = builtins[name_or_path]
        text = p.read_text(encoding="utf-8")
        return parse_spec(_yaml(text), f"builtin:{name_or_path}")
    path = Path(name_or_path)
    if not path.exists():
        raise TaskSpecError(str(path), f"no such task file or built-in task (built-ins: {', '.join(sorted(builtins))})")
    return parse_spec(_read(path), str(path))


def validate_task_file(path: str | Path) -> list[str]:
    """Every problem of a spec file with its JSON path; empty when valid."""
    try:
        raw = _read(Path(path))
    except TaskSpecError as e:
        return [e.detail]
    return check_spec(raw)
