"""One validator: JSON Schemas compiled once, used for every answer, record and label — the model's and people's.

jsonschema walks a schema at some 5 µs per keyword (~230 µs for an annotation record), and validation runs several
times per turn. So each schema is also compiled once into a yes/no check (:func:`fast_check`) of the keywords our
schemas use, with jsonschema's semantics; only when it says no does jsonschema run, for the messages. A schema with
any other keyword gets no compiled check: jsonschema alone decides.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

Check = Callable[[Any], bool]


@dataclass(frozen=True, eq=False)
class Compiled:
    """A schema, ready to validate: its JSON (keys in the schema's order), digest, jsonschema validator, compiled
    check."""

    schema: dict[str, Any]
    json: str
    digest: str
    validator: Draft202012Validator
    check: Check | None

    def iter_errors(self, value: Any) -> Iterator[ValidationError]:
        """jsonschema's errors of ``value``, in its order; none, without running it, when the compiled check passes."""
        if self.check is not None and self.check(value):
            return iter(())
        return self.validator.iter_errors(value)


@lru_cache(maxsize=256)
def compile_schema_json(schema_json: str) -> Compiled:
    schema = json.loads(schema_json)
    return Compiled(schema, schema_json, hashlib.sha256(schema_json.encode()).hexdigest()[:16],
                    Draft202012Validator(schema), fast_check(schema))


class Schema(dict[str, Any]):
    """A JSON Schema that carries its compiled form: built once (the request builder makes one per role and run) and
    validated against on every call without serialising it again. Never changed in place."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__(schema)
        # key order kept: it is the order the model is asked to write the fields in (texts first, then labels)
        self.compiled = compile_schema_json(json.dumps(schema))


def compile_schema(schema: dict[str, Any]) -> Compiled:
    """The compiled form of ``schema``: its own for a :class:`Schema`, else compiled from its JSON (cached by
    content)."""
    if isinstance(schema, Schema):
        return schema.compiled
    return compile_schema_json(json.dumps(schema))


def schema_digest(schema: dict[str, Any]) -> str:
    return compile_schema(schema).digest


def validation_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """Every jsonschema error of ``value`` against ``schema``, each with its JSON path."""
    errors = sorted(compile_schema(schema).iter_errors(value), key=lambda e: e.json_path)
    return [f"{e.json_path}: {e.message}" for e in errors]


# -- compiled checks ------------------------------------------------------------------------------------------

class _Unsupported(Exception):
    """The schema uses a keyword (or a value of one) that ``fast_check`` does not compile."""


_TYPES: dict[str, Check] = {  # Draft 2020-12's type checker in jsonschema: a bool is not a number
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, numbers.Number) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
}
_NUMBER = _TYPES["number"]
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated",
                          "readOnly", "writeOnly"})


def fast_check(schema: Any) -> Check | None:
    """A yes/no check of ``schema`` that says yes exactly when jsonschema (Draft 2020-12) finds no error, or None
    when the schema uses anything but these keywords: type, enum and const (of strings), properties, required,
    additionalProperties, items, min/maxItems, uniqueItems, min/maxLength, pattern, minimum, maximum,
    exclusiveMinimum/Maximum, allOf, anyOf, oneOf, not, if/then/else; and annotations (title, description...)."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _compile(schema: Any) -> Check:
    if schema is True:
        return lambda v: True
    if schema is False:
        return lambda v: False
    if not isinstance(schema, dict):
        raise _Unsupported
    compiled = (_keyword(key, value, schema) for key, value in schema.items()
                if key not in _ANNOTATIONS and key not in ("then", "else"))  # then/else belong to "if"
    checks = [c for c in compiled if c is not None]
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(c(v) for c in checks)


def _keyword(key: str, value: Any, schema: dict[str, Any]) -> Check | None:
    if key == "type":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
            raise _Unsupported
        preds = [_TYPES[n] for n in names]
        return preds[0] if len(preds) == 1 else (lambda v: any(p(v) for p in preds))
    if key == "enum" or key == "const":  # strings only: a string equals only an equal string (jsonschema's equal)
        options = value if key == "enum" else [value]
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise _Unsupported
        allowed = frozenset(options)
        return lambda v: isinstance(v, str) and v in allowed
    if key == "properties":
        if not isinstance(value, dict):
            raise _Unsupported
        props = [(name, _compile(sub)) for name, sub in value.items()]
        return lambda v: not isinstance(v, dict) or all(c(v[n]) for n, c in props if n in v)
    if key == "required":
        if not isinstance(value, list):
            raise _Unsupported
        names = list(value)
        return lambda v: not isinstance(v, dict) or all(n in v for n in names)
    if key == "additionalProperties":
        if "patternProperties" in schema:
            raise _Unsupported
        known = frozenset(schema.get("properties", {}))
        if value is True:
            return None
        if value is False:
            return lambda v: not isinstance(v, dict) or all(k in known for k in v)
        extra = _compile(value)
        return lambda v: not isinstance(v, dict) or all(extra(x) for k, x in v.items() if k not in known)
    if key == "items":
        if "prefixItems" in schema:
            raise _Unsupported
        item = _compile(value)
        return lambda v: not isinstance(v, list) or all(item(x) for x in v)
    if key in ("minItems", "maxItems", "minLength", "maxLength"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Unsupported
        kind = list if key.endswith("Items") else str
        if key.startswith("min"):
            return lambda v: not isinstance(v, kind) or len(v) >= value
        return lambda v: not isinstance(v, kind) or len(v) <= value
    if key == "uniqueItems":  # items that are all strings are unique as a set; anything else: ask jsonschema
        if value is False:
            return None
        return lambda v: not isinstance(v, list) or (all(isinstance(x, str) for x in v) and len(set(v)) == len(v))
    if key == "pattern":
        if not isinstance(value, str):
            raise _Unsupported
        rx = re.compile(value)
        return lambda v: not isinstance(v, str) or rx.search(v) is not None
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if not _NUMBER(value):
            raise _Unsupported
        bound = value
        compare: Callable[[Any], bool] = {
            "minimum": lambda v: v >= bound, "maximum": lambda v: v <= bound,
            "exclusiveMinimum": lambda v: v > bound, "exclusiveMaximum": lambda v: v < bound}[key]
        return lambda v: not _NUMBER(v) or compare(v)
    if key in ("allOf", "anyOf", "oneOf"):
        if not isinstance(value, list) or not value:
            raise _Unsupported
        subs = [_compile(s) for s in value]
        if key == "allOf":
            return lambda v: all(c(v) for c in subs)
        if key == "anyOf":
            return lambda v: any(c(v) for c in subs)
        return lambda v: sum(1 for c in subs if c(v)) == 1
    if key == "not":
        inner = _compile(value)
        return lambda v: not inner(v)
    if key == "if":
        test = _compile(value)
        then = _compile(schema["then"]) if "then" in schema else None
        else_ = _compile(schema["else"]) if "else" in schema else None
        return lambda v: (then is None or then(v)) if test(v) else (else_ is None or else_(v))
    raise _Unsupported
