"""The compiled schema checks (``validation.fast_check``) against jsonschema itself: whenever a compiled check says
yes, jsonschema finds no error, on every built-in task's schemas, the annotation record schema and a schema using
every compiled keyword, over seeded random values and mutations of valid ones."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from autolabel.records import record_problems
from autolabel.tasks import list_tasks, load_schema, load_task
from autolabel.validation import compile_schema, fast_check, validation_errors

EVERY_KEYWORD = {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "t", "type": "object",
    "required": ["s", "n"], "additionalProperties": {"type": ["integer", "null"], "minimum": -1},
    "properties": {
        "s": {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[a-c]+$"},
        "n": {"type": "number", "minimum": 0, "exclusiveMaximum": 10, "maximum": 9.5, "exclusiveMinimum": -1},
        "e": {"enum": ["a", "b"]}, "c": {"const": "x"},
        "l": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2, "uniqueItems": True},
        "u": {"type": "array", "uniqueItems": True},
        "o": {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "number", "minimum": 5}]},
        "a": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
        "x": {"allOf": [{"type": "integer"}, {"not": {"const": "q"}}, {"maximum": 3}]},
        "f": {"items": False}, "t": True, "no": False,
    },
    "allOf": [{"if": {"properties": {"s": {"const": "a"}}}, "then": {"required": ["e"]},
               "else": {"properties": {"e": {"const": "b"}}}}],
}
ATOMS: list[Any] = [None, True, False, 0, 1, -1, 2, 5, 9.5, 10, 1.0, 1.5, -0.5, float("nan"), "", "a", "b", "x", "q",
                    "abc", "abcd", "A", [], ["a"], ["a", "a"], [1, True], [1, 1.0], [0, False], {}, {"a": 1}]


def _schemas() -> list[dict[str, Any]]:
    out = [EVERY_KEYWORD, load_schema("annotation.schema.json")]
    for task in list_tasks():
        for role in task.roles:
            fields = task.fields_for(role)
            if fields is not None:
                out += [task.output_schema(fields), task.critique_schema(fields)]
        if task.session_fields() is not None:
            out.append(task.output_schema(task.session_fields()))
    return out


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    if depth > 2 or rng.random() < 0.5:
        return copy.deepcopy(rng.choice(ATOMS))
    if rng.random() < 0.5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["s", "n", "e", "c", "l", "o", "a", "x", "f", "z", "kind", "labels", "verdict", "reason", "revised"]
    return {k: _random_value(rng, depth + 1) for k in rng.sample(keys, rng.randrange(len(keys)))}


def _mutate(value: Any, rng: random.Random) -> Any:
    """``value`` with one random change somewhere inside: a value replaced, a key dropped or added."""
    value = copy.deepcopy(value)
    node = value
    for _ in range(rng.randrange(4)):
        children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
        children = [c for c in children if isinstance(c, dict | list)]
        if not children:
            break
        node = rng.choice(children)
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        choice = rng.randrange(3)
        if choice == 0:
            del node[key]
        elif choice == 1:
            node[key] = _random_value(rng)
        else:
            node[rng.choice(["extra", "s", "z", "n"])] = _random_value(rng)
    elif isinstance(node, list) and node:
        node[rng.randrange(len(node))] = _random_value(rng)
    elif isinstance(node, list):
        node.append(_random_value(rng))
    return value


def _valid_examples(schema: dict[str, Any]) -> list[Any]:
    from tests.fake_openai import synthesize

    rng = random.Random(7)
    return [synthesize(schema, rng) for _ in range(20)]


def _stored_records() -> list[dict[str, Any]]:
    task = load_task("psy-insight")
    base = {"kind": "turn", "run_id": "r", "task": {"name": task.name, "version": task.version,
                                                   "hash": task.spec_hash},
            "model": "m", "dialogue_id": "d", "turn_index": 0, "speaker": "Seeker", "role": "seeker",
            "language": "en", "status": "flagged", "labels": {"emotion": ["Anxiety"]}, "texts": {"observation": "r"},
            "confidence": {"emotion": {"value": 0.4, "signals": {"logprob": 0.5, "critic": 0.5}}},
            "flags": ["critic_unsure"], "critique": {"verdict": "unsure", "reason": "r", "revised": None},
            "error": None, "raw_output": None, "attempts": 1}
    failed = {**base, "status": "failed", "labels": {}, "confidence": {}, "error": "invalid_output: x",
              "raw_output": "{"}
    session = {k: v for k, v in base.items() if k not in ("turn_index", "speaker", "role", "critique", "attempts")}
    return [base, failed, {**session, "kind": "session", "status": "accepted", "flags": []}]


@pytest.mark.parametrize("schema", _schemas(), ids=lambda s: s.get("title") or json.dumps(s)[:40])
def test_a_compiled_check_never_accepts_what_jsonschema_rejects(schema: dict[str, Any]) -> None:
    check = fast_check(schema)
    assert check is not None  # every schema autolabel generates compiles
    validator = Draft202012Validator(schema)
    rng = random.Random(json.dumps(schema, sort_keys=True))
    seeds = {"t": [{"s": "a", "n": 0, "e": "a", "l": ["a", "b"], "u": ["1", "2"], "o": 7.5, "a": None, "x": 2,
                    "f": [], "z": None, "y": -1},
                   {"s": "bc", "n": 9.5, "e": "b", "c": "x", "o": "s", "a": False, "x": 3.0, "t": {"any": 1}}],
             "autolabel annotation record": _stored_records()}.get(schema.get("title"), None) or _valid_examples(schema)
    assert not [e for v in seeds for e in validator.iter_errors(v)]
    values = [*seeds, *(_mutate(rng.choice(seeds), rng) for _ in range(3000)),
              *(_random_value(rng) for _ in range(3000))]
    agree = 0
    for value in values:
        valid = not list(validator.iter_errors(value))
        if check(value):
            assert valid, value
        agree += check(value) == valid
    assert all(check(v) for v in seeds)  # the fast path is taken for what autolabel writes
    if schema is not EVERY_KEYWORD:  # whose "u" (unique items of any type) is left to jsonschema on purpose
        assert agree >= 0.98 * len(values)  # autolabel's own schemas rarely need jsonschema for a valid value


def test_unknown_keywords_are_left_to_jsonschema() -> None:
    assert fast_check({"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}}) is None
    assert fast_check({"type": "object", "patternProperties": {"^x": {}}, "additionalProperties": False}) is None
    assert fast_check({"enum": [1, True]}) is None
    assert fast_check({"type": "decimal"}) is None
    unique = fast_check({"uniqueItems": True})
    assert unique is not None and unique(["a", "b"]) and not unique(["a", "a"])
    assert not unique([1, True]) and not validation_errors({"uniqueItems": True}, [1, True])  # jsonschema decides
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "date", "minProperties": 1}}}
    assert compile_schema(schema).check is None
    assert validation_errors(schema, {"a": 3}) == ["$.a: 3 is not of type 'string'"]


def test_errors_are_jsonschema_messages_with_paths() -> None:
    schema = EVERY_KEYWORD
    assert validation_errors(schema, {"s": "a", "n": 1, "e": "a"}) == []
    assert validation_errors(schema, {"s": "ab", "n": 10, "zz": True}) == [
        "$.n: 10 is greater than or equal to the maximum of 10", "$.n: 10 is greater than the maximum of 9.5",
        "$.zz: True is not of type 'integer', 'null'"]
    task = load_task("psy-insight")
    rec = _stored_records()[0]
    assert record_problems(rec, task) == []
    assert record_problems({**rec, "flags": ["a", "a"]}, task) == ["$.flags: ['a', 'a'] has non-unique elements"]
