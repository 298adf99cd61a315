"""Task spec problems in plain words: schema errors and errors of meaning, each with its JSON path and line.

``find_problems`` checks a raw spec (as read from YAML or JSON, keys as text) against ``task.schema.json`` and
against the rules a schema cannot state (unique names, known roles, example labels that are options, scales of
whole consecutive points), and reports *all* problems at once, sorted by line. Messages name what is wrong and
what is allowed, never a raw regular expression. ``tasks.py`` owns the spec model; this module only diagnoses,
and holds ``option_key`` — the one rule by which a written value names an option — so that both can use it
(``tasks`` imports this module, never the reverse).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import yaml
from jsonschema import Draft202012Validator, ValidationError

Path = tuple[str | int, ...]

PATTERN_WORDS = {
    "^[a-z][a-z0-9_]*$": "use lowercase letters, digits and _, starting with a letter (e.g. client_talk)",
    "^[a-z0-9][a-z0-9_.-]*$": "use lowercase letters, digits, '.', '_' and '-' (e.g. misc-client-talk)",
    "^[A-Z][A-Z0-9]{0,3}$": "use 1 to 4 capital letters or digits, starting with a letter (e.g. QO)",
    "^[a-z]{2}$": "use a two-letter language code (e.g. en)",
    "^-?[0-9]{1,2}$": "scale points are whole numbers from -99 to 99",
}
TYPE_WORDS = {"string": "text", "integer": "a whole number", "number": "a number", "boolean": "true or false",
              "array": "a list", "object": "a mapping (key: value)", "null": "nothing (null)"}


def option_key(value: Any) -> str | None:
    """The form in which a label value is matched to an option: trimmed and case-folded text; a whole number (a
    rating point, also written ``4.0`` or ``"4"``) as its digits. None for what can name no option."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _WHOLE.fullmatch(text):
        return str(int(float(text)))
    return text.casefold() or None


_WHOLE = re.compile(r"[+-]?[0-9]+(\.0*)?")


@dataclass(frozen=True)
class Problem:
    """One problem of a spec: where (JSON path, and line in the file when known) and what, in plain words."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        return f"{where}: {self.message}"


def json_path(path: Path) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


def find_problems(raw: Any, schema: dict[str, Any], text: str | None = None) -> list[Problem]:
    """Every problem of ``raw`` — schema, then meaning — sorted by line; ``text`` is the file (for lines)."""
    found = list(_schema_problems(raw, schema))
    found += _meaning_problems(raw)
    lines = _lines(text) if text else {}
    out, seen = [], set()
    for path, message in found:
        if (path, message) in seen:
            continue
        seen.add((path, message))
        out.append(Problem(json_path(path), message, _line_of(lines, path)))
    return sorted(out, key=lambda p: (p.line or 0, p.path))


def find_warnings(raw: Any, text: str | None = None) -> list[Problem]:
    """What a valid spec probably did not mean (it still loads and runs): with ``explain`` on, an example without
    its ``evidence`` or ``rule`` (the prompt shows them empty)."""
    lines = _lines(text) if text else {}
    return [Problem(json_path(path), message, _line_of(lines, path)) for path, message in _explain_warnings(raw)]


def _explain_warnings(raw: Any) -> list[tuple[Path, str]]:
    raw = _dict(raw)
    asked = [k for k in ("evidence", "rule") if _dict(raw.get("explain")).get(k) is True]
    out: list[tuple[Path, str]] = []
    for i, ex in enumerate(_list(raw.get("examples"))):
        texts = _dict(_dict(ex).get("texts"))
        missing = [k for k in asked if not (isinstance(texts.get(k), str) and texts[k].strip())]
        if missing:
            names = " and ".join(repr(k) for k in missing)
            out.append((("examples", i, "texts") if "texts" in _dict(ex) else ("examples", i),
                        f"explain asks every answer for {names}, but this example has no {names}: the prompt "
                        f"shows it empty (add {names} to the example's texts)"))
    return out


# -- lines -------------------------------------------------------------------------------------------------

def _lines(text: str) -> dict[Path, int]:
    """The 1-based line of every key and item of a YAML (or JSON) text, by path."""
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return {}
    out: dict[Path, int] = {}

    def walk(node: yaml.Node, path: Path) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                out[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                walk(value, (*path, i))

    if root is not None:
        walk(root, ())
    return out


def _line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of its nearest ancestor that the file has (a missing key: its object's line)."""
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


# -- schema ------------------------------------------------------------------------------------------------

def _schema_problems(raw: Any, schema: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    for error in Draft202012Validator(schema).iter_errors(raw):
        yield from _explain(error)


def _kind(value: Any) -> str:
    for name, t in (("true or false", bool), ("text", str), ("a whole number", int), ("a number", float),
                    ("a list", list), ("a mapping", dict)):
        if isinstance(value, t):
            return name
    return "nothing (null)" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _explain(e: ValidationError) -> Iterator[tuple[Path, str]]:
    path: Path = tuple(e.absolute_path)
    v, value, inst = str(e.validator), e.validator_value, e.instance
    schema: dict[str, Any] = e.schema if isinstance(e.schema, dict) else {}
    value = cast(Any, value)
    inst = cast(Any, inst)
    if "propertyNames" in e.schema_path:  # a key of a mapping (a role name, a scale point) that is not allowed
        words = PATTERN_WORDS.get(value, e.message) if v == "pattern" else e.message
        yield (*path, str(inst)), f"the name {_show(inst)} is not allowed: {words}"
    elif v in ("oneOf", "anyOf"):
        yield from _explain_choice(e, path)
    elif v == "required":
        for key in value:
            if isinstance(inst, dict) and key not in inst:
                yield path, f"missing required key {key!r}"
    elif v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        for key in inst:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                yield (*path, key), f"unknown key {key!r} ({hint}allowed here: {', '.join(allowed)})"
    elif v == "pattern":
        yield path, f"{_show(inst)} is not allowed: {PATTERN_WORDS.get(value, 'it must match ' + value)}"
    elif v == "type":
        wanted = " or ".join(TYPE_WORDS.get(t, t) for t in ([value] if isinstance(value, str) else value))
        yield path, f"expected {wanted}, got {_kind(inst)} {_show(inst)}"
    elif v == "enum":
        yield path, f"{_show(inst)} is not one of: {', '.join(map(str, value))}"
    elif v == "const":
        yield path, f"must be {value!r}" + (f" ({schema['description']})" if "description" in schema else "")
    elif v == "minItems":
        yield path, f"needs at least {value} item{'s' * (value != 1)}, has {len(inst)}"
    elif v == "maxItems":
        yield path, f"takes at most {value} item{'s' * (value != 1)}, has {len(inst)}"
    elif v == "minProperties":
        yield path, "must not be empty" if value == 1 else f"needs at least {value} entries, has {len(inst)}"
    elif v == "minLength":
        yield path, "must not be empty" if value == 1 else f"needs at least {value} characters"
    elif v == "maxLength":
        yield path, f"takes at most {value} characters, has {len(inst)}"
    elif v in ("minimum", "maximum"):
        yield path, f"must be at {'least' if v == 'minimum' else 'most'} {value}, is {inst}"
    elif v == "uniqueItems":
        dups = sorted({repr(x) for i, x in enumerate(inst) if x in inst[:i]})
        yield path, f"lists {', '.join(dups)} more than once"
    else:
        yield path, e.message


def _explain_choice(e: ValidationError, path: Path) -> Iterator[tuple[Path, str]]:
    """A value that fits none of several forms: when its type fits exactly one form, that form's own problems;
    else what the forms are (the schema's ``description``)."""
    branches: dict[Any, list[ValidationError]] = {}
    for sub in e.context or ():
        branches.setdefault(sub.schema_path[0], []).append(sub)
    fitting = [errs for errs in branches.values()
               if not any(x.validator == "type" and len(x.relative_path) == 0 for x in errs)]
    if len(fitting) == 1:
        for sub in fitting[0]:
            yield from _explain(sub)
        return
    described = str(e.schema.get("description", "")) if isinstance(e.schema, dict) else ""
    if e.validator == "oneOf" and not branches:
        yield path, f"fits more than one form; it takes {described or 'one form only'}"
        return
    if all(x.validator == "required" for errs in branches.values() for x in errs):
        yield path, f"needs {described}"
        return
    yield path, f"expected {described or 'another form'}, got {_kind(e.instance)} {_show(e.instance)}"


# -- meaning -----------------------------------------------------------------------------------------------

def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _options(label: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any], str | None]]:
    """(path, option as an object, parent name) for every option and sub-code of a raw label field."""
    for k, o in enumerate(_list(label.get("options"))):
        o = {"name": o} if isinstance(o, str) else _dict(o)
        yield ("options", k), o, None
        for c, child in enumerate(_list(o.get("children"))):
            child = {"name": child} if isinstance(child, str) else _dict(child)
            yield ("options", k, "children", c), child, str(o.get("name"))


def _choices(label: dict[str, Any]) -> set[str]:
    """The keys (``option_key``) a value of this field may take: answerable names, aliases, scale points."""
    if "scale" in label:
        return {k for p in _dict(label["scale"]) if (k := option_key(p)) is not None}
    out: set[str] = set()
    for _, o, _parent in _options(label):
        if o.get("children") and not label.get("allow_parent"):
            continue
        for name in [o.get("name"), *_list(o.get("aliases"))]:
            if (k := option_key(name)) is not None:
                out.add(k)
    return out


def _suggest(value: str, known: list[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _meaning_problems(raw: Any) -> list[tuple[Path, str]]:
    """Rules a JSON Schema cannot state; written to run on a spec that also has schema problems."""
    raw = _dict(raw)
    problems: list[tuple[Path, str]] = []
    roles = sorted(_dict(raw.get("roles")))
    labels = [_dict(x) for x in _list(raw.get("labels"))]
    texts = [_dict(x) for x in _list(raw.get("texts"))]
    names: set[str] = set()
    for kind, fields in (("labels", labels), ("texts", texts)):
        for j, f in enumerate(fields):
            name = f.get("name")
            if isinstance(name, str):
                if name in names:
                    problems.append(((kind, j, "name"), f"the field name {name!r} is used twice"))
                names.add(name)
            for r, role in enumerate(_list(f.get("roles"))):
                if isinstance(role, str) and role not in roles:
                    problems.append(((kind, j, "roles", r), f"unknown role {role!r} "
                                     f"({_suggest(role, roles)}roles: {', '.join(roles) or 'none'})"))
            if f.get("roles") and f.get("scope") == "session":
                problems.append(((kind, j, "roles"), "a session field takes no roles (it is asked of the "
                                 "whole session)"))
    for j, label in enumerate(labels):
        problems += [(("labels", j, *p), m) for p, m in _label_problems(label)]
    problems += _example_problems(raw, roles, labels, texts)
    problems += _context_problems(_dict(raw.get("context")))
    return problems


def _label_problems(label: dict[str, Any]) -> list[tuple[Path, str]]:
    """Problems of one label field, paths relative to it."""
    out: list[tuple[Path, str]] = []
    if "scale" in label:
        points = []
        for p in _dict(label["scale"]):
            try:
                points.append(int(p))
            except ValueError:
                continue  # the schema reports it
        points.sort()
        if points and points != list(range(points[0], points[-1] + 1)):
            missing = sorted(set(range(points[0], points[-1] + 1)) - set(points))
            out.append((("scale",), f"the points must be consecutive whole numbers; missing {missing} (a point "
                        "without an anchor is written with an empty value, e.g. '2:')"))
        if label.get("multi"):
            out.append((("multi",), "a rating field takes one point: multi does not apply"))
        return out
    seen: dict[str, str] = {}
    codes: set[str] = set()
    for path, o, _parent in _options(label):
        for what, name in [("option", o.get("name")), *(("alias", a) for a in _list(o.get("aliases")))]:
            key = option_key(name)
            if key is None:
                continue
            if key in seen and seen[key] != o.get("name"):
                out.append(((*path, "name" if what == "option" else "aliases"),
                            f"{what} {name!r} is the same name as {seen[key]!r} (names match whatever their case)"))
            elif key in seen and what == "option":
                out.append(((*path, "name"), f"duplicate option {name!r}"))
            seen.setdefault(key, str(o.get("name")))
        code = o.get("code")
        if isinstance(code, str):
            if code in codes:
                out.append(((*path, "code"), f"the code {code!r} is used twice"))
            codes.add(code)
    if label.get("allow_parent") and not any(p for _, _, p in _options(label)):
        out.append((("allow_parent",), "no option has children, so there is no parent to allow"))
    answerable = len(_choices(label))
    if isinstance(label.get("max_selected"), int) and not label.get("multi"):
        out.append((("max_selected",), "max_selected applies to a multi field only (add 'multi: true')"))
    elif isinstance(label.get("max_selected"), int) and label["max_selected"] > answerable > 0:
        out.append((("max_selected",), f"max_selected is {label['max_selected']} but the field has only "
                    f"{answerable} answerable options"))
    return out


def _example_problems(raw: dict[str, Any], roles: list[str], labels: list[dict[str, Any]],
                      texts: list[dict[str, Any]]) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    by_name = {str(f["name"]): f for f in labels if isinstance(f.get("name"), str)}
    text_names = sorted(str(t.get("name")) for t in texts)
    for i, ex in enumerate(_list(raw.get("examples"))):
        ex = _dict(ex)
        role = ex.get("role")
        if isinstance(role, str) and role not in roles:
            out.append((("examples", i, "role"), f"unknown role {role!r} ({_suggest(role, roles)}roles: "
                        f"{', '.join(roles) or 'none'})"))
        for field, value in _dict(ex.get("labels")).items():
            where: Path = ("examples", i, "labels", field)
            f = by_name.get(field)
            if f is None:
                out.append((where, f"no label field is called {field!r} ({_suggest(field, sorted(by_name))}"
                            f"fields: {', '.join(sorted(by_name))})"))
                continue
            if f.get("scope") == "session":
                out.append((where, "examples show turns; a session field has no place in one"))
            elif role in roles and f.get("roles") and role not in f["roles"] and set(f["roles"]) <= set(roles):
                out.append((where, f"the field {field!r} is not asked of the role {role!r}"))
            if isinstance(value, list) and not f.get("multi"):
                out.append((where, f"the field {field!r} takes one value, the example gives a list"))
            choices = _choices(f)
            for v in value if isinstance(value, list) else [value]:
                if option_key(v) not in choices:
                    kind = "a point of the scale" if "scale" in f else "an option"
                    known = sorted(str(o.get("name")) for _, o, _ in _options(f))
                    out.append((where, f"{v!r} is not {kind} of {field!r} ({_suggest(str(v), known)}"
                                f"names match whatever their case)"))
        explain = [k for k, on in _dict(raw.get("explain")).items() if on is True]
        for name in _dict(ex.get("texts")):
            if name not in text_names and name != "explanation" and name not in explain:
                out.append((("examples", i, "texts", name), f"no text field is called {name!r} "
                            f"(texts: {', '.join(text_names) or 'none'})"))
    return out


def _context_problems(context: dict[str, Any]) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for which in ("dialogue_meta", "turn_meta"):
        keys: set[str] = set()
        for i, k in enumerate(_list(context.get(which))):
            key = k if isinstance(k, str) else _dict(k).get("key")
            if isinstance(key, str) and key in keys:
                out.append((("context", which, i), f"the key {key!r} is named twice"))
            if isinstance(key, str):
                keys.add(key)
    return out
